"""Samplers kept across calls follow new weights; bad conditions and batch sizes fail with a ValueError naming
the shape, range or key; a failed CUDA-graph capture falls back to eager unless it ran out of memory."""

from __future__ import annotations

import logging
import re

import pytest
import torch

from model_helpers import seeded_model
from nar.errors import ConfigError
from nar.sampling import SamplingConfig, fast, generate, make_sampler, sample_stream, wavefront
from nar.sampling.fast import FastSampler
from nar.sampling.precision import precision_report
from nar.sampling.reference import reference_generate
from nar.sampling.wavefront import WavefrontSampler

GUIDED = SamplingConfig(greedy=True, cfg_scale=2.0)
LABELS = torch.tensor([0, 3, 4])


def caption_model():
    return seeded_model(32, grid=[3, 3], condition="caption", caption_len=6, caption_dim=8)


@pytest.mark.parametrize("sampler", [FastSampler, WavefrontSampler])
def test_a_sampler_built_before_load_state_dict_uses_the_new_weights(sampler):
    model = seeded_model(32, grid=[3, 4])
    s = sampler(model, 3, GUIDED)
    s(LABELS)  # the first call (a graph would be recorded here) reads the old weights
    states = [s.state] if sampler is FastSampler else [slot.state for slot in s.slots]
    buffers = [st.head_weight.data_ptr() for st in states]
    other = seeded_model(32, grid=[3, 4])
    torch.manual_seed(123)
    for p in other.parameters():
        torch.nn.init.normal_(p, std=0.3)
    model.load_state_dict(other.state_dict())  # a new checkpoint / EMA weights into the same module
    want = generate(model, LABELS, GUIDED)
    assert not torch.equal(want, generate(seeded_model(32, grid=[3, 4]), LABELS, GUIDED))  # the weights matter
    assert torch.equal(s(LABELS), want)
    assert [st.head_weight.data_ptr() for st in states] == buffers  # refreshed in place: a captured graph reads it


@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_captions_of_the_wrong_shape_name_the_expected_one(cfg_scale):
    model, s = caption_model(), SamplingConfig(greedy=True, cfg_scale=cfg_scale)
    for bad in (torch.randn(2, 5, 8), torch.randn(2, 6, 7), torch.randn(2, 1, 8)):
        with pytest.raises(ValueError, match=r"\[B, 6, 8\].*got shape \(2, "):
            generate(model, bad, s)
    ok = torch.randn(2, 6, 8)
    for mask in (torch.ones(3, 6), torch.ones(1, 6), torch.ones(2, 5)):
        with pytest.raises(ValueError, match=rf"cond_mask must be .*\[2, 6\].*got {re.escape(str(list(mask.shape)))}"):
            generate(model, ok, s, cond_mask=mask)
    with pytest.raises(ValueError, match=r"\[B, 6, 8\].*got shape \(2, 5, 8\)"):
        reference_generate(model, torch.randn(2, 5, 8), s)
    with pytest.raises(ValueError, match=r"cond_mask must be .*\[2, 6\].*got \[2, 5\]"):
        reference_generate(model, ok, s, cond_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"cond_mask must be .*\[3, 6\]"):
        FastSampler(model, 3, s, cond_mask=torch.ones(2, 6))


def test_fast_sampler_refuses_a_caption_it_would_broadcast():
    model = caption_model()
    sampler = FastSampler(model, 2, GUIDED)
    with pytest.raises(ValueError, match=r"shape \(2, 6, 8\).*got \(2, 1, 8\)"):
        sampler(torch.randn(2, 1, 8))
    with pytest.raises(ValueError, match=r"shape \(2, 6, 8\).*got \(3, 6, 8\)"):
        sampler(torch.randn(3, 6, 8))


@pytest.mark.parametrize("label", [-1, 5, 6])  # 5 = num_classes: the null id, for guidance's own rows only
def test_class_ids_out_of_range_name_num_classes(label):
    model = seeded_model(32, grid=[3, 4])
    labels = torch.tensor([0, label])
    entry_points = (lambda c: generate(model, c, GUIDED), lambda c: reference_generate(model, c, GUIDED),
                    lambda c: FastSampler(model, 2, GUIDED)(c), lambda c: WavefrontSampler(model, 2, GUIDED)(c))
    for run in entry_points:
        with pytest.raises(ValueError, match=rf"\[0, 5\).*num_classes=5.*got \[{label}\]"):
            run(labels)
        with pytest.raises(ValueError, match="integer ids"):
            run(torch.tensor([0.0, 1.0]))


def test_precision_report_refuses_a_caption_model():
    model = caption_model()
    with pytest.raises(ValueError, match="class-conditional.*condition='caption'"):
        precision_report(model, model, torch.tensor([0, 1]), SamplingConfig())


@pytest.mark.parametrize("sampler", [FastSampler, WavefrontSampler])
@pytest.mark.parametrize("batch", [0, -1, 2.0, True])
def test_a_batch_that_is_not_a_positive_int_names_batch(sampler, batch):
    with pytest.raises(ConfigError, match=rf"key 'batch'.*got {batch!r}"):
        sampler(seeded_model(32, grid=[3, 4]), batch, GUIDED)


def test_no_conditions_is_one_clear_error_for_every_sampler():
    """An empty request fails the same way everywhere (a fixed-batch sampler cannot take 0 rows anyway)."""
    model = seeded_model(32, grid=[3, 4])
    empty = torch.tensor([], dtype=torch.long)
    for run in (lambda: generate(model, empty, GUIDED), lambda: reference_generate(model, empty, GUIDED),
                lambda: WavefrontSampler(model, 3, GUIDED)(empty)):
        with pytest.raises(ValueError, match=r"no conditions to sample from.*batch of 0"):
            run()
    caption = caption_model()
    with pytest.raises(ValueError, match=r"no conditions to sample from.*batch of 0"):
        generate(caption, torch.zeros(0, 6, 8), GUIDED)
    with pytest.raises(ValueError, match=r"batch 3\), got \(0,\)"):
        FastSampler(model, 3, GUIDED)(empty)


def _force_graph_capture(monkeypatch, sampler, error: Exception) -> None:
    """Make ``sampler`` take its CUDA-graph branch on the CPU, with a capture that raises ``error``."""
    def capture(*args, **kwargs):
        raise error

    sampler.use_graph = True
    monkeypatch.setattr(fast, "capture_graph", capture)
    monkeypatch.setattr(wavefront, "capture_graph", capture)


@pytest.mark.parametrize("sampler", [FastSampler, WavefrontSampler])
def test_out_of_memory_during_graph_capture_is_raised_not_run_eagerly(monkeypatch, sampler):
    model = seeded_model(32, grid=[3, 4])
    s = sampler(model, 3, GUIDED, cuda_graph=False)
    _force_graph_capture(monkeypatch, s, torch.cuda.OutOfMemoryError("CUDA out of memory"))
    with pytest.raises(torch.cuda.OutOfMemoryError):
        s(LABELS)
    assert s.use_graph  # nothing was switched off behind the caller's back


@pytest.mark.parametrize("sampler", [FastSampler, WavefrontSampler])
def test_another_capture_failure_falls_back_to_eager_with_a_warning(monkeypatch, caplog, sampler):
    model = seeded_model(32, grid=[3, 4])
    s = sampler(model, 3, GUIDED, cuda_graph=False)
    _force_graph_capture(monkeypatch, s, RuntimeError("operation not permitted when stream is capturing"))
    with caplog.at_level(logging.WARNING):
        out = s(LABELS)
    assert not s.use_graph and "running eagerly" in caplog.text
    assert torch.equal(out, generate(model, LABELS, GUIDED))


def test_sample_stream_drops_a_caption_mask_when_a_batch_comes_without_one():
    """A caption batch with ``mask=None`` after a masked batch of the same size decodes unmasked, as alone."""
    model = caption_model()
    s = SamplingConfig(cfg_scale=2.0)
    torch.manual_seed(0)
    first, second = torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    mask = torch.tensor([[0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 1]], dtype=torch.float)
    out = list(sample_stream(model, [(first, mask, 1), (second, None, 2)], s))
    alone = make_sampler(model, 2, s)(second, generator=torch.Generator().manual_seed(2))
    assert torch.equal(out[1], alone)
    masked = make_sampler(model, 2, s, cond_mask=mask)(second, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(masked, alone)  # the mask matters for these captions


def _count_allocating_cats(monkeypatch) -> list:
    """Record every ``torch.cat`` call that allocates its result (no ``out=``)."""
    real, calls = torch.cat, []

    def cat(*args, **kwargs):
        if kwargs.get("out") is None:
            calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "cat", cat)
    return calls


def test_refresh_inference_writes_the_heads_into_the_state_buffer_without_a_new_cat(monkeypatch):
    """Every fast-sampler call refreshes the heads: into the buffer a captured graph reads, with no [V, A * D]
    temporary, and with the weights as they are now (an in-place edit, as EMA weights swapped in)."""
    model = seeded_model(32, grid=[3, 4])
    state = model.start_inference(2)
    ptr = state.head_weight.data_ptr()
    with torch.no_grad():
        model.heads[0].proj.weight.mul_(-2.0)
    want = model._head_weight()
    assert not torch.equal(state.head_weight, want)  # the edit matters
    calls = _count_allocating_cats(monkeypatch)
    model.refresh_inference(state)
    assert calls == []
    assert state.head_weight.data_ptr() == ptr
    assert torch.equal(state.head_weight, want)


def test_refresh_inference_converts_into_a_buffer_of_another_dtype():
    """A state built before the model changed dtype keeps its buffer (a captured graph reads it) and gets the
    new weights converted into it."""
    model = seeded_model(32, grid=[3, 4])
    state = model.start_inference(2)
    ptr = state.head_weight.data_ptr()
    model.to(torch.bfloat16)
    model.refresh_inference(state)
    assert state.head_weight.data_ptr() == ptr and state.head_weight.dtype == torch.float32
    assert torch.equal(state.head_weight, model._head_weight().float())


def test_the_wavefront_checks_a_request_s_class_ids_once_not_per_cohort(monkeypatch):
    """Checking class ids costs a host sync: one per request, none per period; a bad id in a later cohort is
    still refused, named, before anything is decoded."""
    model = seeded_model(32, grid=[3, 4])
    sampler = WavefrontSampler(model, 2, GUIDED)
    real, calls = wavefront.check_condition, []

    def check(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(wavefront, "check_condition", check)
    sampler(torch.tensor([0, 1, 2, 3, 4, 0]))  # three cohorts
    assert len(calls) == 1
    with pytest.raises(ValueError, match=r"\[0, 5\).*num_classes=5.*got \[7\]"):
        sampler(torch.tensor([0, 1, 2, 7]))
