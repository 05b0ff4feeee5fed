"""Checkpoint files that are complete or absent (Lightning's ``CheckpointIO`` through :mod:`nar.atomic`)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from nar.atomic import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file in the destination folder, fsync, rename.

    Lightning's default writes the final name directly (from a memory buffer), so a kill or a full disk
    mid-write leaves a truncated ``last.ckpt`` that a resume then fails on. Here the final name only ever
    holds a complete file; a failed write raises :class:`~nar.atomic.WriteError` naming the file.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)
