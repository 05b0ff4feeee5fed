"""Turning logits into tokens on the device: CFG, temperature, top-k, top-p, greedy. No host syncs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from nar.errors import ConfigError

if TYPE_CHECKING:
    from nar.model import NARModel


@dataclass
class SamplingConfig:
    """Sampling knobs. ``cfg_scale == 1`` disables guidance; any other scale guides, ``uncond + s·(cond −
    uncond)``: below 1 it moves towards the unconditional logits, where the official samplers guide only above 1
    (and sample the conditional logits alone otherwise). ``cfg_interval = -1`` guides every step, otherwise
    guidance stops once more than ``cfg_interval`` tokens have been generated."""

    cfg_scale: float = 1.0
    cfg_interval: int = -1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False

    def __post_init__(self) -> None:
        for key in ("top_k", "cfg_interval"):  # counts: a float would reach torch.topk or a token count
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"must be an integer, got {value!r} ({type(value).__name__})", key=key)
        for key in ("cfg_scale", "temperature", "top_p"):
            if not math.isfinite(getattr(self, key)):
                raise ConfigError(f"must be a finite number, got {getattr(self, key)}", key=key)
        if self.temperature <= 0 and not self.greedy:
            raise ConfigError(f"must be > 0 (use greedy=true for argmax), got {self.temperature}", key="temperature")
        if self.top_k < 0:
            raise ConfigError(f"must be >= 0 (0 = off), got {self.top_k}", key="top_k")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"must be in (0, 1], got {self.top_p}", key="top_p")
        if self.cfg_interval < -1:
            raise ConfigError(f"must be -1 (always) or >= 0, got {self.cfg_interval}", key="cfg_interval")

    @property
    def guided(self) -> bool:
        return self.cfg_scale != 1.0


def guide(logits: torch.Tensor, scale: float) -> torch.Tensor:
    """``[2B, n, V]`` (conditional half first) → ``uncond + scale * (cond - uncond)`` ``[B, n, V]``."""
    cond, uncond = logits.chunk(2, dim=0)
    return torch.lerp(uncond, cond, scale)  # one fused pass; lerp extrapolates for scale > 1


def check_condition(model: NARModel, cond: torch.Tensor, cond_mask: torch.Tensor | None = None) -> None:
    """Raise ValueError unless ``cond`` is what ``model`` samples from: class ids ``[B]`` in
    ``[0, num_classes)`` (the null id ``num_classes`` is for the CFG rows :func:`with_null` adds), or caption
    features ``[B, caption_len, caption_dim]`` with ``cond_mask`` ``[B, caption_len]``; ``B >= 1``. Class ids cost
    one host sync: call it once per sampler call, never inside a captured graph."""
    cfg = model.cfg
    if cond.dim() >= 1 and cond.shape[0] == 0:
        raise ValueError(f"no conditions to sample from: got a batch of 0 (shape {tuple(cond.shape)})")
    if cfg.condition == "class":
        if cond.dim() != 1 or cond.is_floating_point() or cond.is_complex() or cond.dtype == torch.bool:
            raise ValueError(f"class conditions must be integer ids [B], got {cond.dtype} of shape {tuple(cond.shape)}")
        bad = (cond < 0) | (cond >= cfg.num_classes)
        if bad.any():
            raise ValueError(f"class ids must be in [0, {cfg.num_classes}) (num_classes={cfg.num_classes}; the null id is "
                             f"for the rows guidance adds itself), got "
                             f"{cond[bad][:8].tolist()}")
        return
    model.cls_embedding.check(cond)
    if cond_mask is not None and tuple(cond_mask.shape) != tuple(cond.shape[:2]):
        raise ValueError(f"cond_mask must be [B, caption_len] = {list(cond.shape[:2])} like the captions, got "
                         f"{list(cond_mask.shape)}")


def with_null(model: NARModel, cond: torch.Tensor, cond_mask: torch.Tensor | None,
              sampling: SamplingConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The conditions a guided run decodes: ``cond [B, ...]`` then the null condition, ``[2B, ...]``, and the
    caption mask ``[B, L]`` doubled to ``[2B, L]`` (the null caption is masked as its caption is).
    Unguided, both come back unchanged. No validation (it runs inside captured graphs): the samplers' entry
    points check the caller's conditions once per call with :func:`check_condition`."""
    if not sampling.guided:
        return cond, cond_mask
    cond = torch.cat([cond, model.null_condition(cond)])
    return cond, torch.cat([cond_mask, cond_mask]) if cond_mask is not None else None


def guidance_on(sampling: SamplingConfig, generated: int) -> bool:
    """Whether the pass after ``generated`` sampled tokens (per sample) is guided: CFG is on and
    ``cfg_interval`` is -1 or not yet exceeded."""
    return sampling.guided and (sampling.cfg_interval < 0 or generated <= sampling.cfg_interval)


def apply_guidance(logits: torch.Tensor, sampling: SamplingConfig, on: bool) -> torch.Tensor:
    """One pass's logits → the logits its tokens are drawn from, ``[B, n, V]``.

    Guided runs hand in ``[2B, n, V]`` (conditional half first): with ``on`` (see :func:`guidance_on`) the
    halves are mixed by :func:`guide`, past the CFG interval the conditional half is kept. Unguided logits
    ``[B, n, V]`` pass through. No upcast here: callers choose when to go to float32.
    """
    if not sampling.guided:
        return logits
    return guide(logits, sampling.cfg_scale) if on else logits[: logits.shape[0] // 2]


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus to -inf. ``logits [..., V]`` (float)."""
    if top_k > 0:
        k = min(top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the mass before it already exceeds top_p (the first token always stays).
        drop_sorted = (cum - sorted_logits.softmax(-1)) > top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_tokens(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """``logits [B, n, V]`` → tokens ``[B, n]``; the exponential-race trick keeps it sync-free."""
    if cfg.greedy:
        return logits.argmax(-1)
    logits = logits.float()
    if cfg.temperature != 1.0:
        logits = logits / cfg.temperature
    logits = filter_logits(logits, cfg.top_k, cfg.top_p)
    if logits.device.type == "cpu":
        # The CPU's exponential generator costs ~20 ns per element, a quarter of a small model's decode
        # time; inverse-CDF sampling draws one uniform per token instead of one per vocabulary entry.
        return inverse_cdf_sample(logits.softmax(-1), generator)
    # argmax(p / E) with E ~ Exp(1) draws from p; in log space, argmax(logits - log E) needs no softmax,
    # and it is one fixed-shape kernel chain (CUDA-graph friendly, no host sync).
    race = torch.empty_like(logits).exponential_(1.0, generator=generator)
    return (logits - race.log()).argmax(-1)


def inverse_cdf_sample(probs: torch.Tensor, generator: torch.Generator | None = None, block: int = 64) -> torch.Tensor:
    """Draw one index per row of ``probs [..., V]`` (non-negative, any positive total) by inverting the CDF.

    Two levels, so the sequential scan is short: pick a block of ``block`` entries by the CDF of the
    block masses, then an entry inside it by the CDF of that block alone (a running sum over the whole
    vocabulary was 4 % of a CPU decode). Entries of zero probability are never drawn.
    """
    V = probs.shape[-1]
    if V % block or V < 4 * block:
        cdf = probs.cumsum(-1)
        u = torch.rand(*cdf.shape[:-1], 1, generator=generator, dtype=cdf.dtype) * cdf[..., -1:]
        return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=V - 1)
    blocks = probs.unflatten(-1, (V // block, block))  # [..., nb, block]
    block_cdf = blocks.sum(-1).cumsum(-1)  # [..., nb]
    u = torch.rand(*block_cdf.shape[:-1], 1, generator=generator, dtype=block_cdf.dtype) * block_cdf[..., -1:]
    # right=True: the first block whose cumulative mass exceeds u, so an empty block is never chosen.
    b = torch.searchsorted(block_cdf, u, right=True).clamp_(max=V // block - 1)  # [..., 1]
    before = torch.where(b > 0, block_cdf.gather(-1, (b - 1).clamp(min=0)), torch.zeros_like(u))
    inner = blocks.gather(-2, b[..., None].expand(*b.shape, block)).squeeze(-2).cumsum(-1)  # [..., block]
    # Rounding can put u - before at or past the block's total: keep it strictly inside.
    r = torch.minimum(u - before, inner[..., -1:] * (1 - 2**-20))
    j = torch.searchsorted(inner, r, right=True).clamp_(max=block - 1)
    return (b * block + j).squeeze(-1)
