"""A run folder's checkpoints, found by what they hold rather than by their names.

A copied or moved run folder, a checkpoint truncated by an old non-atomic writer, or one Lightning saved
as ``last-v1.ckpt`` must never send a resume back in time: :func:`resume_checkpoint` reads every
``checkpoints/*.ckpt`` and takes the intact one with the highest step, naming those it had to skip.

A run config stores paths as they were given, often relative to the folder the run was made from
(``tokenizer.path: runs/demo-emoji/tokenizer/tokenizer.pt``): :func:`resolve_stored_paths` finds them again from
any working directory, for everything that loads a stored run config (``nar sample``, ``nar evaluate``, notebooks).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePath
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


# Keys of a generator run config that name files or folders (``section.key``), as the run was given them.
STORED_PATH_KEYS = ("tokenizer.path", "data.root", "eval.real_root", "eval.reference_stats", "eval.inception_weights",
                    "eval.i3d_path", "text.path", "init_from")


def run_dir_of(ckpt: str | Path) -> Path | None:
    """The run folder of a checkpoint in ``<run>/checkpoints/`` (None for a checkpoint anywhere else)."""
    ckpt = Path(ckpt)
    return ckpt.parent.parent if ckpt.parent.name == CHECKPOINTS else None


def made_from(run_dir: str | Path, stored: dict[str, Any]) -> Path | None:
    """The working directory run ``run_dir`` was made in: ``run_dir`` less the stored ``runs_root/name``, when
    those are relative and ``run_dir`` ends with them (None: it cannot be told)."""
    if not stored.get("name"):
        return None
    rel = PurePath(str(stored.get("runs_root", "")), str(stored["name"]))
    parts = [p for p in rel.parts if p != "."]
    if rel.is_absolute() or ".." in parts:
        return None
    here = Path(os.path.abspath(run_dir))  # lexical: a symlinked run folder keeps the path it was reached by
    if list(here.parts[-len(parts):]) != parts:
        return None
    return Path(*here.parts[:-len(parts)])


def resolve_run_path(run_dir: str | Path | None, stored: dict[str, Any], path: str | Path, key: str = "") -> str:
    """``path`` as stored in run config ``stored`` of the run in ``run_dir``, found from the current directory.

    A relative path is the run's own file under the folder the run was made in (:func:`made_from`) when that
    exists: an absolute path to it comes back (logged), unless ``path`` names that same file from here. Otherwise
    ``path`` comes back unchanged, for the loader to read it from here or name it in its error. Empty strings,
    absolute paths and names that are not files (a tokenizer preset) come back as they are.
    """
    text = str(path)
    if not text or Path(text).is_absolute() or run_dir is None:
        return text
    base = made_from(run_dir, stored)
    found = base / text if base is not None else None
    if found is None or not found.exists():
        return text
    if Path(text).exists() and os.path.samefile(text, found):  # the run is read from where it was made
        return text
    # A file of the same name here would be another one (another checkout's tokenizer): the run's own is meant.
    log.info("%s: %s is the run's %s (it was made in %s, not %s)", key or "run path", text, found, base, Path.cwd())
    return str(found)


def resolve_stored_paths(run_dir: str | Path | None, stored: dict[str, Any],
                         keys: Iterable[str] = STORED_PATH_KEYS) -> dict[str, Any]:
    """A copy of run config ``stored`` (a plain dict, as checkpoints keep it) with each of ``keys`` (``section.key``,
    default :data:`STORED_PATH_KEYS`) through :func:`resolve_run_path`, so a run made anywhere loads from anywhere."""
    out = dict(stored)
    for dotted in keys:
        section, _, key = dotted.rpartition(".")
        holder = out.get(section) if section else out
        if not isinstance(holder, dict) or not holder.get(key):
            continue
        resolved = resolve_run_path(run_dir, stored, holder[key], dotted)
        if resolved != holder[key]:
            if section:
                out[section] = holder = dict(holder)
            holder[key] = resolved
    return out
