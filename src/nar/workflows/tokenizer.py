"""Tokenizer training (``nar train-tokenizer``, and the demo's first step).

The config is :class:`~nar.runs.TokenizerRunConfig`: the packaged ``tokenizers/<data>.yaml`` (or any
YAML), then ``key=value`` overrides. The run folder has the same layout as a generator's, plus
``tokenizer.pt`` (:func:`nar.tokenizers.save_tokenizer`), which token extraction and sampling load.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

from nar.config import load_config
from nar.errors import ConfigError
from nar.runs.config import TokenizerRunConfig

log = logging.getLogger(__name__)

# --data shorthands: the packaged recipe of each dataset the suite knows.
DATASETS = ("emoji", "atari", "imagenet", "ucf101")
TOKENIZER_FILE = "tokenizer.pt"


def tokenizer_config(data: str | None = None, config: str | Path | None = None, overrides: Sequence[str] = (),
                     root: str | None = None) -> TokenizerRunConfig:
    """``tokenizers/<data>.yaml`` (or ``config``) ← ``key=value`` overrides ← ``root``, validated.

    Raises:
        ConfigError: an unknown dataset, key or value; no shard folder.
    """
    if config is None and data is None:
        raise ConfigError("give --data (a known recipe) or --config (a tokenizer YAML)")
    if config is None and data not in DATASETS:
        raise ConfigError(f"unknown --data {data!r}; choose from {list(DATASETS)} or give --config")
    yamls = [config or f"tokenizers/{data}.yaml"]
    cfg = load_config(TokenizerRunConfig, yamls, [*overrides, *([f"data.root={root}"] if root else [])])
    if not cfg.data.root:
        raise ConfigError("no shard folder: give --root (or data.root=...)", key="data.root")
    return cfg


def train_tokenizer(cfg: TokenizerRunConfig, resume: bool = False, enable_progress_bar: bool | None = None) -> Path | None:
    """Train ``cfg``'s tokenizer, holding its run folder exclusively; returns ``<run>/tokenizer.pt`` (on rank 0;
    None elsewhere). ``resume`` continues from the newest intact checkpoint; SIGINT/SIGTERM save one and
    raise :class:`~nar.errors.RunInterrupted`."""
    from nar.lightning.trainer import run_folder_lock

    with run_folder_lock(cfg):
        return _train_tokenizer(cfg, resume, enable_progress_bar)


def _train_tokenizer(cfg: TokenizerRunConfig, resume: bool, enable_progress_bar: bool | None) -> Path | None:
    from nar.lightning.data import tokenizer_datamodule
    from nar.lightning.tokenizer_module import TokenizerModule
    from nar.lightning.trainer import build_trainer, fit_or_interrupt, prepare_process
    from nar.runs.folder import has_checkpoints, resume_checkpoint
    from nar.tokenizers.io import save_tokenizer

    # Lightning suggests saving pre-step weights for manual optimisation; the post-step state is what we want.
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
    prepare_process(cfg)
    ckpt = resume_checkpoint(cfg.run_dir) if resume else None
    if not resume and has_checkpoints(cfg.run_dir):
        raise ConfigError(f"{cfg.run_dir} already holds checkpoints; pass --resume to continue it or pick another name=")
    datamodule = tokenizer_datamodule(cfg)
    module = TokenizerModule(cfg.model, cfg.loss, cfg.optim, cfg.val)
    strategy = None
    if cfg.trainer.world_size > 1 and cfg.loss.adversarial_weight > 0:
        # the discriminator sits idle (no gradients) before loss.adversarial_start_step
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(find_unused_parameters=True)
    # Manual optimisation: the module clips its own gradients (optim.grad_clip).
    trainer = build_trainer(cfg, cfg.data, strategy=strategy, enable_progress_bar=enable_progress_bar)
    out = cfg.run_dir
    if trainer.is_global_zero:
        log.info("tokenizer %s: grid %s, codebook %d, %.2fM parameters; run folder %s", cfg.model.kind,
                 cfg.model.grid, cfg.model.codebook_size,
                 sum(p.numel() for p in module.tokenizer.parameters()) / 1e6, out)
    fit_or_interrupt(trainer, module, datamodule=datamodule, ckpt_path=str(ckpt.path) if ckpt else None)
    if not trainer.is_global_zero:
        return None
    path = save_tokenizer(module.tokenizer, out / TOKENIZER_FILE)
    log.info("saved %s (load with nar.tokenizers.load_tokenizer)", path)
    final = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if final:
        log.info("last validation: %s", ", ".join(f"{k}={v:.4g}" for k, v in sorted(final.items())))
    return path
