"""Exclusive folder locks: one writer per dataset folder, one training job per run folder.

The lock is a file ``<folder>/.nar.lock`` created with ``O_CREAT | O_EXCL`` (atomic on local and NFSv3+
file systems) holding the holder's host, pid, start time and command. A second process is refused with a
:class:`LockError` that names the holder. A lock whose holder ran on this host and no longer runs is
stale: it is taken over (and logged). A lock from another host cannot be checked from here; the message
says how to remove it if that job is gone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from nar.atomic import pid_alive
from nar.errors import NarError

log = logging.getLogger(__name__)

LOCK_NAME = ".nar.lock"
# An empty lock file younger than this is a writer filling it in, not a dead one.
FILL_SECONDS = 10.0


class LockError(NarError):
    """Another process holds the folder; the message names it."""


def _holder() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)[:500]}


def read_lock(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The holder recorded in ``folder``'s lock, or None when unlocked (an unreadable lock reads as ``{}``)."""
    path = Path(folder) / LOCK_NAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


class FolderLock:
    """``with FolderLock(folder, "training"):`` holds ``folder`` exclusively for the block.

    Re-entrant within one process (a nested lock of the same folder is a no-op), released on exit.
    """

    _held: dict[Path, int] = {}

    def __init__(self, folder: str | os.PathLike[str], purpose: str = "writing") -> None:
        self.folder = Path(folder)
        self.purpose = purpose
        self.path = self.folder / LOCK_NAME

    def acquire(self) -> FolderLock:
        key = self.path.resolve() if self.path.parent.exists() else self.path.absolute()
        if FolderLock._held.get(key):
            FolderLock._held[key] += 1
            self._key = key  # so that this (nested) release counts down too
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_lock(self.folder)
                if holder is None:  # released meanwhile
                    continue
                if self._stale(holder):
                    log.warning("%s: taking over a stale lock of pid %s on %s (%s)", self.folder, holder.get("pid"),
                                holder.get("host"), holder.get("command", "?"))
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
                    continue
                raise LockError(self._refusal(holder)) from None
            with os.fdopen(fd, "w") as fh:
                json.dump({**_holder(), "purpose": self.purpose}, fh)
            FolderLock._held[key] = 1
            self._key = key
            return self
        raise LockError(f"{self.folder}: could not take the lock {self.path}")

    def release(self) -> None:
        key = getattr(self, "_key", None)
        if key is None or key not in FolderLock._held:
            return
        FolderLock._held[key] -= 1
        if FolderLock._held[key] == 0:
            del FolderLock._held[key]
            holder = read_lock(self.folder)
            if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _stale(self, holder: dict[str, Any]) -> bool:
        if not holder:  # unreadable: a writer died between creating and filling it, or is filling it right now
            try:
                return time.time() - self.path.stat().st_mtime > FILL_SECONDS
            except FileNotFoundError:
                return True
        return holder.get("host") == socket.gethostname() and not pid_alive(int(holder.get("pid", -1)))

    def _refusal(self, holder: dict[str, Any]) -> str:
        who = f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('started')}"
        what = holder.get("purpose", "writing")
        cmd = holder.get("command")
        return (f"{self.folder} is locked by another process ({what}: {who}{f', `{cmd}`' if cmd else ''}). "
                f"Wait for it, use another folder, or, if that process is gone, delete {self.path}")
