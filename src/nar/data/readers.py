"""Iterable datasets over a split's shards, and the per-sample decoders that turn raw fields into tensors.

* :class:`ShardStream` — a deterministic pass for evaluation. The selected samples (all, or a
  class-balanced subset) are cut into ``world_size × num_workers`` contiguous parts whose sizes differ
  by at most one; each (rank, worker) reads only the shards its part touches. Together they read
  every selected sample exactly once.
* :class:`ResampledShardStream` — training: shards drawn with replacement (weighted by size) and a
  shuffle buffer, a fixed number of samples per epoch, reseeded each epoch from the DataLoader's seed.

Every decoder error is logged with the shard and key and the sample is skipped: a multi-day run never
dies on one bad sample.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

from nar.data import transforms as T
from nar.data.shards import BadInputLog, SplitIndex, iter_tar
from nar.errors import DataError

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


class ShardStream(IterableDataset):
    """Deterministic, exactly-once pass over a split (or over ``sample_ids`` of it), split by rank and worker.

    ``rank`` / ``world_size`` default to the initialised process group (the DataModule passes the
    trainer's). ``transform(raw, None)`` maps each raw sample to what the loader yields.
    """

    def __init__(
        self,
        index: SplitIndex,
        transform: SampleTransform | None = None,
        *,
        sample_ids: np.ndarray | None = None,
        rank: int | None = None,
        world_size: int | None = None,
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
        self.bad = BadInputLog()

    # No __len__: with several workers each ends on a partial batch, so a length in batches would be
    # wrong and Lightning would stop the pass early. Ask for the sample count instead.
    def num_samples(self) -> int:
        """Samples this rank reads (all its workers together)."""
        rank, world, _, _ = _reader_identity(self.rank, self.world_size)
        lo, hi = partition_bounds(len(self.sample_ids), world, rank)
        return hi - lo

    def part_ids(self, part: int, parts: int) -> np.ndarray:
        lo, hi = partition_bounds(len(self.sample_ids), parts, part)
        return self.sample_ids[lo:hi]

    def __iter__(self) -> Iterator[Any]:
        rank, world, worker, workers = _reader_identity(self.rank, self.world_size)
        # rank-major: rank r owns a contiguous block, shared out among its workers
        ids = self.part_ids(rank * workers + worker, world * workers)
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
                    if out is not None:
                        yield out
                if pos >= last:
                    break
            if pos < last:
                log.warning("%s ended after %d samples; meta.json expects %d", self.index.shards[shard], pos + 1, self.index.counts[shard])


class ResampledShardStream(IterableDataset):
    """Training stream: shards drawn with replacement (probability ∝ size), shuffled through a buffer.

    Each epoch yields ``samples_per_epoch`` samples in total (default: the split size), shared out
    over ranks and workers. The RNG is seeded from ``seed``, the rank and the DataLoader's per-epoch
    worker seed, so a seeded run is reproducible and successive epochs differ.
    """

    def __init__(
        self,
        index: SplitIndex,
        transform: SampleTransform | None = None,
        *,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        samples_per_epoch: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        if not index.shards or index.total == 0:
            raise DataError(f"{index.root}: split {index.split!r} has no samples")
        self.index = index
        self.transform = transform
        self.shuffle_buffer = max(1, shuffle_buffer)
        self.seed = seed
        self.samples_per_epoch = samples_per_epoch if samples_per_epoch is not None else index.total
        self.rank, self.world_size = rank, world_size
        self._epoch = 0
        self.bad = BadInputLog()

    def set_epoch(self, epoch: int) -> None:
        self._epoch = epoch

    def __iter__(self) -> Iterator[Any]:
        rank, world, worker, workers = _reader_identity(self.rank, self.world_size)
        # the same quota for every (rank, worker): every rank then has the same number of batches,
        # which DDP needs (a rank with one batch more waits forever in the gradient all-reduce)
        quota = self.samples_per_epoch // (world * workers)
        info = get_worker_info()
        # a fresh worker seed per DataLoader iterator (i.e. per epoch); in-process, count epochs ourselves
        epoch_seed = info.seed % (2**63) if info is not None else self._epoch
        self._epoch += 1
        rng = np.random.default_rng([self.seed, rank, worker, epoch_seed])
        weights = np.asarray(self.index.counts, dtype=np.float64)
        if (weights < 0).any():  # sizes unknown: uniform over shards
            weights = np.ones_like(weights)
        buffer: list[dict[str, Any]] = []
        produced, empty_draws = 0, 0
        while produced < quota:
            if weights.sum() <= 0:
                raise DataError(f"{self.index.root}: no readable shards left in split {self.index.split!r}")
            shard = int(rng.choice(len(self.index.shards), p=weights / weights.sum()))
            got = 0
            unreadable_before = self.bad.counts["unreadable shard"]
            for raw in iter_tar(self.index.shards[shard], self.bad):
                got += 1
                buffer.append(raw)
                if len(buffer) < self.shuffle_buffer:
                    continue
                out = _apply(self.transform, _pop_random(buffer, rng), rng, self.bad)
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
                raise DataError(f"{self.index.root}: no readable samples in split {self.index.split!r}")
            if len(buffer) >= min(self.shuffle_buffer, self.index.total):
                # buffer larger than the split: drain so small datasets still produce
                while buffer and produced < quota:
                    out = _apply(self.transform, _pop_random(buffer, rng), rng, self.bad)
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
        bad.record(f"{raw.get('__shard__', '?')}:{raw.get('__key__', '?')}", f"cannot decode sample: {err}")
        return None


# --------------------------------------------------------------------------------------------------
# Per-sample decoders (picklable callables; DataLoader workers receive copies)
# --------------------------------------------------------------------------------------------------


def _label(raw: dict[str, Any]) -> int:
    return int(raw["cls"]) if "cls" in raw else -1


def _common(raw: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"label": _label(raw), "__key__": raw["__key__"]}
    if "txt" in raw:
        out["caption"] = raw["txt"].decode("utf-8")
    return out


class ImageSample:
    """Raw image sample → ``{"image": float [3, size, size] in [-1, 1], "label": int, "__key__", "caption"?}``.

    Deterministic view (``rng is None``): ADM centre crop. Training view: centre or random crop, and
    a horizontal flip with probability 1/2 when ``hflip``.
    """

    def __init__(self, size: int, *, random_crop: bool = False, hflip: bool = False) -> None:
        self.size, self.random_crop, self.hflip = size, random_crop, hflip

    def __call__(self, raw: dict[str, Any], rng: np.random.Generator | None) -> dict[str, Any]:
        ext, data = T.field(raw, "png", "jpg", "jpeg", "webp")
        img = T.decode_image(data, name=f"{raw.get('__shard__')}:{raw['__key__']}.{ext}")
        if rng is not None and self.random_crop:
            arr = T.random_crop_arr(img, self.size, rng)
        else:
            arr = T.center_crop_arr(img, self.size)
        if rng is not None and self.hflip and rng.random() < 0.5:
            arr = arr[:, ::-1]
        return {"image": T.to_tensor_pm1(arr), **_common(raw)}


class VideoSample:
    """Raw clip → ``{"video": float [3, T, size, size] in [-1, 1], "label", "__key__"}``; optional random flip."""

    def __init__(self, size: int | None = None, *, hflip: bool = False) -> None:
        self.size, self.hflip = size, hflip

    def __call__(self, raw: dict[str, Any], rng: np.random.Generator | None) -> dict[str, Any]:
        _, data = T.field(raw, "frames.npy")
        frames = np.load(io.BytesIO(data), allow_pickle=False)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise DataError(f"frames.npy must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
        if self.size is not None:
            frames = T.resize_video(frames, self.size)
        if rng is not None and self.hflip and rng.random() < 0.5:
            frames = frames[:, :, ::-1]
        return {"video": T.to_tensor_pm1(frames), **_common(raw)}


class TokenSample:
    """Raw token sample → ``{"tokens": int64 [*grid], "label", "__key__", "capfeat"?, "capmask"?}``.

    ``tokens.npy`` holds ``[A, *grid]`` (A augmentations, index 0 the plain centre view): training
    picks one at random when ``random_augmentation``; the deterministic view takes index 0.
    """

    def __init__(self, *, random_augmentation: bool = True, caption_features: bool = False) -> None:
        self.random_augmentation, self.caption_features = random_augmentation, caption_features

    def __call__(self, raw: dict[str, Any], rng: np.random.Generator | None) -> dict[str, Any]:
        _, data = T.field(raw, "tokens.npy")
        codes = np.load(io.BytesIO(data), allow_pickle=False)
        a = int(rng.integers(codes.shape[0])) if (rng is not None and self.random_augmentation) else 0
        out = {"tokens": torch.from_numpy(codes[a].astype(np.int64)), **_common(raw)}
        if self.caption_features:
            _, feat = T.field(raw, "capfeat.npy")
            _, mask = T.field(raw, "capmask.npy")
            out["capfeat"] = torch.from_numpy(np.load(io.BytesIO(feat)).astype(np.float32))
            out["capmask"] = torch.from_numpy(np.load(io.BytesIO(mask)).astype(bool))
        return out
