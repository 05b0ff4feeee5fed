"""The one way to get a sampler: ``make_sampler`` hands back the fast sampler where it is available,
else the plain loop; both draw the same tokens for the same seed (tested token for token)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from nar.model import NARModel
from nar.sampling.logits import SamplingConfig

Sampler = Callable[..., torch.Tensor]  # (cond, generator=None) -> tokens [B, *grid]


def make_sampler(model: NARModel, batch: int, sampling: SamplingConfig | None, cond_mask: torch.Tensor | None = None,
                 **fast_options: Any) -> Sampler:
    """A callable ``(cond, generator=None) -> tokens [batch, *grid]`` for ``batch`` conditions at a time.

    ``cond``: class ids ``[batch]`` or caption features ``[batch, L, D]``; ``cond_mask [batch, L]`` (captions)
    is fixed when the sampler is built. ``fast_options`` (``cuda_graph``, ``compile``, ``attention``) go to
    :class:`~nar.sampling.fast.FastSampler`; the plain loop (:func:`~nar.sampling.generate.generate`) ignores them.
    A fast sampler reuses its buffers and, on a GPU, its captured CUDA graph: build one per batch size and reuse it.
    """
    try:
        from nar.sampling.fast import FastSampler

        return FastSampler(model, batch=batch, sampling=sampling, cond_mask=cond_mask, **fast_options)
    except ImportError:  # pragma: no cover - the plain loop has the same semantics
        from nar.sampling.generate import generate

        def plain(cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
            return generate(model, cond, sampling, cond_mask=cond_mask, generator=generator)

        return plain
