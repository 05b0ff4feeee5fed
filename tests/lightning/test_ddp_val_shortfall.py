"""A damaged val sample tolerated under 2-process DDP (gloo, CPU): the rank whose share loses it validates one
batch fewer than the other, and the run neither hangs nor miscounts.

``data.val_missing_tolerance`` (default 0.01, at least one sample per process) lets a run's validation go on past
a damaged sample. Under DDP that makes the ranks' numbers of validation batches differ, so nothing in validation
may run a collective per batch (a metric synced on update, an all_gather of samples, ``self.log(...,
sync_dist=True)`` reduced per step, DDP's buffer broadcast on every forward). Each run here is ``nar train`` /
``nar train-tokenizer`` itself, in 2 processes, with one validation inside ``fit`` (the batches go through the DDP
wrapper) and the final validation after it (``trainer.validate``); a hang fails on the subprocess timeout.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning_helpers import tiny_overrides

from nar.data.readers import partition_bounds
from nar.data.shards import write_meta, write_split
from nar.lightning.logs import read_metrics, read_scalars

VAL, BAD, EVAL_BATCH = 10, 7, 2  # rank 0 validates samples 0-4 (3 batches), rank 1 samples 5-9 less 7 (2 batches)
HANG = 120  # seconds: a run still going by then is taken as hung

# Lightning's DDP launcher starts rank 1 by running this script again, so both ranks count their batches.
SCRIPT = r"""
import json, sys
from pathlib import Path

from nar.lightning.callbacks import FrontierDecodingCallback
from nar.lightning.generator_module import GeneratorModule
from nar.lightning.tokenizer_module import TokenizerModule

counts = {}

def counting(step):
    def validation_step(self, batch, batch_idx):
        # "<fit|validate>@<step>": this rank's validation batches at each validation
        key = f"{self.trainer.state.fn.value}@{self.global_step}"
        counts[key] = counts.get(key, 0) + 1
        Path(sys.argv[1], f"batches-{self.global_rank}.json").write_text(json.dumps(counts))
        return step(self, batch, batch_idx)
    return validation_step

GeneratorModule.validation_step = counting(GeneratorModule.validation_step)
TokenizerModule.validation_step = counting(TokenizerModule.validation_step)
decode = FrontierDecodingCallback.run

def decoding(self, trainer, pl_module):
    # what this rank's decoding validation says it scored: generated samples and real (reference) ones
    results = decode(self, trainer, pl_module)
    Path(sys.argv[1], f"decoded-{trainer.global_rank}.json").write_text(json.dumps(self.last_counts))
    return results

FrontierDecodingCallback.run = decoding

if __name__ == "__main__":
    from nar.cli.main import main

    sys.exit(main(sys.argv[2:]))
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_processes(tmp_path: Path, argv: list[str], *, fails: bool = False) -> tuple[str, dict[int, dict[str, int]]]:
    """Run ``nar <argv>`` in 2 processes; returns its stderr and each rank's validation batches by validation
    (a generator run's last decoding counts are in ``<tmp_path>/batches/decoded-<rank>.json``). Fails when the
    run does not finish within :data:`HANG` seconds (the whole process group is killed), or when its exit status
    is not what ``fails`` says."""
    script, out = tmp_path / "counted_nar.py", tmp_path / "batches"
    script.write_text(SCRIPT)
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "MASTER_PORT": str(_free_port())}
    proc = subprocess.Popen([sys.executable, str(script), str(out), *argv], env=env, cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=HANG)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # rank 1 too: Lightning started it in this group
        _, err = proc.communicate()
        pytest.fail(f"the 2-process run did not finish within {HANG} s (a hang):\n{err[-4000:]}")
    assert (proc.returncode != 0) == fails, err[-4000:]
    return err, {r: json.loads(path.read_text()) for r in range(2) if (path := out / f"batches-{r}.json").is_file()}


def _expected_batches() -> dict[int, int]:
    """Validation batches of each rank: its contiguous share of the VAL samples, rank 1's less the damaged one."""
    batches = {}
    for rank in range(2):
        lo, hi = partition_bounds(VAL, 2, rank)
        batches[rank] = math.ceil((hi - lo - (lo <= BAD < hi)) / EVAL_BATCH)
    return batches


def _check_uneven(batches: dict[int, dict[str, int]], validations: set[str]) -> None:
    """Each rank ran every validation in ``validations``, rank 1 with one batch fewer than rank 0."""
    expected = _expected_batches()
    assert expected == {0: 3, 1: 2}  # the point of the layout: the short rank has one batch fewer
    for rank in range(2):
        assert batches[rank] == {v: expected[rank] for v in validations}, (rank, batches[rank])


def _warned_damaged(err: str, root: Path, validations: int) -> None:
    """Each validation warned once, on rank 1, naming the damaged sample (``<shard>:<key>``) and the key."""
    damaged = f"{root / 'val' / 'val-000000.tar'}:{BAD:09d}"
    lines = [line for line in err.splitlines() if "data.val_missing_tolerance" in line]
    assert len(lines) == validations, err[-4000:]
    assert all("WARNING" in line and "(rank 1 of 2" in line and damaged in line for line in lines), lines


TEMPLATES = np.random.default_rng(0).integers(0, 512, size=(4, 8, 8))


def _tokens(i: int) -> np.ndarray:
    """Sample ``i``'s 8x8 token grid: its class's (``i % 4``) template, a tenth of the cells set to 7."""
    codes = TEMPLATES[i % 4].copy()
    codes[np.random.default_rng(i).random((8, 8)) < 0.1] = 7
    return codes


def _token_split(root: Path) -> Path:
    """Token shards, 4 classes: train samples 0-31, val samples ``100 + i`` for i < VAL, but val sample BAD holds
    a 3x3 grid (invalid against meta.json's [8, 8]: skipped)."""

    def sample(i: int) -> dict:
        return {"tokens.npy": _tokens(i)[None].astype(np.int32), "cls": i % 4}

    def val_sample(i: int) -> dict:
        return {**sample(i), "tokens.npy": np.zeros((1, 3, 3), dtype=np.int32)} if i == BAD else sample(100 + i)

    recs = [write_split(root, "train", list(range(32)), make_sample=sample, shard_size=32),
            write_split(root, "val", list(range(VAL)), make_sample=val_sample, shard_size=VAL)]
    write_meta(root, "tokens", recs, classes=[f"c{c}" for c in range(4)], grid=[8, 8], codebook_size=512,
               tokenizer="vq-tiny-emoji")
    return root


def test_generator_run_validates_past_a_damaged_sample_on_one_rank(tokenizer_file: Path, tmp_path: Path) -> None:
    """Rank 1 validates 2 batches, rank 0 3, at the step-3 validation inside fit and at the final one (step 4),
    each with its decoding validation (FID): the run ends, rank 1 names the damaged sample, ``val/samples`` is
    every rank's (VAL - 1) and ``val/loss`` the exact mean over those samples with the run's EMA weights."""
    root = _token_split(tmp_path / "tokens")
    over = tiny_overrides(root, tmp_path, name="short", tokenizer=tokenizer_file, **{
        "trainer.max_steps": 4, "trainer.val_every": 3, "trainer.devices": 2, "trainer.strategy": "ddp",
        "data.batch_size": 4, "data.eval_batch_size": EVAL_BATCH, "model.dim": 32, "model.n_layer": 1,
        "model.n_head": 2, "eval.num_samples": 4, "eval.batch_size": 2, "eval.grid_samples": 4})
    err, batches = _run_two_processes(tmp_path, ["train", *over])
    _check_uneven(batches, {"fit@3", "validate@4"})
    _warned_damaged(err, root, validations=2)
    rows = {row["step"]: row for row in read_metrics(tmp_path / "short")}
    assert set(rows) == {3, 4}
    for row in rows.values():
        assert row["val/samples"] == VAL - 1 and math.isfinite(row["val/fid"]), row
    # the FID reference (the tokenizer's reconstructions of the val tokens each rank validated): every rank's,
    # as `nar evaluate` reports it (num_real)
    for rank in range(2):
        decoded = json.loads((tmp_path / "batches" / f"decoded-{rank}.json").read_text())
        assert decoded == {"generated": 4, "real": VAL - 1}, (rank, decoded)

    # val/loss of the final validation: the mean over the VAL - 1 good samples of each one's mean cross-entropy
    # (not a mean of the ranks' means, 5 and 4 samples), with the EMA weights of last.ckpt (saved at step 4,
    # before that validation)
    from nar.lightning.generator_module import GeneratorModule

    module = GeneratorModule.load_from_checkpoint(tmp_path / "short" / "checkpoints" / "last.ckpt",
                                                  map_location="cpu")
    good = [100 + i for i in range(VAL) if i != BAD]
    tokens = torch.from_numpy(np.stack([_tokens(i) for i in good])).long().reshape(VAL - 1, -1)  # [9, 64]
    with torch.no_grad():
        logits = module.eval_model.eval().forward_train(tokens, torch.tensor(good) % 4, None)  # [9, 64, V]
    per_sample = F.cross_entropy(logits.flatten(0, 1), tokens.flatten(), reduction="none").view(VAL - 1, -1).mean(1)
    # 4 steps leave every loss near log(512): the mean of the ranks' means is only ~1.4e-5 (relative) off
    assert rows[4]["val/loss"] == pytest.approx(per_sample.mean().item(), rel=1e-6)
    ranks_mean = (per_sample[:5].mean() + per_sample[5:].mean()).item() / 2  # what a skewed reduction would log
    assert rows[4]["val/loss"] != pytest.approx(ranks_mean, rel=1e-6)


def test_a_shortfall_beyond_the_tolerance_ends_the_run_on_every_rank(tokenizer_file: Path, tmp_path: Path) -> None:
    """With data.val_missing_tolerance=0 the rank that lost a sample fails its validation naming the sample and the
    key; the other rank, waiting in the next collective, must end too (gloo: its peer's connection closes), not hang."""
    root = _token_split(tmp_path / "tokens")
    over = tiny_overrides(root, tmp_path, name="strict", tokenizer=tokenizer_file, **{
        "trainer.max_steps": 4, "trainer.val_every": 3, "trainer.devices": 2, "trainer.strategy": "ddp",
        "data.batch_size": 4, "data.eval_batch_size": EVAL_BATCH, "data.val_missing_tolerance": 0,
        "model.dim": 32, "model.n_layer": 1, "model.n_head": 2, "eval.num_samples": 4, "eval.batch_size": 2,
        "eval.grid_samples": 4})
    err, _ = _run_two_processes(tmp_path, ["train", *over], fails=True)
    damaged = f"{root / 'val' / 'val-000000.tar'}:{BAD:09d}"
    assert any("ERROR" in line and "(rank 1 of 2" in line and damaged in line
               and "data.val_missing_tolerance=0" in line for line in err.splitlines()), err[-4000:]


def _image_split(root: Path) -> Path:
    """8x8 px images, 2 classes; val sample BAD is not a PNG (undecodable: skipped)."""
    from PIL import Image

    from nar.data.encode import encode_png

    def sample(i: int) -> dict:
        pixels = np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        return {"png": encode_png(Image.fromarray(pixels)), "cls": i % 2}

    def val_sample(i: int) -> dict:
        return {"png": b"not a png", "cls": 0} if i == BAD else sample(100 + i)

    recs = [write_split(root, "train", list(range(16)), make_sample=sample, shard_size=16),
            write_split(root, "val", list(range(VAL)), make_sample=val_sample, shard_size=VAL)]
    write_meta(root, "image", recs, classes=["a", "b"], image_size=8)
    return root


def test_tokenizer_run_validates_past_a_damaged_sample_on_one_rank(tmp_path: Path) -> None:
    """The tokenizer's validation logs val/loss and val/samples with sync_dist and feeds PSNR, SSIM, codebook usage
    and rFID every batch: with one batch fewer on rank 1 (fit at step 3, then the final validation at step 4) the
    run ends, rank 1 names the damaged sample and val/samples counts both ranks' VAL - 1."""
    root = _image_split(tmp_path / "img")
    over = {"runs_root": tmp_path, "name": "tok", "model.image_size": 8, "trainer.accelerator": "cpu",
            "trainer.devices": 2, "trainer.strategy": "ddp", "trainer.max_steps": 4, "trainer.val_every": 3,
            "trainer.threads": 1, "data.batch_size": 2, "data.eval_batch_size": EVAL_BATCH, "data.num_workers": 0,
            "data.hflip": "false", "val.log_samples": 0}
    err, batches = _run_two_processes(tmp_path, ["train-tokenizer", "--root", str(root),
                                                 *(f"{k}={v}" for k, v in over.items())])
    _check_uneven(batches, {"fit@3", "validate@4"})
    _warned_damaged(err, root, validations=2)
    scalars = read_scalars(tmp_path / "tok", "val/")
    assert [value for _, value in scalars["val/samples"]] == [VAL - 1, VAL - 1], scalars["val/samples"]
    for key in ("val/rfid", "val/psnr", "val/loss"):
        assert len(scalars[key]) == 2 and all(math.isfinite(value) for _, value in scalars[key]), key
