"""Llama-style building blocks: RMSNorm, SwiGLU, attention with an optional static KV cache, rotary tables."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nar.model.config import NARConfig
from nar.model.decode_attention import prefix_attention, prefix_attention_sdpa
from nar.model.float8 import FP8, quantize_rows


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            # The reference formula, operation for operation (float32 conformance depends on it).
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
        # Half precision: one fused kernel (it accumulates in float32) instead of eight.
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


class FeedForward(nn.Module):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, cfg: NARConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.dim, bias=False)
        self.dropout = nn.Dropout(cfg.ffn_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class KVCache:
    """A static key/value buffer ``[B, H_kv, L, head_dim]`` written in place at given slots.

    ``attention='triton'`` attends through the small-query kernel of :mod:`nar.model.decode_attention`
    wherever it applies (SDPA elsewhere); ``'sdpa'`` always uses PyTorch's SDPA. ``kv_dtype=torch.float8_e4m3fn``
    stores every key and value row (a token of one head) as float8 with its own float32 scale
    (:func:`~nar.model.float8.quantize_rows`): half the bytes every decoding pass reads, at the cost
    of 3 mantissa bits; attention dequantizes (inside the kernel on a GPU). None stores ``dtype``.
    """

    def __init__(self, batch: int, n_kv_head: int, length: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device | str, attention: str = "sdpa", kv_dtype: torch.dtype | None = None):
        if attention not in ("sdpa", "triton"):
            raise ValueError(f"attention must be 'sdpa' or 'triton', got {attention!r}")
        if kv_dtype not in (None, dtype, FP8):
            raise ValueError(f"kv_dtype must be None or {FP8}, got {kv_dtype}")
        self.quantized = kv_dtype == FP8
        self.dtype = dtype  # what attention computes in (the stored dtype is ``self.k.dtype``)
        shape = (batch, n_kv_head, length, head_dim)
        self.k = torch.zeros(shape, dtype=kv_dtype or dtype, device=device)
        self.v = torch.zeros(shape, dtype=kv_dtype or dtype, device=device)
        self.k_scale = self.v_scale = None
        if self.quantized:
            self.k_scale = torch.zeros(shape[:3], dtype=torch.float32, device=device)
            self.v_scale = torch.zeros(shape[:3], dtype=torch.float32, device=device)
        self.attention = attention

    def write(self, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor | int) -> None:
        """Store ``k, v`` ``[B, H_kv, T, hd]`` at ``slots``: an int writes slots ``slots … slots + T - 1``
        (contiguous, the fast layout), a tensor lists the slots."""
        pairs = [(self.k, k), (self.v, v)]
        if self.quantized:
            (k, ks), (v, vs) = quantize_rows(k), quantize_rows(v)
            pairs = [(self.k, k), (self.v, v), (self.k_scale, ks[..., 0]), (self.v_scale, vs[..., 0])]
        for buffer, rows in pairs:
            if isinstance(slots, int):
                buffer[:, :, slots:slots + rows.shape[2]] = rows
            elif buffer.dtype == FP8:  # index_copy_ has no float8 kernel on the CPU: copy the bytes
                buffer.view(torch.uint8).index_copy_(2, slots, rows.view(torch.uint8))
            else:
                buffer.index_copy_(2, slots, rows)

    def prefix(self, kv_limit: int | None) -> tuple[torch.Tensor, ...]:
        """``(k, v, k_scale, v_scale)`` of the first ``kv_limit`` slots (all when None); the scales are None
        unless the cache is float8."""
        parts = (self.k, self.v, self.k_scale, self.v_scale)
        if kv_limit is None:
            return parts
        return tuple(x[:, :, :kv_limit] if x is not None else None for x in parts)


def apply_rotary(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs ``(x0, x1), (x2, x3), …`` in float32.

    Args:
        x: ``[B, T, H, hd]``. rope: ``[T, hd/2, 2]`` float, ``(cos, sin)`` per pair (all-zero rows zero
            the token: the official quirk for condition tokens).
    """
    xf = x.float().unflatten(-1, (-1, 2))  # [B, T, H, hd/2, 2]
    if torch.compiler.is_compiling():
        # Real arithmetic, which the compiler fuses into one kernel (it cannot generate complex code).
        c, s = rope[None, :, None, :, 0], rope[None, :, None, :, 1]
        x0, x1 = xf[..., 0], xf[..., 1]
        return torch.stack((x0 * c - x1 * s, x1 * c + x0 * s), dim=-1).flatten(-2).type_as(x)
    # Eagerly, a pair (x0, x1) as x0 + i x1 times cos + i sin: one kernel instead of ten.
    xc = torch.view_as_complex(xf.contiguous())
    return torch.view_as_real(xc * torch.view_as_complex(rope)[None, :, None, :]).flatten(-2).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg: NARConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        # q, k and v stacked in one matrix, in that order (the official `wqkv` layout).
        self.wqkv = nn.Linear(cfg.dim, (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.attn_dropout = cfg.attn_dropout
        self.resid_dropout = nn.Dropout(cfg.resid_dropout)

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None = None,
        slots: torch.Tensor | int | None = None,
        kv_limit: int | None = None,
    ) -> torch.Tensor:
        """``x [B, T, D]`` → ``[B, T, D]``.

        Without a cache, ``mask`` is ``[B|1, 1, T, T]``. With one, this call's keys are written at
        ``slots`` and the queries attend to the cache's first ``kv_limit`` slots (all when None)
        under ``mask`` ``[B|1, 1, T, kv_limit]`` (None: every one of them is visible).
        """
        B, T, _ = x.shape
        out = self.attend(self.wqkv(x), rope, mask, cache, slots, kv_limit)
        return self.resid_dropout(self.wo(out))

    def attend(self, qkv: torch.Tensor, rope: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | None = None,
               slots: torch.Tensor | int | None = None, kv_limit: int | None = None) -> torch.Tensor:
        """Everything between the two projections: ``qkv [B, T, (H + 2 H_kv) hd]`` (the ``wqkv`` output) →
        rotary, cache write, attention → ``[B, T, H * hd]`` (what ``wo`` reads). Arguments as :meth:`forward`."""
        B, T, _ = qkv.shape
        qk, v = qkv.split([(self.n_head + self.n_kv_head) * self.head_dim, self.n_kv_head * self.head_dim], -1)
        # q and k are rotated together: [B, T, H + H_kv, hd]
        qk = apply_rotary(qk.view(B, T, self.n_head + self.n_kv_head, self.head_dim), rope)
        q, k = qk.transpose(1, 2).split([self.n_head, self.n_kv_head], dim=1)  # [B, H, T, hd], [B, H_kv, T, hd]
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if cache is not None:
            cache.write(k, v, slots)
            k, v, k_scale, v_scale = cache.prefix(kv_limit)
            if cache.attention == "triton":
                return prefix_attention(q, k, v, mask, k_scale, v_scale)
            if cache.quantized:  # SDPA over the dequantized rows
                return prefix_attention_sdpa(q, k, v, mask, k_scale, v_scale)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0,
            enable_gqa=self.n_kv_head != self.n_head)
        return out.transpose(1, 2).reshape(B, T, -1)


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample while training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device) >= self.p
        return x * keep / (1.0 - self.p)


class Block(nn.Module):
    """Pre-norm transformer block (attention + SwiGLU), official parameter names."""

    def __init__(self, cfg: NARConfig, drop_path: float = 0.0):
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, mask: torch.Tensor | None,
                cache: KVCache | None = None, slots: torch.Tensor | int | None = None,
                kv_limit: int | None = None) -> torch.Tensor:
        h = x + self.drop_path(self.attention(self.attention_norm(x), rope, mask, cache, slots, kv_limit))
        return h + self.drop_path(self.feed_forward(self.ffn_norm(h)))

    def forward_segments(self, xs: list[torch.Tensor], ropes: list[torch.Tensor], masks: list[torch.Tensor | None],
                         caches: list[KVCache], slots: list[torch.Tensor | int],
                         kv_limits: list[int | None]) -> list[torch.Tensor]:
        """:meth:`forward` of several independent decoding passes at once (inference only).

        Segment ``i`` is ``xs[i] [B_i, T_i, D]`` with its own rotary rows, mask, cache, slots and prefix, as one
        call of :meth:`forward` would take them. The row-wise work (norms, every projection, SwiGLU) runs
        once over all segments' tokens side by side, so the matrix products see the tokens of every pass;
        only rotary, the cache write and attention run per segment. Segment ``i`` of the result equals
        ``forward`` of segment ``i`` up to the rounding of the larger matrix products.
        """
        if self.training:
            raise RuntimeError("forward_segments is for decoding; train through forward")
        shapes = [x.shape[:2] for x in xs]
        sizes = [b * t for b, t in shapes]
        flat = torch.cat([x.reshape(-1, x.shape[-1]) for x in xs])  # [sum B_i T_i, D]
        qkv = self.attention.wqkv(self.attention_norm(flat)).split(sizes)
        attn = [self.attention.attend(q.view(b, t, -1), rope, mask, cache, slot, limit).reshape(b * t, -1)
                for q, (b, t), rope, mask, cache, slot, limit in zip(qkv, shapes, ropes, masks, caches, slots,
                                                                       kv_limits)]
        h = flat + self.attention.wo(torch.cat(attn))
        h = h + self.feed_forward(self.ffn_norm(h))
        return [part.view(b, t, -1) for part, (b, t) in zip(h.split(sizes), shapes)]


def rotary_table(coords: torch.Tensor, head_dim: int, num_cond: int, base: float) -> torch.Tensor:
    """``[C + N, head_dim / 2, 2]`` (cos, sin) per channel pair: condition tokens, then the grid cells.

    ``coords [N, k]`` are the cells' coordinates in sequence order (:attr:`GridGeometry.coords`, raster).
    The head dim's channel pairs are split evenly between the axes, first axis first; each axis with
    ``p`` pairs rotates pair ``j`` by ``coord * base^(-2j / (2p))``. For two axes this is the official
    layout (first half of the channels by row, second half by column). Pairs left over when the split
    is uneven are not rotated. Condition rows are all zero: the official models zero their queries and
    keys, and their checkpoints depend on it.
    """
    k = coords.shape[1]
    pairs = head_dim // 2
    per_axis = pairs // k
    angles = torch.zeros(coords.shape[0], pairs)
    freqs = 1.0 / (base ** (torch.arange(0, 2 * per_axis, 2)[:per_axis].float() / (2 * per_axis)))
    for axis in range(k):
        angles[:, axis * per_axis:(axis + 1) * per_axis] = coords[:, axis, None].float() * freqs[None]
    cos, sin = torch.cos(angles), torch.sin(angles)
    used = k * per_axis
    if used < pairs:  # unrotated leftovers: identity rotation
        cos[:, used:], sin[:, used:] = 1.0, 0.0
    zeros = torch.zeros(num_cond, pairs)
    return torch.stack([torch.cat([zeros, cos]), torch.cat([zeros, sin])], dim=-1)
