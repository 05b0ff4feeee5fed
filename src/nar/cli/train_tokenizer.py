"""``nar train-tokenizer`` — train a VQ tokenizer on image or video shards with Lightning (DDP on GPUs).

The config is the named preset of ``--data``, then ``experiments/tokenizers/<data>.yaml`` (or
``--config``), then ``key=value`` overrides, e.g.::

    nar train-tokenizer --data emoji trainer.max_steps=3000 loss.perceptual_weight=0
    nar train-tokenizer --data imagenet --root /data/imagenet-shards --gpus 8 --nodes 2

Outputs under ``trainer.out``: TensorBoard logs, Lightning checkpoints (``checkpoints/last.ckpt``) and
``tokenizer.pt`` (:func:`nar.tokenizers.save_tokenizer`), which token extraction and sampling load.
"""

from __future__ import annotations

import argparse
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nar.errors import ConfigError
from nar.tokenizers.config import TokenizerLossConfig, TokenizerOptimConfig, TokenizerValConfig, VQConfig

log = logging.getLogger(__name__)

# --data name -> (tokenizer preset, default shard folder or "" when --root is required)
DATASETS: dict[str, tuple[str, str]] = {
    "emoji": ("vq-tiny-emoji", "data/embedded/emoji"),
    "atari": ("vq-video-tiny-atari", "data/embedded/atari"),
    "imagenet": ("vq-16", ""),
    "ucf101": ("vq-video-ucf101", ""),
}
EXPERIMENTS = Path(__file__).resolve().parents[3] / "experiments" / "tokenizers"


@dataclass
class TokenizerDataSection:
    root: str = ""
    batch_size: int = 32  # per process
    eval_batch_size: int = 32
    num_workers: int = 2
    shuffle_buffer: int = 1000
    hflip: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError("data config keys 'batch_size'/'eval_batch_size' must be >= 1")
        if self.num_workers < 0:
            raise ConfigError(f"data config key 'num_workers': must be >= 0, got {self.num_workers}")


@dataclass
class TokenizerTrainerSection:
    out: str = "runs/tokenizer"
    max_steps: int = 2000
    val_every: int = 500  # training batches between validations (and checkpoints)
    limit_val_batches: int = 8
    precision: str = "32"  # "32" or "bf16-mixed" (the discriminator step bypasses a grad scaler)
    log_every: int = 20
    seed: int = 0
    cpu_threads: int = 0  # torch threads on CPU runs; 0 = torch's default

    def __post_init__(self) -> None:
        if self.precision not in ("32", "bf16-mixed"):
            raise ConfigError(f"trainer config key 'precision': '32' or 'bf16-mixed', got {self.precision!r}")
        for key in ("max_steps", "val_every", "limit_val_batches", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"trainer config key '{key}': must be >= 1, got {getattr(self, key)}")


@dataclass
class TrainTokenizerConfig:
    model: VQConfig = field(default_factory=VQConfig)
    loss: TokenizerLossConfig = field(default_factory=TokenizerLossConfig)
    optim: TokenizerOptimConfig = field(default_factory=TokenizerOptimConfig)
    val: TokenizerValConfig = field(default_factory=TokenizerValConfig)
    data: TokenizerDataSection = field(default_factory=TokenizerDataSection)
    trainer: TokenizerTrainerSection = field(default_factory=TokenizerTrainerSection)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-tokenizer", help="train a VQ tokenizer (image or video) on shards",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, choices=sorted(DATASETS), help="dataset (picks preset and YAML)")
    p.add_argument("--root", help="shard folder (default: data/embedded/<data> for emoji/atari)")
    p.add_argument("--config", help="YAML overriding the preset (default: experiments/tokenizers/<data>.yaml)")
    p.add_argument("--gpus", type=int, default=0, help="GPUs per node; 0 = every visible GPU, or CPU if none")
    p.add_argument("--nodes", type=int, default=1, help="nodes (DDP)")
    p.add_argument("--cpu", action="store_true", help="train on CPU even when GPUs are present")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. trainer.max_steps=100")
    p.set_defaults(func=run)


def build_config(data: str, config: str | None = None, overrides: list[str] | tuple[str, ...] = (),
                 root: str | None = None) -> TrainTokenizerConfig:
    """Preset of ``data`` <- YAML <- overrides, validated (raises :class:`ConfigError` naming the key)."""
    from nar.config import load_config

    if data not in DATASETS:
        raise ConfigError(f"unknown --data {data!r}; choose from {sorted(DATASETS)}")
    preset, default_root = DATASETS[data]

    @dataclass
    class _Schema(TrainTokenizerConfig):  # the preset as the schema's defaults
        model: VQConfig = field(default_factory=lambda: VQConfig.from_name(preset))
        data: TokenizerDataSection = field(default_factory=lambda: TokenizerDataSection(root=default_root))
        trainer: TokenizerTrainerSection = field(default_factory=lambda: TokenizerTrainerSection(out=f"runs/tokenizer-{data}"))

    yaml_paths = [config] if config else [p for p in [EXPERIMENTS / f"{data}.yaml"] if p.is_file()]
    extra = [f"data.root={root}"] if root else []
    cfg = load_config(_Schema, yaml_paths, [*overrides, *extra])
    if not cfg.data.root:
        raise ConfigError(f"--data {data} needs --root (or data.root=...) pointing at its shard folder")
    return cfg


def build_datamodule(cfg: TrainTokenizerConfig):
    """The nar.data DataModule for ``cfg.data`` whose samples match ``cfg.model`` (checked against meta.json)."""
    from nar.data.datamodules import (
        ImageDataConfig,
        ImageShardDataModule,
        VideoDataConfig,
        VideoShardDataModule,
    )
    from nar.data.shards import read_meta

    meta = read_meta(cfg.data.root)
    common = dict(root=cfg.data.root, batch_size=cfg.data.batch_size, eval_batch_size=cfg.data.eval_batch_size,
                  num_workers=cfg.data.num_workers, shuffle_buffer=cfg.data.shuffle_buffer, seed=cfg.trainer.seed,
                  hflip=cfg.data.hflip)
    if cfg.model.kind == "image":
        if meta.get("kind") not in ("image", "pairs"):
            raise ConfigError(f"model.kind='image' but {cfg.data.root} holds {meta.get('kind')!r} shards")
        return ImageShardDataModule(ImageDataConfig(image_size=cfg.model.image_size, **common))
    if meta.get("kind") != "video":
        raise ConfigError(f"model.kind='video' but {cfg.data.root} holds {meta.get('kind')!r} shards")
    if "frames" in meta and int(meta["frames"]) != cfg.model.num_frames:
        raise ConfigError(f"model.num_frames={cfg.model.num_frames} but the clips in {cfg.data.root} have "
                          f"{meta['frames']} frames; set model.num_frames={meta['frames']}")
    return VideoShardDataModule(VideoDataConfig(image_size=cfg.model.image_size, **common))


def run(args: argparse.Namespace) -> int:
    cfg = build_config(args.data, args.config, args.overrides, args.root)
    return train(cfg, gpus=args.gpus, nodes=args.nodes, cpu=args.cpu)


def train(cfg: TrainTokenizerConfig, gpus: int = 0, nodes: int = 1, cpu: bool = False) -> int:
    import torch
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    import lightning as L
    from nar.config import to_dict
    from nar.lightning.tokenizer_module import TokenizerModule
    from nar.tokenizers.io import save_tokenizer

    # Lightning suggests saving pre-step weights for manual optimisation; the post-step state is what we want.
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
    L.seed_everything(cfg.trainer.seed, workers=True)
    use_gpu = torch.cuda.is_available() and not cpu
    devices = (gpus or torch.cuda.device_count()) if use_gpu else 1
    if not use_gpu and cfg.trainer.cpu_threads:
        torch.set_num_threads(cfg.trainer.cpu_threads)
    distributed = use_gpu and devices * nodes > 1
    gan = cfg.loss.adversarial_weight > 0
    # the discriminator sits idle (no gradients) before loss.adversarial_start_step
    strategy = ("ddp_find_unused_parameters_true" if gan else "ddp") if distributed else "auto"

    out = Path(cfg.trainer.out)
    out.mkdir(parents=True, exist_ok=True)
    datamodule = build_datamodule(cfg)
    module = TokenizerModule(cfg.model, cfg.loss, cfg.optim, cfg.val)
    trainer = L.Trainer(
        accelerator="gpu" if use_gpu else "cpu", devices=devices, num_nodes=nodes, strategy=strategy,
        precision=cfg.trainer.precision, max_steps=cfg.trainer.max_steps,
        val_check_interval=cfg.trainer.val_every, check_val_every_n_epoch=None,
        limit_val_batches=cfg.trainer.limit_val_batches, log_every_n_steps=cfg.trainer.log_every,
        logger=TensorBoardLogger(str(out), name="tensorboard", version=""),
        callbacks=[ModelCheckpoint(dirpath=out / "checkpoints", save_last=True, save_top_k=0,
                                   every_n_train_steps=cfg.trainer.val_every),
                   LearningRateMonitor(logging_interval="step")],
        use_distributed_sampler=False,  # the shard streams split by rank themselves
    )
    if trainer.is_global_zero:
        log.info("tokenizer %s: grid %s, codebook %d, %.2fM parameters", cfg.model.kind, cfg.model.grid,
                 cfg.model.codebook_size, sum(p.numel() for p in module.tokenizer.parameters()) / 1e6)
        (out / "config.yaml").write_text(_yaml(to_dict(cfg)))
    trainer.fit(module, datamodule=datamodule)
    if trainer.is_global_zero:
        path = save_tokenizer(module.tokenizer, out / "tokenizer.pt")
        log.info("saved %s (load with nar.tokenizers.load_tokenizer)", path)
        final = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if final:
            log.info("last validation: %s", ", ".join(f"{k}={v:.4g}" for k, v in sorted(final.items())))
    return 0


def _yaml(data: dict[str, Any]) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(data))
