"""``<run>/metrics.jsonl``: every validation's ``val/*`` scalars, one JSON line per validated step (rank 0), with
the step and the seconds spent training so far (learning curves against steps and against wall-clock)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

import lightning as L
from nar.atomic import atomic_open

log = logging.getLogger(__name__)


class MetricsFileCallback(Callback):
    """Appends every validation's ``val/*`` scalars to ``<run>/metrics.jsonl`` (rank 0), for scripts and tests.

    One row per step: a step validated again (a run stopped in or right after a validation resumes from that
    step's checkpoint and validates it again) replaces its earlier row, in place. That, and a line torn by a
    kill mid-append, is handled by rewriting the file atomically; otherwise a row is appended.

    ``train_seconds`` counts the time inside training steps only (validation, checkpointing and start-up
    excluded), carried over a resume through the checkpoint, so curves of different schedules compare the
    cost of learning, not of evaluating.
    """

    def __init__(self, run_dir: str | Path) -> None:
        super().__init__()
        self.path = Path(run_dir) / "metrics.jsonl"
        self.train_seconds = 0.0
        self._batch_start: float | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._batch_start is not None:
            self.train_seconds += time.perf_counter() - self._batch_start
            self._batch_start = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        row: dict[str, Any] = {"step": trainer.global_step, "train_seconds": round(self.train_seconds, 3)}
        row.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = self.path.read_text() if self.path.is_file() else ""
        rows, intact = _parse_rows(text, self.path)
        if intact and all(r.get("step") != row["step"] for r in rows):
            with self.path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            return
        at = next((i for i, r in enumerate(rows) if r.get("step") == row["step"]), len(rows))
        rows = [*rows[:at], row, *(r for r in rows[at:] if r.get("step") != row["step"])]
        with atomic_open(self.path) as fh:  # complete or absent: a kill now leaves the previous file
            fh.writelines(json.dumps(r) + "\n" for r in rows)

    def state_dict(self) -> dict[str, Any]:
        return {"train_seconds": self.train_seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_seconds = float(state_dict.get("train_seconds", 0.0))


def _parse_rows(text: str, path: Path) -> tuple[list[dict[str, Any]], bool]:
    """The rows of a ``metrics.jsonl`` text, and whether every line parsed and the text ends with a newline
    (a kill mid-append leaves a fragment; it is dropped, with a warning)."""
    rows, intact = [], not text or text.endswith("\n")
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s: dropping a torn line (a run killed while writing it): %.80s", path, line)
            intact = False
    return rows, intact
