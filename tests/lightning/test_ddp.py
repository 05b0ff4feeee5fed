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

    # The checkpoint alone: its stored run config and budget (eval.num_samples = 8), one process (this one: a
    # start-up of torch and Lightning fewer).
    from nar.cli.main import main

    assert main(["evaluate", "--ckpt", str(tmp_path / "ddp" / "checkpoints" / "last.ckpt"), "trainer.strategy=auto"]) == 0
    results = json.loads((tmp_path / "ddp" / "eval" / "last-8" / "results.json").read_text())
    assert results["num_samples"] == 8 and "reconstructions" in results["reference"]
    one = results["scores"]
    for key in ("val/loss", "val/fid"):
        assert one[key] == pytest.approx(two[key], rel=1e-4, abs=1e-4), (key, one[key], two[key])
    assert one["val/forward_passes"] == two["val/forward_passes"] == 15


# run(2, ...) as a script: Lightning's DDP launcher starts rank 1 by running the script again; run(1, ...) in the test.
CAPTIONS = r"""
import json, os, sys
from pathlib import Path
import torch
import lightning as L
from nar.config import load_config
from nar.data.readers import partition_bounds
from nar.lightning.callbacks import FrontierDecodingCallback
from nar.lightning.generation import ChunkGenerator
from nar.lightning.generator_module import GeneratorModule, NonFiniteLossError
from nar.lightning.trainer import strategy_for
from nar.runs import TrainConfig
from nar.sampling.seeds import batch_seed

def run(world, out, tokenizer):
    over = {"model.dim": 32, "model.n_layer": 1, "model.n_head": 2, "model.vocab_size": 512, "model.grid": "[8,8]",
            "model.condition": "caption", "model.caption_dim": 8, "model.caption_len": 3, "optim.cond_dropout": 0,
            "tokenizer.path": tokenizer, "trainer.accelerator": "cpu", "trainer.precision": "32-true",
            "trainer.devices": world, "trainer.log_every": 1, "eval.num_samples": 12, "eval.batch_size": 4,
            "eval.grid_samples": 8, "eval.metrics": "[]", "ema.enabled": "false"}
    cfg = load_config(TrainConfig, [], [f"{k}={v}" for k, v in over.items()])
    L.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(0)

    def sample(i):  # caption feature [0, 0] holds the sample's index
        feat = torch.randn(3, 8, generator=g)
        feat[0, 0] = i
        return {"tokens": torch.randint(0, 512, (8, 8), generator=g), "label": torch.tensor(-1), "capfeat": feat,
                "capmask": torch.ones(3, dtype=torch.bool), "caption": f"prompt {i}"}

    train, val = [sample(i) for i in range(16)], [sample(i) for i in range(14)]
    module = GeneratorModule(cfg)

    def trainer(**kw):
        return L.Trainer(accelerator="cpu", devices=world, strategy=strategy_for(cfg), logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, **kw)

    used, plain = {}, ChunkGenerator.tokens_stream
    chunk_of = {batch_seed(cfg.eval.seed, c): c for c in range(3)}  # chunk c is seeded batch_seed(eval.seed, c)
    def stream(self, batches, batch_size=None):  # which captions each chunk samples
        batches = list(batches)
        for cond, _, seed in batches:
            used[chunk_of[seed]] = [int(i) for i in cond[:, 0, 0]]
        return plain(self, batches, batch_size)

    rank = int(os.environ.get("LOCAL_RANK", 0))
    ChunkGenerator.tokens_stream = stream
    try:
        for order in ("contiguous", "interleaved"):
            used.clear()
            decoding = FrontierDecodingCallback(cfg, out / order)
            if order == "contiguous":  # as nar's shard streams: each rank reads its own contiguous block
                lo, hi = partition_bounds(len(val), world, rank)
                loader, sampler = torch.utils.data.DataLoader(val[lo:hi], batch_size=4), False
            else:  # Lightning's DistributedSampler: sample i on rank i % world
                loader, sampler = torch.utils.data.DataLoader(val, batch_size=4), True
            trainer(callbacks=[decoding], use_distributed_sampler=sampler).validate(module, loader, verbose=False)
            (out / f"{order}-{rank}.json").write_text(json.dumps({"chunks": used, "texts": decoding._val_texts}))
    finally:
        ChunkGenerator.tokens_stream = plain
    if world == 1:
        return
    # the caption model without condition dropout trains under DDP (find_unused_parameters=False)
    fitted = trainer(max_steps=2, limit_val_batches=0)
    fitted.fit(module, torch.utils.data.DataLoader(train, batch_size=4))
    (out / f"trained-{rank}").write_text(str(fitted.global_step))
    # a NaN loss on rank 1 only stops both ranks (rank 0 must not wait in the gradient all-reduce)
    plain_ce = torch.nn.functional.cross_entropy
    def cross_entropy(*args, **kwargs):
        loss = plain_ce(*args, **kwargs)
        return loss * float("nan") if rank == 1 and kwargs.get("reduction", "mean") == "mean" else loss
    torch.nn.functional.cross_entropy = cross_entropy
    try:
        trainer(max_steps=4, limit_val_batches=0).fit(module, torch.utils.data.DataLoader(train, batch_size=4))
    except NonFiniteLossError as err:
        (out / f"nan-{rank}").write_text(str(err))

if __name__ == "__main__":
    run(int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_caption_model_under_ddp_trains_and_samples_what_one_process_samples(tokenizer_file: Path,
                                                                             tmp_path: Path) -> None:
    """A caption model without condition dropout trains under DDP (its null caption gets a zero gradient, not
    none), and its decoding validation samples the same captions into the same chunks as one process (the
    captions gathered across ranks in the order of the validation sampler: contiguous blocks or interleaved);
    the grid and its prompts are the one-process grid and prompts. A NaN loss on one rank stops every rank by
    name (the ranks decide together, none is left waiting in an all-reduce)."""
    script = tmp_path / "captions.py"
    script.write_text(CAPTIONS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "MASTER_PORT": str(_free_port())}
    runs = {1: tmp_path / "world1", 2: tmp_path / "world2"}
    done = subprocess.run([sys.executable, str(script), "2", str(runs[2]), str(tokenizer_file)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert all((runs[2] / f"trained-{r}").read_text() == "2" for r in range(2))
    assert "another rank" in (runs[2] / "nan-0").read_text() and "batch 0" in (runs[2] / "nan-1").read_text()
    namespace: dict = {}
    exec(compile(CAPTIONS, str(script), "exec"), namespace)  # one process: here
    namespace["run"](1, runs[1], str(tokenizer_file))
    for order in ("contiguous", "interleaved"):
        one = json.loads((runs[1] / f"{order}-0.json").read_text())
        # one process: the first eval.num_samples validation captions, chunk c = samples [4c, 4c + 4)
        assert one["chunks"] == {str(c): list(range(4 * c, 4 * c + 4)) for c in range(3)}
        two = [json.loads((runs[2] / f"{order}-{r}.json").read_text()) for r in (0, 1)]
        assert set(two[0]["chunks"]) == {"0", "2"} and set(two[1]["chunks"]) == {"1"}, order
        assert {**two[0]["chunks"], **two[1]["chunks"]} == one["chunks"], order
        assert two[0]["texts"] == two[1]["texts"] == one["texts"] == [f"prompt {i}" for i in range(12)], order
        for name in ("step_0000000.png", "step_0000000.txt"):  # a fresh trainer: step 0
            assert (runs[2] / order / "samples" / name).read_bytes() == (runs[1] / order / "samples" / name).read_bytes()
        assert (runs[2] / order / "samples" / "step_0000000.txt").read_text().split("\n")[:8] == one["texts"][:8]
