"""LightningDataModules over shard folders: images, videos and tokens.

Training reads :class:`~nar.data.readers.ResampledShardStream` (resampled shards, shuffle buffer) through a
:class:`~nar.data.readers.StreamLoader` (each pass the next epoch; ``resume_train_stream`` continues a saved
position at the exact sample); validation and test read :class:`~nar.data.readers.ShardStream` (every sample exactly once across
ranks and workers; optionally a class-balanced subset, e.g. 50 per class). Rank and world size come
from the trainer, so the split is right under DDP on any number of nodes.

Splits are found by role (:func:`~nar.data.shards.resolve_split`): evaluation asked for ``val`` reads
``test`` where only that exists (UCF-101) and the other way round. Every sample is checked against
``meta.json`` (:class:`~nar.data.checks.SampleSpec`); bad ones are skipped and counted, never batched.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

import lightning as L
from nar.data.checks import SampleSpec
from nar.data.readers import (
    EvalLoader,
    ImageSample,
    ResampledShardStream,
    SampleTransform,
    ShardStream,
    StreamLoader,
    StreamPosition,
    TokenSample,
    VideoSample,
    class_balanced_ids,
)
from nar.data.shards import SplitIndex, read_meta, resolve_split
from nar.errors import DataError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ShardDataConfig:
    """Where the shards are and how to batch them (fields shared by every shard DataModule)."""

    root: str = ""
    train_split: str = "train"
    val_split: str = "val"  # by role: a missing val falls back to test and the other way round
    test_split: str | None = None  # None: test reads val_split
    batch_size: int = 64
    eval_batch_size: int | None = None  # None: batch_size
    num_workers: int = 4
    shuffle_buffer: int = 2000
    samples_per_epoch: int | None = None  # None: the train split's size
    eval_per_class: int | None = None  # e.g. 50: class-balanced evaluation subset
    seed: int = 0
    pin_memory: bool = True
    drop_last: bool = True  # training batches only; evaluation keeps every sample
    # evaluation: a pass that reads fewer samples than selected (truncated or missing shards, bad samples)
    # raises MissingSamples naming the shards; True only logs it
    allow_missing: bool = False
    # validation while a model trains (in fit, and the validation after it): the fraction of a process's selected
    # val samples that may be missing (logged) before the pass fails; evaluation and test passes tolerate none
    val_missing_tolerance: float = 0.01

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {self.batch_size}")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be ≥ 1, got {self.eval_batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be ≥ 0, got {self.num_workers}")
        if self.shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be ≥ 1, got {self.shuffle_buffer}")
        if self.eval_per_class is not None and self.eval_per_class < 1:
            raise ValueError(f"eval_per_class must be ≥ 1, got {self.eval_per_class}")
        if self.samples_per_epoch is not None and self.samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be ≥ 1, got {self.samples_per_epoch}")
        if not 0 <= self.val_missing_tolerance < 1:  # also refuses NaN; any shortfall: allow_missing
            raise ValueError(f"val_missing_tolerance must be in [0, 1), got {self.val_missing_tolerance}")


@dataclasses.dataclass
class ImageDataConfig(ShardDataConfig):
    image_size: int = 256
    random_crop: bool = False  # training: random instead of centre crop
    # random_crop's scale jitter: the short side to a random size in [image_size, image_size / min_crop_frac]
    # first (LlamaGen's tokenizer training: 0.8); 1 = no jitter
    min_crop_frac: float = 1.0
    hflip: bool = False  # training: random horizontal flip (opt-in: wrong for digits, text, …)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_size < 1:
            raise ValueError(f"image_size must be ≥ 1, got {self.image_size}")
        if not 0 < self.min_crop_frac <= 1:  # also refuses NaN
            raise ValueError(f"min_crop_frac must be in (0, 1], got {self.min_crop_frac}")


@dataclasses.dataclass
class VideoDataConfig(ShardDataConfig):
    image_size: int | None = None  # None: keep the shards' resolution
    hflip: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"image_size must be ≥ 1, got {self.image_size}")


@dataclasses.dataclass
class TokenDataConfig(ShardDataConfig):
    random_augmentation: bool = True  # training: pick one of the stored augmentations per sample
    caption_features: bool = False  # also yield capfeat / capmask (text-to-image)


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGINT/SIGTERM to the main process, which saves a checkpoint and then stops
    them (Ctrl-C reaches the whole process group; a worker dying first would end the run with an error).
    Workers that ignore SIGTERM outlive ``multiprocessing``'s exit-time ``terminate()``: see
    :func:`kill_workers_at_exit`, which the parent registers before it starts them."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


_KILL_AT_EXIT_REGISTERED = False


def kill_workers_at_exit() -> None:
    """At interpreter exit, SIGKILL the daemonic children (DataLoader workers) still alive.

    A DataLoader iterator that is never closed (an exception kept its frame alive, say) leaves its workers
    running; ``multiprocessing`` stops daemonic children at exit with SIGTERM and then joins them, and workers
    started by :func:`ignore_stop_signals` ignore SIGTERM, so the process would wait forever. This exit hook
    (registered after ``multiprocessing``'s, so it runs first) kills them instead; it is registered once."""
    global _KILL_AT_EXIT_REGISTERED
    if _KILL_AT_EXIT_REGISTERED:
        return
    import atexit
    import multiprocessing

    def kill_daemonic_children() -> None:
        import contextlib
        import signal

        # torch's SIGCHLD handler raises when a DataLoader worker dies: it would cut this hook short
        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        children = [child for child in multiprocessing.active_children() if child.daemon]
        for child in children:
            with contextlib.suppress(Exception):
                child.kill()
        for child in children:
            with contextlib.suppress(Exception):
                child.join(5)

    atexit.register(kill_daemonic_children)
    _KILL_AT_EXIT_REGISTERED = True


class ShardDataModule(L.LightningDataModule):
    """Base DataModule: subclasses say which meta ``kind`` they read and how samples are decoded."""

    kinds: tuple[str, ...] = ()

    def __init__(self, cfg: ShardDataConfig) -> None:
        super().__init__()
        if not cfg.root:
            raise DataError("data root is empty: set data.root to a folder written by `nar data …`")
        self.cfg = cfg
        self.root = Path(cfg.root)
        self.meta: dict[str, Any] = read_meta(self.root)
        if self.kinds and self.meta.get("kind") not in self.kinds:
            raise DataError(f"{self.root} holds {self.meta.get('kind')!r} shards; {type(self).__name__} reads {self.kinds}")
        self.spec = SampleSpec.from_meta(self.meta)  # what every sample must be; bad ones are skipped
        self._datasets: dict[str, Any] = {}
        self._train_position: StreamPosition | None = None

    # --- what subclasses supply -----------------------------------------------------------------
    def train_transform(self) -> SampleTransform:
        raise NotImplementedError

    def eval_transform(self) -> SampleTransform:
        raise NotImplementedError

    # --- dataset facts --------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes", []))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split_index(self, split: str) -> SplitIndex:
        return SplitIndex.load(self.root, split)

    def resolve_split(self, split: str, role: str = "evaluation") -> str:
        """The split read for ``split`` in ``role`` (see :func:`nar.data.shards.resolve_split`)."""
        return resolve_split(self.meta, split, role=role, root=self.root)

    def has_split(self, split: str) -> bool:
        return split in self.meta["splits"]

    # --- Lightning hooks ------------------------------------------------------------------------
    def _rank_world(self) -> tuple[int | None, int | None]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return None, None  # fall back to torch.distributed inside the stream
        return trainer.global_rank, trainer.world_size

    def validates_training(self) -> bool:
        """Whether the trainer validates a model it trains: inside ``fit``, or its ``validate`` after one (a trainer
        that has taken steps: a run's final validation). A trainer that only validates or tests (``nar evaluate``),
        or none, reads strictly."""
        from lightning.pytorch.trainer.states import TrainerFn

        trainer = getattr(self, "trainer", None)
        stage = getattr(getattr(trainer, "state", None), "fn", None)
        return stage == TrainerFn.FITTING or (stage == TrainerFn.VALIDATING and getattr(trainer, "global_step", 0) > 0)

    def val_missing_tolerance(self) -> float | None:
        """``cfg.val_missing_tolerance`` for a validation while training (:meth:`validates_training`), else None."""
        return self.cfg.val_missing_tolerance if self.validates_training() else None

    def train_dataset(self) -> ResampledShardStream:
        rank, world = self._rank_world()
        return ResampledShardStream(
            self.split_index(self.resolve_split(self.cfg.train_split, "training")),
            self.train_transform(),
            shuffle_buffer=self.cfg.shuffle_buffer,
            seed=self.cfg.seed,
            samples_per_epoch=self.cfg.samples_per_epoch,
            batch_size=self.cfg.batch_size,  # every epoch: whole batches, at least one per rank and worker
            rank=rank,
            world_size=world,
        )

    def eval_dataset(self, split: str, per_class: int | None = None, *,
                     missing_tolerance: float | None = None) -> ShardStream:
        """Exactly-once pass over ``split`` (resolved by role: ``val`` ↔ ``test``); with ``per_class``, a
        seeded class-balanced subset of it (refused on a split whose samples have no class, e.g. captions).
        The stream raises :class:`~nar.data.readers.MissingSamples` at the end of a short pass unless
        ``cfg.allow_missing`` or, for a validation while training, at most ``missing_tolerance`` of a process's
        samples are missing (None: an evaluation, none may be)."""
        rank, world = self._rank_world()
        split = self.resolve_split(split)
        index = self.split_index(split)
        ids = None
        per_class = per_class if per_class is not None else self.cfg.eval_per_class
        if per_class is not None:
            if index.labels is None:
                raise DataError(f"{self.root / split}: no labels.npy, cannot draw a class-balanced subset")
            if len(index.labels) and not (index.labels >= 0).any():  # captions / pairs: every label is −1
                raise DataError(f"{self.root / split}: eval_per_class={per_class} draws a class-balanced subset, but "
                                f"none of its {len(index.labels)} samples has a class (a "
                                f"{self.meta.get('kind')!r} dataset); unset eval_per_class to evaluate them all")
            ids = class_balanced_ids(index.labels, per_class, seed=self.cfg.seed)
        return ShardStream(index, self.eval_transform(), sample_ids=ids, rank=rank, world_size=world,
                           allow_missing=self.cfg.allow_missing, missing_tolerance=missing_tolerance,
                           keys=("data.allow_missing", "data.val_missing_tolerance"))

    def resume_train_stream(self, position: StreamPosition) -> None:
        """Continue training at ``position`` (saved in a checkpoint by
        :class:`~nar.lightning.callbacks.data_position.DataPositionCallback`): the next ``train_dataloader()``
        yields exactly the batches an uninterrupted run would have yielded next."""
        self._train_position = position

    def _loader(self, dataset: Any, batch_size: int, drop_last: bool, loader: type[DataLoader] = DataLoader) -> DataLoader:
        workers = self.cfg.num_workers
        if workers > 0:
            kill_workers_at_exit()
        return loader(
            dataset,
            batch_size=batch_size,
            num_workers=workers,
            pin_memory=self.cfg.pin_memory and torch.cuda.is_available(),
            drop_last=drop_last,
            persistent_workers=False,
            # per-epoch worker seeds are drawn from this generator: reproducible, different each epoch
            generator=torch.Generator().manual_seed(self.cfg.seed),
            prefetch_factor=4 if workers > 0 else None,
            worker_init_fn=ignore_stop_signals if workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        """Training batches; each pass is the next epoch of the stream (:class:`~nar.data.readers.StreamLoader`),
        and batches carry ``__stream__`` (their position, a list of tuples that stays on the CPU)."""
        dataset = self.train_dataset()
        if self._train_position is not None:  # once: a dataloader built again later starts where the stream is
            dataset.position, self._train_position = self._train_position, None
        return self._loader(dataset, self.cfg.batch_size, self.cfg.drop_last, StreamLoader)

    def val_stream(self) -> ShardStream:
        """The val split, every sample once; while training, a few may be missing (``cfg.val_missing_tolerance``)."""
        return self.eval_dataset(self.cfg.val_split, missing_tolerance=self.val_missing_tolerance())

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_stream(), self.cfg.eval_batch_size or self.cfg.batch_size, False, EvalLoader)

    def test_dataloader(self) -> DataLoader:
        split = self.cfg.test_split or self.cfg.val_split
        return self._loader(self.eval_dataset(split), self.cfg.eval_batch_size or self.cfg.batch_size, False, EvalLoader)


class ImageShardDataModule(ShardDataModule):
    """Image (and image–caption) shards → batches ``{"image": [B, 3, S, S] in [-1, 1], "label": [B], …}``."""

    kinds = ("image", "pairs")
    cfg: ImageDataConfig

    def __init__(self, cfg: ImageDataConfig) -> None:
        super().__init__(cfg)

    def train_transform(self) -> SampleTransform:
        return ImageSample(self.cfg.image_size, random_crop=self.cfg.random_crop, min_crop_frac=self.cfg.min_crop_frac,
                           hflip=self.cfg.hflip, spec=self.spec)

    def eval_transform(self) -> SampleTransform:
        return ImageSample(self.cfg.image_size, spec=self.spec)


class VideoShardDataModule(ShardDataModule):
    """Clip shards → batches ``{"video": [B, 3, T, S, S] in [-1, 1], "label": [B], …}``. A folder of whole videos
    (``windows: per_visit``) gives windows of meta's ``frames``: a fresh one per training draw, exact on resume
    (:class:`~nar.data.readers.VideoSample`), the centre one for validation and test."""

    kinds = ("video",)
    cfg: VideoDataConfig

    def __init__(self, cfg: VideoDataConfig) -> None:
        super().__init__(cfg)

    def train_transform(self) -> SampleTransform:
        return VideoSample(self.cfg.image_size, hflip=self.cfg.hflip, spec=self.spec)

    def eval_transform(self) -> SampleTransform:
        return VideoSample(self.cfg.image_size, spec=self.spec)


class TokenShardDataModule(ShardDataModule):
    """Token shards → batches ``{"tokens": int64 [B, *grid], "label": [B], "capfeat"?, "capmask"?}``."""

    kinds = ("tokens",)
    cfg: TokenDataConfig

    def __init__(self, cfg: TokenDataConfig) -> None:
        super().__init__(cfg)

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(self.meta["grid"])

    @property
    def codebook_size(self) -> int | None:
        return self.meta.get("codebook_size")

    def train_transform(self) -> SampleTransform:
        return TokenSample(random_augmentation=self.cfg.random_augmentation, caption_features=self.cfg.caption_features,
                           spec=self.spec)

    def eval_transform(self) -> SampleTransform:
        return TokenSample(random_augmentation=False, caption_features=self.cfg.caption_features, spec=self.spec)


def datamodule_for(root: str | Path, **overrides: Any) -> ShardDataModule:
    """The DataModule matching the ``kind`` in ``<root>/meta.json``, with config ``overrides``."""
    kind = read_meta(root).get("kind")
    table: dict[str, tuple[type[ShardDataModule], type[ShardDataConfig]]] = {
        "image": (ImageShardDataModule, ImageDataConfig),
        "pairs": (ImageShardDataModule, ImageDataConfig),
        "video": (VideoShardDataModule, VideoDataConfig),
        "tokens": (TokenShardDataModule, TokenDataConfig),
    }
    if kind not in table:
        raise DataError(f"{root}: unknown dataset kind {kind!r}")
    module_cls, cfg_cls = table[kind]
    if "image_size" not in overrides and cfg_cls is ImageDataConfig and "image_size" in read_meta(root):
        overrides["image_size"] = int(read_meta(root)["image_size"])
    return module_cls(cfg_cls(root=str(root), **overrides))  # type: ignore[call-arg]


__all__ = [
    "ShardDataConfig",
    "ImageDataConfig",
    "VideoDataConfig",
    "TokenDataConfig",
    "ShardDataModule",
    "ImageShardDataModule",
    "VideoShardDataModule",
    "TokenShardDataModule",
    "datamodule_for",
]
