"""Iterable datasets over a split's shards, and the per-sample decoders that turn raw fields into tensors.

* :class:`ShardStream` — a deterministic pass for evaluation. The selected samples (all, or a
  class-balanced subset) are cut into ``world_size × num_workers`` contiguous parts whose sizes differ
  by at most one; each (rank, worker) reads only the shards its part touches. Together they read
  every selected sample exactly once.
* :class:`ResampledShardStream` — training: whole shards drawn with replacement (probability ∝ size), each
  read front to back into a shuffle buffer, a fixed number of samples per epoch; a function of seed, rank, worker
  and epoch, so a :class:`StreamPosition` saved in a checkpoint continues it at the exact sample.
  :class:`StreamLoader` makes each pass the next epoch. This is webdataset-style resampling, not a permutation of
  the samples: an epoch of N samples over K shards of equal size makes about K draws, which leave about 1/e
  (37 %) of the shards unread and read others twice or more; and a batch mixes only what the buffer holds, a few
  shards' worth. So the order inside the shards must already be random: the ``nar data`` writers store training
  splits shuffled (:mod:`nar.data.order`), and a run warns at start when its training split looks sorted by class.

Shards are opened by webdataset's ``gopen`` (:func:`nar.data.shards.iter_tar`): local files, ``pipe:`` commands,
``http(s)://`` and ``s3://`` URLs, whatever ``meta.json`` lists.

Every decoder error, and every sample that contradicts ``meta.json`` (:mod:`nar.data.checks`), is logged
with the shard and key, counted in the stream's ``bad`` log and skipped: a multi-day run never dies on one
bad sample, and a batch never holds one. An evaluation pass knows how many of its selected samples it
delivered: with ``allow_missing=False`` (the default) a pass that read fewer raises
:class:`MissingSamples` naming the short shards, so no score is reported on less than was asked for. A run's
validation while it trains passes ``missing_tolerance``, the fraction of a rank's selected samples that may be
missing (logged, never silent): a few damaged val samples do not end a multi-day run. Counting against a rank's
share needs all of its DataLoader workers: :class:`EvalLoader` counts what they hand over. A rank that read none
of its samples always fails: there is nothing to score.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, default_collate, default_convert, get_worker_info

from nar.data import transforms as T
from nar.data.checks import SampleSpec, sample_name, skip_reason
from nar.data.shards import BadInputLog, SplitIndex, iter_tar
from nar.errors import EXIT_RUNTIME, DataError

log = logging.getLogger(__name__)

# (raw sample, rng or None for a deterministic view) -> model input
SampleTransform = Callable[[dict[str, Any], "np.random.Generator | None"], Any]


def partition_bounds(n: int, parts: int, part: int) -> tuple[int, int]:
    """``[lo, hi)`` of part ``part`` when ``n`` items are cut into ``parts`` near-equal contiguous parts."""
    return n * part // parts, n * (part + 1) // parts


def process_identity(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``(rank, world_size)``: the given ones, else the initialised process group's, else ``(0, 1)``."""
    if rank is None or world_size is None:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1
    return rank, world_size


def _reader_identity(rank: int | None, world_size: int | None) -> tuple[int, int, int, int]:
    """``(rank, world_size, worker_id, num_workers)`` of the calling DataLoader worker."""
    rank, world_size = process_identity(rank, world_size)
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank, world_size, worker, workers


def class_balanced_ids(labels: np.ndarray, per_class: int, *, seed: int = 0) -> np.ndarray:
    """Sorted global sample ids with ``per_class`` samples of each class, drawn with ``seed``.

    Classes with fewer samples contribute all they have (logged). Unlabelled samples (−1) are left out.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be ≥ 1, got {per_class}")
    rng = np.random.default_rng(seed)
    chosen = []
    short = 0
    for cls in np.unique(labels[labels >= 0]):
        ids = np.flatnonzero(labels == cls)
        if len(ids) < per_class:
            short += 1
            chosen.append(ids)
        else:
            chosen.append(np.sort(rng.choice(ids, size=per_class, replace=False)))
    if short:
        log.warning("class-balanced subset: %d classes have fewer than %d samples; all of theirs are used", short, per_class)
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


class StreamError(DataError):
    """A stream cannot go on (no readable shards, every sample skipped); the message names the split.

    Raised inside a DataLoader worker, it is re-raised in the main process with the worker's traceback
    prepended to the message; the constructor keeps only our own line, so ``nar`` still prints one line.
    """

    def __init__(self, message: str) -> None:
        if "Original Traceback" in message:
            message = message.rsplit(f"{type(self).__name__}: ", 1)[-1].strip()
        super().__init__(message)


class MissingSamples(StreamError):
    """An evaluation pass delivered fewer of its selected samples than expected (truncated, missing or
    unreadable shards, skipped samples); the message names the shards and the counts. A run-time
    failure (exit 1): the data folder was accepted, the pass came out short."""

    exit_code = EXIT_RUNTIME


@dataclasses.dataclass
class PassReport:
    """One reader's part of an evaluation pass: samples selected for it, delivered, and why any are missing."""

    expected: int
    delivered: int = 0
    short_shards: list[str] = dataclasses.field(default_factory=list)  # "<shard> ended after k of n samples"
    skipped: list[str] = dataclasses.field(default_factory=list)  # "<shard>:<key>" read but undecodable or invalid

    @property
    def missing(self) -> int:
        return self.expected - self.delivered

    def describe(self, where: str) -> str:
        parts = [f"{where}: {self.delivered} of {self.expected} selected samples read"]
        parts += self.short_shards[:5] + ([f"… {len(self.short_shards) - 5} more short shards"] if len(self.short_shards) > 5 else [])
        if self.skipped:
            more = f" and {len(self.skipped) - 3} more" if len(self.skipped) > 3 else ""
            parts.append(f"{len(self.skipped)} skipped as undecodable or invalid: {', '.join(self.skipped[:3])}{more}")
        return "; ".join(parts)


class ShardStream(IterableDataset):
    """Deterministic, exactly-once pass over a split (or over ``sample_ids`` of it), split by rank and worker.

    ``rank`` / ``world_size`` default to the initialised process group (the DataModule passes the
    trainer's). ``transform(raw, None)`` maps each raw sample to what the loader yields.

    Counting: :attr:`expected` is the number of samples this rank should yield (all its workers);
    ``delivered`` counts what the current/last in-process pass yielded and ``last_pass`` describes it
    (per worker under a DataLoader with workers; the rank's under :class:`EvalLoader`). A pass that came out
    short raises :class:`MissingSamples` at its end naming the shards (a DataLoader re-raises it in the main
    process), unless ``allow_missing`` or, for a training run's validation, no more than ``missing_tolerance``
    (a fraction of the rank's selected samples, rounded down, at least one) are missing; then it logs the same line as a
    warning. ``missing_tolerance=None``: an evaluation pass, no tolerance. A rank that read none of its samples
    fails in any case. ``keys`` (the allow and the tolerance setting) are what the messages tell to change.
    """

    def __init__(
        self,
        index: SplitIndex,
        transform: SampleTransform | None = None,
        *,
        sample_ids: np.ndarray | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        allow_missing: bool = False,
        missing_tolerance: float | None = None,
        keys: tuple[str, str] = ("allow_missing", "missing_tolerance"),
    ) -> None:
        super().__init__()
        if any(c < 0 for c in index.counts):
            raise DataError(f"{index.root}: split {index.split!r} has shards of unknown size; rewrite it with `nar data`")
        if missing_tolerance is not None and not 0 <= missing_tolerance < 1:  # also refuses NaN
            raise ValueError(f"missing_tolerance must be in [0, 1) or None, got {missing_tolerance}")
        self.index = index
        self.transform = transform
        self.sample_ids = np.arange(index.total, dtype=np.int64) if sample_ids is None else np.sort(np.asarray(sample_ids))
        if len(self.sample_ids) and (self.sample_ids[0] < 0 or self.sample_ids[-1] >= index.total):
            raise ValueError(f"sample ids outside [0, {index.total})")
        self.rank, self.world_size = rank, world_size
        self.allow_missing, self.missing_tolerance, self.keys = allow_missing, missing_tolerance, keys
        # Set by EvalLoader while its workers start: they leave the rank's verdict to it (they each see a part).
        self.counted_by_loader = False
        self.bad = BadInputLog()
        self.delivered = 0
        self.last_pass: PassReport | None = None

    def subset(self, sample_ids: np.ndarray) -> ShardStream:
        """The same pass (rank, transform, tolerance) over ``sample_ids`` of the split."""
        return ShardStream(self.index, self.transform, sample_ids=sample_ids, rank=self.rank,
                           world_size=self.world_size, allow_missing=self.allow_missing,
                           missing_tolerance=self.missing_tolerance, keys=self.keys)

    # No __len__: with several workers each ends on a partial batch, so a length in batches would be
    # wrong and Lightning would stop the pass early. Ask for the sample count instead.
    def num_samples(self) -> int:
        """Samples this rank reads (all its workers together)."""
        rank, world, _, _ = _reader_identity(self.rank, self.world_size)
        lo, hi = partition_bounds(len(self.sample_ids), world, rank)
        return hi - lo

    @property
    def expected(self) -> int:
        """Samples this rank should yield in one pass (:meth:`num_samples`); compare with what arrived."""
        return self.num_samples()

    @property
    def tolerates_shortfall(self) -> bool:
        """Whether a short pass may pass at all (``allow_missing``, or a tolerance above 0)."""
        return self.allow_missing or bool(self.missing_tolerance)

    def tolerated(self, selected: int) -> int:
        """How many of ``selected`` samples may be missing under ``missing_tolerance``: rounded down, but at least
        one for a tolerance above 0 (a few dozen samples per process round any fraction down to none)."""
        if not self.missing_tolerance:
            return 0
        # the epsilon keeps 0.29 * 100 (= 28.999…) at 29
        return max(1, math.floor(self.missing_tolerance * selected + 1e-9))

    def part_ids(self, part: int, parts: int) -> np.ndarray:
        lo, hi = partition_bounds(len(self.sample_ids), parts, part)
        return self.sample_ids[lo:hi]

    def __iter__(self) -> Iterator[Any]:
        rank, world, worker, workers = _reader_identity(self.rank, self.world_size)
        # rank-major: rank r owns a contiguous block, shared out among its workers
        ids = self.part_ids(rank * workers + worker, world * workers)
        report = PassReport(expected=len(ids))
        self.delivered, self.last_pass = 0, report
        if not len(ids):
            return
        starts = self.index.starts
        shard_of = np.searchsorted(starts, ids, side="right") - 1
        for shard in np.unique(shard_of):
            wanted = ids[shard_of == shard] - starts[shard]
            wanted_set, last = set(wanted.tolist()), int(wanted[-1])
            pos = -1
            for pos, raw in enumerate(iter_tar(self.index.shards[shard], self.bad)):
                if pos in wanted_set:
                    out = _apply(self.transform, raw, None, self.bad)
                    if out is None:
                        report.skipped.append(sample_name(raw))
                    else:
                        report.delivered = self.delivered = self.delivered + 1
                        yield out
                if pos >= last:
                    break
            if pos < last:
                report.short_shards.append(f"{self.index.shards[shard]} ended after {pos + 1} of "
                                           f"{self.index.counts[shard]} samples")
                log.warning("%s", report.short_shards[-1])
        if report.missing:
            where = f"{self.index.root}: split {self.index.split!r}"
            if world * workers > 1:
                where += f" (rank {rank} of {world}, worker {worker} of {workers})"
            whole_rank = workers == 1
            # Under EvalLoader a worker fails early only where it alone misses more than the rank may; else the
            # bound applies to its own part, so that its parts' together stay within the rank's.
            budget = self.expected if whole_rank or self.counted_by_loader else report.expected
            self._judge(report, where, budget, whole_rank=whole_rank)

    def judge_rank_pass(self, delivered: int) -> PassReport:
        """Judge this rank's whole pass, of which ``delivered`` samples arrived (:class:`EvalLoader` counts them
        in the main process, from all workers); raises :class:`MissingSamples` as a pass read in-process would."""
        rank, world = process_identity(self.rank, self.world_size)
        report = PassReport(expected=self.expected, delivered=delivered)
        self.delivered, self.last_pass = delivered, report
        where = f"{self.index.root}: split {self.index.split!r}" + (f" (rank {rank} of {world})" if world > 1 else "")
        self._judge(report, where, report.expected, whole_rank=True,
                    detail=" (the readers' warnings name the shards and samples)")
        return report

    def _judge(self, report: PassReport, where: str, budget: int, *, whole_rank: bool, detail: str = "") -> None:
        """Raise :class:`MissingSamples` for a pass ``report`` that misses more than ``budget`` selected samples
        tolerate (or, ``whole_rank``, all of them); log it as a warning otherwise."""
        if report.missing <= 0:
            return
        allow_key, tolerance_key = self.keys
        line = report.describe(where) + detail
        if whole_rank and report.delivered == 0:
            raise MissingSamples(f"{line}; none of the {report.expected} selected samples could be read, so there "
                                 f"is nothing to score (whatever {allow_key} says): check that the folder holds "
                                 "this split's shards, or repair them (`nar data verify`)")
        allowed = self.tolerated(budget)
        if self.allow_missing:
            log.warning("%s; accepted: %s=true", line, allow_key)
        elif self.missing_tolerance is None:
            raise MissingSamples(f"{line}; set {allow_key}=true to accept fewer samples, or repair the shards "
                                 "(`nar data verify`)")
        elif report.missing > allowed:
            raise MissingSamples(f"{line}; {report.missing} missing, more than {tolerance_key}="
                                 f"{self.missing_tolerance:g} tolerates ({allowed} of {budget}): raise it, set "
                                 f"{allow_key}=true, or repair the shards (`nar data verify`)")
        else:
            log.warning("%s; within %s=%g (%d of %d may be missing)", line, tolerance_key, self.missing_tolerance,
                        allowed, budget)


def _batch_len(batch: Any) -> int:
    """Samples in a collated batch: a dict's ``__key__`` list (every decoder's) or first field, a tensor's first
    dimension, or a collated tuple's first field's."""
    if isinstance(batch, dict):
        batch = batch["__key__"] if "__key__" in batch else next(iter(batch.values()))
    elif isinstance(batch, (list, tuple)) and batch and not isinstance(batch[0], str):
        batch = batch[0]
    return len(batch)


class EvalLoader(DataLoader):
    """A ``DataLoader`` over a :class:`ShardStream` that judges a short pass by the rank's total: with workers
    and a pass that tolerates a shortfall (``allow_missing``, ``missing_tolerance``) no worker sees the rank's
    count, so they only log what they miss (failing early on more than the whole rank may miss), and this loader
    counts the samples of the batches it hands out and calls :meth:`ShardStream.judge_rank_pass` at the end of
    the pass. A pass cut short by its consumer (Lightning's sanity check) is not judged, as in-process."""

    def __iter__(self) -> Any:
        stream = self.dataset if isinstance(self.dataset, ShardStream) else None
        if stream is None or self.num_workers == 0 or not stream.tolerates_shortfall:
            return super().__iter__()  # in-process the stream is the rank's whole pass; strict: every worker fails
        stream.counted_by_loader = True  # copied into the workers, which start here
        try:
            batches = super().__iter__()
        finally:
            stream.counted_by_loader = False
        return self._counted(batches, stream)

    def _counted(self, batches: Iterator[Any], stream: ShardStream) -> Iterator[Any]:
        delivered = 0
        for batch in batches:
            delivered += 1 if self.batch_size is None else _batch_len(batch)
            yield batch
        stream.judge_rank_pass(delivered)


STREAM_KEY = "__stream__"  # training samples: (epoch, reader, readers, draw); batches: a list of those tuples


@dataclasses.dataclass(frozen=True)
class StreamPosition:
    """How far a training stream got: in epoch ``epoch``, ``batches`` batches (per rank) were consumed, and
    reader ``w`` (a logical DataLoader worker) of rank ``r`` had made ``draws[r][w]`` draws for them.

    ``workers`` and ``world_size`` are the layout the position was recorded with; it is exact only for the
    same layout (:meth:`ResampledShardStream.normalized`).
    """

    epoch: int = 0
    batches: int = 0
    workers: int = 1
    world_size: int = 1
    draws: tuple[tuple[int, ...], ...] = ()

    def next_epoch(self) -> StreamPosition:
        return StreamPosition(epoch=self.epoch + 1, workers=self.workers, world_size=self.world_size)

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batches": self.batches, "workers": self.workers, "world_size": self.world_size,
                "draws": [list(d) for d in self.draws]}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> StreamPosition:
        return cls(epoch=int(state["epoch"]), batches=int(state["batches"]), workers=int(state["workers"]),
                   world_size=int(state["world_size"]), draws=tuple(tuple(int(x) for x in d) for d in state["draws"]))


class ResampledShardStream(IterableDataset):
    """Training stream: whole shards drawn with replacement (probability ∝ size), shuffled through a buffer.

    Not a permutation of the split: one epoch of N samples draws about N / (shard size) shards at random, so about
    1/e of the shards go unread that epoch and others are read twice (webdataset-style resampling; over many
    epochs every shard is read equally often on average). Samples are taken at random from a buffer of
    ``shuffle_buffer`` samples filled by reading each drawn shard front to back, so a batch mixes a few shards'
    worth: the samples must be stored in random order (the ``nar data`` writers shuffle training splits).

    Each epoch yields ``samples_per_epoch`` samples in total (default: the split size), shared out
    over ranks and workers. With ``batch_size`` each (rank, worker) share is rounded up to whole batches
    (at least one), so a batch larger than the split — or than a worker's share — wraps around the
    resampled stream instead of leaving an epoch without a single full batch (which under
    ``drop_last`` made training spin forever without a step).

    The stream is a function of ``seed``, the rank, the reader (DataLoader worker) and the epoch alone:
    which shard each draw reads and which buffered sample it takes depend only on the shard sizes in
    ``meta.json`` and an RNG seeded with ``[seed, rank, reader, epoch]``, and every random choice of the
    sample transform (crop, flip, augmentation) comes from numbers fixed per draw (:class:`DrawRandom`). So a
    :class:`StreamPosition` (``position``) can be fast-forwarded by replaying the draws on the sizes alone,
    without reading or decoding the samples already consumed; only the samples still in the shuffle buffer
    are read again. Each pass over the dataset is the next epoch (:class:`StreamLoader` numbers them in the
    main process). Samples that are dicts carry ``__stream__ = (epoch, reader, readers, draw)``.
    """

    def __init__(
        self,
        index: SplitIndex,
        transform: SampleTransform | None = None,
        *,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        samples_per_epoch: int | None = None,
        batch_size: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        if not index.shards or index.total <= 0:
            raise DataError(f"{index.root}: split {index.split!r} has no samples")
        if any(c < 0 for c in index.counts):
            raise DataError(f"{index.root}: split {index.split!r} has shards of unknown size; index them with "
                            "`nar data index` or rewrite them with `nar data`")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        self.index = index
        self.transform = transform
        self.shuffle_buffer = max(1, shuffle_buffer)
        self.seed = seed
        self.samples_per_epoch = samples_per_epoch if samples_per_epoch is not None else index.total
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.position = StreamPosition()
        self.bad = BadInputLog()

    def set_epoch(self, epoch: int) -> None:
        """Start the next pass at the beginning of ``epoch``."""
        self.position = StreamPosition(epoch=epoch)

    def quota(self, readers: int) -> int:
        """Samples each of ``readers`` (ranks × workers) yields per epoch."""
        # the same quota for every (rank, worker): every rank then has the same number of batches,
        # which DDP needs (a rank with one batch more waits forever in the gradient all-reduce), and a
        # DataLoader's round robin over its workers is the same every epoch
        share = self.samples_per_epoch // readers
        if self.batch_size is None:
            return share
        return max(1, -(-share // self.batch_size)) * self.batch_size

    def batches_per_epoch(self, workers: int, world_size: int) -> int:
        """Batches one rank's DataLoader yields per epoch (``batch_size`` must be set)."""
        if self.batch_size is None:
            raise ValueError("batches_per_epoch needs batch_size")
        return workers * (self.quota(world_size * workers) // self.batch_size)

    def normalized(self, position: StreamPosition, workers: int, world_size: int) -> StreamPosition:
        """``position`` as the next pass starts it: a finished epoch moves on to the next one, and a position
        recorded with another number of workers or ranks (or without ``batch_size``) cannot be continued
        exactly, so the next epoch starts afresh (logged)."""
        fresh = StreamPosition(epoch=position.epoch, workers=workers, world_size=world_size)
        if position.batches <= 0:
            return fresh
        if (self.batch_size is None or position.workers != workers or position.world_size != world_size
                or len(position.draws) != world_size or any(len(d) != workers for d in position.draws)):
            log.warning("%s: split %r: the saved data position is for %d workers × %d ranks, this run has %d × %d; "
                        "continuing with epoch %d from its start instead of mid-epoch %d", self.index.root,
                        self.index.split, position.workers, position.world_size, workers, world_size,
                        position.epoch + 1, position.epoch)
            return dataclasses.replace(fresh, epoch=position.epoch + 1)
        if position.batches >= self.batches_per_epoch(workers, world_size):
            return dataclasses.replace(fresh, epoch=position.epoch + 1)
        return position

    def __iter__(self) -> Iterator[Any]:
        rank, world, worker, workers = _reader_identity(self.rank, self.world_size)
        position = self.normalized(self.position, workers, world)
        self.position = position.next_epoch()  # this copy's next pass (in-process: the next epoch)
        return self._epoch(position, rank, world, worker, workers)

    def _epoch(self, position: StreamPosition, rank: int, world: int, worker: int, workers: int) -> Iterator[Any]:
        consumed = position.batches
        # the DataLoader takes batch j from worker j % workers; after `consumed` batches, worker 0 must
        # serve the batch of reader consumed % workers: readers are rotated, so the round robin goes on unchanged
        reader = (worker + consumed) % workers
        reader_batches = consumed // workers + (1 if reader < consumed % workers else 0)
        skip = position.draws[rank][reader] if consumed else 0
        quota = self.quota(world * workers) - reader_batches * (self.batch_size or 0)
        epoch = position.epoch
        plan = _DrawPlan(self.index.counts, min(self.shuffle_buffer, self.index.total),
                         np.random.default_rng([self.seed, rank, reader, epoch]))
        numbers = _DrawNumbers([self.seed, rank, reader, epoch])
        cursor = _ShardCursor(self.index, self.bad)
        if skip:
            plan.skip(skip)
            numbers.skip(skip)
            cursor.refill(plan)
        skipped_before = self.bad.total
        try:
            yield from self._draw(quota, plan, numbers, cursor, (epoch, reader, workers), [self.seed, rank, reader, epoch])
        finally:
            cursor.close()
            if self.bad.total > skipped_before:
                log.warning("%s: split %r (rank %d, worker %d): %d inputs skipped this epoch; so far %s",
                            self.index.root, self.index.split, rank, worker, self.bad.total - skipped_before,
                            self.bad.summary())

    def _draw(self, quota: int, plan: _DrawPlan, numbers: _DrawNumbers, cursor: _ShardCursor,
              stream: tuple[int, int, int], seed: list[int]) -> Iterator[Any]:
        produced, rejected_in_a_row = 0, 0
        # every sample of the split met twice over and none usable: do not spin forever
        patience = 4 * self.index.total + 64
        drawable = {s for s, c in enumerate(self.index.counts) if c > 0}
        while produced < quota:
            draw = plan.draws
            entry = plan.next(cursor.fetch)
            out = None
            if entry[2] is not None:
                out = _apply(self.transform, entry[2], DrawRandom(numbers.row(draw), [*seed, draw]), self.bad)
            elif drawable <= cursor.unreadable:
                raise StreamError(f"{self.index.root}: no readable shards left in split {self.index.split!r}")
            if out is None:
                rejected_in_a_row += 1
                if rejected_in_a_row > patience:
                    last = self.bad.files[-1] if self.bad.files else ("?", "?")
                    raise StreamError(f"{self.index.root}: split {self.index.split!r}: the last {rejected_in_a_row} "
                                      f"samples read were all skipped (e.g. {last[0]}: {last[1]}); check meta.json "
                                      "against the shards with `nar data verify`")
                continue
            rejected_in_a_row = 0
            if isinstance(out, dict):
                out[STREAM_KEY] = (*stream, draw)
            produced += 1
            yield out


_PENDING = object()  # a buffered sample not read yet (fast-forward)


class _DrawPlan:
    """Which ``(shard, offset)`` each draw of one reader's epoch takes: whole shards drawn with replacement,
    probability ∝ size (a shard may come again before others come at all), each read in order into a buffer of
    ``capacity`` entries, one taken at random per draw. It depends on the sizes and ``rng`` only, so :meth:`skip`
    replays draws without any data; :meth:`next` asks ``fetch(shard, offset)`` for each sample it buffers (None:
    missing or unreadable). Entries are ``[shard, offset, raw]``."""

    def __init__(self, counts: Sequence[int], capacity: int, rng: np.random.Generator) -> None:
        self.counts = np.asarray(counts, dtype=np.int64)
        self.p = self.counts / self.counts.sum()
        self.capacity = max(1, capacity)
        self.rng = rng
        self.buffer: list[list[Any]] = []
        self.shard, self.offset, self.size = -1, 0, 0
        self.draws = 0

    def next(self, fetch: Callable[[int, int], Any]) -> list[Any]:
        while len(self.buffer) < self.capacity:
            if self.offset >= self.size:
                self.shard = int(self.rng.choice(len(self.p), p=self.p))
                self.offset, self.size = 0, int(self.counts[self.shard])
                continue
            self.buffer.append([self.shard, self.offset, fetch(self.shard, self.offset)])
            self.offset += 1
        self.draws += 1
        return _pop_random(self.buffer, self.rng)

    def skip(self, draws: int) -> None:
        for _ in range(draws):
            self.next(lambda shard, offset: _PENDING)


class _ShardCursor:
    """Reads the samples a :class:`_DrawPlan` buffers, each drawn shard once front to back; a shard that
    cannot be opened is remembered (``unreadable``) and not reopened this epoch."""

    def __init__(self, index: SplitIndex, bad: BadInputLog) -> None:
        self.index, self.bad = index, bad
        self.shard, self.next_offset = -1, 0
        self.samples: Iterator[dict[str, Any]] | None = None
        self.unreadable: set[int] = set()

    def fetch(self, shard: int, offset: int) -> dict[str, Any] | None:
        if shard in self.unreadable:
            return None
        if shard != self.shard or offset != self.next_offset:
            self._open(shard)
            self._advance_to(offset)
        raw = self._read()
        self.next_offset += 1
        return raw

    def _open(self, shard: int) -> None:
        self.close()
        self.shard, self.next_offset = shard, 0
        self.samples = iter_tar(self.index.shards[shard], self.bad)

    def _read(self) -> dict[str, Any] | None:
        if self.samples is None:
            return None
        unreadable_before = self.bad.counts["unreadable shard"]
        raw = next(self.samples, None)
        if raw is None:
            self.samples = None  # ended: the rest of this shard's offsets are missing
            if self.bad.counts["unreadable shard"] == unreadable_before:
                self.bad.record(self.index.shards[self.shard], f"short shard: ended after {self.next_offset} of "
                                f"{self.index.counts[self.shard]} samples that meta.json counts")
            elif self.next_offset == 0:
                log.warning("leaving %s out of the rest of this epoch", self.index.shards[self.shard])
                self.unreadable.add(self.shard)
        return raw

    def _advance_to(self, offset: int) -> None:
        while self.next_offset < offset:
            self._read()
            self.next_offset += 1

    def refill(self, plan: _DrawPlan) -> None:
        """After :meth:`_DrawPlan.skip`: read the buffered samples again, and leave the cursor where the plan is."""
        wanted: dict[int, set[int]] = {}
        for shard, offset, _ in plan.buffer:
            wanted.setdefault(shard, set()).add(offset)
        found: dict[tuple[int, int], dict[str, Any] | None] = {}
        current = plan.shard if plan.offset < plan.size else -1
        for shard in sorted(wanted, key=lambda s: s == current):  # the plan's current shard last: it stays open
            self._open(shard)
            # The current shard's pass is read up to the plan's offset; the buffer can also hold samples of an
            # earlier pass over the same shard, further in, when the shard was drawn again.
            last = max(max(wanted[shard]), plan.offset - 1 if shard == current else -1)
            while self.next_offset <= last:
                raw = self._read() if shard not in self.unreadable else None
                if self.next_offset in wanted[shard]:
                    found[(shard, self.next_offset)] = raw
                self.next_offset += 1
        if current >= 0 and (self.shard, self.next_offset) != (current, plan.offset):
            self._open(current)
            self._advance_to(plan.offset)
        for entry in plan.buffer:
            entry[2] = found.get((entry[0], entry[1]))

    def close(self) -> None:
        if self.samples is not None:
            self.samples.close()  # type: ignore[attr-defined]
            self.samples = None


class _DrawNumbers:
    """Uniform numbers in ``[0, 1)``, :data:`PER_DRAW` for each draw, from one PCG64 stream: row ``d`` is the
    stream's values ``[PER_DRAW·d, PER_DRAW·(d+1))`` however far one has skipped (``advance``, no generating)."""

    PER_DRAW = 4
    BLOCK = 1024

    def __init__(self, seed: Sequence[int]) -> None:
        self.bits = np.random.PCG64(np.random.SeedSequence(list(seed) + [1]))
        self.generator = np.random.Generator(self.bits)
        self.block = np.zeros((0, self.PER_DRAW))
        self.start = 0  # draw of the block's first row
        self.end = 0  # draw the next block starts at

    def skip(self, draws: int) -> None:
        self.bits.advance(self.PER_DRAW * (draws - self.end))
        self.start = self.end = draws
        self.block = self.block[:0]

    def row(self, draw: int) -> np.ndarray:
        while draw >= self.end:
            if draw >= self.end + self.BLOCK:
                self.skip(draw)
            self.block = self.generator.random((self.BLOCK, self.PER_DRAW))
            self.start, self.end = self.end, self.end + self.BLOCK
        return self.block[draw - self.start]


class DrawRandom:
    """The random numbers one draw of a training stream hands its sample transform, in place of a
    ``numpy.random.Generator``: :meth:`random` and scalar :meth:`integers` use the draw's fixed uniforms (so
    a sample's crop or flip does not depend on how many numbers earlier samples took); anything else comes
    from a generator seeded with the draw (``seed``)."""

    __slots__ = ("_uniforms", "_used", "_seed", "_generator")

    def __init__(self, uniforms: np.ndarray, seed: Sequence[int]) -> None:
        self._uniforms, self._used, self._seed = uniforms, 0, list(seed)
        self._generator: np.random.Generator | None = None

    def _fallback(self) -> np.random.Generator:
        if self._generator is None:
            self._generator = np.random.default_rng(self._seed)
        return self._generator

    def _take(self) -> float:
        if self._used < len(self._uniforms):
            self._used += 1
            return float(self._uniforms[self._used - 1])
        return float(self._fallback().random())

    def random(self, size: Any = None) -> Any:
        return self._take() if size is None else self._fallback().random(size)

    def integers(self, low: int, high: int | None = None, size: Any = None, endpoint: bool = False, **kw: Any) -> Any:
        if size is not None or kw:
            return self._fallback().integers(low, high, size=size, endpoint=endpoint, **kw)
        if high is None:
            low, high = 0, low
        high = int(high) + (1 if endpoint else 0)
        if high <= low:
            raise ValueError(f"integers: high ({high}) must exceed low ({low})")
        return int(low) + min(int(self._take() * (high - low)), high - low - 1)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fallback(), name)


def collate_stream(samples: Any) -> Any:
    """``default_collate``, except that the samples' ``__stream__`` tuples stay a plain list (they never move
    to a device, so reading a batch's position costs no device synchronisation)."""
    if not isinstance(samples, list):
        return default_convert(samples)
    if samples and isinstance(samples[0], dict) and STREAM_KEY in samples[0]:
        stream = [s.pop(STREAM_KEY) for s in samples]
        batch = default_collate(samples)
        batch[STREAM_KEY] = stream
        return batch
    return default_collate(samples)


class StreamLoader(DataLoader):
    """A ``DataLoader`` whose passes over a :class:`ResampledShardStream` are its epochs, in order: each
    ``iter()`` reads the dataset's ``position`` (normalised for this loader's workers), hands it to the
    workers and moves the main process's copy on to the next epoch. Set ``dataset.position`` before
    iterating to continue a saved position. Batches are collated by :func:`collate_stream`."""

    def __init__(self, dataset: Any, **kwargs: Any) -> None:
        kwargs.setdefault("collate_fn", collate_stream)
        super().__init__(dataset, **kwargs)

    def __iter__(self) -> Any:
        stream = self.dataset if isinstance(self.dataset, ResampledShardStream) else None
        if stream is None:
            return super().__iter__()
        _, world, _, _ = _reader_identity(stream.rank, stream.world_size)
        position = stream.position = stream.normalized(stream.position, max(1, self.num_workers), world)
        iterator = super().__iter__()  # workers start here, each with a copy of `position`
        if self.num_workers > 0:  # in-process, the dataset's own __iter__ moved on already
            stream.position = position.next_epoch()
        return iterator


def _pop_random(buffer: list, rng: np.random.Generator) -> Any:
    i = int(rng.integers(len(buffer)))
    buffer[i], buffer[-1] = buffer[-1], buffer[i]
    return buffer.pop()


def _apply(transform: SampleTransform | None, raw: dict[str, Any], rng: np.random.Generator | None, bad: BadInputLog) -> Any:
    if transform is None:
        return raw
    try:
        return transform(raw, rng)
    except Exception as err:  # noqa: BLE001 — skip the sample, keep the run alive
        bad.record(sample_name(raw), skip_reason(err))
        return None


# --------------------------------------------------------------------------------------------------
# Per-sample decoders (picklable callables; DataLoader workers receive copies)
# --------------------------------------------------------------------------------------------------


def _common(raw: dict[str, Any], spec: SampleSpec, name: str) -> dict[str, Any]:
    out: dict[str, Any] = {"label": spec.label(raw, name), "__key__": raw["__key__"]}
    if "txt" in raw:
        out["caption"] = raw["txt"].decode("utf-8")
    return out


class ImageSample:
    """Raw image sample → ``{"image": float [3, size, size] in [-1, 1], "label": int, "__key__", "caption"?}``.

    Deterministic view (``rng is None``): ADM centre crop. Training view: centre or random crop (with
    ``min_crop_frac < 1`` the short side first goes to a random size up to ``size / min_crop_frac``, LlamaGen's
    scale jitter; see :func:`~nar.data.transforms.random_crop_arr`), and a horizontal flip with probability 1/2
    when ``hflip``. The scale, window and flip take at most four numbers, all from the draw's fixed ones
    (:class:`DrawRandom`). ``spec`` (from ``meta.json``) checks the class and, where the dataset fixes it, the
    stored size; a failing sample raises :class:`~nar.data.checks.InvalidSample` (the stream skips and counts it).
    """

    def __init__(self, size: int, *, random_crop: bool = False, min_crop_frac: float = 1.0, hflip: bool = False,
                 spec: SampleSpec | None = None) -> None:
        if not 0 < min_crop_frac <= 1:  # also refuses NaN
            raise ValueError(f"min_crop_frac must be in (0, 1], got {min_crop_frac}")
        self.size, self.random_crop, self.min_crop_frac, self.hflip = size, random_crop, min_crop_frac, hflip
        self.spec = spec or SampleSpec()

    def __call__(self, raw: dict[str, Any], rng: np.random.Generator | None) -> dict[str, Any]:
        name = sample_name(raw)
        ext, data = T.field(raw, "png", "jpg", "jpeg", "webp")
        img = self.spec.image(T.decode_image(data, name=f"{name}.{ext}"), name)
        common = _common(raw, self.spec, name)
        if rng is not None and self.random_crop:
            arr = T.random_crop_arr(img, self.size, rng, min_crop_frac=self.min_crop_frac)
        else:
            arr = T.center_crop_arr(img, self.size)
        if rng is not None and self.hflip and rng.random() < 0.5:
            arr = arr[:, ::-1]
        return {"image": T.to_tensor_pm1(arr), **common}


class VideoSample:
    """Raw clip (or a window of a whole video) → ``{"video": float [3, T, size, size] in [-1, 1], "label",
    "__key__"}``; optional random flip.

    ``spec`` checks ``frames.npy`` (uint8 ``[T, H, W, 3]``, meta's ``frames`` and ``image_size``) and the class.
    A whole video (``spec.window``: a folder of ``windows: per_visit``) becomes ``T = spec.window`` consecutive
    frames (:func:`~nar.data.transforms.video_window`): a training draw takes a fresh start each visit (its first
    fixed number, :class:`DrawRandom`; the flip the next), the deterministic view the centre window. A fixed clip is
    read whole, as it always was.
    """

    def __init__(self, size: int | None = None, *, hflip: bool = False, spec: SampleSpec | None = None) -> None:
        self.size, self.hflip = size, hflip
        self.spec = spec or SampleSpec()

    def __call__(self, raw: dict[str, Any], rng: np.random.Generator | None) -> dict[str, Any]:
        name = sample_name(raw)
        _, data = T.field(raw, "frames.npy")
        frames = self.spec.frames_array(np.load(io.BytesIO(data), allow_pickle=False), name)
        common = _common(raw, self.spec, name)
        if self.spec.window is not None:  # before the resize: only the window's frames are resized
            frames = T.video_window(frames, self.spec.window, rng)
        if self.size is not None:
            frames = T.resize_video(frames, self.size)
        if rng is not None and self.hflip and rng.random() < 0.5:
            frames = frames[:, :, ::-1]
        return {"video": T.to_tensor_pm1(frames), **common}


class TokenSample:
    """Raw token sample → ``{"tokens": int64 [*grid], "label", "__key__", "capfeat"?, "capmask"?}``.

    ``tokens.npy`` holds ``[A, *grid]`` (A augmentations, index 0 the plain centre view): training
    picks one at random when ``random_augmentation``; the deterministic view takes index 0. ``spec``
    checks the array against meta's ``grid`` and ``codebook_size`` and the class against ``classes``.
    """

    def __init__(self, *, random_augmentation: bool = True, caption_features: bool = False,
                 spec: SampleSpec | None = None) -> None:
        self.random_augmentation, self.caption_features = random_augmentation, caption_features
        self.spec = spec or SampleSpec()

    def __call__(self, raw: dict[str, Any], rng: np.random.Generator | None) -> dict[str, Any]:
        name = sample_name(raw)
        _, data = T.field(raw, "tokens.npy")
        codes = self.spec.tokens(np.load(io.BytesIO(data), allow_pickle=False), name)
        a = int(rng.integers(codes.shape[0])) if (rng is not None and self.random_augmentation) else 0
        out = {"tokens": torch.from_numpy(codes[a].astype(np.int64)), **_common(raw, self.spec, name)}
        if self.caption_features:
            _, feat = T.field(raw, "capfeat.npy")
            _, mask = T.field(raw, "capmask.npy")
            out["capfeat"] = torch.from_numpy(np.load(io.BytesIO(feat)).astype(np.float32))
            out["capmask"] = torch.from_numpy(np.load(io.BytesIO(mask)).astype(bool))
        return out
