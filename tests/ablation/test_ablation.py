"""``nar ablate``: config validation, and a 2-variant grid of a few CPU steps (CSV, markdown, PNG, HParams,
resume without redoing rows)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from ablation_helpers import tiny_train_overrides

from nar.errors import ConfigError
from nar.lightning.logs import read_metrics
from nar.workflows.ablation import (
    build_train_configs,
    fingerprint,
    load_ablation_config,
    read_rows,
    run_ablation,
)
from nar.workflows.ablation.report import write_rows

ROOT = Path(__file__).resolve().parents[2]


def _hparams_logged(run_dir: Path) -> bool:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for events in run_dir.glob("**/events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        try:
            if "_hparams_/session_start_info" in acc.PluginTagToContent("hparams"):
                return "ablation/score" in acc.Tags()["scalars"]
        except KeyError:
            continue
    return False


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _grid(tmp_path: Path, variants: list[dict], **extra) -> Path:
    return _write(tmp_path / "grid.yaml", {"name": "t", "out": str(tmp_path / "out"), "overrides": [],
                                           "variants": variants, **extra})


def test_unknown_keys_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"variants\[1\]\.model\.head_blokcs"):
        load_ablation_config(_grid(tmp_path, [{"name": "a"}, {"name": "b", "model": {"head_blokcs": [0, 0]}}]))
    with pytest.raises(ConfigError, match="bench_size"):
        load_ablation_config(_grid(tmp_path, [{"name": "a"}], bench_size=3))
    with pytest.raises(ConfigError, match=r"prepare\.tokenizer_steps"):
        load_ablation_config(_grid(tmp_path, [{"name": "a"}], prepare={"tokenizer_steps": 0}))
    with pytest.raises(ConfigError, match="appears twice"):
        load_ablation_config(_grid(tmp_path, [{"name": "a"}, {"name": "a"}]))
    cfg = load_ablation_config(_grid(tmp_path, [{"name": "a", "model": {"head_layout": "zigzag"}}]))
    with pytest.raises(ConfigError, match=r"variants\[0\] \(a\).*head_layout"):
        build_train_configs(cfg)


def test_keys_added_later_hash_as_before_at_their_defaults() -> None:
    """A key added after fingerprints were stored, left at the default that behaves as before it, does not change
    a config's fingerprint (finished rows and demo runs are still found); any other value does. eval.real_seed
    counts only where real samples are drawn from eval.real_root."""
    import dataclasses

    from nar.config import load_config
    from nar.runs import TrainConfig
    from nar.workflows.ablation.runner import LATER_KEYS, fingerprint

    cfg = load_config(TrainConfig, [], ["data.root=x"])
    before = dataclasses.asdict(cfg)
    for (section, key), default in LATER_KEYS.items():
        assert getattr(getattr(cfg, section), key) == default
        before[section].pop(key)
    before["eval"].pop("real_seed")  # no eval.real_root: no real subset for it to choose
    import hashlib
    import json

    for key in ("name", "runs_root"):
        before.pop(key)
    before["trainer"].pop("threads", None)
    before["model"].pop("preset", None)
    before["model"]["head_blocks"] = cfg.model.blocks_per_axis
    old = hashlib.sha1(json.dumps(before, sort_keys=True, default=str).encode()).hexdigest()[:12]
    assert fingerprint(cfg) == old
    changed = load_config(TrainConfig, [], ["data.root=x", "eval.labels=random"])
    assert fingerprint(changed) != fingerprint(cfg)
    real = [load_config(TrainConfig, [], ["data.root=x", "eval.real_root=r", f"eval.real_seed={s}"]) for s in (0, 1)]
    assert fingerprint(real[0]) != fingerprint(real[1])  # with real samples the subset's seed is hashed


def test_a_warmup_from_zero_hashes_as_before_the_start_ratio_existed() -> None:
    """optim.warmup_start_ratio=0 is the warm-up every stored run had, so it is one of the later keys (hashed as
    before it existed: see the test above); a start above zero is another schedule, another fingerprint."""
    from nar.config import load_config
    from nar.runs import TrainConfig
    from nar.workflows.ablation.runner import LATER_KEYS

    cfg = load_config(TrainConfig, [], ["data.root=x"])
    assert LATER_KEYS[("optim", "warmup_start_ratio")] == cfg.optim.warmup_start_ratio == 0.0
    started = load_config(TrainConfig, [], ["data.root=x", "optim.warmup_start_ratio=0.01"])
    assert fingerprint(started) != fingerprint(cfg)


def test_a_per_step_schedule_hashes_as_before_the_interval_existed() -> None:
    """optim.schedule_interval=step is how every stored run moved its schedule: a later key (hashed as before it
    existed); a cosine per epoch is another schedule, another fingerprint."""
    from nar.config import load_config
    from nar.runs import TrainConfig
    from nar.workflows.ablation.runner import LATER_KEYS

    cfg = load_config(TrainConfig, [], ["data.root=x", "optim.schedule=cosine"])
    assert LATER_KEYS[("optim", "schedule_interval")] == cfg.optim.schedule_interval == "step"
    per_epoch = load_config(TrainConfig, [], ["data.root=x", "optim.schedule=cosine", "optim.schedule_interval=epoch"])
    assert fingerprint(per_epoch) != fingerprint(cfg)


def test_fsdp_collective_dtypes_hash_as_they_act() -> None:
    """fp32 is the weights' own dtype (FSDP casts nothing, as with null), a null reduce dtype follows the param
    dtype, and other strategies use neither: such settings build the same run and share a fingerprint."""
    from nar.config import load_config
    from nar.runs import TrainConfig

    def fp(*pairs: str) -> str:
        return fingerprint(load_config(TrainConfig, [], ["data.root=x", *pairs]))

    fsdp = "trainer.strategy=fsdp", "trainer.precision=bf16-mixed"
    plain = fp(*fsdp)
    assert fp(*fsdp, "trainer.fsdp_param_dtype=fp32") == fp(*fsdp, "trainer.fsdp_reduce_dtype=fp32") == plain
    half = fp(*fsdp, "trainer.fsdp_param_dtype=bf16")
    assert half == fp(*fsdp, "trainer.fsdp_param_dtype=bf16", "trainer.fsdp_reduce_dtype=bf16") != plain
    assert fp(*fsdp, "trainer.fsdp_param_dtype=bf16", "trainer.fsdp_reduce_dtype=fp32") not in (plain, half)
    assert fp(*fsdp, "trainer.fsdp_reduce_dtype=bf16") not in (plain, half)
    assert fp("trainer.fsdp_param_dtype=bf16") == fp()  # DDP / one process: no FSDP collectives at all
    # FSDP without bf16 autocast gathers and reduces in float32 whatever the dtypes say
    full = "trainer.strategy=fsdp", "trainer.precision=32-true"
    assert fp(*full, "trainer.fsdp_param_dtype=bf16") == fp(*full)


def test_equivalent_head_settings_share_a_fingerprint(tmp_path: Path) -> None:
    cfg = load_ablation_config(_grid(tmp_path, [
        {"name": "none", "model": {"head_sharing": "shared", "head_blocks": [0, 0]}},
        {"name": "col", "model": {"head_sharing": "shared", "shared_axis": -1, "head_blocks": [1, 0]}},
        {"name": "col_only", "model": {"head_sharing": "shared", "shared_axis": -1, "head_blocks": [1, 0],
                                       "parents": "col"}},
        {"name": "row", "model": {"head_sharing": "shared", "shared_axis": 0, "head_blocks": [1, 0]}},
        {"name": "mixed", "model": {}},
        {"name": "mixed_par", "model": {"head_layout": "parallel"}},
        {"name": "par11", "model": {"head_layout": "parallel", "head_blocks": [1, 1]}},
        {"name": "chain11", "model": {"head_blocks": [1, 1]}}]), [])
    fp = {v.name: fingerprint(t) for v, t in build_train_configs(cfg)}
    assert fp["none"] == fp["col"] and fp["mixed"] == fp["mixed_par"]
    assert len({fp["none"], fp["col_only"], fp["row"], fp["mixed"], fp["par11"], fp["chain11"]}) == 6


@pytest.mark.parametrize("name", ["heads_emoji", "heads_atari", "heads_imagenet"])
def test_shipped_grids_validate(name: str) -> None:
    cfg = load_ablation_config(ROOT / "experiments" / "ablations" / f"{name}.yaml")
    pairs = build_train_configs(cfg)
    modes = {t.model.mode for _, t in pairs}
    assert {"nar", "raster"} <= modes <= {"nar", "raster", "par"}


def test_two_variant_grid_and_resume(tmp_path: Path, tiny_tokens: Path, capsys, caplog) -> None:
    over = tiny_train_overrides(tiny_tokens)
    path = _grid(tmp_path, [
        {"name": "mixed", "label": "row + column heads", "model": {}, "paper_score": 3.06},
        {"name": "row_only", "model": {"head_sharing": "shared", "shared_axis": 0, "head_blocks": [1, 0]},
         "paper_score": 25.73},
        {"name": "row_only_again", "model": {"head_sharing": "shared", "shared_axis": 0, "head_blocks": [1, 1]}},
    ], overrides=over, bench={"batch": 2, "iters": 1, "warmup": 0})
    cfg = load_ablation_config(path)
    with caplog.at_level("INFO", logger="nar"):
        out = run_ablation(cfg)
    assert out["ran"] == ["mixed", "row_only", "row_only_again"]
    # before the silent end of a run (sampling, features), a line says what comes
    assert "mixed: 3 steps; its last validation samples 4 images (batches of 4) and scores fid" in caplog.text
    rows = read_rows(out["csv"])
    assert [r["variant"] for r in rows] == ["mixed", "row_only", "row_only_again"]
    mixed, row_only, again = rows
    assert mixed["forward_passes"] == row_only["forward_passes"] == 7  # 4+4-1 frontiers
    assert mixed["parameters"] > 0 and mixed["images_per_s"] > 0 and mixed["steps"] == 3
    assert mixed["val_loss"] is not None and mixed["val_loss"] > 0
    assert again["same_as"] == "row_only" and again["val_loss"] == row_only["val_loss"]
    md = out["markdown"].read_text()
    assert "`row_only`" in md and "The paper's orderings" in md and "| `mixed` (3.06) < `row_only` (25.73) |" in md
    assert mixed["score_name"] == "fid" and mixed["score"] is not None
    assert out["plot"] is not None and out["plot"].read_bytes()[:4] == b"\x89PNG"
    assert _hparams_logged(out["tensorboard"] / "mixed")

    # A second run redoes nothing and leaves the CSV as it was.
    before = out["csv"].read_text()
    again_out = run_ablation(load_ablation_config(path))
    assert again_out["ran"] == [] and len(again_out["skipped"]) == 3
    assert out["csv"].read_text() == before
    with out["csv"].open() as fh:
        assert len(list(csv.DictReader(fh))) == 3

    # Interrupted after the first row: the rerun keeps it, and the trained-but-unrecorded variant continues
    # from its own last.ckpt (no extra steps), scored from its last validation.
    write_rows(out["csv"], rows[:1])
    resumed = run_ablation(load_ablation_config(path))
    assert resumed["skipped"] == ["mixed"] and resumed["ran"] == ["row_only", "row_only_again"]
    new_rows = read_rows(out["csv"])
    assert new_rows[0] == rows[0] and new_rows[1]["steps"] == 3
    assert new_rows[1]["score"] == pytest.approx(row_only["score"])

    # The CLI on the finished grid: nothing runs, the table is printed.
    from nar.cli.main import main

    capsys.readouterr()
    assert main(["ablate", "--config", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "ran: -" in printed and "| `mixed` |" in printed and "fid_vs_speed.png" in printed


def test_seeds_run_in_parallel_and_report_intervals(tmp_path: Path, tiny_tokens: Path) -> None:
    """Two seeds per variant trained two at a time: one row per run, each variant's mean and 95 % CI, the
    paper's ordering with agreement and separation, NAR vs raster, and the learning curves."""
    over = [*tiny_train_overrides(tiny_tokens), "trainer.max_steps=4", "trainer.val_every=2", "eval.decode_every=2",
            "eval.metrics=[]"]
    path = _grid(tmp_path, [
        {"name": "mixed", "model": {}, "paper_score": 3.06},
        {"name": "raster", "model": {"mode": "raster"}, "paper_score": 3.80},
    ], overrides=over, bench={"batch": 2, "iters": 1, "warmup": 0})
    cfg = load_ablation_config(path, ["seeds=[0,1]", "jobs=2"])
    out = run_ablation(cfg)
    rows = read_rows(out["csv"])
    assert sorted(r["run"] for r in rows) == ["mixed-s0", "mixed-s1", "raster-s0", "raster-s1"]
    assert {r["seed"] for r in rows} == {0, 1} and all(r["bits_per_token"] > 0 for r in rows)
    md = out["markdown"].read_text()
    assert "±" in md and "| `mixed` (3.06) < `raster` (3.80) |" in md and "NAR (mixed) vs raster" in md
    assert out["curves"] is not None and out["curves"].read_bytes()[:4] == b"\x89PNG"
    curve = [m for m in read_metrics(tmp_path / "out" / "runs" / "mixed-s0") if "val/bits_per_token" in m]
    # bits/token at every validation, samples generated only at every second one (and the last)
    assert [m["step"] for m in curve] == [2, 4]
    assert "val/images_per_sec" not in curve[0] and "val/images_per_sec" in curve[-1]
    assert curve[1]["train_seconds"] > curve[0]["train_seconds"] > 0

    # The per-step gap table: mixed's mean bits/token over its seeds relative to raster's, at each validated step.
    def mean_bits(variant: str, step: int) -> float:
        values = [m["val/bits_per_token"] for seed in (0, 1)
                  for m in read_metrics(tmp_path / "out" / "runs" / f"{variant}-s{seed}") if m.get("step") == step]
        assert len(values) == 2
        return sum(values) / 2

    assert "| step | `mixed` |" in md
    for step in (2, 4):
        assert f"| {step} | {100 * (mean_bits('mixed', step) / mean_bits('raster', step) - 1):+.2f} % |" in md


def test_a_stopped_grid_stops_its_runs_and_keeps_their_checkpoints(tmp_path: Path, tiny_tokens: Path,
                                                                   caplog) -> None:
    """SIGINT to the grid's own process (as Ctrl-C in a terminal: its workers have their own process group)
    while two runs train side by side: queued runs never start, each running run saves its checkpoint, no worker
    is left, exit 75. The command with another step budget is refused, naming both runs at once (their
    checkpoints are of the other budget); the same command resumes the two from their checkpoints.

    The grid starts with SIGINT ignored, as a shell's background job (`make ablate-heads &`) does: it must still
    stop on SIGINT, as a training run does, and the test does not depend on how the suite itself was started."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from nar.runs.folder import resume_checkpoint

    over = [*tiny_train_overrides(tiny_tokens), "trainer.max_steps=5000", "trainer.val_every=0",
            "trainer.ckpt_every=5000", "eval.metrics=[]"]
    path = _grid(tmp_path, [{"name": "a", "model": {}}, {"name": "b", "model": {"mode": "raster"}}], overrides=over,
                 bench={"batch": 2, "iters": 1, "warmup": 0}, seeds=[0, 1], jobs=2)
    runs = tmp_path / "out" / "runs"
    cmd = [sys.executable, "-m", "nar", "ablate", "--config", str(path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.time() + 240
    while len(list(runs.glob("*/config.yaml"))) < 2:  # both workers are training (config.yaml: training runs)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, "the runs did not start"
        time.sleep(0.1)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    code = proc.wait(120)
    err = proc.stderr.read()
    assert code == 75, err[-3000:]
    assert "grid stopped by a signal" in err and "Traceback" not in err
    started = sorted(p.parent.name for p in runs.glob("*/config.yaml"))
    assert started == ["a-s0", "a-s1"], started  # the queued runs (b-*) never started
    steps = []
    for name in started:
        saved = resume_checkpoint(runs / name)
        assert saved is not None and 0 < saved.step < 5000, (name, saved)
        steps.append(saved.step)
    workers = subprocess.run(["pgrep", "-f", "multiprocessing.spawn"], capture_output=True, text=True).stdout.split()
    assert not [pid for pid in workers if os.path.exists(f"/proc/{pid}") and
                str(tmp_path) in open(f"/proc/{pid}/cmdline").read()]
    assert not (tmp_path / "out" / "results.csv").exists()

    from nar.cli.main import main

    end = max(steps) + 5
    with caplog.at_level("ERROR", logger="nar"):
        assert main([*cmd[3:], f"trainer.max_steps={end}"]) == 2
    refused = caplog.records[-1].getMessage()
    assert "2 run(s)" in refused and f"trainer.max_steps=5000 (now {end})" in refused
    assert "a-s0 (" in refused and "a-s1 (" in refused and "b-s0" not in refused
    assert sorted(p.parent.name for p in runs.glob("*/config.yaml")) == started  # nothing trained

    log_path = tmp_path / "rerun.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log_file,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        deadline = time.time() + 240
        while log_path.read_text().count("resume: continuing from") < 2:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.time() < deadline, "the runs did not resume"
            time.sleep(0.1)
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 75, log_path.read_text()[-3000:]
    err = log_path.read_text()
    for name, step in zip(started, steps):
        assert f"{name}/checkpoints/last.ckpt (step {step})" in err  # continued from where it stopped
        assert resume_checkpoint(runs / name).step > step


def test_the_shared_tokenizer_step_resumes_a_stopped_run(tmp_path: Path) -> None:
    """The tokenizer step of `nar demo` / `nar ablate` (ensure_tokenizer) stopped after its checkpoint but before
    tokenizer.pt (a SIGTERM, a kill): the rerun resumes it instead of refusing a folder that holds checkpoints."""
    from nar.data.embedded.emoji import build_emoji
    from nar.workflows.demo import ensure_tokenizer

    images = tmp_path / "emoji"
    build_emoji(images, size=32, limit=24)
    out = tmp_path / "tokenizer"
    path = ensure_tokenizer("emoji", images, out, smoke=True, threads=1, steps=2)
    path.unlink()
    assert list((out / "checkpoints").glob("*.ckpt"))
    assert ensure_tokenizer("emoji", images, out, smoke=True, threads=1, steps=2) == path and path.is_file()


def test_set_takes_one_ablation_key_each_and_leaves_training_overrides(tmp_path: Path, monkeypatch, capsys) -> None:
    """The module docstring's `--set out=... trainer.max_steps=50`: out is an ablation key, the step budget a
    training override shared by every variant (not swallowed by --set); --set repeats for more keys."""
    import nar.workflows.ablation as ablation
    from nar.cli.main import main

    seen = {}

    def fake_run(cfg, shared=(), only=None, threads=None):
        seen.update(out=cfg.out, batch=cfg.bench.batch, shared=list(shared))
        return {"rows": [], "ran": [], "skipped": [], "csv": "c", "markdown": "m", "plot": None, "tensorboard": "t"}

    monkeypatch.setattr(ablation, "run_ablation", fake_run)
    grid = str(ROOT / "experiments" / "ablations" / "heads_emoji.yaml")
    argv = ["ablate", "--config", grid, "--set", f"out={tmp_path}", "trainer.max_steps=50", "--set", "bench.batch=3"]
    assert main(argv) == 0
    assert seen["out"] == str(tmp_path) and seen["batch"] == 3 and "trainer.max_steps=50" in seen["shared"]


def _fake_runs(monkeypatch, score=lambda variant, seed: 10.0 * (seed + 1) + len(variant)) -> list[str]:
    """Replace training by a row whose numbers are a function of (variant, seed); returns the runs trained."""
    import nar.workflows.ablation.runner as runner

    trained: list[str] = []

    def fake_run_variant(variant, train_cfg, bench, seed=0, name=None):
        trained.append(name)
        value = score(variant.name, seed)
        return {"run": name, "seed": seed, "variant": variant.name, "label": variant.label,
                "mode": train_cfg.model.mode, "score_name": "fid", "score": value, "bits_per_token": value / 10,
                "forward_passes": 7, "paper_score": variant.paper_score, "same_as": ""}

    monkeypatch.setattr(runner, "run_variant", fake_run_variant)
    monkeypatch.setattr(runner, "plot_learning_curves", lambda *a, **k: None)
    monkeypatch.setattr(runner, "log_hparams", lambda *a, **k: None)
    return trained


EMOJI = str(ROOT / "experiments" / "demo" / "emoji.yaml")


def test_changing_the_seeds_reports_each_seed_of_the_grid_once(tmp_path: Path, monkeypatch) -> None:
    """One seed names a run `a`, several `a-s0`, `a-s1`, ...: growing a finished grid to more seeds reuses `a`'s
    row for `a-s0` (same fingerprint), and shrinking it leaves rows of other seeds in the CSV. The report (and
    the rows returned) holds each seed of the current grid once; the CSV may keep the rest."""
    from nar.workflows.ablation.report import summarise

    trained = _fake_runs(monkeypatch)
    path = _grid(tmp_path, [{"name": "a"}], base=[EMOJI], bench={"enabled": False})
    run_ablation(load_ablation_config(path))
    out = run_ablation(load_ablation_config(path, ["seeds=[0,1,2]"]))
    assert trained == ["a", "a-s1", "a-s2"]  # a-s0 reuses a's row
    (entry,) = summarise(out["rows"])
    expected = [10.0 * (s + 1) + 1 for s in (0, 1, 2)]
    assert entry["seeds"] == [0, 1, 2] and entry["score"].n == 3
    assert entry["score"].mean == pytest.approx(sum(expected) / 3)
    md = out["markdown"].read_text()
    assert "| `a` |" not in md.split("## Every run")[1] and "`a-s0`" in md
    # summarise on every CSV row (the stale `a` row included) still counts each (variant, seed) once
    (entry,) = summarise(read_rows(out["csv"]))
    assert entry["seeds"] == [0, 1, 2] and entry["score"].mean == pytest.approx(sum(expected) / 3)

    # Back to one seed: `a` is reported alone, the other seeds' rows stay in the CSV only.
    out = run_ablation(load_ablation_config(path, ["seeds=[0]"]))
    assert out["ran"] == [] and [r["run"] for r in out["rows"]] == ["a"]
    (entry,) = summarise(out["rows"])
    assert entry["seeds"] == [0] and entry["score"].mean == pytest.approx(expected[0])
    md = out["markdown"].read_text()
    assert "`a-s1`" not in md and "| `a` |" in md.split("## Every run")[1]
    assert {r["run"] for r in read_rows(out["csv"])} >= {"a-s0", "a-s1", "a-s2"}


@pytest.mark.parametrize("where, override", [("overrides", "trainer.seed=3"), ("overrides", "data.seed=3"),
                                             ("shared", "eval.seed=7"), ("shared", "trainer.seed=1"),
                                             ("overrides", "name=x"), ("shared", "runs_root=/tmp/x")])
def test_seeds_and_run_names_set_outside_the_grid_keys_are_refused(tmp_path: Path, where: str, override: str) -> None:
    """The runner sets trainer/data/eval.seed from `seeds` and name/runs_root itself: setting them elsewhere
    would be silently replaced, so it fails naming the override and the key to use."""
    key = override.split("=")[0]
    path = _grid(tmp_path, [{"name": "a"}], base=[EMOJI], overrides=[override] if where == "overrides" else [])
    cfg = load_ablation_config(path)
    with pytest.raises(ConfigError, match=rf"{key}.*(seeds|out)"):
        build_train_configs(cfg, [override] if where == "shared" else [])


def test_a_partial_grid_lists_the_runs_it_has_no_row_for(tmp_path: Path, monkeypatch) -> None:
    """--only (or an interrupted grid): results.md says which variants and seeds are missing, instead of
    looking complete without them."""
    _fake_runs(monkeypatch)
    path = _grid(tmp_path, [{"name": "a", "paper_score": 3.0}, {"name": "b", "model": {"mode": "raster"}},
                            {"name": "c", "model": {"head_blocks": [1, 1]}, "paper_score": 5.0}],
                 base=[EMOJI], bench={"enabled": False}, seeds=[0, 1])
    out = run_ablation(load_ablation_config(path), only=["a", "b"])
    md = out["markdown"].read_text()
    assert "2 of 6 runs" in md and "| `c` | 0, 1 |" in md
    # one seed of a variant missing: named with its seed
    rows = read_rows(out["csv"])
    write_rows(out["csv"], [r for r in rows if r["run"] != "b-s1"])
    out = run_ablation(load_ablation_config(path), only=["a"])
    md = out["markdown"].read_text()
    assert "3 of 6 runs" in md and "| `b` | 1 |" in md and "| `c` | 0, 1 |" in md
    # complete: no such section
    out = run_ablation(load_ablation_config(path))
    assert "Not run" not in out["markdown"].read_text()


def _prepared_paths(cfg, monkeypatch) -> dict[str, str]:
    """``prepare_shared``'s overrides with nar.demo's steps stubbed: where each would write, nothing built."""
    from nar.workflows import demo
    from nar.workflows.ablation.runner import prepare_shared

    monkeypatch.setattr(demo, "ensure_embedded", lambda domain, root, smoke: root / domain)
    monkeypatch.setattr(demo, "ensure_tokenizer", lambda domain, images, out, *a, **k: out / "tokenizer.pt")
    monkeypatch.setattr(demo, "ensure_tokens", lambda images, tokenizer, out: out)
    monkeypatch.setattr("nar.data.shards.read_meta", lambda root: {"grid": [8, 8], "codebook_size": 64,
                                                                   "classes": ["a"]})
    return dict(o.split("=", 1) for o in prepare_shared(cfg, threads=1) if "path" in o or "root" in o)


def test_the_emoji_grid_writes_its_tokenizer_and_tokens_under_its_out(tmp_path: Path, monkeypatch) -> None:
    """`--set out=X` moves the grid's own tokenizer and tokens under X; at the default out they are where they
    were (same override strings: finished rows keep their fingerprints). The embedded data stay the shared cache
    `prepare.data` (relative to the working directory), as `make demo`'s."""
    grid = ROOT / "experiments" / "ablations" / "heads_emoji.yaml"
    moved = _prepared_paths(load_ablation_config(grid, [f"out={tmp_path}"]), monkeypatch)
    assert moved["tokenizer.path"] == str(tmp_path / "tokenizer" / "tokenizer.pt")
    assert moved["data.root"] == str(tmp_path / "tokens")
    assert moved["eval.real_root"] == str(Path("data/embedded/emoji"))
    default = _prepared_paths(load_ablation_config(grid), monkeypatch)
    assert default == {"tokenizer.path": "runs/ablations/heads-emoji/tokenizer/tokenizer.pt",
                       "data.root": "runs/ablations/heads-emoji/tokens", "eval.real_root": "data/embedded/emoji"}


def _fast_overrides(tokens: Path) -> list[str]:
    """The tiny grid without sample scoring: a run trains, validates and is benchmarked in about a second."""
    return [*tiny_train_overrides(tokens), "eval.metrics=[]"]


def test_a_changed_setting_refuses_the_rows_and_the_run_folders_of_every_run(tmp_path: Path,
                                                                              tiny_tokens: Path) -> None:
    """A shared setting changed after a grid finished (optim.lr 3e-3 -> 1e-1): the rerun names every run made with
    the old setting at once, with what differs and a remedy that works. Deleting the rows only (the remedy it
    used to give) must not resume the finished checkpoints under the new fingerprint (nothing trains: old
    numbers in new rows); deleting the rows and the run folders trains again."""
    over = _fast_overrides(tiny_tokens)
    bench = {"batch": 2, "iters": 1, "warmup": 0}
    variants = [{"name": "a", "model": {}}, {"name": "c", "model": {"mode": "raster"}}]
    path = _grid(tmp_path, variants, overrides=over, bench=bench)
    first = {r["run"]: r for r in read_rows(run_ablation(load_ablation_config(path))["csv"])}
    assert sorted(first) == ["a", "c"]

    path = _grid(tmp_path, variants, overrides=[*over, "optim.lr=0.1"], bench=bench)
    csv_path, runs = tmp_path / "out" / "results.csv", tmp_path / "out" / "runs"
    with pytest.raises(ConfigError) as refused:
        run_ablation(load_ablation_config(path))
    message = str(refused.value)
    for name in ("a", "c"):  # every run in one message, not one per rerun
        assert f"{name} (" in message and str(runs / name) in message
    assert "optim.lr=0.003 (now 0.1)" in message and str(csv_path) in message

    # What deleting the rows only used to leave: the finished runs collected again, their lr=3e-3 numbers filed
    # under the new fingerprint. Refused too, the rows with the folders.
    rows = read_rows(csv_path)
    for row, (_, train_cfg) in zip(rows, build_train_configs(load_ablation_config(path))):
        row["fingerprint"] = fingerprint(train_cfg)
    write_rows(csv_path, rows)
    with pytest.raises(ConfigError, match=r"delete their rows from .* and their run folders") as refused:
        run_ablation(load_ablation_config(path))
    assert "a (" in str(refused.value) and "c (" in str(refused.value)

    csv_path.unlink()  # the rows only: the finished run folders still hold the lr=3e-3 runs
    with pytest.raises(ConfigError) as refused:
        run_ablation(load_ablation_config(path))
    message = str(refused.value)
    assert "a (" in message and "c (" in message and "optim.lr=0.003 (now 0.1)" in message
    assert not csv_path.exists()  # nothing was written under the new fingerprint

    import shutil

    shutil.rmtree(runs / "a")
    out = run_ablation(load_ablation_config(path), only=["a"])
    (row,) = read_rows(out["csv"])
    assert out["ran"] == ["a"] and row["steps"] == 3 and row["val_loss"] != pytest.approx(first["a"]["val_loss"])


def test_rows_of_another_configuration_are_named_together(tmp_path: Path, monkeypatch) -> None:
    """Every run whose row was made with another configuration is named in one refusal, with the remedy."""
    _fake_runs(monkeypatch)
    path = _grid(tmp_path, [{"name": "a"}, {"name": "b", "model": {"mode": "raster"}}], base=[EMOJI],
                 bench={"enabled": False})
    run_ablation(load_ablation_config(path))
    with pytest.raises(ConfigError) as refused:
        run_ablation(load_ablation_config(path), shared=["trainer.max_steps=7"])
    message = str(refused.value)
    assert "a (" in message and "b (" in message and "another out=" in message
    assert str(tmp_path / "out" / "results.csv") in message


def _failing_runs(monkeypatch, failures: dict[str, BaseException]) -> list[str]:
    """:func:`_fake_runs` where the runs named in ``failures`` raise their exception instead of giving a row."""
    import nar.workflows.ablation.runner as runner

    trained = _fake_runs(monkeypatch)
    fake = runner.run_variant

    def run_variant(variant, train_cfg, bench, seed=0, name=None):
        if name in failures:
            trained.append(name)
            raise failures[name]
        return fake(variant, train_cfg, bench, seed, name)

    monkeypatch.setattr(runner, "run_variant", run_variant)
    return trained


def test_a_failed_variant_does_not_stop_the_grid(tmp_path: Path, monkeypatch, capsys, caplog) -> None:
    """jobs=1: a variant that raises is logged by name, its traceback kept in its run folder, the other variants
    still run, the results table is written, and the command exits non-zero naming the failed variant; the
    same command then runs only that one."""
    from nar.cli.main import main

    trained = _failing_runs(monkeypatch, {"b": IndexError("index out of range in self")})
    path = _grid(tmp_path, [{"name": "a"}, {"name": "b", "model": {"mode": "raster"}},
                            {"name": "c", "model": {"head_blocks": [1, 1]}}], base=[EMOJI], bench={"enabled": False})
    with caplog.at_level("DEBUG", logger="nar"):
        code = main(["ablate", "--config", str(path)])
    assert code == 1 and trained == ["a", "b", "c"]
    assert "variant b failed: IndexError: index out of range in self" in caplog.text
    assert [r["run"] for r in read_rows(tmp_path / "out" / "results.csv")] == ["a", "c"]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| `b` | 0 |" in md  # listed as not run
    printed = capsys.readouterr().out
    assert "| `a` |" in printed and "| `c` |" in printed
    last = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"][-1]  # the command's last word
    assert "1 of the 3 runs attempted this time failed: b (IndexError: index out of range in self" in last and "error.log" in last
    error_log = tmp_path / "out" / "runs" / "b" / "error.log"
    assert "Traceback" in error_log.read_text() and "IndexError" in error_log.read_text()

    _fake_runs(monkeypatch)  # b fixed
    assert main(["ablate", "--config", str(path)]) == 0
    assert [r["run"] for r in read_rows(tmp_path / "out" / "results.csv")] == ["a", "b", "c"]
    assert not error_log.exists()  # the failure it recorded is over


def test_an_interrupted_variant_says_to_run_the_same_command_again(tmp_path: Path, monkeypatch, caplog) -> None:
    """jobs=1: a run stopped by a signal (its trainer's RunInterrupted, which says '--resume', an option nar
    ablate does not have) stops the grid with exit 75, naming the run and saying to rerun the same command."""
    from nar.cli.main import main
    from nar.errors import RunInterrupted

    stop = RunInterrupted("stopped by SIGTERM at step 5; checkpoint saved to x/last.ckpt; continue with --resume")
    trained = _failing_runs(monkeypatch, {"b": stop})
    path = _grid(tmp_path, [{"name": "a"}, {"name": "b", "model": {"mode": "raster"}},
                            {"name": "c", "model": {"head_blocks": [1, 1]}}], base=[EMOJI], bench={"enabled": False})
    with caplog.at_level("INFO", logger="nar"):
        assert main(["ablate", "--config", str(path)]) == 75
    assert trained == ["a", "b"]  # a stop is not a failure: the grid stops
    (error,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert error.startswith("b: stopped by SIGTERM at step 5; checkpoint saved to x/last.ckpt")
    assert "--resume" not in error and "run the same command again" in error


def test_a_failed_run_in_parallel_does_not_stop_the_others(tmp_path: Path, tiny_tokens: Path, caplog) -> None:
    """jobs=2 as jobs=1: a variant that fails in its worker (4 classes of data, model.num_classes=2: refused by
    the data module, or an index error at its first step) is reported by name; the others finish and have their
    rows."""
    path = _grid(tmp_path, [{"name": "a", "model": {"num_classes": 2}}, {"name": "b", "model": {"mode": "raster"}}],
                 overrides=_fast_overrides(tiny_tokens), bench={"batch": 2, "iters": 1, "warmup": 0}, jobs=2)
    with caplog.at_level("INFO", logger="nar"):
        out = run_ablation(load_ablation_config(path))
    assert out["ran"] == ["b"] and [name for name, _ in out["failed"]] == ["a"] and out["exit_code"] != 0
    assert "variant a failed: " in caplog.text
    assert [r["run"] for r in read_rows(out["csv"])] == ["b"]
    assert "Traceback" in (tmp_path / "out" / "runs" / "a" / "error.log").read_text()


def test_the_grid_reads_the_data_folder_as_nar_train_does(tmp_path: Path, tiny_tokens: Path, monkeypatch) -> None:
    """Grid, vocabulary and classes come from data.root's meta.json unless set (nar train's config builder); a
    variant's model keys stay on top. A row written before the grid read meta.json (no class names in its config:
    they label samples, no number depends on them) is still found."""
    import dataclasses

    from nar.config import load_config
    from nar.runs import TrainConfig

    default_grid = load_config(TrainConfig, [], ["data.root=x"]).model.grid
    assert list(default_grid) != [4, 4]  # else the test shows nothing
    path = _grid(tmp_path, [{"name": "a"}, {"name": "b", "model": {"vocab_size": 128}}],
                 overrides=[f"data.root={tiny_tokens}"], bench={"enabled": False})
    (_, a), (_, b) = build_train_configs(load_ablation_config(path))
    assert list(a.model.grid) == [4, 4] and a.model.vocab_size == 64 and a.model.num_classes == 4
    assert a.classes == ["c0", "c1", "c2", "c3"]
    assert list(b.model.grid) == [4, 4] and b.model.vocab_size == 128

    _fake_runs(monkeypatch)
    out = run_ablation(load_ablation_config(path))
    rows = read_rows(out["csv"])
    for row, cfg in zip(rows, (a, b)):
        row["fingerprint"] = fingerprint(dataclasses.replace(cfg, classes=[]))
    write_rows(out["csv"], rows)
    again = run_ablation(load_ablation_config(path))
    assert again["ran"] == [] and again["skipped"] == ["a", "b"]


def test_rows_and_run_folders_of_an_ablate_before_it_read_the_data_folder_are_kept(tmp_path: Path,
                                                                                    tiny_tokens: Path,
                                                                                    monkeypatch, caplog) -> None:
    """An older nar ablate built each run's config from the grid's YAMLs and overrides alone (load_config); now
    data.root's meta.json fills what nobody set: the classes, and eval.real_root / real_split of the source it
    names. A finished row and a run folder made the old way with the same files and overrides are the same
    configuration, kept (not 'delete their rows and run folders': hours per row); a real difference, another
    optim.lr, is still refused, the row and the folder."""
    import json
    import shutil

    import nar.workflows.train as train
    from nar.config import load_config
    from nar.runs import TrainConfig

    tokens, source = tmp_path / "tokens", tmp_path / "images"
    shutil.copytree(tiny_tokens, tokens)
    source.mkdir()  # the images the tokens came from: a dataset with a val split
    (source / "meta.json").write_text(json.dumps({"kind": "image", "splits": {"val": {"shards": [], "samples": 0}}}))
    meta = json.loads((tokens / "meta.json").read_text())
    (tokens / "meta.json").write_text(json.dumps({**meta, "source": str(source)}))
    over, bench = _fast_overrides(tokens), {"batch": 2, "iters": 1, "warmup": 0}
    path = _grid(tmp_path, [{"name": "a"}], overrides=over, bench=bench)
    ((_, now),) = build_train_configs(load_ablation_config(path))
    assert now.eval.real_root == str(source.resolve()) and now.eval.real_split == "val"  # else it shows nothing

    with monkeypatch.context() as older:  # the grid as the older nar ablate ran it
        older.setattr(train, "generator_config", lambda yamls, overrides: load_config(TrainConfig, yamls, overrides))
        first = run_ablation(load_ablation_config(path))
    assert first["ran"] == ["a"]
    csv_path, run_dir = tmp_path / "out" / "results.csv", tmp_path / "out" / "runs" / "a"
    (row,) = read_rows(csv_path)
    assert row["fingerprint"] != fingerprint(now)

    changed = _grid(tmp_path, [{"name": "a"}], overrides=[*over, "optim.lr=0.1"], bench=bench)
    with pytest.raises(ConfigError) as refused:
        run_ablation(load_ablation_config(changed))
    message = str(refused.value)
    assert f"its row in {csv_path.name}" in message and "optim.lr=0.003 (now 0.1)" in message
    assert "eval.real_root" not in message  # what differs from the run as that nar ablate built it
    assert "delete their rows from" in message and str(run_dir) in message

    path = _grid(tmp_path, [{"name": "a"}], overrides=over, bench=bench)
    with caplog.at_level("INFO", logger="nar"):
        again = run_ablation(load_ablation_config(path))
    assert again["ran"] == [] and again["skipped"] == ["a"]
    assert "a: its row was made by an nar ablate that did not read" in caplog.text and "eval.real_root" in caplog.text

    csv_path.unlink()  # the run folder alone: its finished checkpoint is resumed and its row collected again
    collected = run_ablation(load_ablation_config(path))
    (row_again,) = read_rows(csv_path)
    assert collected["ran"] == ["a"] and row_again["steps"] == row["steps"]
    assert row_again["val_loss"] == pytest.approx(row["val_loss"])
