"""precision_report: exact figures for a model against itself, sane ones against its FP8 copy."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from nar.model import NARConfig, NARModel
from nar.model.fp8 import quantize_fp8
from nar.sampling import SamplingConfig
from nar.sampling.precision import precision_report

KEYS = {"greedy_token_agreement", "greedy_sample_identical", "ref_bits_per_token", "candidate_bits_per_token",
        "delta_bits_per_token", "delta_percent", "samples"}


def tiny() -> NARModel:
    """NAR-tiny in bf16 with every weight non-zero (zero heads would make every logit tie)."""
    model = NARModel(NARConfig.from_name("NAR-tiny")).eval()
    torch.manual_seed(1)
    for p in model.parameters():
        nn.init.normal_(p, std=0.2)
    return model.to(torch.bfloat16)


LABELS = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
SAMPLING = SamplingConfig(cfg_scale=2.0, top_k=16)


def test_a_model_against_itself_agrees_exactly():
    model = tiny()
    report = precision_report(model, model, LABELS, SAMPLING)
    assert set(report) == KEYS and all(type(v) is float for v in report.values())
    assert report["greedy_token_agreement"] == 1.0 and report["greedy_sample_identical"] == 1.0
    assert report["delta_bits_per_token"] == 0.0 and report["delta_percent"] == 0.0
    assert report["ref_bits_per_token"] == report["candidate_bits_per_token"] > 0
    assert report["samples"] == len(LABELS)


def test_against_its_fp8_copy_the_figures_are_finite_and_consistent():
    model = tiny()
    fp8 = copy.deepcopy(model)
    quantize_fp8(fp8)
    model.train()  # the report evaluates in eval mode and gives each model its flags back
    report = precision_report(model, fp8, LABELS, SAMPLING, generator_seed=3)
    assert model.training and not fp8.training
    assert 0.0 < report["greedy_token_agreement"] <= 1.0
    assert 0.0 <= report["greedy_sample_identical"] <= 1.0
    assert all(math.isfinite(v) for v in report.values())
    delta = report["candidate_bits_per_token"] - report["ref_bits_per_token"]
    assert report["delta_bits_per_token"] == delta
    assert report["delta_percent"] == pytest.approx(100 * delta / report["ref_bits_per_token"])
    # The reference's samples depend only on the reference and the seed.
    again = precision_report(model, model, LABELS, SAMPLING, generator_seed=3)
    assert again["ref_bits_per_token"] == report["ref_bits_per_token"]


def test_bad_arguments_are_named():
    model = tiny()
    with pytest.raises(ValueError, match="greedy=True"):
        precision_report(model, model, LABELS, SamplingConfig(greedy=True))
    with pytest.raises(ValueError, match=r"class ids.*torch\.float32"):
        precision_report(model, model, LABELS.float(), SAMPLING)
    other = NARModel(NARConfig.from_name("NAR-tiny", grid=[2, 8])).to(torch.bfloat16)
    with pytest.raises(ValueError, match="grid"):
        precision_report(model, other, LABELS, SAMPLING)


def test_agreement_script_records_the_arguments_it_ran_with(tmp_path, monkeypatch):
    """benchmarks/fp8_agreement.py's JSON keeps the command of the ``argv`` its ``main`` was given, not the
    process's own arguments (a driver calling it in-process)."""
    import json
    import shlex

    from script_helpers import load_script

    script = load_script("fp8_agreement.py")
    monkeypatch.setattr("sys.argv", ["driver.py", "--unrelated"])
    argv = ["--preset", "NAR-tiny", "--what", "kv", "--samples", "2", "--device", "cpu", "--out", str(tmp_path)]
    assert script.main(argv) == 0
    saved = json.loads(next(tmp_path.glob("fp8-kv-NAR-tiny-*.json")).read_text())
    assert shlex.split(saved["command"])[-len(argv):] == argv and "--unrelated" not in saved["command"]
