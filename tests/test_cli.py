"""The command line's surface: help that states defaults, one log line per event, exit codes."""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from nar.cli.main import _every_parser, build_parser
from nar.config import load_config
from nar.errors import ConfigError
from nar.logconfig import configure_logging
from nar.runs.config import TrainConfig


def _options(parser: argparse.ArgumentParser):
    for p in _every_parser(parser):
        for action in p._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                yield p, action


def test_every_help_states_its_defaults() -> None:
    missing = []
    for p, action in _options(build_parser()):
        if action.default is None or action.default is False or action.default in ([], "", argparse.SUPPRESS):
            continue
        if isinstance(action, argparse._StoreFalseAction):  # --no-x: off unless given, like any switch
            continue
        text = p.formatter_class(prog=p.prog)._get_help_string(action) or ""
        if "default" not in text:
            missing.append(f"{p.prog} {action.option_strings[0]}")
    assert not missing, f"options whose --help does not state the default: {missing}"


def test_lightning_logs_once_through_our_format(capsys) -> None:
    configure_logging(lightning=True)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        assert not logger.handlers and logger.propagate, name


@pytest.mark.parametrize("argv, code", [
    (["train", "optim.lr=-1"], 2),                                   # a bad value: the user's to fix
    (["sample", "--ckpt", "/nonexistent.ckpt", "--out", "x"], 2),   # a missing input file
])
def test_usage_errors_exit_2(argv, code, capsys) -> None:
    from nar.cli.main import main

    assert main(argv) == code


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("target, variables", [
    ("train-imagenet", ["DATA=/d", "TOKENIZER=/t.pt"]),
    ("train-ucf101", ["DATA=/d"]),
    ("train-t2i", ["DATA=/d", "INIT=/init.ckpt"]),
    ("eval-imagenet", ["CKPT=/c.pt", "TOKENIZER=/t.pt", "DATA=/d"]),
    ("eval-imagenet", ["CKPT=/c.pt", "TOKENIZER=/t.pt", "REF=/VIRTUAL_imagenet256_labeled.npz"]),
    ("eval-imagenet", ["CKPT=/c.pt", "TOKENIZER=/t.pt", "REF=/VIRTUAL_imagenet256_labeled.npz", "INCEPTION=/i.pth"]),
    ("eval-ucf101", ["CKPT=/c.ckpt", "TOKENIZER=/t.pt", "DATA=/d"]),
])
def test_make_targets_pass_args_overrides_through(target, variables) -> None:
    """`make <target> ARGS=key=value` (as the targets' own messages suggest): the command make would run parses,
    with ARGS's override after the target's own ones, and ARGS may still carry flags."""
    root = Path(__file__).resolve().parents[1]
    args = "ARGS=eval.num_samples=7 --cpu"
    made = subprocess.run(["make", "-n", "-C", str(root), target, *variables, "GPUS=2", args],
                          capture_output=True, text=True, check=True).stdout
    (line,) = [ln for ln in made.splitlines() if ln.split(" ", 1)[0].endswith("/nar")]
    ns = build_parser().parse_args(shlex.split(line)[1:])
    assert ns.overrides[-1] == "eval.num_samples=7" and ns.cpu and ns.gpus == 2
    assert any(o.startswith(("data.root=", "eval.real_root=", "eval.reference_stats=")) for o in ns.overrides)
    load_config(TrainConfig, ns.config, ns.overrides)  # every override is a config value (a comma inside make's
    # $(if ...) once cut eval.metrics=[fid,sfid,pr] in two)


def test_config_interpolation_errors_name_the_key(caplog) -> None:
    from nar.cli.main import main

    assert main(["train", "--config", "demo/emoji.yaml", "eval.real_root=${data.roott}"]) == 2
    assert "key 'eval.real_root'" in caplog.text and "data.roott" in caplog.text
    with pytest.raises(ConfigError, match=r"model.head_blocks=\[\$\{nope\}\]'?: not a YAML value"):
        load_config(TrainConfig, ["demo/emoji.yaml"], ["model.head_blocks=[${nope}]"])
    with pytest.raises(ConfigError, match="key 'model.preset': cannot resolve"):
        load_config(TrainConfig, ["demo/emoji.yaml"], ["model.preset=${nope}"])


class _Stop(Exception):
    pass


def test_demo_threads_zero_keeps_torch_default_and_negative_is_a_usage_error(tmp_path, monkeypatch, caplog) -> None:
    import torch

    import nar.workflows.demo as demo
    from nar.cli.main import main

    before = torch.get_num_threads()

    def stop(domain, data_root, smoke):
        assert torch.get_num_threads() == before
        raise _Stop

    monkeypatch.setattr(demo, "ensure_embedded", stop)
    with pytest.raises(_Stop):
        main(["demo", "--threads", "0", "--out", str(tmp_path / "t0")])
    assert main(["demo", "--threads", "-1", "--out", str(tmp_path / "neg")]) == 2
    assert "--threads" in caplog.text and "-1" in caplog.text and not (tmp_path / "neg").exists()


def test_demo_smoke_reads_the_given_data_folder(tmp_path, monkeypatch) -> None:
    import torch

    import nar.workflows.demo as demo
    from nar.cli.main import main

    roots = []
    threads = str(torch.get_num_threads())  # unchanged by the demo

    def stop(domain, data_root, smoke):
        roots.append(Path(data_root))
        raise _Stop

    monkeypatch.setattr(demo, "ensure_embedded", stop)
    for extra in (["--data", str(tmp_path / "mine")], []):
        with pytest.raises(_Stop):
            main(["demo", "--smoke", "--threads", threads, "--out", str(tmp_path / "out"), *extra])
    assert roots == [tmp_path / "mine", tmp_path / "out" / "data"]


def test_demo_generator_marker_is_written_atomically_and_a_torn_one_retrains(tmp_path, monkeypatch, caplog) -> None:
    import json
    import os
    import types

    import nar.runs.folder as folder
    import nar.workflows.demo as demo
    import nar.workflows.train as wtrain
    from nar.atomic import WriteError

    run_dir = tmp_path / "nar"
    run_dir.mkdir()
    fits = []

    def fit(cfg, **kwargs):
        fits.append(kwargs)
        return {"metrics": {"val/fid": 12.0}, "run_dir": run_dir, "checkpoint": run_dir / "last.ckpt",
                "samples": None, "global_step": 3, "module": types.SimpleNamespace(model=types.SimpleNamespace(
                    num_passes=7))}

    monkeypatch.setattr(demo, "generator_config", lambda *a, **k: load_config(
        TrainConfig, ["demo/emoji.yaml"], [f"runs_root={tmp_path}", "name=nar"]))
    monkeypatch.setattr(folder, "has_checkpoints", lambda d: False)
    monkeypatch.setattr(wtrain, "fit", fit)
    call = ("emoji", "nar", None, None, None, tmp_path, True, 1)

    real_replace = os.replace

    def failing_replace(src, dst):  # the write is cut short before it is committed
        if Path(dst).name == "result.json":
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(WriteError, match="result.json"):
        demo.train_generator(*call)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not (run_dir / "result.json").exists()  # no half-written marker under the final name

    (run_dir / "result.json").write_text('{"mode": "na')  # torn by an older, non-atomic writer
    summary = demo.train_generator(*call)
    assert len(fits) == 2 and summary["steps"] == 3 and "unreadable" in caplog.text
    assert json.loads((run_dir / "result.json").read_text()) == summary
    assert demo.train_generator(*call) == summary and len(fits) == 2  # a valid marker: nothing trains again


@pytest.mark.parametrize("argv, overrides", [
    (["ablate", "--config", "g.yaml", "a=1", "--set", "x=y", "b=2"], ["a=1", "b=2"]),
    (["ablate", "a=1", "--config", "g.yaml", "b=2", "--only", "m", "c=3"], ["a=1", "b=2", "c=3"]),
    (["demo", "a=1", "--smoke", "b=2"], ["a=1", "b=2"]),
    (["train", "--config", "c.yaml", "--resume", "data.root=/d", "--cpu", "eval.num_samples=7"],
     ["data.root=/d", "eval.num_samples=7"]),
    (["evaluate", "--ckpt", "x", "a=1", "--per-class", "5", "b=2"], ["a=1", "b=2"]),
    (["train-tokenizer", "a=1", "--data", "emoji", "b=2"], ["a=1", "b=2"]),
])
def test_key_value_overrides_go_on_either_side_of_options(argv, overrides) -> None:
    """`make <target> ARGS="--flag key=value"` puts overrides after the target's own options and overrides."""
    assert build_parser().parse_args(argv).overrides == overrides


def test_intermixed_parsing_leaves_list_options_and_nested_commands_as_they_were(capsys) -> None:
    parser = build_parser()
    ns = parser.parse_args(["bench", "--batch", "8", "16", "--set", "dim=32", "vocab_size=64", "--rounds", "2"])
    assert ns.batch == [8, 16] and ns.overrides == ["dim=32", "vocab_size=64"] and ns.rounds == 2
    with pytest.raises(SystemExit):  # bench takes no positionals: a stray word is still refused
        parser.parse_args(["bench", "--rounds", "2", "extra=1"])
    ns = parser.parse_args(["data", "tokens", "/in", "--tokenizer", "vq.pt", "--flip", "--out", "/tok"])
    assert (ns.data_command, ns.src, ns.tokenizer, ns.flip, ns.out) == ("tokens", "/in", "vq.pt", True, "/tok")
    ns = parser.parse_args(["sample", "--ckpt", "a.ckpt", "--classes", "0", "seven", "--out", "o"])
    assert ns.classes == ["0", "seven"]
    with pytest.raises(SystemExit):
        parser.parse_args(["ablate", "a=1"])  # a required option is still required
    assert "--config" in capsys.readouterr().err


def test_demo_tokenizer_steps_help_states_the_budgets_and_bad_values_name_the_flag(tmp_path, caplog) -> None:
    import nar.workflows.demo as demo
    from nar.cli.main import main

    demo_parser = next(p for p in _every_parser(build_parser()) if p.prog.endswith(" demo"))
    (action,) = [a for a in demo_parser._actions if "--tokenizer-steps" in a.option_strings]
    for domain, budget in demo.BUDGETS.items():
        assert f"{domain} {budget['tokenizer_steps']}" in action.help
    for steps in ("0", "-5"):
        out = tmp_path / f"steps{steps}"
        assert main(["demo", "--tokenizer-steps", steps, "--out", str(out)]) == 2
        assert "--tokenizer-steps" in caplog.text and f"got {steps}" in caplog.text and not out.exists()
    with pytest.raises(ConfigError, match="tokenizer steps.*got 0"):  # the step itself (nar ablate's prepare too)
        demo.ensure_tokenizer("emoji", tmp_path / "images", tmp_path / "tok", smoke=True, threads=1, steps=0)


def test_demo_generator_marker_is_reused_only_for_the_same_config(tmp_path, monkeypatch, caplog) -> None:
    """`nar demo` rerun in the same --out: the same generator config reuses result.json; another budget trains
    (resuming the run's checkpoint). A marker from before fingerprints is reused only when its steps and mode
    match the config's."""
    import json
    import types

    import nar.runs.folder as folder
    import nar.workflows.demo as demo
    import nar.workflows.train as wtrain

    def config(domain, mode, tokens, images, tok, out_dir, smoke, threads, overrides=()):
        return load_config(TrainConfig, ["demo/emoji.yaml"], [f"runs_root={out_dir}", f"name={mode}",
                                                               f"model.mode={mode}", *overrides])

    fits = []

    def fit(cfg, **kwargs):
        fits.append(cfg.trainer.max_steps)
        return {"metrics": {"val/fid": float(cfg.trainer.max_steps)}, "run_dir": cfg.run_dir,
                "checkpoint": cfg.run_dir / "last.ckpt", "samples": None, "global_step": cfg.trainer.max_steps,
                "module": types.SimpleNamespace(model=types.SimpleNamespace(num_passes=7))}

    monkeypatch.setattr(demo, "generator_config", config)
    monkeypatch.setattr(folder, "has_checkpoints", lambda d: False)
    monkeypatch.setattr(wtrain, "fit", fit)
    default = config("emoji", "nar", None, None, None, tmp_path, False, 1).trainer.max_steps

    def train(*overrides):
        return demo.train_generator("emoji", "nar", None, None, None, tmp_path, False, 1, list(overrides))

    first = train()
    assert fits == [default] and train() == first and fits == [default]  # the same config: nothing trains again
    assert train("trainer.threads=4") == first and fits == [default]  # CPU threads do not change the result
    longer = train(f"trainer.max_steps={2 * default}")
    assert fits == [default, 2 * default] and longer["steps"] == 2 * default
    assert train(f"trainer.max_steps={2 * default}") == longer and len(fits) == 2

    marker = tmp_path / "nar" / "result.json"
    old = {k: v for k, v in longer.items() if k != "fingerprint"}  # written before markers had a fingerprint
    marker.write_text(json.dumps(old))
    assert train(f"trainer.max_steps={2 * default}") == old and len(fits) == 2 and "fingerprint" in caplog.text
    assert train()["steps"] == default and fits[-1] == default  # its steps are not the asked budget: trains



def test_a_demo_rerun_with_a_shorter_budget_says_it_reports_the_longer_run(tmp_path, monkeypatch, caplog) -> None:
    """Rerun with fewer trainer.max_steps than the finished run's: resuming undoes no step, so the summary, the log
    and the report name both budgets instead of passing the longer run off as the asked one."""
    import types

    import nar.runs.folder as folder
    import nar.workflows.demo as demo
    import nar.workflows.train as wtrain

    def config(domain, mode, tokens, images, tok, out_dir, smoke, threads, overrides=()):
        return load_config(TrainConfig, ["demo/emoji.yaml"], [f"runs_root={out_dir}", f"name={mode}",
                                                               f"model.mode={mode}", *overrides])

    trained = []

    def fit(cfg, resume=False, **kwargs):  # a resume continues from the furthest checkpoint, never goes back
        trained.append(max([cfg.trainer.max_steps, *trained]) if resume else cfg.trainer.max_steps)
        return {"metrics": {"val/fid": 1.0}, "run_dir": cfg.run_dir, "checkpoint": cfg.run_dir / "last.ckpt",
                "samples": None, "global_step": trained[-1],
                "module": types.SimpleNamespace(model=types.SimpleNamespace(num_passes=7))}

    monkeypatch.setattr(demo, "generator_config", config)
    monkeypatch.setattr(folder, "has_checkpoints", lambda d: bool(trained))
    monkeypatch.setattr(wtrain, "fit", fit)
    longer = config("emoji", "nar", None, None, None, tmp_path, False, 1).trainer.max_steps
    shorter = longer // 2

    def train(steps):
        return demo.train_generator("emoji", "nar", None, None, None, tmp_path, False, 1,
                                    [f"trainer.max_steps={steps}"])

    assert train(longer)["steps"] == longer and f"asked for {longer}" not in caplog.text
    summary = train(shorter)
    assert (summary["steps"], summary["asked_steps"]) == (longer, shorter)
    assert f"asked for {shorter} steps" in caplog.text and f"trained for {longer} steps" in caplog.text, caplog.text
    report = demo.format_report({"domain": "emoji", "smoke": False, "seconds": 1, "data": "d", "tokenizer": "t",
                                 "tokens": "k", "runs": {"nar": summary}})
    assert f"[nar] {longer} steps (asked for {shorter}" in report, report


def test_demo_stores_absolute_paths_in_its_runs(tmp_path, monkeypatch) -> None:
    """`nar demo` with its default (relative) --out and --data: the tokenizer, token and image paths it hands the
    generator runs are absolute, so the runs sample, evaluate and open in notebooks from any directory."""
    import nar.workflows.demo as demo

    seen = {}

    def train_generator(domain, mode, tokens, images, tokenizer_path, out_dir, *args):
        seen.update(tokens=tokens, images=images, tokenizer=tokenizer_path, out=out_dir)
        raise _Stop

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "ensure_embedded", lambda domain, root, smoke: root / domain)
    monkeypatch.setattr(demo, "ensure_tokenizer", lambda domain, images, out, *a: out / "tokenizer.pt")
    monkeypatch.setattr(demo, "ensure_tokens", lambda images, tok, out, text=None: out)
    monkeypatch.setattr(demo, "train_generator", train_generator)
    for smoke, data in ((True, None), (False, "mine")):
        seen.clear()
        with pytest.raises(_Stop):
            demo.run_demo("emoji", smoke=smoke, data=data, threads=0)
        out = tmp_path / "runs" / f"demo-emoji{'-smoke' if smoke else ''}"
        assert seen == {"tokens": out / "tokens", "images": out / "data" / "emoji" if smoke else tmp_path / "mine" / "emoji",
                        "tokenizer": out / "tokenizer" / "tokenizer.pt", "out": out}


def test_a_demo_run_made_before_paths_were_absolute_is_reused(tmp_path, monkeypatch, caplog) -> None:
    """A generator marker whose fingerprint is the same config with the paths relative to this directory (as the demo
    stored them before) is reused, not retrained, and its fingerprint brought up to date."""
    import json

    import nar.runs.folder as folder
    import nar.workflows.demo as demo
    import nar.workflows.train as wtrain
    from nar.workflows.ablation.runner import fingerprint

    def config(domain, mode, tokens, images, tok, out_dir, smoke, threads, overrides=()):
        return load_config(TrainConfig, ["demo/emoji.yaml"], [
            f"runs_root={out_dir}", f"name={mode}", f"data.root={tokens}", f"tokenizer.path={tok}",
            f"eval.real_root={images}", *overrides])

    fits = []
    monkeypatch.setattr(demo, "generator_config", config)
    monkeypatch.setattr(folder, "has_checkpoints", lambda d: False)
    monkeypatch.setattr(wtrain, "fit", lambda cfg, **kw: fits.append(cfg) or {})
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs" / "demo-emoji"
    rel = ("runs/demo-emoji/tokens", "data/embedded/emoji", "runs/demo-emoji/tokenizer/tokenizer.pt")
    before = config("emoji", "nar", *rel, "runs/demo-emoji", False, 1)
    summary = {"mode": "nar", "steps": before.trainer.max_steps, "fingerprint": fingerprint(before)}
    marker = out / "nar" / "result.json"
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps(summary))
    now = [tmp_path / p for p in rel]
    updated = {**summary, "fingerprint": fingerprint(config("emoji", "nar", *now, out, False, 1))}
    assert updated["fingerprint"] != summary["fingerprint"]
    assert demo.train_generator("emoji", "nar", *now, out, False, 1) == updated and not fits
    assert json.loads(marker.read_text()) == updated
    monkeypatch.chdir(tmp_path / "runs")  # from anywhere now
    assert demo.train_generator("emoji", "nar", *now, out, False, 1) == updated and not fits


def test_a_switch_that_turns_something_off_states_no_default():
    """``nar data verify --no-decode`` stores False into ``decode`` (default True): its help said
    "(default: True)", which reads as tar-only by default."""
    from nar.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["data"]
    verify = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices["verify"]
    text = " ".join(verify.format_help().split())
    assert "--no-decode only read the tar structure" in text and "structure (default: True)" not in text


def test_verbose_shows_the_traceback_of_our_own_errors(caplog) -> None:
    """`nar -v`: the error's traceback too (where it was raised); without -v one line."""
    from nar.cli.main import main

    for argv, traceback in ((["train", "optim.lr=-1"], False), (["-v", "train", "optim.lr=-1"], True)):
        caplog.clear()
        assert main(argv) == 2
        (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert "optim.lr" in record.getMessage() and bool(record.exc_info) == traceback, argv


def test_train_summary_lists_what_ran_degraded(monkeypatch, capsys, tmp_path):
    """preflight's degraded pieces (allowed by allow_degraded=true) are said again in nar train's summary."""
    import types

    import nar.workflows.train as train_workflow
    from nar.cli import train as train_cli

    out = {"trainer": types.SimpleNamespace(is_global_zero=True), "metrics": {"val/loss": 1.0}, "run_dir": tmp_path,
           "checkpoint": tmp_path / "last.ckpt", "samples": None, "degraded": ["eval.metrics fid: no real samples"]}
    monkeypatch.setattr(train_workflow, "generator_config", lambda *a, **k: None)
    monkeypatch.setattr(train_workflow, "fit", lambda cfg, resume=False: out)
    args = argparse.Namespace(config=[], overrides=[], resume=False, gpus=None, nodes=None, cpu=True, devices=None)
    monkeypatch.setattr(train_cli, "device_overrides", lambda a: [], raising=False)
    assert train_cli.run(args) == 0
    assert "degraded:   eval.metrics fid: no real samples" in capsys.readouterr().out


def _tokenizer_file(tmp_path: Path, preset: str) -> str:
    """A tokenizer file (random weights) of ``preset``'s shape, as a trained one would be stored."""
    from nar.tokenizers import build_tokenizer
    from nar.tokenizers.io import save_tokenizer

    path = tmp_path / f"{preset}.pt"
    if not path.is_file():
        save_tokenizer(build_tokenizer(preset), path)
    return str(path)


def _generator_run(tokenizer: str, grid: str) -> TrainConfig:
    return load_config(TrainConfig, [], [f"tokenizer.path={tokenizer}", f"model.grid={grid}", "model.vocab_size=512",
                                         "eval.metrics=[]"])


@pytest.mark.parametrize("preset, grid", [("vq-tiny-emoji", "[2,8,8]"), ("vq-video-tiny-atari", "[8,8]")])
def test_a_tokenizer_of_the_other_kind_is_refused_at_start(tmp_path, preset, grid) -> None:
    """`nar train`/`nar evaluate` refuse an image tokenizer (2 axes) for a 3-axis model.grid and a video tokenizer
    for a 2-axis one at start, naming tokenizer.path (it was a ValueError traceback once a batch was sampled)."""
    from nar.workflows.preflight import check_generator_run

    path = _tokenizer_file(tmp_path, preset)
    with pytest.raises(ConfigError, match=r"model\.grid") as refused:
        check_generator_run(_generator_run(path, grid), needs_data=False)
    assert refused.value.key == "tokenizer.path" and path in str(refused.value)


def test_a_grid_off_the_tokenizers_size_and_a_preset_tokenizer_are_warned_of_once(tmp_path, caplog) -> None:
    """model.grid x the tokenizer's downsampling other than its image_size (or, for videos, num_frames): one warning
    naming both sizes; a preset name as tokenizer.path (random weights): one warning saying so; a trained file whose
    size the grid fits: none."""
    from nar.workflows.preflight import check_generator_run

    def warnings(tokenizer: str, grid: str) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="nar"):
            check_generator_run(_generator_run(tokenizer, grid), needs_data=False)
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]

    image, video = _tokenizer_file(tmp_path, "vq-tiny-emoji"), _tokenizer_file(tmp_path, "vq-video-tiny-atari")
    assert warnings(image, "[8,8]") == [] and warnings(video, "[4,8,8]") == []  # 8x8 tokens x 4 = 32 px
    (off,) = warnings(image, "[16,16]")
    assert "64x64" in off and "32x32" in off and image in off and "model.grid" in off, off
    (frames,) = warnings(video, "[2,8,8]")
    assert "8 frames" in frames and "16 frames" in frames, frames
    (preset,) = warnings("vq-tiny-emoji", "[8,8]")
    assert "tokenizer.path" in preset and "random weights" in preset, preset


@pytest.mark.parametrize("command", [["train-tokenizer", "--data", "emoji"], ["ablate"]])
def test_a_repeated_config_flag_of_a_one_yaml_command_is_refused(command, capsys) -> None:
    """`nar train` merges each --config in order; these commands read one YAML, and a second --config silently
    replaced the first."""
    parser = build_parser()
    assert parser.parse_args([*command, "--config", "a.yaml", "k=1"]).config == "a.yaml"
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([*command, "--config", "a.yaml", "k=1", "--config", "b.yaml"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--config" in err and "a.yaml" in err and "b.yaml" in err and "once" in err
    assert ("--set key=value" in err) == (command[0] == "ablate")  # where the ablation's own keys go
