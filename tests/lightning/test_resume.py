"""Reliability: a CPU run killed mid-way resumes with its step, optimizer, scheduler and EMA."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from lightning_helpers import tiny_overrides

from nar.lightning.logs import read_scalars

NAR = [sys.executable, "-m", "nar.cli.main"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def test_kill_and_resume(token_root: Path, tmp_path: Path) -> None:
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
    refused = subprocess.run([*NAR, "train", *over], env=_env(), capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    done = subprocess.run([*NAR, "train", *over, "--resume"], env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

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
