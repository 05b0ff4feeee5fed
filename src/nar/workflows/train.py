"""Generator training and evaluation (``nar train``, ``nar evaluate``, and the demo and ablation steps).

One run = one folder (see :mod:`nar.lightning.trainer`); ``fit`` trains with validation by frontier
decoding and can continue a killed run, ``evaluate`` scores a checkpoint (ours or official).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

import lightning as L
from nar.config import from_dict
from nar.errors import ConfigError
from nar.lightning.callbacks import FrontierDecodingCallback, MetricsFileCallback
from nar.lightning.data import generator_datamodule
from nar.lightning.generator_module import GeneratorModule
from nar.lightning.trainer import (
    LAST,
    build_trainer,
    fit_or_interrupt,
    prepare_process,
    run_folder_lock,
    strategy_for,
)
from nar.model.io import load_generator, load_weights_into, stored_run_config
from nar.runs.config import TrainConfig
from nar.runs.folder import CHECKPOINTS, has_checkpoints, resume_checkpoint

log = logging.getLogger(__name__)


def generator_trainer(cfg: TrainConfig, enable_progress_bar: bool | None = None,
                      logger: bool = True) -> tuple[L.Trainer, FrontierDecodingCallback]:
    """The run's trainer with the frontier-decoding and metrics-file callbacks (FSDP wraps each block)."""
    from nar.model.layers import Block

    decoding = FrontierDecodingCallback(cfg, cfg.run_dir)
    trainer = build_trainer(cfg, cfg.data, [decoding, MetricsFileCallback(cfg.run_dir)], grad_clip=cfg.optim.grad_clip,
                            strategy=strategy_for(cfg, {Block}), logger=logger, enable_progress_bar=enable_progress_bar)
    return trainer, decoding


def fit(cfg: TrainConfig, resume: bool = False, tokenizer: torch.nn.Module | None = None,
        datamodule: L.LightningDataModule | None = None, final_validation: bool = True,
        enable_progress_bar: bool | None = None) -> dict[str, Any]:
    """Train ``cfg``, holding its run folder exclusively. With ``resume``, continue from the intact
    checkpoint of the highest step in ``<run>/checkpoints`` (optimizer, scheduler, EMA and step included).

    Ends with a checkpoint and, unless the last step already validated, a validation. SIGINT/SIGTERM save
    a checkpoint and raise :class:`~nar.errors.RunInterrupted`. Returns ``{"metrics", "run_dir",
    "checkpoint", "samples", "global_step", "trainer", "module"}`` (rank 0's view).
    """
    prepare_process(cfg)
    with run_folder_lock(cfg):
        ckpt = resume_checkpoint(cfg.run_dir) if resume else None
        if resume and ckpt is None:
            log.warning("--resume: no intact checkpoint in %s yet; starting from scratch", cfg.run_dir / CHECKPOINTS)
        elif not resume and has_checkpoints(cfg.run_dir):
            raise ConfigError(f"{cfg.run_dir} already holds checkpoints; pass --resume to continue it or pick "
                              "another name=")
        datamodule = datamodule or generator_datamodule(cfg)
        module = GeneratorModule(cfg, tokenizer=tokenizer)
        if cfg.init_from and ckpt is None:
            init_weights(module, cfg.init_from)
        trainer, decoding = generator_trainer(cfg, enable_progress_bar=enable_progress_bar)
        if trainer.is_global_zero:
            log.info("%s: %s mode, %.2fM parameters, %d forward passes per sample; run folder %s", cfg.name,
                     cfg.model.mode, module.model.num_parameters() / 1e6, module.model.num_passes, cfg.run_dir)
        fit_or_interrupt(trainer, module, datamodule=datamodule, ckpt_path=str(ckpt.path) if ckpt else None)
        last = cfg.run_dir / CHECKPOINTS / LAST
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
    load_weights_into(module.model, path)
    if module.ema_model is not None:
        module.ema_model.load_state_dict(module.model.state_dict())
    log.info("initialised %s from %s", module.cfg.name, path)


def evaluate(cfg: TrainConfig, ckpt: str | Path, per_class: int | None = None, num_samples: int | None = None,
             enable_progress_bar: bool | None = None) -> dict[str, float]:
    """Score a checkpoint (ours: EMA weights; or an official ``.pt``) with the frontier-decoding callback.

    ``per_class`` samples of every class (ImageNet protocol: 50) unless ``num_samples`` is given.
    Teacher-forced ``val/loss`` is reported too when ``data.root`` is set.
    """
    prepare_process(cfg)
    stored = stored_run_config(ckpt)
    if stored is not None:  # our checkpoint: its model config wins, the evaluation settings stay
        run_cfg = from_dict(TrainConfig, stored)
        cfg = replace(cfg, model=run_cfg.model, tokenizer=cfg.tokenizer if cfg.tokenizer.path else run_cfg.tokenizer)
    model = load_generator(ckpt, cfg.model)
    n = num_samples or (per_class or cfg.eval.per_class) * cfg.model.num_classes
    cfg = replace(cfg, eval=replace(cfg.eval, num_samples=n), ema=replace(cfg.ema, enabled=False))
    module = GeneratorModule(cfg)
    module.model.load_state_dict(model.state_dict())
    trainer, decoding = generator_trainer(cfg, enable_progress_bar=enable_progress_bar)
    if cfg.data.root:
        trainer.validate(module, datamodule=generator_datamodule(cfg), verbose=False)
    else:
        trainer.validate(module, dataloaders=[_EmptyLoader()], verbose=False)
    out = {k: float(v) for k, v in trainer.callback_metrics.items()}
    out.update(decoding.last_results)
    return out


class _EmptyLoader(list):
    """One dummy validation batch so the callback runs without a data folder."""

    def __init__(self) -> None:
        super().__init__([{"__empty__": torch.zeros(1)}])
