"""Sampler correctness: fast == plain == reference, CFG, seeds and sampling knobs, images, video, captions."""

from __future__ import annotations

import pytest
import torch

from model_helpers import seeded_model
from nar.errors import ConfigError
from nar.model import NARModel
from nar.sampling import SamplingConfig, filter_logits, generate, guide
from nar.sampling.fast import FastSampler
from nar.sampling.reference import reference_generate

SETUPS = {
    "image": dict(grid=[4, 5]),
    "video": dict(grid=[2, 3, 4]),
    "caption": dict(grid=[3, 4], condition="caption", caption_len=6, caption_dim=8),
    "raster": dict(grid=[3, 4], mode="raster"),
    "par": dict(grid=[4, 4], mode="par", regions=[2, 2]),
    "par-video-caption": dict(grid=[2, 2, 4], mode="par", regions=[1, 2, 2], condition="caption", caption_len=6,
                              caption_dim=8),
}


def make(kind: str, dim: int = 32) -> tuple[NARModel, torch.Tensor, torch.Tensor | None]:
    model = seeded_model(dim, **SETUPS[kind])
    cfg = model.cfg
    if cfg.condition == "class":
        return model, torch.tensor([0, 3, 4]), None
    feats = torch.randn(3, cfg.caption_len, cfg.caption_dim)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]], dtype=torch.float)
    return model, feats, mask


@pytest.mark.parametrize("kind", list(SETUPS))
@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_fast_plain_and_reference_agree_under_greedy(kind, cfg_scale):
    model, cond, mask = make(kind)
    s = SamplingConfig(greedy=True, cfg_scale=cfg_scale)
    plain = generate(model, cond, s, cond_mask=mask, layout="sequence")
    assert torch.equal(generate(model, cond, s, cond_mask=mask), plain)
    assert torch.equal(FastSampler(model, 3, s, cond_mask=mask)(cond), plain)
    assert torch.equal(reference_generate(model, cond, s, cond_mask=mask), plain)
    assert plain.shape == (3, *model.cfg.grid)


@pytest.mark.parametrize("kind", ["image", "video", "caption", "par"])
def test_fast_logits_match_plain_logits(kind):
    model, cond, mask = make(kind)
    s = SamplingConfig(greedy=True, cfg_scale=2.0)
    toks_a, logits_a = generate(model, cond, s, cond_mask=mask, layout="decode", return_logits=True)
    toks_b, logits_b = generate(model, cond, s, cond_mask=mask, layout="sequence", return_logits=True)
    assert torch.equal(toks_a, toks_b)
    torch.testing.assert_close(logits_a, logits_b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["image", "par"])
def test_greedy_decoding_reproduces_teacher_forcing(kind):
    """Greedy tokens are the argmax of the training pass fed those same tokens (CFG off)."""
    model, cond, _ = make(kind)
    tokens = generate(model, cond, SamplingConfig(greedy=True))
    logits = model.forward_train(tokens.flatten(1), cond)
    assert torch.equal(logits.argmax(-1), tokens.flatten(1))


def test_cfg_scale_one_equals_no_cfg():
    model, cond, _ = make("image")
    a = generate(model, cond, SamplingConfig(cfg_scale=1.0), generator=torch.Generator().manual_seed(5))
    b = generate(model, cond, SamplingConfig(), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    # the guided path with scale 1 computes uncond + 1 * (cond - uncond) == cond
    _, la = generate(model, cond, SamplingConfig(greedy=True), return_logits=True)
    guided = SamplingConfig(greedy=True, cfg_scale=1.0 + 1e-9)
    _, lb = generate(model, cond, guided, return_logits=True)
    torch.testing.assert_close(la, lb, atol=1e-4, rtol=0)


def test_cfg_interval_stops_guidance():
    model, cond, _ = make("image")
    _, plain = generate(model, cond, SamplingConfig(greedy=True), return_logits=True)
    _, late = generate(model, cond, SamplingConfig(greedy=True, cfg_scale=4.0, cfg_interval=0), return_logits=True)
    _, always = generate(model, cond, SamplingConfig(greedy=True, cfg_scale=4.0), return_logits=True)
    # interval 0: only the first (origin) token is guided
    assert not torch.allclose(late[:, 0], plain[:, 0])
    assert not torch.allclose(always[:, 1:], plain[:, 1:])


@pytest.mark.parametrize("kind", ["image", "video", "caption", "par"])
def test_same_seed_same_tokens(kind):
    """Sampled, batch 3, CFG with an interval: the plain loop, the fast sampler and the reference draw each pass
    from the generator alike, so one seed gives one set of tokens whichever of them runs."""
    model, cond, mask = make(kind)
    s = SamplingConfig(temperature=1.0, top_p=0.9, cfg_scale=1.5, cfg_interval=3)
    seeded = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731
    a = generate(model, cond, s, cond_mask=mask, generator=seeded(7))
    b = generate(model, cond, s, cond_mask=mask, generator=seeded(7))
    c = generate(model, cond, s, cond_mask=mask, generator=seeded(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    f = FastSampler(model, cond.shape[0], s, cond_mask=mask)(cond, generator=seeded(7))
    assert torch.equal(a, f)
    assert torch.equal(reference_generate(model, cond, s, cond_mask=mask, generator=seeded(7)), a)


def test_top_k_one_equals_greedy():
    model, cond, _ = make("video")
    greedy = generate(model, cond, SamplingConfig(greedy=True, cfg_scale=2.0))
    topk = generate(model, cond, SamplingConfig(top_k=1, cfg_scale=2.0), generator=torch.Generator().manual_seed(1))
    assert torch.equal(greedy, topk)


def test_filters():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[True, False, False, True]]
    p = logits.softmax(-1)[0]  # ≈ [0.09, 0.64, 0.24, 0.03]
    kept = ~torch.isinf(filter_logits(logits, top_p=0.7))
    assert kept.tolist() == [[False, True, True, False]] and p[1] < 0.7


def test_bad_sampling_values_name_the_key():
    for kw, key in [(dict(temperature=0.0), "temperature"), (dict(top_p=0.0), "top_p"), (dict(top_k=-1), "top_k"),
                    (dict(top_k=2.5), "top_k"), (dict(top_k=True), "top_k"), (dict(cfg_interval=1.5), "cfg_interval"),
                    (dict(cfg_interval=False), "cfg_interval")]:
        with pytest.raises(ConfigError, match=key):
            SamplingConfig(**kw)


@pytest.mark.gpu
def test_cuda_graph_sampler_matches_eager():
    model, cond, _ = make("image")
    model = model.cuda()
    s = SamplingConfig(top_k=8, cfg_scale=2.0)
    eager = FastSampler(model, 3, s, cuda_graph=False)(cond.cuda(), generator=torch.Generator("cuda").manual_seed(3))
    sampler = FastSampler(model, 3, s, cuda_graph=True)
    g = torch.Generator("cuda").manual_seed(3)
    first = sampler(cond.cuda(), generator=g)
    g.manual_seed(3)
    again = sampler(cond.cuda(), generator=g)
    assert torch.equal(first, again)
    greedy = SamplingConfig(greedy=True, cfg_scale=2.0)
    assert torch.equal(FastSampler(model, 3, greedy, cuda_graph=True)(cond.cuda()),
                       generate(model, cond.cuda(), greedy, layout="sequence"))
    assert eager.shape == first.shape


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["image", "caption", "par", "par-video-caption"])
def test_small_query_kernel_sampler_matches_sdpa_on_the_gpu(kind):
    """bf16 CUDA-graph sampler: the Triton decode attention against SDPA, greedy (rounding may flip a rare near-tie)."""
    from nar.model.decode_attention import triton_available

    if not triton_available():
        pytest.skip("Triton is not installed")
    model, cond, mask = make(kind, dim=64)  # head dim 16: the kernel's smallest
    model = model.cuda().to(torch.bfloat16)
    cond = cond.repeat(8, *[1] * (cond.dim() - 1)).cuda()
    cond = cond.to(torch.bfloat16) if cond.is_floating_point() else cond
    mask = mask.repeat(8, 1).cuda() if mask is not None else None
    greedy = SamplingConfig(greedy=True, cfg_scale=2.0)
    fast = FastSampler(model, 24, greedy, cond_mask=mask, attention="triton")
    assert fast.attention == "triton" and fast.use_graph
    plain = FastSampler(model, 24, greedy, cond_mask=mask, attention="sdpa")
    agree = (fast(cond) == plain(cond)).float().mean().item()
    assert agree > 0.97, agree


@pytest.mark.parametrize("guided_now", [True, False])
def test_compiled_draw_is_the_plain_race(guided_now):
    """The fast sampler's fused sampling (its two functions, run eagerly here) is the GPU branch of
    guide + sample_tokens: same upcast, lerp, temperature and exponential race on the same generator."""
    from nar.sampling.fast import CompiledDraw

    s = SamplingConfig(cfg_scale=2.5, temperature=0.8, cfg_interval=3)
    draw = CompiledDraw(s)
    raw = torch.randn(6, 5, 40).to(torch.bfloat16)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    x = draw._prepare(raw, guided_now)
    ours = draw._pick(x, torch.empty_like(x).exponential_(1.0, generator=g1))
    logits = guide(raw.float(), 2.5) if guided_now else raw.float()[:3]
    logits = logits / 0.8
    want = (logits - torch.empty_like(logits).exponential_(1.0, generator=g2).log()).argmax(-1)
    assert ours.shape == (3, 5) and torch.equal(ours, want)
    assert CompiledDraw.applies(s) and not CompiledDraw.applies(SamplingConfig(top_k=5))


@pytest.mark.gpu
def test_compiled_sampler_matches_eager_sampler_on_the_gpu():
    """compile=True (compiled blocks + compiled draw) against the plain CUDA-graph sampler, same seed."""
    model, _, _ = make("image", dim=64)
    model = model.cuda().to(torch.bfloat16)
    cond = torch.arange(16, device="cuda") % 5
    s = SamplingConfig(cfg_scale=2.0)
    compiled = FastSampler(model, 16, s, compile=True)
    assert compiled.draw is not None
    a = compiled(cond, generator=torch.Generator("cuda").manual_seed(1))
    b = FastSampler(model, 16, s)(cond, generator=torch.Generator("cuda").manual_seed(1))
    assert (a == b).float().mean().item() > 0.97
