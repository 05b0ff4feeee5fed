"""Files that are either complete or absent: written to a temporary file in the destination folder,
flushed to disk, then renamed over the final name.

A kill, a full disk or a crash while writing leaves at most a ``.<name>.<pid>@<host>.tmp`` file beside the
destination (never a truncated file under the final name, never an orphan in another file system's
``/tmp``); :func:`remove_stale_temporaries` clears those left by dead writers of this host. The host is in the
name because a folder on a shared file system may be written from several nodes at once, and a pid says
nothing about another node's processes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from nar.errors import RuntimeFailure

TMP_SUFFIX = ".tmp"


class WriteError(RuntimeFailure):
    """A file could not be written (read-only folder, full disk, …); the message names it."""


def _host() -> str:
    """This machine's name as it goes into temporary names (no dots, which separate the name's parts)."""
    return socket.gethostname().replace(".", "-") or "localhost"


def temporary_name(path: Path) -> Path:
    """``.<name>.<pid>@<host>.tmp`` beside ``path``: same file system (rename is atomic), unique per process
    across the nodes that share the folder."""
    return path.with_name(f".{path.name}.{os.getpid()}@{_host()}{TMP_SUFFIX}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed to ``path`` (and the folder
    entry fsynced), on any exception it is removed and the error re-raised as :class:`WriteError` naming
    ``path`` when it is an ``OSError``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WriteError(f"cannot create the folder of {path}: {_reason(err)}") from err
    tmp = temporary_name(path)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError):
            raise WriteError(f"cannot write {path}: {_reason(err)}") from err
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """``open`` for writing whose result appears under ``path`` only once complete."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return Path(path)


def write_with(path: str | os.PathLike[str], writer: Callable[[Path], Any]) -> Path:
    """Atomically create ``path`` with ``writer(tmp_path)`` (e.g. ``lambda p: torch.save(obj, p)``)."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files in ``folder`` whose writer ran on this host and no longer runs (``.<name>.<pid>
    @<host>.tmp``, and ``.<name>.<pid>.tmp`` of earlier versions); returns them. Another host's are left: a
    node cannot tell whether a process of another node still writes."""
    removed, here = [], _host()
    for tmp in Path(folder).glob(f".*{TMP_SUFFIX}"):
        pid, _, host = tmp.name.rsplit(".", 2)[-2].partition("@")
        if host and host != here:
            continue
        if pid.isdigit() and not pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _reason(err: OSError) -> str:
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"no space left ({os.strerror(err.errno)})"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"not writable ({os.strerror(err.errno)})"
    return err.strerror or str(err)
