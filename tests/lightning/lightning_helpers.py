"""Helpers of the Lightning-layer tests (imported by conftest and the tests)."""

from __future__ import annotations

from pathlib import Path

from token_data import write_token_shards  # noqa: F401  (re-exported for the Lightning tests)


def tiny_overrides(root: Path, runs: Path, name: str = "t", tokenizer: str | Path = "vq-tiny-emoji", **extra) -> list[str]:
    """key=value overrides of a seconds-long CPU run on ``root``."""
    base = {
        "name": name, "runs_root": str(runs), "data.root": str(root), "data.batch_size": 16,
        "data.num_workers": 0, "data.shuffle_buffer": 64, "data.eval_batch_size": 16,
        "model.dim": 64, "model.n_layer": 2, "model.n_head": 4, "model.vocab_size": 512,
        "model.grid": "[8,8]", "model.num_classes": 4,
        "tokenizer.path": str(tokenizer), "trainer.accelerator": "cpu", "trainer.precision": "32-true",
        "trainer.max_steps": 20, "trainer.val_every": 0, "trainer.ckpt_every": 10, "trainer.log_every": 5,
        "trainer.threads": 1, "optim.lr": 3e-3, "ema.decay": 0.99, "eval.num_samples": 8, "eval.batch_size": 4,
        "eval.grid_samples": 8, "eval.metrics": "[fid]",
        "allow_degraded": "true",  # FID against tokenizer reconstructions: no real images in these tests
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def sigterm_at_decode(monkeypatch, at: int = 1) -> list[int]:
    """SIGTERM to this process as the ``at``-th chunk of a decoding validation is decoded (the handler of the
    running fit or validate takes it, as a cluster's preemption); returns the batch sizes decoded, in order."""
    import os
    import signal

    from nar.lightning.generation import ChunkGenerator

    plain, decoded = ChunkGenerator.decode, []

    def decode(self, tokens):
        decoded.append(tokens.shape[0])
        if len(decoded) == at:
            os.kill(os.getpid(), signal.SIGTERM)
        return plain(self, tokens)

    monkeypatch.setattr(ChunkGenerator, "decode", decode)
    return decoded
