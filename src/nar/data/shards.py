"""Webdataset shards: an atomic, resumable writer, a tolerant tar reader and the dataset's ``meta.json``.

A dataset folder holds ``meta.json`` and one folder per split of ``<split>-%06d.tar`` shards (see
docs/CONTRACTS.md). Every file is written atomically (:mod:`nar.atomic`: a ``.<name>.<pid>@<host>.tmp`` beside it,
renamed when complete), so a reader never sees a half-written shard, and a failed write (read-only
folder, full disk) raises :class:`~nar.atomic.WriteError` naming the file and leaves no temporary. A
writer holds the folder's lock (:func:`dataset_lock`) throughout: a second writer is refused, naming
the first, and only temporaries of dead writers are ever removed. Items are cut into shards by position (shard ``i`` = items
``[i·S, (i+1)·S)``), and each finished shard is recorded in ``<split>/_progress.json``: a restarted
writer skips finished shards and redoes only the rest. Bad inputs never stop a run: they are logged
with their file name, counted and summarised.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import multiprocessing
import os
import shlex
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np

from nar.atomic import WriteError, atomic_open, atomic_path, remove_stale_temporaries, write_text
from nar.errors import DataError
from nar.locks import FolderLock
from nar.progress import Progress

log = logging.getLogger(__name__)

META_NAME = "meta.json"
PROGRESS_NAME = "_progress.json"
LABELS_NAME = "labels.npy"
KINDS = ("image", "video", "pairs", "tokens")
# Keep at most this many skipped files listed by name in meta.json; all are counted.
MAX_LISTED_BAD = 1000


# --------------------------------------------------------------------------------------------------
# Bad input bookkeeping
# --------------------------------------------------------------------------------------------------


class SkipSample(DataError):
    """Raised by a sample encoder for an input that must be skipped (corrupt, truncated, unlabelled)."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class ShardUnavailable(DataError):
    """Raised by a producer whose input for one shard cannot be read now (a missing source shard, a failed
    ``pipe:``): :func:`write_split` leaves that shard unwritten, goes on with the others, and the split is
    refused as unfinished, so the same command, rerun once the input is back, writes it."""


@dataclasses.dataclass
class BadInputLog:
    """Counts skipped inputs by reason and keeps the first few names; each is logged as it happens."""

    counts: Counter[str] = dataclasses.field(default_factory=Counter)
    files: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    _seen: set[str] = dataclasses.field(default_factory=set, repr=False)

    def record(self, path: str | os.PathLike[str], reason: str, *, quiet: bool = False) -> None:
        """Note one skipped input ``path`` and why; logs a warning naming the file unless ``quiet``.

        A path met again (a reader's next epoch) is counted but not logged or listed again.
        """
        if str(path) in self._seen:
            self.counts[_reason_kind(reason)] += 1
            return
        self._seen.add(str(path))
        if not quiet:
            log.warning("skipped %s: %s", path, reason)
        self.counts[_reason_kind(reason)] += 1
        if len(self.files) < MAX_LISTED_BAD:
            self.files.append((str(path), reason))

    def extend(self, entries: Iterable[Sequence[str]]) -> None:
        """Add entries already logged elsewhere (e.g. in a worker process)."""
        for path, reason in entries:
            self.record(path, reason, quiet=True)

    def merge(self, other: BadInputLog) -> None:
        """Add another log's counts (all of them, not only the names it lists) and its listed names."""
        self.counts.update(other.counts)
        for path, reason in other.files:
            if path not in self._seen and len(self.files) < MAX_LISTED_BAD:
                self.files.append((path, reason))
            self._seen.add(path)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.total:
            return "no bad inputs"
        kinds = ", ".join(f"{n} {k}" for k, n in self.counts.most_common())
        return f"{self.total} bad inputs skipped ({kinds})"

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.total, "by_reason": dict(self.counts), "files": [list(f) for f in self.files]}


def _reason_kind(reason: str) -> str:
    # "cannot decode image: <PIL message>" → "cannot decode image"; keeps the counter's keys few.
    return reason.split(":", 1)[0].strip()


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def encode_field(value: Any) -> bytes:
    """Bytes of one webdataset field: bytes as-is, str as UTF-8, int as ASCII, ndarray as ``.npy``, dict as JSON."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bool):
        raise TypeError("booleans are ambiguous in a shard field; store an int or JSON")
    if isinstance(value, int | np.integer):
        return str(int(value)).encode("ascii")
    if isinstance(value, np.ndarray):
        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)
        return buf.getvalue()
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8")
    raise TypeError(f"cannot store a {type(value).__name__} in a shard")


class _Discarded(Exception):
    """Thrown into the atomic write by :meth:`ShardWriter.abort` to drop the temporary file."""


class ShardWriter:
    """Writes one tar shard atomically (:func:`nar.atomic.atomic_path`): members go to a temporary
    ``.<name>.<pid>@<host>.tmp`` beside ``path``, which :meth:`close` fsyncs and renames.

    Members get mtime 0 and no owner, so the same samples give byte-identical shards. As a context
    manager, an exception inside the block removes the temporary file instead of renaming it; an
    ``OSError`` (full disk, read-only folder) comes out as :class:`~nar.atomic.WriteError` naming ``path``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._atomic = atomic_path(self.path)
        self.tmp_path: Path = self._atomic.__enter__()
        self._done = False
        try:
            self._file = open(self.tmp_path, "wb")  # noqa: SIM115 — closed by close() / abort()
        except OSError as err:
            self._done = True
            self._atomic.__exit__(type(err), err, err.__traceback__)  # raises WriteError naming the shard
            raise
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self.count = 0

    def write(self, key: str, fields: dict[str, Any]) -> None:
        """Add one sample: ``key`` (no dots: webdataset splits the name at the first dot) and its fields."""
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
        for ext in sorted(fields):
            data = encode_field(fields[ext])
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            self._tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def close(self) -> None:
        """Finish the tar and move it into place (fsync, then ``os.replace``: atomic on one file system)."""
        try:
            self._tar.close()
            self._file.close()
        except BaseException as err:
            self._discard(err)
            raise
        self._done = True
        self._atomic.__exit__(None, None, None)

    def abort(self) -> None:
        """Drop the shard: close and delete the temporary file."""
        with contextlib.suppress(_Discarded):
            self._discard(_Discarded())

    def _discard(self, err: BaseException) -> None:
        """Close and delete the temporary file; raises :class:`~nar.atomic.WriteError` if ``err`` is an ``OSError``."""
        if self._done:
            return
        self._done = True
        with contextlib.suppress(OSError):  # flushing onto a full disk fails again: the file goes anyway
            self._file.close()
        self._atomic.__exit__(type(err), err, err.__traceback__)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
        else:
            self._discard(exc)


@dataclasses.dataclass
class ShardRecord:
    """What one finished shard holds: sample count, class of each sample (−1 unlabelled), skipped inputs."""

    samples: int
    labels: list[int]
    skipped: list[tuple[str, str]]


@dataclasses.dataclass
class SplitRecord:
    """A written split: shard paths relative to the dataset root, per-shard counts and all labels."""

    split: str
    shards: list[str]
    shard_samples: list[int]
    labels: np.ndarray
    bad: BadInputLog

    @property
    def samples(self) -> int:
        return int(sum(self.shard_samples))


# A producer turns one chunk of items into samples: yields (key, fields) for good ones and a
# SkipSample for bad ones. The default wraps a per-item ``make_sample``.
Produce = Callable[[Sequence[Any]], Iterator["tuple[str, dict[str, Any]] | SkipSample"]]


@dataclasses.dataclass(frozen=True)
class PerItem:
    """Producer applying ``make_sample(item) -> fields`` (or a list of them) to each item.

    Any exception skips only that item, logged with the item's name.
    """

    make_sample: Callable[[Any], dict[str, Any] | list[dict[str, Any]]]
    key_prefix: str = ""

    def __call__(self, items: Sequence[Any], first_index: int = 0) -> Iterator[tuple[str, dict[str, Any]] | SkipSample]:
        for offset, item in enumerate(items):
            try:
                fields = self.make_sample(item)
            except SkipSample as skip:
                yield skip
                continue
            except Exception as err:  # noqa: BLE001 — one bad sample must never end a long run
                yield SkipSample(_item_name(item), f"unexpected error: {type(err).__name__}: {err}")
                continue
            key = f"{self.key_prefix}{first_index + offset:09d}"
            if isinstance(fields, dict):
                yield key, fields
            else:  # several samples from one input (e.g. clips of one video)
                for j, sub in enumerate(fields):
                    yield f"{key}_{j:03d}", sub


def _item_name(item: Any) -> str:
    if isinstance(item, tuple | list) and item:
        return str(item[0])
    return str(item)


def _write_shard(path: Path, items: Sequence[Any], produce: Callable, first_index: int) -> ShardRecord:
    labels: list[int] = []
    skipped: list[tuple[str, str]] = []
    with ShardWriter(path) as writer:
        for out in produce(items, first_index):
            if isinstance(out, SkipSample):
                log.warning("skipped %s: %s", out.path, out.reason)
                skipped.append((out.path, out.reason))
                continue
            key, fields = out
            writer.write(key, fields)
            labels.append(int(fields["cls"]) if "cls" in fields else -1)
    return ShardRecord(samples=len(labels), labels=labels, skipped=skipped)


def fingerprint(items: Sequence[Any], **params: Any) -> str:
    """A hash of the item list and the writer's parameters: resuming with a different input is refused."""
    h = hashlib.sha1()
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    for item in items:
        h.update(repr(item).encode())
        h.update(b"\0")
    return h.hexdigest()


def write_split(
    root: str | os.PathLike[str],
    split: str,
    items: Sequence[Any],
    *,
    make_sample: Callable[[Any], dict[str, Any]] | None = None,
    produce: Callable | None = None,
    shard_size: int = 1000,
    workers: int = 1,
    params: dict[str, Any] | None = None,
    desc: str | None = None,
    unit: str = "sample",
    scan_bad: BadInputLog | None = None,
    part: tuple[int, int] = (0, 1),
    mismatch_hint: str | None = None,
) -> SplitRecord | None:
    """Write ``items`` as shards ``<root>/<split>/<split>-%06d.tar``, resuming a previous run.

    Give either ``make_sample(item) -> fields`` (fields as in :func:`encode_field`; ``cls`` is recorded
    as the label) or ``produce(chunk, first_index)`` yielding ``(key, fields)`` or :class:`SkipSample`.
    With ``workers > 1`` shards are written in parallel processes (the callables must be picklable).
    ``scan_bad`` holds inputs already rejected while listing them (they join the split's summary).
    ``params`` (everything that changes the output) joins the fingerprint of the item list; a resumed
    run whose fingerprint differs raises :class:`DataError` rather than mixing two datasets, saying
    ``mismatch_hint`` (a likely cause the caller knows of) when given.

    ``part=(rank, world)`` with ``world > 1``: this process writes only the shards ``i ≡ rank (mod world)``,
    recording them in its own ``_progress.<rank>of<world>.json``, and returns None; once every part is done,
    one process calls :func:`collect_split`. The caller holds the folder for the whole group
    (:func:`group_dataset_lock`). A resumed run may use any number of parts: finished shards are finished.
    """
    if (make_sample is None) == (produce is None):
        raise ValueError("pass exactly one of make_sample or produce")
    if shard_size < 1:
        raise ValueError(f"shard_size must be ≥ 1, got {shard_size}")
    rank, world = part
    if not 0 <= rank < world:
        raise ValueError(f"part must be (rank, world) with 0 ≤ rank < world, got {part}")
    producer = produce if produce is not None else PerItem(make_sample)  # type: ignore[arg-type]
    root = Path(root)
    with dataset_lock(root):  # held by the caller too when it writes several splits
        split_dir = root / split
        _make_folder(split_dir)
        remove_stale_temporaries(split_dir)  # left by killed writers (dead pids only), never complete

        num_shards = max(1, -(-len(items) // shard_size))
        fp = fingerprint(items, shard_size=shard_size, **(params or {}))
        hint = f" ({mismatch_hint})" if mismatch_hint else ""
        done = _finished_shards(split_dir, fp, hint)
        progress_path = split_dir / (PROGRESS_NAME if world == 1 else f"_progress.{rank}of{world}.json")
        mine = {k: v for k, v in done.items() if k in _read_progress(progress_path, fp, hint)}
        if not items:
            log.warning("split %r: no inputs found; writing an empty split", split)

        todo = [i for i in range(rank, num_shards, world) if shard_name(split, i) not in done]
        if done and rank == 0:
            log.info("split %r: %d of %d shards already complete, resuming", split, len(done), num_shards)

        def finish(index: int, record: ShardRecord) -> None:
            mine[shard_name(split, index)] = done[shard_name(split, index)] = dataclasses.asdict(record)
            _write_json(progress_path, {"fingerprint": fp, "num_shards": num_shards, "done": mine})

        chunks = {i: items[i * shard_size : (i + 1) * shard_size] for i in todo}
        remaining = sum(len(c) for c in chunks.values())
        def unavailable(index: int, err: ShardUnavailable) -> None:
            log.warning("%s left unwritten: %s; rerun the same command once its input can be read",
                        shard_name(split, index), err)

        # a bar on a terminal, else a log line every 30 s; of a split written in parts, the first part's only
        label = f"{desc or split} (part 1 of {world})" if world > 1 else desc or split
        with Progress(remaining, label, unit=unit, enabled=rank == 0) as bar:
            if workers <= 1 or len(todo) <= 1:
                for i in todo:
                    try:
                        if make_sample is not None:  # in-process: advance the bar item by item
                            ticking = PerItem(_Ticking(make_sample, bar))
                            record = _write_shard(split_dir / shard_name(split, i), chunks[i], ticking, i * shard_size)
                        else:
                            record = _write_shard(split_dir / shard_name(split, i), chunks[i], producer, i * shard_size)
                            bar.update(len(chunks[i]))
                    except ShardUnavailable as err:
                        unavailable(i, err)
                        continue
                    finish(i, record)
            else:
                jobs = {i: (split_dir / shard_name(split, i), chunks[i], producer, i * shard_size) for i in todo}
                for i, record in _write_in_pool(jobs, workers):
                    if isinstance(record, ShardUnavailable):
                        unavailable(i, record)
                        continue
                    finish(i, record)
                    bar.update(len(chunks[i]))
        if world > 1:
            return None
        return collect_split(root, split, scan_bad=scan_bad, fingerprint_=fp, num_shards=num_shards)


def _read_progress(path: Path, fp: str, hint: str = "") -> dict[str, dict[str, Any]]:
    """The shards a progress file records as done; :class:`DataError` when it belongs to other inputs (``hint``:
    a likely cause, said in the error)."""
    if not path.is_file():
        return {}
    progress = _read_json(path)
    if progress.get("fingerprint") != fp:
        raise DataError(f"{path.parent} holds shards written from different inputs or settings{hint}; "
                        "write to a new folder or delete it (or pass --overwrite)")
    return dict(progress.get("done", {}))


def _progress_files(split_dir: Path) -> list[Path]:
    return sorted(split_dir.glob("_progress*.json"))


def _finished_shards(split_dir: Path, fp: str, hint: str = "") -> dict[str, dict[str, Any]]:
    """Every shard recorded as done by any part (file still present), checked against ``fp``."""
    done: dict[str, dict[str, Any]] = {}
    for path in _progress_files(split_dir):
        done.update(_read_progress(path, fp, hint))
    return {k: v for k, v in done.items() if (split_dir / k).is_file()}


def collect_split(root: str | os.PathLike[str], split: str, *, scan_bad: BadInputLog | None = None,
                  fingerprint_: str | None = None, num_shards: int | None = None) -> SplitRecord:
    """The record of a split whose shards every part of :func:`write_split` has finished: per-shard counts,
    skipped inputs, and ``labels.npy`` (written atomically). Raises :class:`DataError` naming missing shards."""
    split_dir = Path(root) / split
    files = _progress_files(split_dir)
    if not files:
        raise DataError(f"{split_dir}: no shards recorded as written")
    first = _read_json(files[0])
    fp = fingerprint_ or first.get("fingerprint")
    num_shards = num_shards if num_shards is not None else int(first.get("num_shards", 0))
    done = _finished_shards(split_dir, fp)
    names = [shard_name(split, i) for i in range(num_shards)]
    missing = [n for n in names if n not in done]
    if missing:
        raise DataError(f"{split_dir}: {len(missing)} of {num_shards} shards were not written "
                        f"(e.g. {missing[0]}); rerun the same command to finish them")
    bad = BadInputLog()
    if scan_bad is not None:
        bad.merge(scan_bad)
    for n in names:
        bad.extend(done[n]["skipped"])
    labels = np.asarray([lab for n in names for lab in done[n]["labels"]], dtype=np.int64)
    with atomic_open(split_dir / LABELS_NAME, "wb") as fh:
        np.save(fh, labels)
    record = SplitRecord(split=split, shards=[f"{split}/{n}" for n in names],
                         shard_samples=[int(done[n]["samples"]) for n in names], labels=labels, bad=bad)
    log.info("split %r: %d samples in %d shards; %s", split, record.samples, num_shards, bad.summary())
    return record


def _write_in_pool(jobs: dict[int, tuple], workers: int) -> Iterator[tuple[int, ShardRecord | ShardUnavailable]]:
    """Run ``_write_shard(*jobs[i])`` in ``workers`` processes, yielding ``(i, record)`` as each finishes (the
    :class:`ShardUnavailable` in place of the record of a shard whose input cannot be read).

    On the first other failure the shards not yet started are cancelled (the running ones finish or clean up
    their own temporaries) and the error is raised.
    """
    pool = worker_pool(workers)
    try:
        running = {pool.submit(_write_shard, *args): i for i, args in jobs.items()}
        for job in futures.as_completed(running):
            try:
                result: ShardRecord | ShardUnavailable = job.result()
            except ShardUnavailable as err:
                result = err
            yield running[job], result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def worker_pool(workers: int) -> futures.ProcessPoolExecutor:
    """``workers`` processes started the :func:`_start_method` way that end when this process ends, however it
    ends: a writer killed with SIGKILL left its workers waiting on their job pipe, reparented, for ever."""
    ctx = multiprocessing.get_context(_start_method())
    return futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=exit_with_parent,
                                       initargs=(os.getpid(),))


def exit_with_parent(parent: int, every_s: float = 1.0) -> None:
    """In a child process: ends it (``os._exit(1)``) within ``every_s`` seconds of process ``parent`` ending (the
    child is then reparented). A thread polls the parent's pid: portable, and unlike Linux's parent-death signal it
    does not fire when only the thread that started the child ends. What the child was writing stays a temporary,
    which the writer's next run removes."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(1)

    threading.Thread(target=watch, name="nar-exit-with-parent", daemon=True).start()


def _start_method() -> str:
    """``fork`` (no re-import, fast start) unless CUDA is initialised here, which a fork must not inherit."""
    import sys

    torch = sys.modules.get("torch")
    cuda_live = torch is not None and torch.cuda.is_initialized()
    return "fork" if "fork" in multiprocessing.get_all_start_methods() and not cuda_live else "spawn"


class _Ticking:
    """Calls ``make_sample`` and advances a progress bar by one item, whatever the outcome."""

    def __init__(self, make_sample: Callable, bar: Progress) -> None:
        self.make_sample, self.bar = make_sample, bar

    def __call__(self, item: Any) -> Any:
        try:
            return self.make_sample(item)
        finally:
            self.bar.update(1)


_LOCKED: dict[Path, int] = {}  # dataset folders this process holds, with their nesting depth


@contextlib.contextmanager
def dataset_lock(root: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold the dataset folder ``root`` (created if missing) exclusively for the block.

    Every writer takes it (:func:`write_split`, :func:`write_meta`, and each ``write_*`` / ``build_*``
    around all its splits), so two processes never write one folder: the second gets
    :class:`~nar.locks.LockError` naming the holder (its pid, host and command). Nested use in one process
    (a writer calling ``write_split``) shares the outer lock. A lock left by a dead process is taken
    over; temporaries of dead writers in ``root`` are then removed.
    """
    root = Path(root)
    _make_folder(root)
    key = root.resolve()
    if key in _LOCKED:
        _LOCKED[key] += 1
        try:
            yield root
        finally:
            _LOCKED[key] -= 1
        return
    lock = FolderLock(root, "writing a dataset")
    try:
        lock.acquire()
    except OSError as err:
        raise WriteError(f"cannot write {lock.path}: {err.strerror or err}") from err
    _LOCKED[key] = 1
    try:
        remove_stale_temporaries(root)
        yield root
    finally:
        del _LOCKED[key]
        lock.release()


@contextlib.contextmanager
def group_dataset_lock(root: str | os.PathLike[str], rank: int, world_size: int) -> Iterator[Path]:
    """:func:`dataset_lock` for a group of processes writing one folder together (``torch.distributed``
    initialised): rank 0 takes the folder's lock, the other ranks write under it once rank 0 has it. If rank 0
    is refused (another writer holds the folder), every rank raises its :class:`~nar.locks.LockError`."""
    import torch.distributed as dist

    if world_size <= 1:
        with dataset_lock(root) as path:
            yield path
        return
    root = Path(root)
    with contextlib.ExitStack() as stack:
        refusal: list[BaseException | None] = [None]
        if rank == 0:
            try:
                stack.enter_context(dataset_lock(root))
            except Exception as err:  # noqa: BLE001 — every rank must hear of it
                refusal[0] = err
        dist.broadcast_object_list(refusal, src=0)
        if refusal[0] is not None:
            raise refusal[0]
        if rank != 0:  # rank 0's lock covers the group: nested dataset_lock calls here are no-ops
            stack.enter_context(lock_held_elsewhere(root))
        yield root


@contextlib.contextmanager
def lock_held_elsewhere(root: str | os.PathLike[str]) -> Iterator[Path]:
    """Write into ``root`` under a lock that another process of the same job holds (rank 0, or the launcher of
    worker processes): :func:`dataset_lock` calls inside the block are no-ops."""
    key = Path(root).resolve()
    _LOCKED[key] = _LOCKED.get(key, 0) + 1
    try:
        yield Path(root)
    finally:
        _LOCKED[key] -= 1
        if not _LOCKED[key]:
            del _LOCKED[key]


def write_meta(root: str | os.PathLike[str], kind: str, splits: Sequence[SplitRecord], **fields: Any) -> dict[str, Any]:
    """Create or update ``<root>/meta.json`` with ``kind``, the given splits and any other ``fields``.

    Splits already in the file and not in ``splits`` are kept, so splits may be written one at a time.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    with dataset_lock(root):
        return _update_meta(Path(root), kind, splits, fields)


def classes_kept(root: str | os.PathLike[str], top: int) -> list[str] | None:
    """The classes ``<root>/meta.json`` already lists when they cover class ids below ``top``, else None: a split
    written after another (a small ``val`` holding the first classes only) keeps them rather than shrink them."""
    path = Path(root) / META_NAME
    existing = (_read_json(path).get("classes") or []) if path.is_file() else []
    return list(existing) if existing and len(existing) >= top else None


def check_kind(root: str | os.PathLike[str], kind: str) -> None:
    """Raise :class:`DataError` when ``<root>/meta.json`` describes a dataset of another kind than ``kind``: what
    :func:`write_meta` would refuse, asked before anything is written into the folder."""
    _existing_meta(Path(root), kind)


OVERWRITE_REMEDY = "pass --overwrite to delete the folder and write every split again"


def refuse_other_folder_settings(
    root: str | os.PathLike[str],
    kind: str,
    splits: Sequence[str],
    settings: dict[str, Any],
    *,
    defaults: dict[str, Any] | None = None,
    flags: dict[str, str] | None = None,
    again: str = OVERWRITE_REMEDY,
) -> None:
    """Raise :class:`DataError` when ``<root>/meta.json`` describes splits other than ``splits`` with other
    folder-wide ``settings`` (resize, frames, tokenizer, classes, …) than this run's: :func:`write_meta` would
    overwrite its one set of them with this run's, which would then describe those splits wrongly. Asked before
    anything is written; a dataset of another ``kind`` is refused too (:func:`check_kind`).

    The message names each differing field (``flags[field]``: the option or file that sets it), the recorded and
    this run's value (a list of more than four items by its first difference), the splits written with the
    recorded ones, and the remedies: the same options, another ``--out``, or ``again``. A field the file lacks (an
    older version's) compares as ``defaults[field]``, or is not compared without one. The splits being (re)written
    are left to :func:`write_split`'s resume fingerprint.
    """
    check_kind(root, kind)
    path = Path(root) / META_NAME
    if not path.is_file():
        return
    recorded = read_meta(root)
    others = sorted(set(recorded["splits"]) - set(splits))
    if not others:
        return
    defaults, flags = defaults or {}, flags or {}
    missing = object()
    differ = []
    for key, value in settings.items():
        old = recorded.get(key, defaults.get(key, missing))
        if old is missing:
            continue
        old, new = json.loads(json.dumps(old)), json.loads(json.dumps(value))  # tuples as lists, as the file has them
        if old != new:
            differ.append(f"{key}: {_difference(old, new)}" + (f" ({flags[key]})" if key in flags else ""))
    if differ:
        raise DataError(f"{path} records one set of settings for every split, and this run's differ ("
                        f"{'; '.join(differ)}); the splits written with them: {', '.join(others)}. Rerun with the "
                        f"options that wrote {', '.join(others)}, or write {', '.join(splits)} to another --out, or "
                        f"{again}")


def _difference(old: Any, new: Any) -> str:
    """``old`` (recorded) against ``new`` (this run's) in a message; a long list (101 class names) by its first
    differing item, else by its length."""
    if not (isinstance(old, list) and isinstance(new, list) and max(len(old), len(new)) > 4):
        return f"{old!r} recorded, {new!r} in this run"
    first = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), None)
    if first is not None:
        return f"item {first} {old[first]!r} recorded, {new[first]!r} in this run"
    return f"{len(old)} items recorded, {len(new)} in this run"


def _existing_meta(root: Path, kind: str) -> dict[str, Any]:
    path = root / META_NAME
    meta: dict[str, Any] = _read_json(path) if path.is_file() else {}
    if meta.get("kind", kind) != kind:
        raise DataError(f"{path} describes a {meta['kind']!r} dataset, not {kind!r}")
    return meta


def _update_meta(root: Path, kind: str, splits: Sequence[SplitRecord], fields: dict[str, Any]) -> dict[str, Any]:
    path = root / META_NAME
    meta = _existing_meta(root, kind)
    meta.update(fields)
    meta["kind"] = kind
    meta.setdefault("classes", [])
    meta.setdefault("splits", {})
    for rec in splits:
        meta["splits"][rec.split] = {
            "shards": rec.shards,
            "shard_samples": rec.shard_samples,
            "samples": rec.samples,
            "skipped": rec.bad.to_dict(),
        }
    _write_json(path, meta)
    return meta


def _make_folder(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WriteError(f"cannot create {path}: {err.strerror or err}") from err


def _write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=1, ensure_ascii=False))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {path}: {err}") from None

# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------

# s3:// has no reader of its own in webdataset: it streams through this command (``{url}`` is replaced).
S3_PIPE_ENV = "NAR_S3_PIPE"
S3_PIPE_DEFAULT = "aws s3 cp {url} -"

ShardLocation = Path | str  # a local file (Path) or a URL / ``pipe:`` command (str) that webdataset's gopen opens


def is_url(spec: str | os.PathLike[str]) -> bool:
    """Whether ``spec`` is a URL or ``pipe:`` command rather than a file path (``C:/…`` is a path)."""
    if isinstance(spec, os.PathLike):
        return False
    scheme = urlparse(spec).scheme
    return len(scheme) > 1


def shard_location(root: str | os.PathLike[str], spec: str | os.PathLike[str]) -> ShardLocation:
    """Where shard ``spec`` of the dataset folder ``root`` is read from.

    A path (relative to ``root``, or absolute) gives a ``Path``; ``file:`` URLs too. ``s3://`` URLs become a
    ``pipe:`` command (``$NAR_S3_PIPE``, default ``aws s3 cp {url} -``); other URLs (``http(s)://``, ``gs://``,
    …) and ``pipe:`` commands are returned as they are, for :func:`open_shard`.
    """
    if not is_url(spec):
        return Path(root) / spec
    spec = str(spec)
    scheme = urlparse(spec).scheme
    if scheme == "file":
        return Path(url2pathname(urlparse(spec).path))
    if scheme == "s3":
        return "pipe:" + os.environ.get(S3_PIPE_ENV, S3_PIPE_DEFAULT).replace("{url}", shlex.quote(spec))
    return spec


def first_shard(root: str | os.PathLike[str], split: dict[str, Any]) -> ShardLocation | None:
    """Where the first shard of a ``meta.json`` split record is read from (URLs, ``pipe:`` commands and brace
    patterns as the readers open them), or None for a split without shards."""
    specs = expand_specs(split.get("shards", []))
    return shard_location(root, specs[0]) if specs else None


def expand_specs(specs: str | Sequence[str]) -> list[str]:
    """Shard specs with brace patterns expanded (``train-{000000..001281}.tar``); a string may also join several
    patterns with ``::`` (webdataset's own expansion: ``webdataset.shardlists.expand_urls``)."""
    from webdataset.shardlists import expand_urls

    if isinstance(specs, str):
        return list(expand_urls(specs))
    return [url for spec in specs for url in (expand_urls(spec) if "{" in spec else [spec])]


def open_shard(location: ShardLocation) -> IO[bytes]:
    """A binary stream of one shard, opened by ``webdataset.gopen`` (local file, ``pipe:``, ``http(s)://``, …)."""
    from webdataset.gopen import gopen

    return gopen(str(location), "rb")


def read_meta(root: str | os.PathLike[str]) -> dict[str, Any]:
    """``<root>/meta.json`` as a dict. Raises :class:`DataError` if it is missing or unreadable."""
    path = Path(root) / META_NAME
    if not path.is_file():
        raise DataError(f"{path} not found: is {root} a dataset folder written by `nar data …`?")
    meta = _read_json(path)
    if not isinstance(meta, dict) or "splits" not in meta:
        raise DataError(f"{path} has no 'splits': not a nar dataset")
    return meta


PIXEL_KINDS = ("image", "pairs", "video")  # dataset kinds whose every stored sample carries pixels


def holds_pixels(source: dict[str, Any] | str | os.PathLike[str]) -> bool:
    """Whether a dataset stores pixels (image, pairs or video shards), from its ``meta.json`` contents or its
    folder; False for a folder without ``meta.json``."""
    if not isinstance(source, dict):
        if not source or not (Path(source) / META_NAME).is_file():
            return False
        source = read_meta(source)
    return source.get("kind") in PIXEL_KINDS


SPLIT_ROLES = ("training", "evaluation")
EVAL_SPLITS = ("val", "test")  # stand-ins for each other: ImageNet has train/val, UCF-101 train/test


def resolve_split(meta: dict[str, Any], wanted: str, *, role: str = "evaluation",
                  root: str | os.PathLike[str] | None = None) -> str:
    """The split of ``meta`` to read for ``wanted`` (``train``, ``val``, ``test`` or any split name).

    A split present is returned as is. For ``role="evaluation"`` a missing ``val`` falls back to ``test``
    and a missing ``test`` to ``val`` (one info line says so). Otherwise :class:`DataError` lists the
    splits the dataset has; ``root`` names the folder in messages.
    """
    if role not in SPLIT_ROLES:
        raise ValueError(f"role must be one of {SPLIT_ROLES}, got {role!r}")
    splits = meta.get("splits", {})
    if wanted in splits:
        return wanted
    where = f"{root}: " if root is not None else ""
    if role == "evaluation" and wanted in EVAL_SPLITS:
        for other in EVAL_SPLITS:
            if other in splits:
                log.info("%sno %r split; evaluating on %r", where, wanted, other)
                return other
    raise DataError(f"{where}no {role} split {wanted!r}; the dataset has {sorted(splits) or 'no splits'}")


@dataclasses.dataclass(frozen=True)
class SplitIndex:
    """The shards of one split with their sample counts; global sample ``i`` lives in shard ``searchsorted``.

    ``shards`` holds :func:`shard_location` values: ``Path`` for local files, ``str`` for URLs and
    ``pipe:`` commands (``meta.json`` may list either, brace patterns included).
    """

    root: Path
    split: str
    shards: tuple[ShardLocation, ...]
    counts: tuple[int, ...]
    labels: np.ndarray | None = None

    @classmethod
    def load(cls, root: str | os.PathLike[str], split: str, meta: dict[str, Any] | None = None, *,
             with_labels: bool = True) -> SplitIndex:
        """The split's index from ``meta.json`` (and ``labels.npy`` when present, unless not ``with_labels``);
        ``meta``: that file's contents when the caller has read it already."""
        root = Path(root)
        meta = read_meta(root) if meta is None else meta
        if split not in meta["splits"]:
            raise DataError(f"{root}: no split {split!r} (has {sorted(meta['splits'])})")
        info = meta["splits"][split]
        shards = tuple(shard_location(root, s) for s in expand_specs(info["shards"]))
        counts = tuple(int(c) for c in info.get("shard_samples", [-1] * len(shards)))
        if len(counts) != len(shards):
            raise DataError(f"{root / META_NAME}: split {split!r} lists {len(shards)} shards but {len(counts)} counts")
        labels_path = root / split / LABELS_NAME
        labels = None
        if with_labels and labels_path.is_file():
            try:
                labels = np.load(labels_path)
            except (OSError, ValueError) as err:
                log.warning("ignoring unreadable %s: %s", labels_path, err)
        if labels is not None and min(counts, default=0) < 0:
            labels = None  # shard sizes not recorded: nothing to match the labels with (quietly: nothing is wrong)
        elif labels is not None and len(labels) != sum(counts):
            log.warning("ignoring %s: %d labels for %d samples", labels_path, len(labels), sum(counts))
            labels = None
        return cls(root=root, split=split, shards=shards, counts=counts, labels=labels)

    @property
    def total(self) -> int:
        return int(sum(self.counts))

    @property
    def starts(self) -> np.ndarray:
        """Global index of each shard's first sample, ``[num_shards + 1]`` (last = total)."""
        return np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)


class _Tail:
    """A read-only stream that remembers how many bytes went through it, the last two chunks and where its last
    non-zero byte was, so that the end of a tar can be checked after ``tarfile`` has stopped reading (streams
    cannot seek back)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.size = 0
        self.data_end = 0  # bytes up to and including the last non-zero one
        self.head = b""
        self._last = self._before = b""

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        if data:
            if not self.head:
                self.head = data[:6]
            used = len(data.rstrip(b"\0"))
            if used:
                self.data_end = self.size + used
            self.size += len(data)
            self._before, self._last = self._last, data
        return data

    def drain(self) -> None:
        while self.read(1 << 16):
            pass

    @property
    def compressed(self) -> bool:
        return self.head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ"))

    def ends_with_marker(self) -> bool:
        """A plain tar ends with two zero blocks; a shard cut between members lacks them (compressed: not checked)."""
        if self.compressed:
            return True
        tail = (self._before + self._last)[-1024:]
        return self.size >= 1024 and self.size % 512 == 0 and tail == bytes(1024)

    def data_after(self, offset: int) -> int:
        """Bytes from ``offset`` to the last non-zero byte of a plain tar (0 for a compressed one): past the end
        of the archive there is only zero padding, so any data there belongs to members tarfile did not reach."""
        return 0 if self.compressed else max(0, self.data_end - offset)


class _StrictTarInfo(tarfile.TarInfo):
    """tarfile's stream reader takes a header with a bad checksum after the first member for the end of the
    archive and stops without an error; raising here instead makes the shard one recorded as damaged (this also
    covers compressed shards, whose raw bytes :class:`_Tail` cannot check)."""

    @classmethod
    def frombuf(cls, buf: bytes, encoding: str, errors: str) -> tarfile.TarInfo:
        try:
            return super().frombuf(buf, encoding, errors)
        except tarfile.InvalidHeaderError as err:
            raise tarfile.ReadError(f"damaged member header ({err})") from None


def iter_tar(location: ShardLocation, bad: BadInputLog | None = None) -> Iterator[dict[str, Any]]:
    """Samples of one tar shard in order, as ``{"__key__", "__shard__", ext: bytes, …}``.

    ``location`` is a local path or anything :func:`open_shard` opens (``pipe:``, ``http(s)://``; see
    :func:`shard_location`). Members are grouped webdataset-style: the key is the member name up to the first
    dot of its basename, the field the rest, lower-cased (``x.JPEG`` → ``jpeg``, as webdataset reads it). A missing,
    truncated or corrupt shard (a damaged member header included, which tarfile alone takes for the end of the
    archive), or a ``pipe:`` command that fails, ends its iteration with a warning (recorded in ``bad``) instead of
    an exception; the samples read before the damage are still yielded.
    """
    name = str(location)
    current: dict[str, Any] | None = None
    stream: IO[bytes] | None = None
    finished = False
    try:
        stream = open_shard(location)
        tail = _Tail(stream)
        with tarfile.open(fileobj=tail, mode="r|*", tarinfo=_StrictTarInfo) as tar:  # type: ignore[call-overload]
            for member in tar:
                if not member.isfile():
                    continue
                dirname, base = os.path.split(member.name)
                if base.startswith("."):
                    continue
                key, _, ext = base.partition(".")
                ext = ext.lower()  # as webdataset does: ImageNet's x.JPEG is the field "jpeg"
                key = f"{dirname}/{key}" if dirname else key
                f = tar.extractfile(member)
                data = f.read() if f is not None else b""
                if len(data) != member.size:
                    raise tarfile.ReadError(f"member {member.name} truncated")
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__shard__": name}
                current[ext] = data
                tar.members = []  # a stream of a million members must not keep them all
        tail.drain()
        if not tail.ends_with_marker():
            raise tarfile.ReadError("truncated: no end-of-archive marker")
        lost = tail.data_after(tar.offset)  # where tarfile met what it took for the end of the archive
        if lost:
            raise tarfile.ReadError(f"damaged member header at byte {tar.offset}: {lost} bytes of members after it "
                                    "not read")
        finished = True
        stream.close()  # a pipe: command's exit status is checked here
    except (tarfile.TarError, OSError, EOFError, ValueError) as err:
        (bad or BadInputLog()).record(name, f"unreadable shard: {type(err).__name__}: {err}")
        # the partial sample at the point of damage may be incomplete: drop it
        return
    finally:
        if stream is not None and not finished:
            with contextlib.suppress(Exception):  # stopped early (or failed): a pipe's exit status is moot
                stream.close()
    if current is not None:
        yield current
