"""Helpers of the ablation tests."""

from __future__ import annotations

from pathlib import Path


def tiny_train_overrides(tokens: Path) -> list[str]:
    """Shared ``key=value`` overrides of a seconds-long CPU grid on ``tokens``."""
    over = {
        "data.root": str(tokens), "data.batch_size": 8, "data.eval_batch_size": 8, "data.num_workers": 0,
        "data.shuffle_buffer": 32, "data.limit_val_samples": 16,
        "model.dim": 32, "model.n_layer": 1, "model.n_head": 2, "model.vocab_size": 64, "model.grid": "[4,4]",
        "model.num_classes": 4, "tokenizer.path": "vq-tiny-emoji", "trainer.accelerator": "cpu",
        "trainer.precision": "32-true", "trainer.max_steps": 3, "trainer.val_every": 3, "trainer.ckpt_every": 3,
        "trainer.log_every": 1, "trainer.threads": 1, "optim.lr": 3e-3, "ema.decay": 0.9,
        "eval.num_samples": 4, "eval.batch_size": 4, "eval.grid_samples": 4, "eval.metrics": "[fid]",
        "allow_degraded": "true",  # FID against tokenizer reconstructions: no real images in these tests
    }
    return [f"{k}={v}" for k, v in over.items()]
