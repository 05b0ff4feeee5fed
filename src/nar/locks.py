"""Exclusive folder locks: one writer per dataset folder, one training job per run folder.

The lock is a file ``<folder>/.nar.lock`` created with ``O_CREAT | O_EXCL`` (atomic on local and NFSv3+
file systems) holding the holder's host, pid, start time and command. A second process is refused with a
:class:`LockError` that names the holder. A lock whose holder ran on this host and no longer runs is
stale: it is taken over (and logged). A lock from another host cannot be checked from here; the message
says how to remove it if that job is gone.

Taking over is itself exclusive: the taker hard-links the lock to ``<folder>/.nar.lock.takeover`` (atomic; it
fails while another process is taking over), judges the linked file again and only then removes the lock. So
of two jobs that found the same stale lock, the late one never removes the lock the first one has made since.
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
# A second name of the lock file while one process takes the stale lock over (see the module docstring).
CLAIM_NAME = LOCK_NAME + ".takeover"
# An empty lock file younger than this is a writer filling it in, not a dead one; a takeover claim older than
# this was left by a process that died while taking over.
FILL_SECONDS = 10.0
# Tries to take the lock (a takeover in progress elsewhere is waited for, CLAIM_WAIT seconds a try).
ATTEMPTS = 100
CLAIM_WAIT = 0.01


class LockError(NarError):
    """Another process holds the folder; the message names it."""


def _holder() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)[:500]}


def read_lock(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The holder recorded in ``folder``'s lock, or None when unlocked (an unreadable lock reads as ``{}``)."""
    return _read(Path(folder) / LOCK_NAME)


def _read(path: Path) -> dict[str, Any] | None:
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
        # The folder first, then its resolved path as the key: a key taken before the folder existed would keep
        # an unresolved symlink, and a nested lock (which resolves it) would be refused by its own process.
        self.folder.mkdir(parents=True, exist_ok=True)
        key = self.path.resolve()
        if FolderLock._held.get(key):
            FolderLock._held[key] += 1
            self._key = key  # so that this (nested) release counts down too
            return self
        for _ in range(ATTEMPTS):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_lock(self.folder)
                if holder is None:  # released meanwhile
                    continue
                if self._stale(holder):
                    self._take_over(holder)
                    continue  # taken over, or another process was first: its lock is judged next
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

    def _take_over(self, holder: dict[str, Any]) -> None:
        """Remove the lock judged stale from ``holder``, unless another process took it over meanwhile.

        The lock is hard-linked to :data:`CLAIM_NAME` first: only one process can hold that name, and while it
        does nobody else removes the lock, so the file it links is the one removed. That file is judged again
        (another process may have replaced the stale lock by its own since ``holder`` was read).
        """
        claim = self.folder / CLAIM_NAME
        try:
            os.link(self.path, claim)
        except FileNotFoundError:  # released or taken over meanwhile
            return
        except FileExistsError:  # another process is taking it over: wait for it (or clear a dead one's claim)
            self._clear_dead_claim(claim)
            time.sleep(CLAIM_WAIT)
            return
        except OSError:  # a file system without hard links: remove it if it still reads the same
            if read_lock(self.folder) == holder:
                self._remove_stale(holder)
            return
        try:
            claimed = _read(claim)
            if claimed is not None and self._stale(claimed):
                self._remove_stale(claimed)
        finally:
            with contextlib.suppress(FileNotFoundError):
                claim.unlink()

    def _remove_stale(self, holder: dict[str, Any]) -> None:
        log.warning("%s: taking over a stale lock of pid %s on %s (%s)", self.folder, holder.get("pid"),
                    holder.get("host"), holder.get("command", "?"))
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _clear_dead_claim(self, claim: Path) -> None:
        """Remove a takeover claim older than :data:`FILL_SECONDS` (its process died between link and unlink)."""
        try:
            age = time.time() - claim.stat().st_ctime  # the link's time (a link changes the file's ctime)
        except FileNotFoundError:
            return
        if age > FILL_SECONDS:
            log.warning("%s: removing %s, left %.0f s ago by a process that died while taking over a stale lock",
                        self.folder, claim, age)
            with contextlib.suppress(FileNotFoundError):
                claim.unlink()

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
