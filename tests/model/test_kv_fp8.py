"""A float8 KV cache (``kv_dtype=torch.float8_e4m3fn``): rows stored within e4m3's rounding, attention over it
equal to attention over the dequantized rows, the fast samplers equal to the plain loop under it, and its effect
on the likelihood measured through the decoding passes."""

from __future__ import annotations

import pytest
import torch

from model_helpers import seeded_model
from nar.model.decode_attention import prefix_attention_sdpa
from nar.model.float8 import FP8, dequantize_rows, quantize_rows
from nar.model.layers import KVCache
from nar.sampling import SamplingConfig, sample_stream
from nar.sampling.fast import FastSampler
from nar.sampling.generate import generate
from nar.sampling.precision import bits_per_token, decode_bits_per_token, precision_report

KINDS = {"image": dict(grid=[3, 4]), "video": dict(grid=[2, 3, 3]),
         "caption": dict(grid=[3, 4], condition="caption", caption_len=4, caption_dim=8)}


def _model(kind: str):
    return seeded_model(**KINDS[kind])


def test_rows_are_stored_within_e4m3_rounding_at_any_slots() -> None:
    torch.manual_seed(0)
    cache = KVCache(2, 3, 10, 16, torch.float32, "cpu", kv_dtype=FP8)
    assert cache.quantized and cache.k.dtype == FP8 and cache.dtype == torch.float32
    k, v = torch.randn(2, 3, 4, 16) * 50, torch.randn(2, 3, 4, 16) * 1e-3  # any magnitude: a scale per row
    cache.write(k, v, 2)  # contiguous slots 2..5
    cache.write(k[:, :, :2], v[:, :, :2], torch.tensor([7, 9]))  # listed slots
    ck, cv, ks, vs = cache.prefix(None)
    for got, want in ((dequantize_rows(ck, ks[..., None], torch.float32), k),
                      (dequantize_rows(cv, vs[..., None], torch.float32), v)):
        rows = want.abs().amax(-1, keepdim=True)
        assert ((got[:, :, 2:6] - want).abs() <= rows * 2 ** -4).all()  # 3 mantissa bits: half an ulp of the max
        assert torch.equal(got[:, :, [7, 9]], got[:, :, 2:4])
        assert torch.equal(got[:, :, 0], torch.zeros_like(got[:, :, 0]))
    assert [x.shape[2] for x in cache.prefix(6)] == [6, 6, 6, 6]
    with pytest.raises(ValueError, match="kv_dtype"):
        KVCache(1, 1, 2, 16, torch.float32, "cpu", kv_dtype=torch.float16)


def test_attention_over_the_float8_cache_is_attention_over_its_dequantized_rows() -> None:
    torch.manual_seed(1)
    q = torch.randn(2, 4, 3, 16)
    (k8, ks), (v8, vs) = quantize_rows(torch.randn(2, 2, 9, 16)), quantize_rows(torch.randn(2, 2, 9, 16))
    want = prefix_attention_sdpa(q, dequantize_rows(k8, ks, q.dtype), dequantize_rows(v8, vs, q.dtype))
    assert torch.equal(prefix_attention_sdpa(q, k8, v8, None, ks[..., 0], vs[..., 0]), want)


@pytest.mark.parametrize("kind", ["image", "video", "caption"])
def test_the_fast_sampler_equals_the_plain_loop_with_a_float8_cache(kind: str) -> None:
    """Greedy, float32: the fast sampler and the plain loop agree token for token under a float8 cache too
    (the plain path stays the reference), and the cache changes some tokens of a random model."""
    model = _model(kind)
    sampling = SamplingConfig(cfg_scale=2.0, greedy=True)
    if model.cfg.condition == "class":
        cond, mask = torch.tensor([0, 3]), None
    else:
        cond, mask = torch.randn(2, model.cfg.caption_len, model.cfg.caption_dim), torch.tensor([[0, 0, 1, 1],
                                                                                                 [0, 1, 1, 1]])
    plain = generate(model, cond, sampling, cond_mask=mask, kv_dtype=FP8)
    fast = FastSampler(model, 2, sampling, cond_mask=mask, kv_dtype=FP8)(cond)
    assert torch.equal(plain, fast)
    if kind != "caption":  # these two models' greedy grids change in some cells (measured: 87.5 % / 55.6 % kept)
        assert not torch.equal(plain, generate(model, cond, sampling, cond_mask=mask))


def test_the_fp8kv_option_reaches_both_samplers() -> None:
    model = _model("image")
    sampling = SamplingConfig(cfg_scale=2.0)
    batches = [(torch.tensor([0, 1, 2]), None, 5), (torch.tensor([3, 4]), None, 6)]
    for name in ("fp8kv", "wavefront+fp8kv"):
        out = list(sample_stream(model, batches, sampling, name))
        assert [o.shape[0] for o in out] == [3, 2]
    # the one-batch stream draws what the fast sampler with a float8 cache draws for the same seed
    want = FastSampler(model, 3, sampling, kv_dtype=FP8)(batches[0][0], torch.Generator().manual_seed(5))
    assert torch.equal(next(sample_stream(model, batches, sampling, "fp8kv")), want)


def test_decoding_passes_give_the_teacher_forced_likelihood() -> None:
    """Scored through the decoding passes, a grid has the teacher-forced pass's likelihood (float32, bf16-free
    cache); with a float8 cache it moves, a little."""
    model = _model("image")
    labels = torch.tensor([0, 1, 2, 3])
    tokens = generate(model, labels, SamplingConfig(), generator=torch.Generator().manual_seed(0))
    exact = bits_per_token(model, tokens, labels)
    assert decode_bits_per_token(model, tokens, labels) == pytest.approx(exact, rel=1e-5)
    fp8 = decode_bits_per_token(model, tokens, labels, FP8)
    assert fp8 != exact and fp8 == pytest.approx(exact, rel=0.05)
    report = precision_report(model, model, labels, SamplingConfig(cfg_scale=2.0), candidate_kv_dtype=FP8)
    assert report["ref_bits_per_token"] == pytest.approx(decode_bits_per_token(
        model, generate(model, labels, SamplingConfig(cfg_scale=2.0), generator=torch.Generator().manual_seed(0)),
        labels), rel=1e-6)
    assert 0 < report["greedy_token_agreement"] <= 1 and report["delta_bits_per_token"] != 0
