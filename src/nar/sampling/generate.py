"""Frontier decoding (and the raster baseline through the same loop): prefill plus one pass per step."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nar.model import NARModel
from nar.sampling.logits import (
    SamplingConfig,
    apply_guidance,
    check_condition,
    guidance_on,
    sample_tokens,
    with_null,
)


@torch.no_grad()
def generate(model: NARModel, cond: torch.Tensor, sampling: SamplingConfig | None = None,
             cond_mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
             layout: str = "decode", return_logits: bool = False, kv_dtype: torch.dtype | None = None):
    """Sample a batch of token grids.

    Args:
        model: a generator in ``nar``, ``raster`` or ``par`` mode (the schedule follows ``model.cfg.mode``).
        cond: class ids ``[B]`` or caption features ``[B, L, caption_dim]``.
        cond_mask: ``[B, L]`` caption validity (captions only).
        generator: a seeded ``torch.Generator`` on the model's device makes the result reproducible.
        layout: KV-cache layout, ``decode`` (prefix attention) or ``sequence`` (dense mask, the reference).
        return_logits: also return the (guided) logits of every cell ``[B, N, V]`` in raster order.
        kv_dtype: ``torch.float8_e4m3fn`` keeps the KV caches in float8 (:class:`~nar.model.layers.KVCache`).
    Returns:
        tokens ``[B, *grid]`` in raster layout (and the logits when asked).
    """
    sampling = sampling or SamplingConfig()
    check_condition(model, cond, cond_mask)
    B = cond.shape[0]
    cond, cond_mask = with_null(model, cond, cond_mask, sampling)
    state = model.start_inference(cond.shape[0], cond_mask=cond_mask, layout=layout, device=cond.device,
                                  kv_dtype=kv_dtype)
    N = model.cfg.num_cells
    tokens = torch.zeros(B, N, dtype=torch.long, device=cond.device)
    all_logits = torch.zeros(B, N, model.cfg.vocab_size, device=cond.device) if return_logits else None
    decode_into(model, state, cond, sampling, tokens, generator, all_logits)
    tokens = tokens.view(B, *model.cfg.grid)
    return (tokens, all_logits) if return_logits else tokens


def decode_into(model: NARModel, state, cond: torch.Tensor, sampling: SamplingConfig, tokens: torch.Tensor,
                generator: torch.Generator | Sequence[torch.Generator | None] | None = None,
                logits_out: torch.Tensor | None = None, draw=None) -> None:
    """The decoding loop shared by :func:`generate` and the fast sampler: prefill, then one pass per step.

    ``cond`` already holds the null half when guided (``[2B, ...]``); sampled cells are written into
    ``tokens [B, N]`` (raster order) and, when given, their guided logits into ``logits_out [B, N, V]``.
    ``draw(logits, on, generator) -> tokens`` replaces guidance + :func:`sample_tokens` (the fast
    sampler's compiled version of the same arithmetic). ``generator`` may be a sequence with one generator
    per pass (the wavefront sampler's per-half streams, :mod:`nar.sampling.wavefront`).
    """
    generated = 0
    prev = None
    for i, plan in enumerate(state.plans):
        if i == 0:
            logits = model.prefill(cond, state)
        else:  # feed the cells the previous pass produced
            logits = model.decode_step(torch.cat([prev, prev]) if sampling.guided else prev, i, state)
        on = guidance_on(sampling, generated)
        gen = generator[i] if isinstance(generator, Sequence) else generator
        if draw is not None and logits_out is None:
            prev = draw(logits, on, gen)
        else:
            logits = apply_guidance(logits.float(), sampling, on)
            prev = sample_tokens(logits, sampling, gen)
        tokens[:, plan.outputs] = prev
        if logits_out is not None:
            logits_out[:, plan.outputs] = logits
        generated += prev.shape[1]
