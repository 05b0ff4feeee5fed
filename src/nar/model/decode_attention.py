"""Attention of a few queries over a KV-cache prefix: the shape of every frontier-decoding pass.

A decoding pass feeds one frontier (at most a few dozen cells per sequence) and attends to every
cached key before it. General attention kernels tile the queries 64 or 128 at a time, so with a
frontier of 1-16 cells most of each tile is padding, and the work per (sequence, head) is several
times what the keys and values cost to read. Measured on an H200 (NAR-L, batch 256, CFG 2, bf16,
one eager generation): the SDPA kernel took 32 % of the GPU time, ~175 us a call, against ~63 us to
read the keys and values once.

:func:`prefix_attention` is that computation with a query tile of 16 (the smallest the matrix units
take): one Triton program per (sequence, head) streams the prefix once with an online softmax and
writes the output straight into the ``[B, T, H * hd]`` layout the output projection reads (no
transpose copy). :func:`prefix_attention_sdpa` is the plain formulation it is tested against and
the fallback wherever the kernel does not apply (CPU, float32, per-query masks, long query blocks).

A float8 cache (:func:`nar.model.float8.quantize_rows`: e4m3 rows, a float32 scale each) halves the bytes a pass
reads; the kernel loads the float8 rows and applies the scales to the scores and the probabilities, the plain
formulation dequantizes first.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from nar.model.float8 import FP8, dequantize_rows

try:  # Triton ships with CUDA builds of PyTorch; CPU-only installs go without it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

MAX_QUERIES = 64  # longer query blocks (a long caption's prefill) go to SDPA


def triton_available() -> bool:
    return triton is not None


def prefix_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                          k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None) -> torch.Tensor:
    """The plain formulation: ``q [B, H, T, hd]``, ``k, v [B, H_kv, S, hd]``, ``mask`` broadcastable to
    ``[B, H, T, S]`` (True = visible) or None → ``[B, T, H * hd]``. With ``k_scale, v_scale [B, H_kv, S]``,
    ``k`` and ``v`` are float8 rows (:func:`nar.model.float8.quantize_rows`), dequantized first."""
    B, H, T, hd = q.shape
    if k_scale is not None:
        k, v = dequantize_rows(k, k_scale[..., None], q.dtype), dequantize_rows(v, v_scale[..., None], q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=k.shape[1] != H)
    return out.transpose(1, 2).reshape(B, T, H * hd)


def kernel_applies(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Whether :func:`prefix_attention` can take this call (else use :func:`prefix_attention_sdpa`)."""
    B, H, T, hd = q.shape
    if triton is None or T > MAX_QUERIES or hd < 16 or hd & (hd - 1) or H % k.shape[1]:
        return False
    if q.device.type != "cuda" and not _interpreting():
        return False
    if q.device.type == "cuda" and q.dtype not in (torch.bfloat16, torch.float16):
        return False
    if k.dtype == FP8 and q.device.type == "cuda" and torch.cuda.get_device_capability(q.device) < (8, 9):
        return False  # Triton converts float8 e4m3 on Ada and Hopper only
    # Only a per-key mask (caption padding), shared by every head and query.
    return mask is None or (mask.dim() == 4 and mask.shape[1] == 1 and mask.shape[2] == 1)


def _interpreting() -> bool:
    """Triton's CPU interpreter (``TRITON_INTERPRET=1``), which the tests run the kernel in."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def prefix_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                     k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None) -> torch.Tensor:
    """As :func:`prefix_attention_sdpa`, through the small-query kernel when :func:`kernel_applies` (a float8
    cache is read as float8 and scaled inside the kernel: half the bytes of a bf16 cache)."""
    if not kernel_applies(q, k, mask):
        return prefix_attention_sdpa(q, k, v, mask, k_scale, v_scale)
    return torch.ops.nar.prefix_attention(q, k, v, mask, k_scale, v_scale)


if triton is not None:

    @triton.jit
    def _prefix_attention_kernel(
        Q, K, V, OUT, KEEP, KS, VS,
        sqb, sqh, sqt, skb, skh, skl, svb, svh, svl, sob, sot, soh, smb, sml, ssb, ssh, ssl,
        T, S, H, GROUP, scale,
        HAS_MASK: tl.constexpr, QUANT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        HEAD_DIM: tl.constexpr,
    ):
        pid = tl.program_id(0)
        b = pid // H
        h = pid % H
        hk = h // GROUP
        rows = tl.arange(0, BLOCK_M)
        dims = tl.arange(0, HEAD_DIM)
        q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqt + dims[None, :], mask=rows[:, None] < T, other=0.0)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        qk_scale = scale * 1.4426950408889634  # exp2 instead of exp
        k_base = K + b * skb + hk * skh
        v_base = V + b * svb + hk * svh
        scale_base = b * ssb + hk * ssh  # the row scales of a float8 cache (k and v alike laid out)
        for start in range(0, S, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            in_range = cols < S
            k = tl.load(k_base + cols[:, None] * skl + dims[None, :], mask=in_range[:, None], other=0.0)
            if QUANT:
                k = k.to(q.dtype)
            s = tl.dot(q, tl.trans(k)) * qk_scale  # [BLOCK_M, BLOCK_N], float32
            if QUANT:  # q . (k8 * ks) = (q . k8) * ks, one scale per key
                s = s * tl.load(KS + scale_base + cols * ssl, mask=in_range, other=0.0)[None, :]
            keep = in_range
            if HAS_MASK:
                keep = keep & (tl.load(KEEP + b * smb + cols * sml, mask=in_range, other=0) != 0)
            s = tl.where(keep[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # A block with no visible key leaves m at -inf: shift by 0 then, so nothing becomes NaN.
            m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_shift)
            p = tl.exp2(s - m_shift[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_base + cols[:, None] * svl + dims[None, :], mask=in_range[:, None], other=0.0)
            if QUANT:  # p @ (v8 * vs) = (p * vs) @ v8, one scale per value row
                v = v.to(q.dtype)
                pv = p * tl.load(VS + scale_base + cols * ssl, mask=in_range, other=0.0)[None, :]
            else:
                pv = p
            acc = acc * alpha[:, None] + tl.dot(pv.to(v.dtype), v)
            m_i = m_new
        acc = acc / l_i[:, None]
        tl.store(OUT + b * sob + rows[:, None] * sot + h * soh + dims[None, :], acc.to(OUT.dtype.element_ty),
                 mask=rows[:, None] < T)

    @torch.library.custom_op("nar::prefix_attention", mutates_args=())
    def _prefix_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                             k_scale: torch.Tensor | None, v_scale: torch.Tensor | None) -> torch.Tensor:
        B, H, T, hd = q.shape
        S = k.shape[2]
        out = torch.empty(B, T, H, hd, dtype=q.dtype, device=q.device)
        # The kernel reads rows with unit stride along the head dim.
        q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
        keep = None
        if mask is not None:
            keep = mask.expand(B, 1, 1, S)[:, 0, 0].to(torch.int8)
        quant = k_scale is not None
        if quant and k_scale.stride() != v_scale.stride():  # one set of strides serves both
            k_scale, v_scale = k_scale.contiguous(), v_scale.contiguous()
        block_m = max(16, triton.next_power_of_2(T))
        _prefix_attention_kernel[(B * H,)](
            q, k, v, out, keep if keep is not None else out, k_scale if quant else out, v_scale if quant else out,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
            keep.stride(0) if keep is not None else 0, keep.stride(1) if keep is not None else 0,
            *(k_scale.stride() if quant else (0, 0, 0)),
            T, S, H, H // k.shape[1], hd ** -0.5,
            HAS_MASK=keep is not None, QUANT=quant, BLOCK_M=block_m, BLOCK_N=64, HEAD_DIM=hd,
            num_warps=4, num_stages=2,
        )
        return out.view(B, T, H * hd)

    @_prefix_attention_op.register_fake
    def _(q, k, v, mask, k_scale, v_scale):
        B, H, T, hd = q.shape
        return q.new_empty(B, T, H * hd)
