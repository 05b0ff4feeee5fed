"""Samplers kept across calls follow new weights; bad conditions fail with a ValueError naming the shape or range."""

from __future__ import annotations

import re

import pytest
import torch

from model_helpers import seeded_model
from nar.sampling import SamplingConfig, generate
from nar.sampling.fast import FastSampler
from nar.sampling.precision import precision_report
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
