"""The demo from an installed wheel: ``pip install .`` (not editable), run away from the checkout.

The wheel is built without dependencies and installed into a folder put first on ``PYTHONPATH`` (the
test venv supplies torch and the rest), then ``python -m nar demo --smoke`` runs from an empty working
directory: the whole pipeline (embedded data -> tokenizer -> tokens -> NAR -> frontier decoding, FID, PNG
grid, TensorBoard) on tiny budgets, with its configs read from the package, not from ``experiments/``.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nar.lightning.logs import read_metrics, read_scalars

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("wheel")
    # Build from a copy of what the wheel is made of: an in-tree build would leave build/ in the checkout,
    # and stale files there would end up in the wheel.
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("src", "experiments"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info",
                                                                                  "results"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(source)],
                   check=True, capture_output=True, timeout=600)
    wheel = next((tmp / "dist").glob("nar-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp / "site"), str(wheel)], check=True,
                   capture_output=True, timeout=600)
    return {**os.environ, "PYTHONPATH": str(tmp / "site"), "CUDA_VISIBLE_DEVICES": ""}


def nar(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nar", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=900)


def test_the_wheel_is_what_runs(installed, tmp_path: Path) -> None:
    probe = subprocess.run([sys.executable, "-c", "import nar, nar.config as c; print(nar.__file__); "
                            "print(c.config_path('demo/emoji.yaml'))"], env=installed, cwd=tmp_path,
                           capture_output=True, text=True, check=True)
    module, config = probe.stdout.split()
    assert installed["PYTHONPATH"] in module and installed["PYTHONPATH"] in config
    help_text = nar(installed, tmp_path, "demo", "--help")
    assert help_text.returncode == 0 and "--smoke" in help_text.stdout


def test_demo_smoke_from_the_wheel(installed, tmp_path: Path) -> None:
    proc = nar(installed, tmp_path, "demo", "--domain", "emoji", "--smoke", "--out", "demo", "--threads", "2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = proc.stdout
    assert "fid:" in report and "samples:" in report and "tensorboard --logdir" in report
    run = tmp_path / "demo" / "nar"
    assert (run / "samples" / "latest.png").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    row = read_metrics(run)[-1]
    assert math.isfinite(row["val/fid"]) and row["val/forward_passes"] == 15
    scalars = read_scalars(run)
    assert {"train/loss", "train/loss_row", "train/loss_col", "val/fid", "val/images_per_sec"} <= set(scalars)
