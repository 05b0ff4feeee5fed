"""Typed run configuration of generator training and evaluation (``nar train`` / ``nar evaluate``).

``TrainConfig`` nests the generator's :class:`~nar.model.NARConfig`, the data, optimiser, EMA, trainer,
sampling and evaluation settings. YAML files in ``experiments/`` only override these defaults, then
``key=value`` overrides apply; unknown keys and bad values fail at start-up with a
:class:`~nar.errors.ConfigError` that names the full key (``optim.lr``, ``model.grid`` …).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nar.config import _describe, merge_sources
from nar.errors import ConfigError
from nar.model import NARConfig
from nar.sampling import SamplingConfig
from nar.text import TextEncoderConfig

SCHEDULES = ("constant", "cosine", "linear")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true")
STRATEGIES = ("auto", "ddp", "fsdp")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")


def _bad(key: str, why: str) -> ConfigError:
    return ConfigError(f"key '{key}': {why}")


@dataclass
class DataConfig:
    """Shard folder to train on: token shards (``nar data tokens``), or image/video shards tokenized on the fly."""

    root: str = ""
    train_split: str = "train"
    val_split: str = "val"
    batch_size: int = 256  # per process
    eval_batch_size: int | None = None
    num_workers: int = 4
    shuffle_buffer: int = 2000
    samples_per_epoch: int | None = None
    image_size: int | None = None  # pixels on the fly: None = the shards' size
    random_augmentation: bool = True  # token shards: pick one of the stored crops (ten-crop extraction)
    caption_features: bool = False  # text-to-image token shards
    limit_val_samples: int | None = None  # teacher-forced val/loss on at most this many samples
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("batch_size", "shuffle_buffer"):
            if getattr(self, key) < 1:
                raise _bad(f"data.{key}", f"must be >= 1, got {getattr(self, key)}")
        if self.num_workers < 0:
            raise _bad("data.num_workers", f"must be >= 0, got {self.num_workers}")
        for key in ("eval_batch_size", "samples_per_epoch", "image_size", "limit_val_samples"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise _bad(f"data.{key}", f"must be >= 1 or null, got {v}")


@dataclass
class OptimConfig:
    """AdamW; weight decay only on >= 2-D weights (matrices and embeddings), never on norms."""

    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.05
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: str = "constant"  # after warm-up: constant | cosine | linear (decay to min_lr_ratio * lr)
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0  # 0 = off
    cond_dropout: float = 0.1  # class / caption dropped to null (CFG training)

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise _bad("optim.lr", f"must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise _bad("optim.betas", f"needs two values in [0, 1), got {list(self.betas)}")
        for key in ("weight_decay", "warmup_steps", "grad_clip", "eps"):
            if getattr(self, key) < 0:
                raise _bad(f"optim.{key}", f"must be >= 0, got {getattr(self, key)}")
        if self.schedule not in SCHEDULES:
            raise _bad("optim.schedule", f"'{self.schedule}' is not one of {SCHEDULES}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise _bad("optim.min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise _bad("optim.cond_dropout", f"must be in [0, 1), got {self.cond_dropout}")


@dataclass
class EMAConfig:
    """Exponential moving average of the weights; evaluation and sampling use it when enabled."""

    enabled: bool = True
    decay: float = 0.9999
    warmup: bool = True  # effective decay min(decay, (1 + step) / (10 + step)): short runs still average

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise _bad("ema.decay", f"must be in [0, 1), got {self.decay}")


@dataclass
class TrainerConfig:
    """Lightning trainer settings. ``devices``/``num_nodes`` are per-node GPUs (or CPU processes) and nodes."""

    max_steps: int = 1000
    precision: str = "bf16-mixed"
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp (FSDP shards each transformer block, for XL/XXL)
    compile: bool = False  # torch.compile the training forward
    val_every: int = 1000  # steps between validations (0 = only at the end)
    ckpt_every: int = 1000  # steps between checkpoints (always one at the end)
    log_every: int = 50
    seed: int = 0
    threads: int = 0  # torch.set_num_threads (0 = leave torch's default); CPU runs on shared machines
    accumulate: int = 1
    deterministic: bool = False

    def __post_init__(self) -> None:
        for key in ("max_steps", "devices", "num_nodes", "log_every", "accumulate"):
            if getattr(self, key) < 1:
                raise _bad(f"trainer.{key}", f"must be >= 1, got {getattr(self, key)}")
        for key in ("val_every", "ckpt_every", "threads"):
            if getattr(self, key) < 0:
                raise _bad(f"trainer.{key}", f"must be >= 0, got {getattr(self, key)}")
        if self.precision not in PRECISIONS:
            raise _bad("trainer.precision", f"'{self.precision}' is not one of {PRECISIONS}")
        if self.strategy not in STRATEGIES:
            raise _bad("trainer.strategy", f"'{self.strategy}' is not one of {STRATEGIES}")
        if self.accelerator not in ACCELERATORS:
            raise _bad("trainer.accelerator", f"'{self.accelerator}' is not one of {ACCELERATORS}")


@dataclass
class TokenizerRef:
    """The frozen tokenizer: decodes samples to pixels, and tokenizes pixel shards on the fly."""

    path: str = ""  # our tokenizer file / Lightning checkpoint, an official VQ .pt, or a preset name
    config: str = ""  # preset name describing an official checkpoint ("" = inferred from the weights)


@dataclass
class EvalConfig:
    """Frontier-decoding validation (during training) and ``nar evaluate``."""

    # Validation: generate this many samples (round-robin over classes, or over the first captions).
    num_samples: int = 64
    grid_samples: int = 64  # how many of them go into the logged image grid
    batch_size: int = 64
    real_root: str = ""  # image/video shard folder of real samples ("" = tokenizer reconstructions of val tokens)
    real_split: str = "val"
    num_real: int = 0  # 0 = as many as generated
    metrics: list[str] = field(default_factory=lambda: ["fid"])  # fid, is, pr, fvd, fvd_proxy, text
    inception_weights: str = ""  # "" = the offline-converted FID InceptionV3
    i3d_path: str = ""  # TorchScript I3D for FVD ("" = the Inception proxy, reported as fvd_proxy_inception)
    reference_stats: str = ""  # ADM-style .npz with the reference mu/sigma (instead of real samples)
    per_class: int = 50  # nar evaluate: samples per class
    seed: int = 0
    # On a GPU, torch.compile the tokenizer's decoder once (VQ-16 bf16 decode 390 -> 1099 img/s on an H100,
    # ~20 s to compile): worth it for FID-10k/50k evaluations, not for a 64-sample validation.
    compile_decoder: bool = False

    def __post_init__(self) -> None:
        for key in ("num_samples", "batch_size", "per_class"):
            if getattr(self, key) < 1:
                raise _bad(f"eval.{key}", f"must be >= 1, got {getattr(self, key)}")
        if self.grid_samples < 0 or self.num_real < 0:
            raise _bad("eval.grid_samples", "grid_samples and num_real must be >= 0")
        known = ("fid", "is", "pr", "fvd", "fvd_proxy", "text")
        unknown = [m for m in self.metrics if m not in known]
        if unknown:
            raise _bad("eval.metrics", f"unknown {unknown}; known: {known}")


@dataclass
class TrainConfig:
    """One run: everything ``nar train`` needs. ``run_dir`` = ``<runs_root>/<name>``."""

    name: str = "run"
    runs_root: str = "runs"
    model: NARConfig = field(default_factory=NARConfig)
    tokenizer: TokenizerRef = field(default_factory=TokenizerRef)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # Caption models: the frozen text encoder whose features the model reads (pre-extracted into the token
    # shards by `nar data tokens --text-encoder`, or computed on the fly from the batch captions; `nar sample`
    # encodes prompts with it). Its max_len follows model.caption_len.
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    # Weights to start from when the run has no checkpoint yet (e.g. stage 2 at 512 px from stage 1 at 256 px):
    # our .ckpt (EMA weights) or an official .pt. Rotary positions make the weights grid-independent.
    init_from: str = ""

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_root) / self.name


def load_train_config(yaml_paths: Sequence[str | Path] = (), overrides: Sequence[str] = (),
                      dicts: Sequence[dict[str, Any]] = ()) -> TrainConfig:
    """Schema defaults ← each dict ← each YAML ← ``key=value`` overrides, validated; errors name the key.

    Raises:
        ConfigError: a missing file, an unknown key, a value of the wrong type or out of range.
    """
    try:
        merged = OmegaConf.structured(TrainConfig)
        # The schema's NARConfig() has filled head_blocks for its default mode; leave it unset so that
        # mode=raster (or another grid) gets its own default layout.
        merged.model.head_blocks = None
        merged = merge_sources(merged, yaml_paths, overrides, dicts)
        # Validate section by section so that a range error from a nested __post_init__ names its section.
        sections: dict[str, Any] = {}
        for f in dataclasses.fields(TrainConfig):
            node = merged[f.name]
            if not OmegaConf.is_config(node):
                sections[f.name] = node
                continue
            try:
                sections[f.name] = OmegaConf.to_object(node)
            except (ValueError, TypeError) as err:
                msg = str(err)
                prefix = f"{f.name}."
                if f"'{prefix}" in msg or msg.startswith(prefix):
                    raise ConfigError(msg) from None
                head, sep, rest = msg.partition(": ")
                if sep and " " not in head:  # "grid: expected ..." -> "key 'model.grid': expected ..."
                    raise ConfigError(f"key '{f.name}.{head}': {rest}") from None
                raise ConfigError(f"{f.name}: {msg}") from None
            except OmegaConfBaseException as err:
                raise ConfigError(f"key '{f.name}.{getattr(err, 'full_key', '')}': {str(err).splitlines()[0]}") from None
        return TrainConfig(**sections)
    except OmegaConfBaseException as err:
        raise ConfigError(_describe(err)) from None


def train_config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def train_config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Rebuild a :class:`TrainConfig` saved in a checkpoint (validated again)."""
    return load_train_config(dicts=[data])
