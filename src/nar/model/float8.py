"""Float8 e4m3 rows with one float32 scale each: what the fp8 block weights (:mod:`nar.model.fp8`) and the
float8 KV cache (:class:`nar.model.layers.KVCache`) store.

Rounding: e4m3 keeps 3 mantissa bits, so a value scaled into its range is rounded to within ``2^-4`` of
itself (half a unit in the last place), against ``2^-8`` for bf16. Scaling per row (``absmax / 448``, 448 the
largest e4m3 value) puts each row's largest entry at the top of the range; entries below ``absmax / 2^15``
fall into e4m3's subnormals or to zero.
"""

from __future__ import annotations

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448
_TINY = torch.finfo(torch.float32).tiny


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [..., K]`` → ``(x_fp8 [..., K] float8_e4m3fn, scale [..., 1] float32)`` with ``x ≈ x_fp8 * scale``.

    Each row is scaled so its absolute maximum lands on 448. The scale is floored at the smallest normal
    float32, so an all-zero row quantizes to zeros (not 0/0, also where subnormals are flushed). The clamp
    guards the cast: e4m3fn has no infinity, and a value cast from far enough past 448 becomes NaN.
    """
    amax = torch.linalg.vector_norm(x, float("inf"), dim=-1, keepdim=True, dtype=torch.float32)  # max |x|
    scale = (amax / FP8_MAX).clamp_min(_TINY)
    return (x / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8), scale


def dequantize_rows(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x_fp8 [..., K]`` times ``scale [..., 1]`` (as :func:`quantize_rows` returns it), in ``dtype``."""
    return (x.float() * scale).to(dtype)
