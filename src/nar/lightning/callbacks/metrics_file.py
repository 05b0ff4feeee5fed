"""``<run>/metrics.jsonl``: every validation's ``val/*`` scalars, one JSON line each (rank 0)."""

from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch.callbacks import Callback

import lightning as L


class MetricsFileCallback(Callback):
    """Appends every validation's ``val/*`` scalars to ``<run>/metrics.jsonl`` (rank 0), for scripts and tests."""

    def __init__(self, run_dir: str | Path) -> None:
        super().__init__()
        self.path = Path(run_dir) / "metrics.jsonl"

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        row = {"step": trainer.global_step}
        row.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
