"""DDP on CPU (gloo): 2 processes train a few steps; their synced scores equal a 1-process evaluation of the
same checkpoint on the same samples (val loss over the same val set, FID of the same generated samples)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lightning_helpers import tiny_overrides

from nar.lightning.logs import read_metrics

NAR = [sys.executable, "-m", "nar.cli.main"]


def test_two_process_gloo_matches_one_process(token_root: Path, tokenizer_file: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "MASTER_PORT": "29517"}
    over = tiny_overrides(token_root, tmp_path, name="ddp", tokenizer=tokenizer_file, **{
        "trainer.max_steps": 4, "trainer.devices": 2, "trainer.strategy": "ddp", "data.batch_size": 8,
        "eval.num_samples": 8, "eval.batch_size": 4})
    ddp = subprocess.run([*NAR, "train", *over], env=env, capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    rows = read_metrics(tmp_path / "ddp")
    assert rows and rows[-1]["step"] == 4
    two = rows[-1]

    # The checkpoint alone: its stored run config and budget (eval.num_samples = 8), one process.
    single = subprocess.run([*NAR, "evaluate", "--ckpt", str(tmp_path / "ddp" / "checkpoints" / "last.ckpt"),
                             "trainer.strategy=auto"], env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-4000:]
    results = json.loads((tmp_path / "ddp" / "eval" / "last-8" / "results.json").read_text())
    assert results["num_samples"] == 8 and "reconstructions" in results["reference"]
    one = results["scores"]
    for key in ("val/loss", "val/fid"):
        assert one[key] == pytest.approx(two[key], rel=1e-4, abs=1e-4), (key, one[key], two[key])
    assert one["val/forward_passes"] == two["val/forward_passes"] == 15
