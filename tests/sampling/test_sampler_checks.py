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
    for run in (lambda: generate(model, labels, GUIDED), lambda: FastSampler(model, 2, GUIDED)(labels),
                lambda: WavefrontSampler(model, 2, GUIDED)(labels)):
        with pytest.raises(ValueError, match=rf"\[0, 5\).*num_classes=5.*got \[{label}\]"):
            run()
    with pytest.raises(ValueError, match="integer ids"):
        FastSampler(model, 2, GUIDED)(torch.tensor([0.0, 1.0]))


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
