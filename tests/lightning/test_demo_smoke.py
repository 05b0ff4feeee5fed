"""`nar demo --smoke`: the whole demo pipeline (embedded data -> tokenizer -> tokens -> NAR -> frontier
decoding, FID, PNG grid, TensorBoard) on tiny budgets, from an empty folder."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

from nar.lightning.logs import read_metrics, read_scalars


def test_demo_smoke(tmp_path: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "nar.cli.main", "demo", "--domain", "emoji", "--smoke",
                           "--out", str(out), "--threads", "2"], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = proc.stdout
    assert "fid:" in report and "samples:" in report and "tensorboard --logdir" in report
    run = out / "nar"
    assert (run / "samples" / "latest.png").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    row = read_metrics(run)[-1]
    assert math.isfinite(row["val/fid"]) and row["val/forward_passes"] == 15
    scalars = read_scalars(run)
    assert {"train/loss", "train/loss_row", "train/loss_col", "val/fid", "val/images_per_sec"} <= set(scalars)
