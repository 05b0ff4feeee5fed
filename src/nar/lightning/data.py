"""The :mod:`nar.data` DataModule of a run's ``data`` section, checked against what the run trains."""

from __future__ import annotations

from typing import Any

import lightning as L
from nar.data.datamodules import (
    ImageDataConfig,
    ImageShardDataModule,
    TokenDataConfig,
    TokenShardDataModule,
    VideoDataConfig,
    VideoShardDataModule,
)
from nar.data.shards import read_meta
from nar.errors import ConfigError, DataError
from nar.runs.config import DataSection, TokenizerRunConfig, TrainConfig


def _common(d: DataSection, seed: int) -> dict[str, Any]:
    return dict(root=d.root, train_split=d.train_split, val_split=d.val_split, batch_size=d.batch_size,
                eval_batch_size=d.eval_batch_size, num_workers=d.num_workers, shuffle_buffer=d.shuffle_buffer,
                allow_missing=d.allow_missing, seed=seed)


def generator_datamodule(cfg: TrainConfig) -> L.LightningDataModule:
    """Token shards, or image/video shards tokenized on the fly, for a generator run."""
    d = cfg.data
    if not d.root:
        raise ConfigError("empty; point it at a shard folder (e.g. made by `nar data tokens`)", key="data.root")
    meta = read_meta(d.root)
    common = {**_common(d, d.seed), "samples_per_epoch": d.samples_per_epoch}
    kind = meta.get("kind")
    if kind == "tokens":
        grid = list(meta.get("grid", cfg.model.grid))
        if grid and list(grid) != list(cfg.model.grid):
            raise ConfigError(f"{cfg.model.grid} but {d.root} holds {grid} token grids", key="model.grid")
        vocab = meta.get("codebook_size")
        if vocab and int(vocab) > cfg.model.vocab_size:
            raise ConfigError(f"{cfg.model.vocab_size} < the tokenizer's codebook {vocab}", key="model.vocab_size")
        return TokenShardDataModule(TokenDataConfig(random_augmentation=d.random_augmentation,
                                                    caption_features=d.caption_features, **common))
    if not cfg.tokenizer.path:
        raise ConfigError(f"{d.root} holds {kind!r} shards; tokenizing them on the fly needs a tokenizer",
                          key="tokenizer.path")
    if kind in ("image", "pairs"):
        size = d.image_size or int(meta.get("image_size", 256))
        return ImageShardDataModule(ImageDataConfig(image_size=size, **common))
    if kind == "video":
        return VideoShardDataModule(VideoDataConfig(image_size=d.image_size, **common))
    raise DataError(f"{d.root}: unknown dataset kind {kind!r}")


def tokenizer_datamodule(cfg: TokenizerRunConfig) -> L.LightningDataModule:
    """Image or video shards whose samples match ``cfg.model`` (checked against ``meta.json``)."""
    d = cfg.data
    if not d.root:
        raise ConfigError("empty; point it at an image or video shard folder", key="data.root")
    meta = read_meta(d.root)
    common = {**_common(d, cfg.trainer.seed), "hflip": d.hflip}
    if cfg.model.kind == "image":
        if meta.get("kind") not in ("image", "pairs"):
            raise ConfigError(f"'image' but {d.root} holds {meta.get('kind')!r} shards", key="model.kind")
        return ImageShardDataModule(ImageDataConfig(image_size=cfg.model.image_size, **common))
    if meta.get("kind") != "video":
        raise ConfigError(f"'video' but {d.root} holds {meta.get('kind')!r} shards", key="model.kind")
    if "frames" in meta and int(meta["frames"]) != cfg.model.num_frames:
        raise ConfigError(f"{cfg.model.num_frames} but the clips in {d.root} have {meta['frames']} frames; "
                          f"set model.num_frames={meta['frames']}", key="model.num_frames")
    return VideoShardDataModule(VideoDataConfig(image_size=cfg.model.image_size, **common))
