"""Taking over a stale folder lock is exclusive: of two jobs that found the same dead holder, one holds the folder."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pytest

from nar import locks
from nar.locks import CLAIM_NAME, LOCK_NAME, FolderLock, LockError, read_lock


def dead_pid() -> int:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


def stale_lock(folder, pid: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "started": "earlier",
                                                "command": "nar train (killed)", "purpose": "training"}))


def test_a_late_taker_of_a_stale_lock_leaves_the_first_takers_lock(tmp_path, monkeypatch, caplog):
    folder = tmp_path / "run"
    stale_lock(folder, dead_pid())
    monkeypatch.setattr(FolderLock, "_held", {})
    first: list[FolderLock] = []
    judge = FolderLock._stale

    def late(self, holder):
        # The late job has read the dead holder and judged it; before it acts, the first job takes the lock over
        # (in this process, as if it were another one: its lock names this pid, which is alive).
        stale = judge(self, holder)
        if stale and not first:
            first.append(FolderLock(folder, "training first"))
            first[0].acquire()
        return stale

    monkeypatch.setattr(FolderLock, "_stale", late)
    with pytest.raises(LockError, match=rf"{re.escape(str(folder))} is locked by another process \(training first: "
                                        rf"pid {os.getpid()}"):
        FolderLock(folder, "training late").acquire()
    assert read_lock(folder)["purpose"] == "training first"  # the first job's lock is still there
    assert not (folder / CLAIM_NAME).exists()
    assert sum("taking over a stale lock" in r.getMessage() for r in caplog.records) == 1
    first[0].release()
    assert not (folder / LOCK_NAME).exists()


def test_a_takeover_claim_of_a_dead_taker_is_cleared(tmp_path, monkeypatch, caplog):
    folder = tmp_path / "run"
    stale_lock(folder, dead_pid())
    os.link(folder / LOCK_NAME, folder / CLAIM_NAME)  # a taker died between its claim and its takeover
    monkeypatch.setattr(locks, "CLAIM_WAIT", 0.001)
    with pytest.raises(LockError, match="could not take the lock"):  # a claim this young: a taker at work
        with FolderLock(folder, "training"):
            pass
    monkeypatch.setattr(locks, "FILL_SECONDS", 0.0)
    with FolderLock(folder, "training"):
        assert read_lock(folder)["pid"] == os.getpid()
    assert any("died while taking over a stale lock" in r.getMessage() for r in caplog.records)
    assert not (folder / LOCK_NAME).exists() and not (folder / CLAIM_NAME).exists()


def test_a_lock_is_re_entrant_for_a_new_folder_under_a_symlink(tmp_path, monkeypatch):
    """The first lock creates the folder; the nested one must find it under the same (resolved) key."""
    monkeypatch.setattr(FolderLock, "_held", {})
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")  # e.g. runs_root on a scratch disk
    folder = tmp_path / "link" / "new-run"  # does not exist yet
    with FolderLock(folder, "training"):
        with FolderLock(folder, "nested"):
            assert read_lock(folder)["purpose"] == "training"
        assert (folder / LOCK_NAME).exists()  # the nested release keeps the outer lock
    assert not (folder / LOCK_NAME).exists() and FolderLock._held == {}
