"""The small-query attention kernel equals SDPA over a cache prefix (Triton's interpreter on the CPU,
the compiled kernel on a GPU)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from nar.model.decode_attention import (
    kernel_applies,
    prefix_attention,
    prefix_attention_sdpa,
    triton_available,
)

CHECK = textwrap.dedent("""
    import itertools, torch
    from nar.model.decode_attention import kernel_applies, prefix_attention, prefix_attention_sdpa
    torch.manual_seed(0)
    worst = 0.0
    cases = list(itertools.product([(4, 4), (4, 2)], [1, 5, 16], [1, 37, 130], [False, True], [16]))
    cases += [((2, 2), 40, 150, True, 64), ((2, 1), 64, 70, False, 32)]  # video-wide frontiers, other head dims
    for (H, Hkv), T, S, masked, hd in cases:
        B, L = 3, 160
        qk = torch.randn(B, T, H + Hkv, hd)            # the model's layout: q and k rotated together
        q = qk.transpose(1, 2)[:, :H]                   # a strided view, as in Attention.forward
        cache_k, cache_v = torch.randn(B, Hkv, L, hd), torch.randn(B, Hkv, L, hd)
        k, v = cache_k[:, :, :S], cache_v[:, :, :S]     # the prefix of a bigger cache
        mask = None
        if masked:                                      # caption padding: some keys hidden, never the last
            keep = torch.rand(B, S) > 0.4
            keep[:, -1] = True
            mask = keep[:, None, None, :]
        assert kernel_applies(q, k, mask)
        got, want = prefix_attention(q, k, v, mask), prefix_attention_sdpa(q, k, v, mask)
        assert got.shape == want.shape == (B, T, H * hd)
        worst = max(worst, (got - want).abs().max().item())
    assert worst < 1e-5, worst

    # A float8 cache (a scale per row) read and scaled inside the kernel: the same numbers as SDPA over the
    # dequantized prefix, masked or not, with grouped heads.
    from nar.model.float8 import quantize_rows
    for (H, Hkv), T, S, masked in [((4, 4), 1, 1, False), ((4, 2), 16, 130, True), ((4, 4), 5, 37, False)]:
        B, L, hd = 3, 160, 16
        q = torch.randn(B, T, H + Hkv, hd).transpose(1, 2)[:, :H]
        (k8, ks), (v8, vs) = quantize_rows(torch.randn(B, Hkv, L, hd)), quantize_rows(3 * torch.randn(B, Hkv, L, hd))
        mask = None
        if masked:
            keep = torch.rand(B, S) > 0.4
            keep[:, -1] = True
            mask = keep[:, None, None, :]
        args = (k8[:, :, :S], v8[:, :, :S], mask, ks[:, :, :S, 0], vs[:, :, :S, 0])
        assert kernel_applies(q, args[0], mask)
        got, want = prefix_attention(q, *args), prefix_attention_sdpa(q, *args)
        assert (got - want).abs().max().item() < 1e-5

    # The fast sampler through the kernel gives the sampler through SDPA, token for token (greedy),
    # for class conditions and for padded captions (the per-key mask).
    from nar.model import NARConfig, NARModel
    from nar.sampling import SamplingConfig
    from nar.sampling.fast import FastSampler
    for kw in (dict(), dict(condition="caption", caption_len=4, caption_dim=8)):
        cfg = NARConfig(dim=64, n_layer=2, n_head=4, vocab_size=32, num_classes=5, grid=[3, 4], **kw)
        model = NARModel(cfg).eval()
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.2)
        sampling = SamplingConfig(cfg_scale=2.0, greedy=True)
        if cfg.condition == "class":
            cond, mask = torch.tensor([0, 3]), None
        else:
            cond, mask = torch.randn(2, 4, 8), torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
        out = [FastSampler(model, 2, sampling, cond_mask=mask, attention=a)(cond) for a in ("triton", "sdpa")]
        assert torch.equal(out[0], out[1]), out
    print("max abs diff", worst)
""")


@pytest.mark.skipif(not triton_available(), reason="Triton is not installed")
def test_kernel_matches_sdpa_in_the_interpreter() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr


def test_falls_back_to_sdpa_where_the_kernel_does_not_apply() -> None:
    q, k = torch.randn(2, 4, 3, 16), torch.randn(2, 4, 9, 16)
    # On the CPU without the interpreter, per-query masks, long query blocks, odd head dims: SDPA.
    assert not kernel_applies(q, k, None)
    assert not kernel_applies(q, k, torch.ones(2, 1, 3, 9, dtype=torch.bool))
    assert not kernel_applies(torch.randn(2, 4, 80, 16), k, None)
    assert not kernel_applies(torch.randn(2, 4, 3, 24), torch.randn(2, 4, 9, 24), None)
    v = torch.randn_like(k)
    torch.testing.assert_close(prefix_attention(q, k, v), prefix_attention_sdpa(q, k, v))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not triton_available(), reason="needs a GPU with Triton")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_matches_sdpa_on_the_gpu(dtype) -> None:
    torch.manual_seed(0)
    for H, Hkv, T, S in [(16, 16, 16, 257), (16, 16, 1, 1), (8, 2, 7, 100)]:
        B, hd = 64, 64
        q = torch.randn(B, T, H, hd, device="cuda", dtype=dtype).transpose(1, 2)
        k, v = (torch.randn(B, Hkv, 300, hd, device="cuda", dtype=dtype)[:, :, :S] for _ in range(2))
        keep = torch.rand(B, S, device="cuda") > 0.3
        keep[:, -1] = True
        for mask in (None, keep[:, None, None, :]):
            assert kernel_applies(q, k, mask)
            got, want = prefix_attention(q, k, v, mask).float(), prefix_attention_sdpa(q, k, v, mask).float()
            assert (got - want).norm() / want.norm() < 1e-2
            if torch.cuda.get_device_capability() >= (8, 9):  # a float8 cache, scaled inside the kernel
                from nar.model.float8 import quantize_rows
                (k8, ks), (v8, vs) = quantize_rows(k), quantize_rows(v)
                ks, vs = ks[..., 0], vs[..., 0]  # the cache keeps one scale per row: [B, H_kv, S]
                got = prefix_attention(q, k8, v8, mask, ks, vs).float()
                want = prefix_attention_sdpa(q, k8, v8, mask, ks, vs).float()
                assert (got - want).norm() / want.norm() < 1e-2
