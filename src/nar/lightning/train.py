"""Building and running generator training / evaluation with Lightning (used by ``nar train``, ``nar evaluate``
and ``nar demo``).

One run = one folder ``<runs_root>/<name>/``: ``config.yaml``, ``tb/`` (TensorBoard), ``checkpoints/``
(``step_*.ckpt`` every ``trainer.ckpt_every`` steps and ``last.ckpt``), ``samples/`` (PNG grids) and
``metrics.jsonl`` (every validation's scores).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

import lightning as L
from nar.errors import ConfigError, DataError
from nar.lightning.callbacks import FrontierDecodingCallback, MetricsFileCallback
from nar.lightning.config import TrainConfig, train_config_to_dict
from nar.lightning.generator_module import GeneratorModule

log = logging.getLogger(__name__)


def build_datamodule(cfg: TrainConfig) -> L.LightningDataModule:
    """The :mod:`nar.data` DataModule for ``cfg.data.root``: token shards, or image/video shards to tokenize."""
    from nar.data.datamodules import (
        ImageDataConfig,
        ImageShardDataModule,
        TokenDataConfig,
        TokenShardDataModule,
        VideoDataConfig,
        VideoShardDataModule,
    )
    from nar.data.shards import read_meta

    d = cfg.data
    if not d.root:
        raise ConfigError("key 'data.root': empty; point it at a shard folder (e.g. made by `nar data tokens`)")
    meta = read_meta(d.root)
    common = dict(root=d.root, train_split=d.train_split, val_split=d.val_split, batch_size=d.batch_size,
                  eval_batch_size=d.eval_batch_size, num_workers=d.num_workers, shuffle_buffer=d.shuffle_buffer,
                  samples_per_epoch=d.samples_per_epoch, seed=d.seed)
    kind = meta.get("kind")
    if kind == "tokens":
        grid = list(meta.get("grid", cfg.model.grid))
        if grid and list(grid) != list(cfg.model.grid):
            raise ConfigError(f"key 'model.grid': {cfg.model.grid} but {d.root} holds {grid} token grids")
        vocab = meta.get("codebook_size")
        if vocab and int(vocab) > cfg.model.vocab_size:
            raise ConfigError(f"key 'model.vocab_size': {cfg.model.vocab_size} < the tokenizer's codebook {vocab}")
        return TokenShardDataModule(TokenDataConfig(random_augmentation=d.random_augmentation,
                                                    caption_features=d.caption_features, **common))
    if not cfg.tokenizer.path:
        raise ConfigError(f"key 'tokenizer.path': {d.root} holds {kind!r} shards; tokenizing them on the fly "
                          "needs a tokenizer")
    if kind in ("image", "pairs"):
        size = d.image_size or int(meta.get("image_size", 256))
        return ImageShardDataModule(ImageDataConfig(image_size=size, **common))
    if kind == "video":
        return VideoShardDataModule(VideoDataConfig(image_size=d.image_size, **common))
    raise DataError(f"{d.root}: unknown dataset kind {kind!r}")


def _strategy(cfg: TrainConfig, world: int):
    t = cfg.trainer
    if t.strategy == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        from nar.model.layers import Block

        return FSDPStrategy(auto_wrap_policy={Block}, sharding_strategy="FULL_SHARD", state_dict_type="full")
    if t.strategy == "ddp" or (t.strategy == "auto" and world > 1):
        from lightning.pytorch.strategies import DDPStrategy

        # gloo on CPU (tests, demos), NCCL on GPUs
        return DDPStrategy(process_group_backend=None, find_unused_parameters=False)
    return "auto"


def build_trainer(cfg: TrainConfig, extra_callbacks: list | None = None, enable_progress_bar: bool | None = None,
                  logger: bool = True) -> tuple[L.Trainer, FrontierDecodingCallback]:
    t = cfg.trainer
    run_dir = cfg.run_dir
    accelerator = t.accelerator
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    precision = t.precision
    if accelerator == "cpu" and precision in ("bf16-mixed", "16-mixed"):
        log.info("CPU run: precision %s -> 32-true", precision)
        precision = "32-true"
    world = t.devices * t.num_nodes
    decoding = FrontierDecodingCallback(cfg, run_dir)
    every = t.ckpt_every or t.max_steps
    callbacks = [
        decoding,
        MetricsFileCallback(run_dir),
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="step_{step:07d}", auto_insert_metric_name=False,
                        every_n_train_steps=every, save_top_k=-1, save_last=True),
        *(extra_callbacks or []),
    ]
    loggers = []
    if logger:
        loggers.append(TensorBoardLogger(str(run_dir), name="tb", version="", default_hp_metric=False))
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer = L.Trainer(
        accelerator=accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=_strategy(cfg, world),
        precision=precision, max_steps=t.max_steps, max_epochs=-1,
        val_check_interval=t.val_every if t.val_every else None, check_val_every_n_epoch=None if t.val_every else 10**9,
        num_sanity_val_steps=0, limit_val_batches=_limit_val_batches(cfg),
        gradient_clip_val=cfg.optim.grad_clip or None, gradient_clip_algorithm="norm",
        accumulate_grad_batches=t.accumulate, log_every_n_steps=t.log_every, logger=loggers or False,
        callbacks=callbacks, default_root_dir=str(run_dir), use_distributed_sampler=False,
        enable_progress_bar=enable_progress_bar if enable_progress_bar is not None else os.isatty(2),
        enable_model_summary=False, deterministic=t.deterministic or None,
    )
    return trainer, decoding


def _limit_val_batches(cfg: TrainConfig) -> int | float:
    if cfg.data.limit_val_samples is None:
        return 1.0
    return max(1, math.ceil(cfg.data.limit_val_samples / (cfg.data.eval_batch_size or cfg.data.batch_size)))


def _write_config(cfg: TrainConfig) -> None:
    from omegaconf import OmegaConf

    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    (cfg.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(train_config_to_dict(cfg))))


def resume_path(cfg: TrainConfig) -> Path | None:
    path = cfg.run_dir / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


def fit(cfg: TrainConfig, resume: bool = False, tokenizer: torch.nn.Module | None = None,
        datamodule: L.LightningDataModule | None = None, final_validation: bool = True,
        enable_progress_bar: bool | None = None) -> dict[str, Any]:
    """Train ``cfg``; with ``resume``, continue from ``<run>/checkpoints/last.ckpt`` (optimizer, scheduler,
    EMA and step included). Ends with a checkpoint and, unless the last step already validated, a
    validation. Returns ``{"metrics", "run_dir", "checkpoint", "samples", "global_step"}`` (rank 0's view).
    """
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    ckpt = resume_path(cfg) if resume else None
    if resume and ckpt is None:
        log.warning("--resume: no %s yet; starting from scratch", cfg.run_dir / "checkpoints" / "last.ckpt")
    elif not resume and resume_path(cfg) is not None:
        raise ConfigError(f"{cfg.run_dir} already holds checkpoints; pass --resume to continue it or pick another name=")
    datamodule = datamodule or build_datamodule(cfg)
    module = GeneratorModule(cfg, tokenizer=tokenizer)
    if cfg.init_from and ckpt is None:
        init_weights(module, cfg.init_from)
    trainer, decoding = build_trainer(cfg, enable_progress_bar=enable_progress_bar)
    if trainer.is_global_zero:
        _write_config(cfg)
        log.info("%s: %s mode, %.2fM parameters, %d forward passes per sample; run folder %s", cfg.name,
                 cfg.model.mode, module.model.num_parameters() / 1e6, module.model.num_passes, cfg.run_dir)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None)
    last = cfg.run_dir / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(last)
    validated_last = cfg.trainer.val_every and trainer.global_step % cfg.trainer.val_every == 0
    if final_validation and not validated_last:
        trainer.validate(module, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return {"metrics": metrics, "run_dir": cfg.run_dir, "checkpoint": last, "samples": decoding.last_grid,
            "global_step": trainer.global_step, "trainer": trainer, "module": module}


def init_weights(module: GeneratorModule, path: str | Path) -> None:
    """Start ``module`` (and its EMA copy) from the generator weights in ``path`` (shapes must match; the
    grid may differ)."""
    from nar.checkpoints import load_strict
    from nar.lightning.generator_module import load_generator

    model, _ = load_generator(str(path), module.cfg)
    load_strict(module.model, model.state_dict(), source=f"init_from={path}")
    if module.ema_model is not None:
        module.ema_model.load_state_dict(module.model.state_dict())
    log.info("initialised %s from %s", module.cfg.name, path)


def evaluate(cfg: TrainConfig, ckpt: str | Path, per_class: int | None = None, num_samples: int | None = None,
             enable_progress_bar: bool | None = None) -> dict[str, float]:
    """Score a checkpoint (ours: EMA weights; or an official ``.pt``) with the frontier-decoding callback.

    ``per_class`` samples of every class (ImageNet protocol: 50) unless ``num_samples`` is given.
    Teacher-forced ``val/loss`` is reported too when ``data.root`` is set.
    """
    from nar.lightning.generator_module import load_generator

    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    model, stored = load_generator(str(ckpt), cfg)
    if stored is not None:  # our checkpoint: its model config wins, the evaluation settings stay
        cfg = replace(cfg, model=stored.model, tokenizer=cfg.tokenizer if cfg.tokenizer.path else stored.tokenizer)
    n = num_samples or (per_class or cfg.eval.per_class) * cfg.model.num_classes
    cfg = replace(cfg, eval=replace(cfg.eval, num_samples=n), ema=replace(cfg.ema, enabled=False))
    module = GeneratorModule(cfg)
    module.model.load_state_dict(model.state_dict())
    trainer, decoding = build_trainer(cfg, enable_progress_bar=enable_progress_bar)
    if cfg.data.root:
        trainer.validate(module, datamodule=build_datamodule(cfg), verbose=False)
    else:
        trainer.validate(module, dataloaders=[_EmptyLoader()], verbose=False)
    out = {k: float(v) for k, v in trainer.callback_metrics.items()}
    out.update(decoding.last_results)
    return out


class _EmptyLoader(list):
    """One dummy validation batch so the callback runs without a data folder."""

    def __init__(self) -> None:
        super().__init__([{"__empty__": torch.zeros(1)}])
