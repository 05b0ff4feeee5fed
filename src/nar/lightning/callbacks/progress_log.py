"""Training progress as log lines (for runs whose stderr is a file, where a progress bar shows only at exit)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback

import lightning as L
from nar.progress import Progress


class LogProgressCallback(Callback):
    """Every ``every_s`` seconds on rank 0: ``train: step 1200/5000 (24 %), 3.1 step/s, 20:26 left, loss 5.12``."""

    def __init__(self, every_s: float = 30.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._progress: Progress | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self._progress = Progress(trainer.max_steps, "train", unit="step", every_s=self.every_s, tty=False)
        self._progress.done = trainer.global_step  # a resumed run starts where it stopped
        self._progress.start_done = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        p = self._progress
        if p is None:
            return
        loss = trainer.callback_metrics.get("train/loss")
        p.desc = f"train (loss {float(loss):.4g})" if loss is not None else "train"
        p.update(trainer.global_step - p.done)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
