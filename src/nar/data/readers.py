"""Iterable datasets over a split's shards, and the per-sample decoders that turn raw fields into tensors.

* :class:`ShardStream` — a deterministic pass for evaluation. The selected samples (all, or a
  class-balanced subset) are cut into ``world_size × num_workers`` contiguous parts whose sizes differ
  by at most one; each (rank, worker) reads only the shards its part touches. Together they read
  every selected sample exactly once.
* :class:`ResampledShardStream` — training: shards drawn with replacement (weighted by size) and a
  shuffle buffer, a fixed number of samples per epoch, reseeded each epoch from the DataLoader's seed.

Every decoder error, and every sample that contradicts ``meta.json`` (:mod:`nar.data.checks`), is logged
with the shard and key, counted in the stream's ``bad`` log and skipped: a multi-day run never dies on one
bad sample, and a batch never holds one. An evaluation pass knows how many of its selected samples it
delivered: with ``allow_missing=False`` (the default) a pass that read fewer raises
:class:`MissingSamples` naming the short shards, so no score is reported on less than was asked for.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

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


def _reader_identity(rank: int | None, world_size: int | None) -> tuple[int, int, int, int]:
    """``(rank, world_size, worker_id, num_workers)`` of the calling DataLoader worker."""
    if rank is None or world_size is None:
        if dist.is_available() and dist.is_initialized():
            rank, world_size = dist.get_rank(), dist.get_world_size()
        else:
            rank, world_size = 0, 1
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
    (per worker under a DataLoader with workers). At the end of a pass that came out short, each reader
    raises :class:`MissingSamples` naming the shards (a DataLoader re-raises it in the main process),
    unless ``allow_missing``, when it logs the same line as a warning.
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
    ) -> None:
        super().__init__()
        if any(c < 0 for c in index.counts):
            raise DataError(f"{index.root}: split {index.split!r} has shards of unknown size; rewrite it with `nar data`")
        self.index = index
        self.transform = transform
        self.sample_ids = np.arange(index.total, dtype=np.int64) if sample_ids is None else np.sort(np.asarray(sample_ids))
        if len(self.sample_ids) and (self.sample_ids[0] < 0 or self.sample_ids[-1] >= index.total):
            raise ValueError(f"sample ids outside [0, {index.total})")
        self.rank, self.world_size = rank, world_size
        self.allow_missing = allow_missing
        self.bad = BadInputLog()
        self.delivered = 0
        self.last_pass: PassReport | None = None

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
            if not self.allow_missing:
                raise MissingSamples(report.describe(where) + "; allow fewer samples explicitly or repair the shards "
                                     "(`nar data verify`)")
            log.warning("%s", report.describe(where))


class ResampledShardStream(IterableDataset):
    """Training stream: shards drawn with replacement (probability ∝ size), shuffled through a buffer.

    Each epoch yields ``samples_per_epoch`` samples in total (default: the split size), shared out
    over ranks and workers. With ``batch_size`` each (rank, worker) share is rounded up to whole batches
    (at least one), so a batch larger than the split — or than a worker's share — wraps around the
    resampled stream instead of leaving an epoch without a single full batch (which under
    ``drop_last`` made training spin forever without a step). The RNG is seeded from ``seed``, the rank
    and the DataLoader's per-epoch worker seed, so a seeded run is reproducible and successive epochs differ.
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
        if not index.shards or index.total == 0:
            raise DataError(f"{index.root}: split {index.split!r} has no samples")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        self.index = index
        self.transform = transform
        self.shuffle_buffer = max(1, shuffle_buffer)
        self.seed = seed
        self.samples_per_epoch = samples_per_epoch if samples_per_epoch is not None else index.total
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self._epoch = 0
        self.bad = BadInputLog()

    def set_epoch(self, epoch: int) -> None:
        self._epoch = epoch

    def quota(self, readers: int) -> int:
        """Samples each of ``readers`` (ranks × workers) yields per epoch."""
        # the same quota for every (rank, worker): every rank then has the same number of batches,
        # which DDP needs (a rank with one batch more waits forever in the gradient all-reduce)
        share = self.samples_per_epoch // readers
        if self.batch_size is None:
            return share
        return max(1, -(-share // self.batch_size)) * self.batch_size

    def __iter__(self) -> Iterator[Any]:
        rank, world, worker, workers = _reader_identity(self.rank, self.world_size)
        quota = self.quota(world * workers)
        info = get_worker_info()
        # a fresh worker seed per DataLoader iterator (i.e. per epoch); in-process, count epochs ourselves
        epoch_seed = info.seed % (2**63) if info is not None else self._epoch
        self._epoch += 1
        rng = np.random.default_rng([self.seed, rank, worker, epoch_seed])
        skipped_before = self.bad.total
        try:
            yield from self._draw(quota, rng)
        finally:
            if self.bad.total > skipped_before:
                log.warning("%s: split %r (rank %d, worker %d): %d inputs skipped this epoch; so far %s",
                            self.index.root, self.index.split, rank, worker, self.bad.total - skipped_before,
                            self.bad.summary())

    def _draw(self, quota: int, rng: np.random.Generator) -> Iterator[Any]:
        weights = np.asarray(self.index.counts, dtype=np.float64)
        if (weights < 0).any():  # sizes unknown: uniform over shards
            weights = np.ones_like(weights)
        buffer: list[dict[str, Any]] = []
        produced, empty_draws, rejected_in_a_row = 0, 0, 0
        # every sample of the split met twice over and none usable: do not spin forever
        patience = 4 * self.index.total + 64

        def take() -> Any:
            nonlocal rejected_in_a_row
            out = _apply(self.transform, _pop_random(buffer, rng), rng, self.bad)
            rejected_in_a_row = 0 if out is not None else rejected_in_a_row + 1
            if rejected_in_a_row > patience:
                last = self.bad.files[-1] if self.bad.files else ("?", "?")
                raise StreamError(f"{self.index.root}: split {self.index.split!r}: the last {rejected_in_a_row} samples "
                                f"read were all skipped (e.g. {last[0]}: {last[1]}); check meta.json against the "
                                "shards with `nar data verify`")
            return out

        while produced < quota:
            if weights.sum() <= 0:
                raise StreamError(f"{self.index.root}: no readable shards left in split {self.index.split!r}")
            shard = int(rng.choice(len(self.index.shards), p=weights / weights.sum()))
            got = 0
            unreadable_before = self.bad.counts["unreadable shard"]
            for raw in iter_tar(self.index.shards[shard], self.bad):
                got += 1
                buffer.append(raw)
                if len(buffer) < self.shuffle_buffer:
                    continue
                out = take()
                if out is not None:
                    produced += 1
                    yield out
                    if produced >= quota:
                        return
            if self.bad.counts["unreadable shard"] > unreadable_before:
                log.warning("excluding %s from further draws this epoch", self.index.shards[shard])
                weights[shard] = 0.0
            empty_draws = empty_draws + 1 if got == 0 else 0
            if empty_draws > 10 + 2 * len(self.index.shards):
                raise StreamError(f"{self.index.root}: no readable samples in split {self.index.split!r}")
            if len(buffer) >= min(self.shuffle_buffer, self.index.total):
                # buffer larger than the split: drain so small datasets still produce
                while buffer and produced < quota:
                    out = take()
                    if out is not None:
                        produced += 1
                        yield out


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

    Deterministic view (``rng is None``): ADM centre crop. Training view: centre or random crop, and
    a horizontal flip with probability 1/2 when ``hflip``. ``spec`` (from ``meta.json``) checks the
    class and, where the dataset fixes it, the stored size; a failing sample raises
    :class:`~nar.data.checks.InvalidSample` (the stream skips and counts it).
    """

    def __init__(self, size: int, *, random_crop: bool = False, hflip: bool = False, spec: SampleSpec | None = None) -> None:
        self.size, self.random_crop, self.hflip = size, random_crop, hflip
        self.spec = spec or SampleSpec()

    def __call__(self, raw: dict[str, Any], rng: np.random.Generator | None) -> dict[str, Any]:
        name = sample_name(raw)
        ext, data = T.field(raw, "png", "jpg", "jpeg", "webp")
        img = self.spec.image(T.decode_image(data, name=f"{name}.{ext}"), name)
        common = _common(raw, self.spec, name)
        if rng is not None and self.random_crop:
            arr = T.random_crop_arr(img, self.size, rng)
        else:
            arr = T.center_crop_arr(img, self.size)
        if rng is not None and self.hflip and rng.random() < 0.5:
            arr = arr[:, ::-1]
        return {"image": T.to_tensor_pm1(arr), **common}


class VideoSample:
    """Raw clip → ``{"video": float [3, T, size, size] in [-1, 1], "label", "__key__"}``; optional random flip.

    ``spec`` checks ``frames.npy`` (uint8 ``[T, H, W, 3]``, meta's ``frames`` and ``image_size``) and the class.
    """

    def __init__(self, size: int | None = None, *, hflip: bool = False, spec: SampleSpec | None = None) -> None:
        self.size, self.hflip = size, hflip
        self.spec = spec or SampleSpec()

    def __call__(self, raw: dict[str, Any], rng: np.random.Generator | None) -> dict[str, Any]:
        name = sample_name(raw)
        _, data = T.field(raw, "frames.npy")
        frames = self.spec.frames_array(np.load(io.BytesIO(data), allow_pickle=False), name)
        common = _common(raw, self.spec, name)
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
