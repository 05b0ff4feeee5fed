"""Reliability: a CPU run killed mid-way resumes with its step, optimizer, scheduler and EMA."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning_helpers import tiny_overrides

from nar.lightning.logs import read_scalars

NAR = [sys.executable, "-m", "nar.cli.main"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def test_kill_and_resume(token_root: Path, tmp_path: Path, caplog) -> None:
    """SIGKILL of a `nar train` process after a checkpoint; the refused restart and the resume are the CLI's main
    in this process (no signal to take there, and two start-ups of torch and Lightning fewer)."""
    from nar.cli.main import main

    over = tiny_overrides(token_root, tmp_path, name="killed", **{
        "trainer.max_steps": 60, "trainer.ckpt_every": 10, "eval.metrics": "[]", "eval.num_samples": 4})
    ckpts = tmp_path / "killed" / "checkpoints"
    proc = subprocess.Popen([*NAR, "train", *over], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while not list(ckpts.glob("step_*.ckpt")) or not (ckpts / "last.ckpt").is_file():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
        time.sleep(0.3)  # let the checkpoint file be complete
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    saved = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)
    killed_at = saved["global_step"]
    assert 10 <= killed_at < 60, killed_at
    first_run = read_scalars(tmp_path / "killed", "train/loss")["train/loss"]

    # Without --resume the folder is protected; with it, training continues from last.ckpt.
    assert main(["train", *over]) == 2 and "--resume" in caplog.text, caplog.text
    assert main(["train", *over, "--resume"]) == 0

    final = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == 60
    # the scheduler and optimizer continued (step counts carried over)
    assert final["lr_schedulers"][0]["last_epoch"] == 60
    assert int(next(iter(final["optimizer_states"][0]["state"].values()))["step"]) == 60
    # the EMA was restored, not re-initialised from the weights: it still lags the weights
    state = final["state_dict"]
    gap = max((state[k] - state["ema_model." + k[len("model."):]]).abs().max().item()
              for k in state if k.startswith("model.") and state[k].dtype.is_floating_point)
    assert gap > 0

    losses = read_scalars(tmp_path / "killed", "train/loss")["train/loss"]
    resumed = [(s, v) for s, v in losses if s >= killed_at and (s, v) not in first_run]
    assert resumed and resumed[0][0] >= killed_at  # step numbers continue, they do not restart at 0
    initial = first_run[0][1]
    assert resumed[0][1] < initial - 0.5, (initial, resumed[:3])  # the loss continues, not from scratch
    assert losses[-1][1] < initial - 1.0


def _states(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(weights, EMA weights)`` of a checkpoint, both keyed by the model's parameter names."""
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    return ({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")},
            {k[len("ema_model."):]: v for k, v in state.items() if k.startswith("ema_model.")})


@pytest.mark.parametrize("turned_on", [True, False])
def test_resume_may_turn_the_ema_on_or_off(token_root: Path, tmp_path: Path, turned_on: bool, caplog) -> None:
    """Starting an EMA in the middle of a run is a normal thing to do: the EMA starts from the resumed weights
    (said in the log). Turning it off drops the saved EMA weights, with a warning. Either way the run goes on."""
    from nar.workflows.train import fit, generator_config

    over = tiny_overrides(token_root, tmp_path, name="flip", **{
        "trainer.max_steps": 2, "trainer.ckpt_every": 2, "eval.metrics": "[]", "eval.num_samples": 4,
        "ema.decay": 0.9999, "ema.warmup": "false", "model.n_layer": 1})
    fit(generator_config([], [*over, f"ema.enabled={not turned_on}"]), enable_progress_bar=False,
        final_validation=False)
    ckpts = tmp_path / "flip" / "checkpoints"
    before, _ = _states(ckpts / "last.ckpt")
    with caplog.at_level(logging.INFO, logger="nar"):
        done = fit(generator_config([], [*over, f"ema.enabled={turned_on}", "trainer.max_steps=3"]), resume=True,
                   enable_progress_bar=False, final_validation=False)
    assert done["global_step"] == 3
    after, ema = _states(ckpts / "last.ckpt")
    if turned_on:  # one EMA step of 1e-4 from the step-2 weights
        assert "the EMA starts from the resumed weights" in caplog.text
        assert set(ema) == set(after)
        for k, w in before.items():
            if w.is_floating_point():
                assert torch.allclose(ema[k], w + 1e-4 * (after[k] - w), atol=1e-6), k
    else:
        assert "drops the EMA weights" in caplog.text
        assert not ema


def test_a_sharded_run_starts_an_ema_at_a_resume_only_from_a_sharded_checkpoint(tmp_path: Path, caplog) -> None:
    """FSDP's loader reads exactly the module's keys: from a one-file .ckpt without an EMA (written by an
    unsharded run) an EMA cannot start, refused by name before anything is written; from a sharded checkpoint
    it can (ShardedStrategy.load_checkpoint, tests/lightning/test_fsdp.py); turning the EMA off is allowed,
    with a warning."""
    from nar.config import load_config, to_dict
    from nar.errors import ConfigError
    from nar.model.io import LIGHTNING_MARK
    from nar.runs import TrainConfig
    from nar.workflows.train import check_resumable

    def run(ema: bool, strategy: str) -> TrainConfig:
        return load_config(TrainConfig, [], [f"ema.enabled={ema}", f"trainer.strategy={strategy}",
                                             f"runs_root={tmp_path}"])

    for ema in (False, True):
        torch.save({LIGHTNING_MARK: "2", "hyper_parameters": {"cfg": to_dict(run(ema, "fsdp"))}}, tmp_path / f"{ema}.ckpt")
    with pytest.raises(ConfigError, match=r"one-file.*ema\.enabled.*fsdp"):
        check_resumable(run(True, "fsdp"), tmp_path / "False.ckpt")
    check_resumable(run(True, "ddp"), tmp_path / "False.ckpt")  # the module starts the EMA from the weights
    with caplog.at_level(logging.WARNING, logger="nar"):
        check_resumable(run(False, "fsdp"), tmp_path / "True.ckpt")
    assert "drops the EMA weights" in caplog.text


def test_a_sharded_run_starting_an_ema_reads_the_checkpoint_it_resumes_once(tmp_path: Path, monkeypatch) -> None:
    """The check that a sharded checkpoint can start an EMA reads its run config and its shard entry from one
    load of the file."""
    import nar.model.io as io
    from nar.config import load_config, to_dict
    from nar.runs import TrainConfig
    from nar.workflows.train import check_resumable

    def run(ema: bool) -> TrainConfig:
        return load_config(TrainConfig, [], [f"ema.enabled={ema}", "trainer.strategy=fsdp", f"runs_root={tmp_path}"])

    manifest = tmp_path / "step.ckpt"  # a sharded manifest of a run without an EMA; its folder lists no files
    (tmp_path / "shards").mkdir()
    torch.save({io.LIGHTNING_MARK: "2", "hyper_parameters": {"cfg": to_dict(run(False))}, "state_dict": {},
                io.SHARDED_KEY: {"folder": "shards", "files": {}}}, manifest)
    loads: list[Path] = []
    load_file = io.load_file

    def counting(path, *args, **kwargs):
        loads.append(Path(path))
        return load_file(path, *args, **kwargs)

    monkeypatch.setattr(io, "load_file", counting)
    check_resumable(run(True), manifest)  # allowed: the EMA starts from the sharded weights
    assert loads == [manifest]
