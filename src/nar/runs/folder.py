"""A run folder's checkpoints, found by what they hold rather than by their names.

A copied or moved run folder, a checkpoint truncated by an old non-atomic writer, or one Lightning saved
as ``last-v1.ckpt`` must never send a resume back in time: :func:`resume_checkpoint` reads every
``checkpoints/*.ckpt`` and takes the intact one with the highest step, naming those it had to skip.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nar.errors import ConfigError

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class CheckpointInfo:
    """An intact Lightning checkpoint: its file, optimizer step and epoch."""

    path: Path
    step: int
    epoch: int


def read_checkpoint_info(path: str | Path) -> CheckpointInfo:
    """Open ``path`` (memory-mapped, tensors not read) and return its step; raises on a truncated or
    unreadable file, or one that is not a Lightning training checkpoint."""
    from nar.model.io import sharded_folder

    path = Path(path)
    obj = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    if sharded_folder(obj, path) is not None:  # an FSDP manifest: its shard files are checked complete instead
        return CheckpointInfo(path, int(obj["global_step"]), int(obj.get("epoch", 0)))
    if not isinstance(obj, dict) or "global_step" not in obj or "state_dict" not in obj:
        raise ValueError("not a Lightning training checkpoint (no global_step / state_dict)")
    return CheckpointInfo(path, int(obj["global_step"]), int(obj.get("epoch", 0)))


def intact_checkpoints(run_dir: str | Path) -> tuple[list[CheckpointInfo], list[tuple[Path, str]]]:
    """``(intact checkpoints sorted by step, [(unreadable file, why), ...])`` of ``<run_dir>/checkpoints``."""
    good, bad = [], []
    for path in sorted((Path(run_dir) / CHECKPOINTS).glob("*.ckpt")):
        try:
            good.append(read_checkpoint_info(path))
        except Exception as err:  # noqa: BLE001 - any failure to read means "not intact"
            bad.append((path, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"))
    # Highest step last; at equal steps prefer last.ckpt (it is written after the step file).
    good.sort(key=lambda c: (c.step, c.path.name.startswith("last")))
    return good, bad


def resume_checkpoint(run_dir: str | Path) -> CheckpointInfo | None:
    """The checkpoint a resumed run continues from: the intact one with the highest step (None: none)."""
    good, bad = intact_checkpoints(run_dir)
    for path, why in bad:
        log.warning("resume: skipping %s, truncated or unreadable (%s)", path, why)
    if not good:
        return None
    newest = good[-1]
    log.info("resume: continuing from %s (step %d)%s", newest.path, newest.step,
             f"; {len(bad)} unreadable checkpoint(s) skipped" if bad else "")
    return newest


def refuse_other_model(path: str | Path, mine: dict[str, Any], theirs: dict[str, Any], keys: Iterable[str]) -> None:
    """Refuse to resume checkpoint ``path`` into another network: a :class:`ConfigError` naming every
    ``model.<key>`` of ``keys`` where this run's config (``mine``) differs from what ``path`` was trained with
    (``theirs``), raised before anything is written."""
    differ = [k for k in keys if mine[k] != theirs.get(k)]
    if differ:
        pairs = ", ".join(f"model.{k}={theirs.get(k)} (config: {mine[k]})" for k in differ)
        raise ConfigError(f"--resume: {path} was trained with {pairs}; resume with the run's own settings or start "
                          "another name=")


def has_checkpoints(run_dir: str | Path) -> bool:
    """Whether ``<run_dir>/checkpoints`` holds any ``.ckpt`` file (intact or not)."""
    return any((Path(run_dir) / CHECKPOINTS).glob("*.ckpt"))
