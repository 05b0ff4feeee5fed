"""Checkpoint files that are complete or absent (Lightning's ``CheckpointIO`` through :mod:`nar.atomic`), and the
fitting of a checkpoint's optional submodules to the module a resume builds."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from nar.atomic import atomic_path

log = logging.getLogger(__name__)


def fit_optional_state(state: dict[str, Any], prefix: str, wanted: bool, fill: Callable[[], Mapping[str, Any]], *,
                       filled: str, dropped: str) -> None:
    """Fit a checkpoint's ``state_dict`` (edited in place) to whether this run builds the optional submodule whose
    keys start with ``prefix`` (``"ema_model."``, ``"discriminator."``), so that Lightning's strict load, which
    follows ``on_load_checkpoint``, finds exactly the module's keys whichever way a resume turned it.

    Wanted but not saved: ``fill()`` supplies its entries (names without ``prefix``) and ``filled`` is logged.
    Saved but not wanted: its entries are dropped and ``dropped`` is logged as a warning (trained weights lost).
    """
    saved = [k for k in state if k.startswith(prefix)]
    if wanted and not saved:
        log.info("%s", filled)
        state.update({f"{prefix}{k}": v for k, v in fill().items()})
    elif not wanted and saved:
        log.warning("%s", dropped)
        for key in saved:
            del state[key]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file in the destination folder, fsync, rename.

    Lightning's default writes the final name directly (from a memory buffer), so a kill or a full disk
    mid-write leaves a truncated ``last.ckpt`` that a resume then fails on. Here the final name only ever
    holds a complete file; a failed write raises :class:`~nar.atomic.WriteError` naming the file.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)
