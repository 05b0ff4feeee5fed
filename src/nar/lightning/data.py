"""The :mod:`nar.data` DataModule of a run's ``data`` section, checked against what the run trains; its validation
reads ``data.limit_val_samples`` samples spread over the whole val split (:class:`SpreadValidation`). A class-labelled
training split that looks sorted by class gets one warning at start (:func:`nar.data.order.class_sorted_warning`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

import lightning as L
from nar.data.checks import per_visit_window
from nar.data.datamodules import (
    ImageDataConfig,
    ImageShardDataModule,
    ShardDataConfig,
    ShardDataModule,
    TokenDataConfig,
    TokenShardDataModule,
    VideoDataConfig,
    VideoShardDataModule,
)
from nar.data.order import class_sorted_warning
from nar.data.readers import ShardStream, process_identity
from nar.data.shards import read_meta, resolve_split
from nar.errors import ConfigError, DataError
from nar.runs.config import DataSection, TokenizerRunConfig, TrainConfig, val_samples

log = logging.getLogger(__name__)


def spread_ids(total: int, n: int) -> np.ndarray:
    """``n`` distinct positions in ``range(total)`` (``n <= total``) spaced evenly from the first to the last:
    int64 ``[n]``, ascending."""
    if n <= 1:
        return np.zeros(min(n, total), dtype=np.int64)
    return np.arange(n, dtype=np.int64) * (total - 1) // (n - 1)  # steps of >= 1 when n <= total: distinct


class SpreadValidation(ShardDataModule):
    """A run's DataModule: validation reads ``data.limit_val_samples`` samples (:func:`~nar.runs.config.val_samples`)
    spread evenly over the whole val split, not its first batches (a class-sorted split, as UCF-101's test list or
    ImageNet's val shards, would show a few classes). The subset depends only on the split's size, the limit and the
    number of processes: the same at every validation and after a resume. Under DDP each process reads its own
    contiguous part of it (:class:`~nar.data.readers.ShardStream` shares the ids out), all parts equal
    (whole batches each; a split no larger than the subset is read whole, as without a limit).
    The cost: each validation reads through every val shard (the samples it skips are not decoded). While the run
    trains, up to ``data.val_missing_tolerance`` of a process's subset may be missing (damaged samples: logged);
    ``nar evaluate`` reads it strictly (:meth:`~nar.data.datamodules.ShardDataModule.validates_training`)."""

    def __init__(self, cfg: ShardDataConfig, section: DataSection) -> None:
        super().__init__(cfg)
        self.section = section

    def val_stream(self) -> ShardStream:
        stream = super().val_stream()
        _, world = process_identity(*self._rank_world())  # no trainer: the process group, as the stream falls back
        n = val_samples(self.section, world)
        ids = stream.sample_ids
        return stream.subset(ids[spread_ids(len(ids), n)]) if n is not None and n < len(ids) else stream


class TokenRunData(SpreadValidation, TokenShardDataModule):
    """Token shards of a generator run."""


class ImageRunData(SpreadValidation, ImageShardDataModule):
    """Image shards of a generator run (tokenized as it trains) or a tokenizer run."""


class VideoRunData(SpreadValidation, VideoShardDataModule):
    """Clip (or whole-video) shards of a generator run (tokenized as it trains) or a tokenizer run."""


def _common(d: DataSection, seed: int) -> dict[str, Any]:
    return dict(root=d.root, train_split=d.train_split, val_split=d.val_split, batch_size=d.batch_size,
                eval_batch_size=d.eval_batch_size, num_workers=d.num_workers, shuffle_buffer=d.shuffle_buffer,
                allow_missing=d.allow_missing, val_missing_tolerance=d.val_missing_tolerance, seed=seed)


def warn_if_class_sorted(d: DataSection, meta: dict[str, Any]) -> None:
    """Log one warning (first process only) when the run's class-labelled training split looks sorted by class:
    training draws whole shards into a buffer of ``data.shuffle_buffer`` samples, so its batches would hold few
    classes. Reads the classes of the split's first shards only; caption datasets are not checked."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    classes = meta.get("classes") or []
    kind = meta.get("source_kind", meta.get("kind"))
    if len(classes) < 2 or kind == "pairs" or d.train_split not in meta["splits"]:
        return
    if getattr(rank_zero_only, "rank", 0) != 0:
        return
    # clips of one video lie side by side; a folder of whole videos holds one sample per video
    whole = kind == "video" and per_visit_window(meta) is not None
    message = class_sorted_warning(d.root, d.train_split, len(classes), shuffle_buffer=d.shuffle_buffer,
                                   one_sample_per_input=kind != "video" or whole)
    if message:
        log.warning("%s", message)


def _cgroup_limits() -> list[int]:
    """The memory limits (bytes) of this process's cgroup and the cgroups above it, v2 and v1: a batch scheduler's
    job (Slurm --mem) or a container. The job's own cgroup is named in ``/proc/self/cgroup``; "max" and v1's huge
    "unlimited" are left to :func:`min` against the machine's memory."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    limits = []
    for line in lines:
        parts = line.split(":", 2)  # "<id>:<controllers>:<path>"
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2: one tree, memory.max at each level
            root, name = Path("/sys/fs/cgroup"), "memory.max"
        elif "memory" in controllers.split(","):  # v1: the memory controller's own tree
            root, name = Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes"
        else:
            continue
        level = Path(path.lstrip("/"))
        while True:
            try:
                text = (root / level / name).read_text().strip()
            except OSError:
                text = ""
            if text.isdigit():
                limits.append(int(text))
            if level == level.parent:
                break
            level = level.parent
    return limits


def _memory_limit() -> int | None:
    """Bytes of memory this job may use: the machine's, or its cgroup's limit when lower; None where neither is
    known."""
    import os

    sizes = _cgroup_limits()
    try:
        sizes.append(int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES")))
    except (AttributeError, ValueError, OSError):
        pass
    return min(sizes) if sizes else None


def check_shuffle_buffer_memory(d: DataSection, meta: dict[str, Any], processes_per_node: int,
                                memory: int | None = None) -> None:
    """Refuse a ``data.shuffle_buffer`` whose raw samples cannot fit in memory; warn above half of it.

    Each DataLoader worker of each process holds up to ``data.shuffle_buffer`` raw training samples (their stored
    bytes), so a node holds about ``buffer x workers x processes x mean stored sample``; the mean comes from the
    training split's local shard files (remote shards: not checked). Whole videos of ~9 MB (``nar data ucf101
    --whole-videos``) with the video recipe's buffer of 2000 would need ~146 GB a GPU: killed for memory at the
    first fill, where a clip or token folder needs a few GB at most. ``memory``: what the job may use, else read
    here (:func:`_memory_limit`)."""
    from nar.data.shards import SplitIndex

    try:
        index = SplitIndex.load(d.root, d.train_split, meta, with_labels=False)
    except DataError:
        return  # no such split: the DataModule names it
    files = [s for s in index.shards if isinstance(s, Path) and s.is_file()]
    if not files or len(files) != len(index.shards) or index.total <= 0:
        return
    per_sample = sum(f.stat().st_size for f in files) / index.total
    held = min(d.shuffle_buffer, index.total)  # a buffer never holds more than the split
    buffered = held * per_sample * max(1, d.num_workers) * max(1, processes_per_node)
    memory = memory or _memory_limit()
    if not memory or buffered <= memory / 2:
        return
    fits = max(1, int(memory / 4 / (per_sample * max(1, d.num_workers) * max(1, processes_per_node))))
    gib = 2 ** 30
    text = (f"{held} raw training samples of ≈{per_sample / 2 ** 20:.1f} MiB ({d.root}) in each of "
            f"{max(1, d.num_workers)} loader workers x {max(1, processes_per_node)} processes on this node: "
            f"≈{buffered / gib:.0f} GiB of the {memory / gib:.0f} GiB this job may use; data.shuffle_buffer={fits} keeps "
            "it to a quarter")
    if buffered > memory:
        raise ConfigError(f"{text} (the run would be killed for memory as its buffers fill)", key="data.shuffle_buffer")
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) == 0:  # one warning per run, not one per process
        log.warning("data.shuffle_buffer: %s", text)


def check_val_split_covers_processes(d: DataSection, meta: dict[str, Any], world_size: int) -> None:
    """Refuse a run whose val split holds fewer samples than the processes that validate it: a process with no
    sample would skip the epoch-end reductions (the loss mean's all-gather, the logged sums) the others wait in,
    and the run would hang at its first validation. Asked at start, from ``meta.json``'s counts (not known for
    an index of remote shards: not checked)."""
    if world_size <= 1:
        return
    try:
        split = resolve_split(meta, d.val_split, root=d.root)
    except DataError:
        return  # no val split: the DataModule names it
    counts = [int(c) for c in meta["splits"][split].get("shard_samples", [])]
    if not counts or min(counts) < 0 or sum(counts) >= world_size:
        return
    raise ConfigError(f"{d.root} split {split!r} holds {sum(counts)} samples for {world_size} processes, and each "
                      "must validate at least one: add val samples, or validate on fewer processes",
                      key="data.val_split")


def generator_datamodule(cfg: TrainConfig, *, training: bool = True) -> L.LightningDataModule:
    """Token shards, or image/video shards tokenized on the fly, for a generator run. ``training``: also the checks
    of a run that trains (a class-sorted training split warned about, a shuffle buffer too large for memory
    refused); an evaluation, which reads only the val split, passes False. A val split smaller than the processes
    is refused either way."""
    d = cfg.data
    if not d.root:
        raise ConfigError("empty; point it at a shard folder (e.g. made by `nar data tokens`)", key="data.root")
    meta = read_meta(d.root)
    if training:
        warn_if_class_sorted(d, meta)
        check_shuffle_buffer_memory(d, meta, cfg.trainer.devices)
    check_val_split_covers_processes(d, meta, cfg.trainer.world_size)
    classes = len(meta.get("classes") or [])
    if cfg.model.condition == "class" and classes > cfg.model.num_classes:  # an IndexError at the first such label
        raise ConfigError(f"{cfg.model.num_classes}, but {d.root} holds {classes} classes (meta.json classes); set "
                          f"model.num_classes={classes} or more", key="model.num_classes")
    common = {**_common(d, d.seed), "samples_per_epoch": d.samples_per_epoch}
    kind = meta.get("kind")
    if kind == "tokens":
        grid = list(meta.get("grid", cfg.model.grid))
        if grid and list(grid) != list(cfg.model.grid):
            raise ConfigError(f"{cfg.model.grid} but {d.root} holds {grid} token grids", key="model.grid")
        vocab = meta.get("codebook_size")
        if vocab and int(vocab) > cfg.model.vocab_size:
            raise ConfigError(f"{cfg.model.vocab_size} < the tokenizer's codebook {vocab}", key="model.vocab_size")
        return TokenRunData(TokenDataConfig(random_augmentation=d.random_augmentation,
                                            caption_features=d.caption_features, **common), d)
    if not cfg.tokenizer.path:
        raise ConfigError(f"{d.root} holds {kind!r} shards; tokenizing them on the fly needs a tokenizer",
                          key="tokenizer.path")
    if kind in ("image", "pairs"):
        return ImageRunData(ImageDataConfig(image_size=_pixel_size(cfg, meta, "image"), **common), d)
    if kind == "video":
        return VideoRunData(VideoDataConfig(image_size=_pixel_size(cfg, meta, "video"), **common), d)
    raise DataError(f"{d.root}: unknown dataset kind {kind!r}")


def _pixel_size(cfg: TrainConfig, meta: dict[str, Any], kind: str) -> int:
    """Pixels of the images (or video frames) the generator run tokenizes as it trains: ``data.image_size``, else
    the shards' fixed size, else the tokenizer's own ``image_size``. Checked here against ``model.grid`` (for
    clips with the frame count ``meta.json`` stores): a mismatch would otherwise first show in the first training
    batch, as a grid error naming neither the size nor where it came from. Only the tokenizer's config is read."""
    from nar.tokenizers.io import read_tokenizer_config

    d = cfg.data
    config = read_tokenizer_config(cfg.tokenizer.path, config=cfg.tokenizer.config or None)
    if config.kind != kind:
        raise ConfigError(f"a {config.kind} tokenizer cannot tokenize the {kind} samples in {d.root}",
                          key="tokenizer.path")
    trained = int(config.image_size)
    if d.image_size:
        size, source = int(d.image_size), "data.image_size"
    elif meta.get("image_size"):
        size, source = int(meta["image_size"]), f"the size {d.root}/meta.json stores"
    else:
        size, source = trained, "the tokenizer's image_size"
    factor = int(config.spatial_downsample)
    grid = [size // factor] * 2 if size % factor == 0 else None
    want = list(cfg.model.grid)
    time_fits = True
    if kind == "video":
        frames = int(meta.get("frames") or config.num_frames)
        ft = int(config.temporal_factor)
        steps = frames // ft if frames % ft == 0 else None
        time_fits = steps is not None and [steps] == want[:1]
        grid = [steps, *grid] if steps and grid else None
        source += f", {frames}-frame clips"
    if grid != want:
        square = len(want) >= 2 and want[-1] == want[-2]
        fits = f"data.image_size={want[-1] * factor}" if square and time_fits else f"model.grid={grid}"
        raise ConfigError(f"{size} px ({source}) gives the tokenizer {cfg.tokenizer.path} (trained at {trained} px, "
                          f"downsampling {factor}×) {grid or 'no'} token grids, but model.grid is {want}; "
                          f"set {fits}", key="data.image_size")
    return size


def tokenizer_datamodule(cfg: TokenizerRunConfig) -> L.LightningDataModule:
    """Image or video shards whose samples match ``cfg.model`` (checked against ``meta.json``); images train on
    random crops when ``data.random_crop`` (scale jitter ``data.min_crop_frac``), validate on the centre crop."""
    d = cfg.data
    if not d.root:
        raise ConfigError("empty; point it at an image or video shard folder", key="data.root")
    meta = read_meta(d.root)
    warn_if_class_sorted(d, meta)
    check_shuffle_buffer_memory(d, meta, cfg.trainer.devices)
    check_val_split_covers_processes(d, meta, cfg.trainer.world_size)
    common = {**_common(d, cfg.trainer.seed), "hflip": d.hflip}
    if cfg.model.kind == "image":
        if meta.get("kind") not in ("image", "pairs"):
            raise ConfigError(f"'image' but {d.root} holds {meta.get('kind')!r} shards", key="model.kind")
        return ImageRunData(ImageDataConfig(image_size=cfg.model.image_size, random_crop=d.random_crop,
                                            min_crop_frac=d.min_crop_frac, **common), d)
    if meta.get("kind") != "video":
        raise ConfigError(f"'video' but {d.root} holds {meta.get('kind')!r} shards", key="model.kind")
    if "frames" in meta and int(meta["frames"]) != cfg.model.num_frames:
        raise ConfigError(f"{cfg.model.num_frames} but the clips in {d.root} have {meta['frames']} frames; "
                          f"set model.num_frames={meta['frames']}", key="model.num_frames")
    return VideoRunData(VideoDataConfig(image_size=cfg.model.image_size, **common), d)
