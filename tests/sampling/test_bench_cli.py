"""`nar bench` end to end on the CPU with a tiny trunk: the table, the JSON, the speed-up line, bad overrides."""

from __future__ import annotations

import json
import re

import pytest

from nar.cli.main import main
from nar.errors import ConfigError
from nar.model import NARConfig


def test_bench_writes_rows_for_every_method_with_overrides(tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["bench", "--preset", "NAR-tiny", "--set", "dim=32", "grid=[3, 5]", "--device", "cpu",
                 "--dtype", "fp32", "--batch", "2", "--reference", "--rounds", "2", "--iters", "1",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^nar/raster speed-up: \d+\.\d\dx$", printed.strip().splitlines()[-1])
    (result,) = out.glob("bench-NAR-tiny+dim32+grid35-cpu-fp32-*.json")
    report = json.loads(result.read_text())
    assert report["config"]["dim"] == 32 and report["grid"] == [3, 5]
    rows = {r["method"]: r for r in report["rows"]}
    # one pass per anti-diagonal (the prefill yields the first cell); raster: one per cell
    assert rows["nar"]["forward_passes"] == rows["nar-reference"]["forward_passes"] == 3 + 5 - 1
    assert rows["raster"]["forward_passes"] == 15
    for r in rows.values():
        assert r["images_per_s"] > 0 and r["seconds_per_batch"] == pytest.approx(2 / r["images_per_s"])
    # NAR and raster alternate round by round; the speed-up is the median of the paired ratios
    assert len(rows["nar"]["round_seconds"]) == len(rows["raster"]["round_seconds"]) == 2
    ratios = sorted(r / n for n, r in zip(rows["nar"]["round_seconds"], rows["raster"]["round_seconds"]))
    assert f"nar/raster speed-up: {sum(ratios) / 2:.2f}x" == printed.strip().splitlines()[-1]
    assert f"(rounds {ratios[0]:.2f}-{ratios[1]:.2f}x)" in printed or ratios[0] == ratios[1]
    assert "| ms/pass |" in printed and result.with_suffix(".md").read_text().startswith("preset NAR-tiny dim=32")


# The key is named bare (``dim: ...``) or quoted (``key 'dim': ...``).
@pytest.mark.parametrize("pair, message", [("dimm=32", r"dimm'?: not a NARConfig field"),
                                           ("dim=3.5", r"dim'?: expected int"),
                                           ("dim", re.escape("overrides must look like key=value, got ['dim']"))])
def test_bad_overrides_name_the_key(pair, message, tmp_path, caplog):
    assert main(["bench", "--preset", "NAR-tiny", "--set", pair, "--device", "cpu", "--out", str(tmp_path)]) == 2
    assert re.search(message, caplog.text), caplog.text
    assert not list(tmp_path.iterdir())


def test_from_name_checks_override_types():
    assert NARConfig.from_name("NAR-tiny", rope_base=100).rope_base == 100  # an int for a float field is fine
    with pytest.raises(ConfigError, match="mode'?: expected str"):
        NARConfig.from_name("NAR-tiny", mode=1)
    with pytest.raises(ConfigError, match="n_layer'?: expected int"):
        NARConfig.from_name("NAR-tiny", n_layer=True)


def test_bench_times_par_beside_nar_and_raster(tmp_path, capsys, caplog):
    caplog.set_level("INFO", logger="nar.sampling.bench")
    out = tmp_path / "results"
    assert main(["bench", "--preset", "NAR-tiny", "--set", "dim=32", "--device", "cpu", "--dtype", "fp32",
                 "--batch", "2", "--rounds", "2", "--iters", "1", "--warmup", "0",
                 "--schedules", "nar", "raster", "par-2x2", "par-4x4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    (result,) = out.glob("*.json")
    report = json.loads(result.read_text())
    assert report["schedules"] == ["nar", "raster", "par-2x2", "par-4x4"]
    rows = {r["method"]: r for r in report["rows"]}
    # 4x4 grid: NAR 7 passes, raster 16, PAR-4x 4 + 4 - 1 = 7, PAR-16x (one-cell regions) 16 + 1 - 1 = 16
    assert [rows[m]["forward_passes"] for m in report["schedules"]] == [7, 16, 7, 16]
    assert all(len(r["round_seconds"]) == 2 for r in rows.values())  # timed in the same alternating rounds
    for other in ("raster", "par-2x2", "par-4x4"):
        assert re.search(rf"^batch 2: nar/{other} speed-up \d+\.\d\dx", printed, re.M)
    assert printed.strip().splitlines()[-1].startswith("nar/raster speed-up:")
    # each round says what it measured, so a minute of rounds is not a silent one
    for r in (1, 2):
        assert re.search(rf"batch 2, round {r} of 2: nar [\d.]+, raster [\d.]+, par-2x2 [\d.]+, par-4x4 [\d.]+ images/s",
                         caplog.text)


@pytest.mark.parametrize("schedule, message", [("par-3x3", "par-3x3: regions .*axis 0 has 4 cells"),
                                               ("zigzag", "'zigzag' is not nar, raster or par-")])
def test_bad_schedule_names_the_key(schedule, message, tmp_path, caplog):
    assert main(["bench", "--preset", "NAR-tiny", "--schedules", "nar", schedule, "--device", "cpu",
                 "--out", str(tmp_path)]) == 2
    assert re.search(f"schedules'?: {message}", caplog.text), caplog.text
    assert not list(tmp_path.iterdir())


def test_bench_variants_decode_rows_and_fraction_of_peak(tmp_path, capsys):
    """--variants adds NAR rows per faster path, --decode-with tokens + pixels rows, --tokenizer-decode the
    decoder alone, --peak-tflops the % of peak column; the JSON keeps the command and each row's FLOPs per image
    (a decode row's counting the decoder's too)."""
    from nar.model.flops import sampling_flops_per_image
    from nar.tokenizers.cost import decode_cost

    out = tmp_path / "results"
    assert main(["bench", "--preset", "NAR-tiny", "--set", "dim=32", "grid=[4, 4]", "--device", "cpu", "--dtype",
                 "fp32", "--batch", "2", "--iters", "1", "--warmup", "0", "--no-raster", "--variants", "wavefront",
                 "--decode-with", "wavefront", "--tokenizer", "vq-tiny-emoji", "--peak-tflops", "0.001",
                 "--tokenizer-decode", "--decode-batch", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(next(out.glob("*.json")).read_text())
    rows = {r["method"]: r for r in report["rows"]}
    assert set(rows) == {"nar", "nar+wavefront", "nar+wavefront+decode", "decode:vq-tiny-emoji:fp32"}
    assert "2 cohorts of 2 in flight" in rows["nar+wavefront"]["execution"]
    assert "+ decode vq-tiny-emoji:fp32" in rows["nar+wavefront+decode"]["execution"]
    tokens = sampling_flops_per_image(NARConfig.from_name("NAR-tiny", dim=32, grid=[4, 4]), guided=True)
    pixels = decode_cost("vq-tiny-emoji", [4, 4]).flops
    assert pixels > 0
    for method, r in rows.items():
        flops = (tokens if method.startswith("nar") else 0) + (pixels if "decode" in method else 0)
        assert r["flops_per_image"] == flops, method
        assert r["fraction_of_peak"] == pytest.approx(r["images_per_s"] * flops / 1e9)
    wave = rows["nar+wavefront"]  # a period of 7 passes completes two batches
    assert wave["ms_per_pass"] == pytest.approx(1e3 * wave["seconds_per_batch"] * 2 / 7)
    assert report["variants"] == ["wavefront"] and report["command"].startswith("nar bench")
    assert "% of peak" in printed and "batch 2: nar+wavefront over nar:" in printed


def test_sampling_flops_count_the_decode_prefixes():
    """Guided sampling FLOPs are twice the unguided; the attention term is the decode layout's prefixes."""
    from nar.model.flops import sampling_flops_per_image

    cfg = NARConfig.from_name("NAR-tiny", dim=32, grid=[4, 4])
    assert sampling_flops_per_image(cfg, True) == 2 * sampling_flops_per_image(cfg, False)
    longer = NARConfig.from_name("NAR-tiny", dim=32, grid=[4, 8])
    assert sampling_flops_per_image(longer, False) > 1.9 * sampling_flops_per_image(cfg, False)


@pytest.mark.parametrize("schedule", ["nar", "raster", "par-2x2"])
def test_sampling_flops_are_what_the_fast_sampler_runs(schedule):
    """The count is the matrix products torch counts while the fast sampler generates (guided, so two rows a
    sample) plus the exact prefix attention of the passes it runs (CPU SDPA, which the counter does not see):
    no row of the last pass's outputs, PAR's transition tokens once."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from nar.model.flops import sampling_flops_per_image
    from nar.sampling.bench import random_model, schedule_config
    from nar.sampling.fast import FastSampler
    from nar.sampling.logits import SamplingConfig

    cfg = schedule_config(NARConfig.from_name("NAR-tiny"), schedule)
    model = random_model(cfg, torch.device("cpu"), torch.float32)
    batch = 2
    sampler = FastSampler(model, batch, SamplingConfig(cfg_scale=2.0), cuda_graph=False, attention="sdpa")
    with FlopCounterMode(display=False) as counter:
        sampler(torch.zeros(batch, dtype=torch.long))
    counts = {str(op): f for op, f in counter.get_flop_counts()["Global"].items()}
    matmuls = sum(f for op, f in counts.items() if "attention" not in op)
    pairs = sum(len(p.positions) * p.kv_limit for p in sampler.state.plans)  # query-key pairs per block
    attention = 4 * pairs * cfg.n_head * cfg.head_dim * len(model.blocks()) * 2 * batch  # QK^T and PV, CFG rows
    assert sampling_flops_per_image(cfg, True) * batch == matmuls + attention


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.0), ("NVIDIA H200 NVL", 835.0), ("NVIDIA GH200 480GB", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("Tesla T4", None),
])
def test_peak_is_that_of_the_card_variant(name, peak):
    """A PCIe or NVL card is not given its SXM sibling's peak: the longest name that matches wins."""
    from nar.sampling.bench import peak_tflops

    assert peak_tflops(name) == peak


def test_variants_alternate_with_the_schedules_in_rounds(tmp_path, capsys):
    """With --rounds, variant rows are timed in the same alternating rounds; their speed-up over nar is the
    median of the round-by-round ratios, and a decode row still follows."""
    out = tmp_path / "results"
    assert main(["bench", "--preset", "NAR-tiny", "--set", "dim=32", "grid=[3, 3]", "--device", "cpu", "--dtype",
                 "fp32", "--batch", "2", "--iters", "1", "--warmup", "0", "--rounds", "3", "--no-raster",
                 "--variants", "wavefront", "--out", str(out)]) == 0
    rows = {r["method"]: r for r in json.loads(next(out.glob("*.json")).read_text())["rows"]}
    nar, wave = rows["nar"]["round_seconds"], rows["nar+wavefront"]["round_seconds"]
    assert len(nar) == len(wave) == 3
    ratios = sorted(n / w for n, w in zip(nar, wave))
    assert f"batch 2: nar+wavefront over nar: {ratios[1]:.2f}x" in capsys.readouterr().out


def _bench_argv(tmp_path, *extra: str) -> list[str]:
    return ["bench", "--preset", "NAR-tiny", "--set", "dim=32", "--device", "cpu", "--dtype", "fp32", "--batch", "1",
            "--schedules", "nar", "--guidance", "1.0", "--min-time", "0", "--out", str(tmp_path), *extra]


@pytest.mark.parametrize("flag", ["--iters", "--rounds"])
def test_counts_below_one_are_usage_errors(flag, tmp_path, capsys):
    """--iters 0 / --rounds 0: argparse's usage error naming the flag (exit 2), as other commands' counts."""
    with pytest.raises(SystemExit) as stop:
        main(_bench_argv(tmp_path, flag, "0"))
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"argument {flag}: must be >= 1, got 0" in err, err
    assert not list(tmp_path.iterdir())


def test_a_negative_warmup_names_the_flag(tmp_path, caplog):
    assert main(_bench_argv(tmp_path, "--warmup", "-1")) == 2
    assert "--warmup must be >= 0, got -1" in caplog.text, caplog.text
    assert not list(tmp_path.iterdir())


def test_bench_on_a_named_cuda_device_records_that_device(tmp_path, monkeypatch):
    """--device cuda:1 records (and takes % of peak from) GPU 1's name, not GPU 0's (CUDA mocked: no GPU here)."""
    import torch

    import nar.sampling.bench as sampling_bench

    names = {0: "NVIDIA A100-SXM4-80GB", 1: "NVIDIA H100 80GB HBM3"}

    def device_name(device=None):
        index = torch.device(device).index if isinstance(device, (str, torch.device)) else device
        return names[index or 0]

    def no_rows(*args, on_row=None, **kwargs):
        on_row([])
        return []

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", device_name)
    monkeypatch.setattr(sampling_bench, "bench_sampling", no_rows)
    assert sampling_bench.peak_tflops(names[0]) != sampling_bench.peak_tflops(names[1])
    for device, index in (("cuda:1", 1), ("cuda:0", 0)):
        out = tmp_path / device.replace(":", "")
        assert main(["bench", "--preset", "NAR-tiny", "--device", device, "--out", str(out)]) == 0
        report = json.loads(next(out.glob("*.json")).read_text())
        assert report["device_name"] == names[index]
        assert report["peak_tflops"] == sampling_bench.peak_tflops(names[index])
