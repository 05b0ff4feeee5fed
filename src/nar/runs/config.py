"""Typed run configurations: one trainer section and one run-folder identity for generators and tokenizers.

``TrainConfig`` (``nar train`` / ``nar evaluate``) nests the generator's :class:`~nar.model.NARConfig`,
the data, optimiser, EMA, trainer, sampling and evaluation settings; ``TokenizerRunConfig``
(``nar train-tokenizer``) nests the VQ model, its losses and its data. Both share :class:`RunConfig`:
``name`` and ``runs_root`` make the run folder ``<runs_root>/<name>/``, and ``trainer`` is the same
:class:`TrainerConfig` with the same keys. YAML files in ``experiments/`` only override these defaults
(:func:`nar.config.load_config`); unknown keys and bad values fail at start-up naming the full key.

Range checks raise :class:`~nar.errors.ConfigError` with the field name as ``key``; the loader adds the
section (``optim.lr``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from nar.errors import ConfigError
from nar.model import NARConfig
from nar.sampling import SamplingConfig, parse_sampler
from nar.text import TextEncoderConfig
from nar.tokenizers.config import TokenizerLossConfig, TokenizerOptimConfig, TokenizerValConfig, VQConfig

log = logging.getLogger(__name__)

SCHEDULES = ("constant", "cosine", "linear", "multistep")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true")
STRATEGIES = ("auto", "ddp", "fsdp")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
METRICS = ("fid", "is", "pr", "kid", "sfid", "fvd", "fvd_proxy", "text")
# The validation keys each image metric of METRICS logs (FrontierDecodingCallback), with the direction that
# is better; videos log val/fvd (a local I3D) or val/fvd_proxy_inception.
DECODING_METRICS: dict[str, dict[str, str]] = {
    "fid": {"val/fid": "min"}, "sfid": {"val/sfid": "min"}, "is": {"val/is_mean": "max"},
    "kid": {"val/kid_mean": "min"}, "pr": {"val/precision": "max", "val/recall": "max"},
    "text": {"val/geneval_overall": "max"},
}


def _at_least(obj: object, minimum: int | float, *keys: str, optional: bool = False) -> None:
    for key in keys:
        value = getattr(obj, key)
        if optional and value is None:
            continue
        if value < minimum:
            raise ConfigError(f"must be >= {minimum}{' or null' if optional else ''}, got {value}", key=key)


def _one_of(obj: object, key: str, allowed: tuple[str, ...]) -> None:
    if getattr(obj, key) not in allowed:
        raise ConfigError(f"'{getattr(obj, key)}' is not one of {allowed}", key=key)


# --------------------------------------------------------------------------------------------------
# Shared by every run
# --------------------------------------------------------------------------------------------------


@dataclass
class TrainerConfig:
    """Lightning trainer settings, the same keys for generator and tokenizer runs.

    ``devices``/``num_nodes`` are per-node GPUs (or CPU processes) and nodes; ``threads`` sets
    ``torch.set_num_threads`` (0 = torch's default) for CPU runs on shared machines.
    """

    max_steps: int = 1000
    precision: str = "bf16-mixed"  # CPU runs fall back to 32-true
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp (FSDP shards each transformer block, for XL/XXL)
    compile: bool = False  # torch.compile the training forward (generators)
    val_every: int = 1000  # steps between validations (0 = only at the end)
    ckpt_every: int = 1000  # steps between checkpoints (always one at the end, and last.ckpt each time)
    # Retention: the newest `keep_recent` step_*.ckpt; a permanent keep_*.ckpt every `keep_every` steps (0 = none);
    # the `keep_best` best by `best_metric` (0 = none), kept as best_*.ckpt. Plus last.ckpt. `best_metric` is one
    # of the keys the run's validation logs (RunConfig.validation_metrics: lower is better for losses and
    # distances, higher for IS, precision/recall, GenEval, PSNR…); only validations that logged it rank.
    keep_recent: int = 2
    keep_every: int = 0
    keep_best: int = 0
    best_metric: str = "val/fid"
    log_every: int = 50
    profiler: str = ""  # "" | simple | advanced | pytorch (Lightning's profilers; report in the run folder)
    throughput: bool = True  # samples/s, tokens/s, FLOP/s and MFU (where the device's peak is known) in TensorBoard
    seed: int = 0
    threads: int = 0
    accumulate: int = 1
    deterministic: bool = False
    # fsdp only: the dtype FSDP gathers the weights in (the forward computes with them) and the dtype it reduces the
    # gradients in (FSDP2's MixedPrecisionPolicy). null: float32, the weights' own (bf16 comes from autocast);
    # bf16: half the bytes of every all-gather and reduce-scatter, as the official train_c2i_fsdp.py
    # (MixedPrecision bf16/bf16). fsdp_reduce_dtype null follows fsdp_param_dtype (the official --grad-precision);
    # fp32 sums gradients in float32. The sharded weights, AdamW moments and checkpoints stay float32 either way.
    # bf16 applies under precision bf16-mixed only; other precisions shard in float32 (logged).
    fsdp_param_dtype: str | None = None  # null | bf16 | fp32
    fsdp_reduce_dtype: str | None = None  # null | bf16 | fp32

    def __post_init__(self) -> None:
        _at_least(self, 1, "max_steps", "devices", "num_nodes", "log_every", "accumulate")
        _at_least(self, 0, "val_every", "ckpt_every", "threads", "keep_recent", "keep_every", "keep_best")
        _one_of(self, "profiler", ("", "simple", "advanced", "pytorch"))
        _one_of(self, "precision", PRECISIONS)
        _one_of(self, "strategy", STRATEGIES)
        _one_of(self, "accelerator", ACCELERATORS)
        for key in ("fsdp_param_dtype", "fsdp_reduce_dtype"):
            value = getattr(self, key)
            if value not in (None, "bf16", "fp32"):
                raise ConfigError(f"'{value}' is not one of (null, 'bf16', 'fp32')", key=key)

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    def checkpoints_kept(self) -> int:
        """At most how many checkpoints the run keeps at once (for the disk estimate)."""
        permanent = self.max_steps // self.keep_every if self.keep_every else 0
        return 1 + self.keep_recent + permanent + self.keep_best


@dataclass
class RunConfig:
    """What every run has: its folder ``<runs_root>/<name>/`` and its trainer settings."""

    # Keys earlier versions took, with what replaced them (README, "Renamed keys"): refused naming the new key.
    RENAMED_KEYS: ClassVar[dict[str, str]] = {
        "trainer.out": "set runs_root and name (the run folder is <runs_root>/<name>)",
        "trainer.cpu_threads": "use trainer.threads",
        "trainer.limit_val_batches": "use data.limit_val_samples (a number of samples)",
    }

    name: str = "run"
    runs_root: str = "runs"
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    # A piece the config asks for but cannot have (a perceptual loss without VGG weights, IS without an
    # Inception classifier, FID without real images) stops the run at start naming the key, unless this is
    # true; then it runs without the piece and the run's summary lists it.
    allow_degraded: bool = False

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ConfigError(f"'{self.name}' is not a folder name", key="name")
        if self.trainer.keep_best:
            self.best_mode()  # a best_metric this run never logs fails now, not after the first validation

    def validation_metrics(self) -> dict[str, str]:
        """The keys this run's validation can log, each with the direction that is better (``min``/``max``)."""
        return {"val/loss": "min"}

    def best_mode(self) -> str:
        """``min`` or ``max``: which way ``trainer.best_metric`` improves (an error when validation never logs it)."""
        metrics = self.validation_metrics()
        key = self.trainer.best_metric
        if key not in metrics:
            raise ConfigError(f"{key!r} is not logged by this run's validation; it logs {sorted(metrics)}",
                              key="trainer.best_metric")
        return metrics[key]

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_root) / self.name


@dataclass
class DataSection:
    """Shard folder and batching, the keys every run's ``data`` section has.

    ``val_split`` is the split evaluation reads, by role: ``val``, ``test`` or any split in ``meta.json``.
    """

    root: str = ""
    train_split: str = "train"
    val_split: str = "val"
    batch_size: int = 256  # per process
    eval_batch_size: int | None = None
    num_workers: int = 4
    shuffle_buffer: int = 2000
    # validate on at most this many samples (whole batches, >= 1 per process), spread evenly over the val split
    # (first to last: every class of a class-sorted split) and the same ones at every validation; None: all of it
    limit_val_samples: int | None = None
    # Report validation over fewer samples than selected (a truncated or missing val shard) instead of failing.
    allow_missing: bool = False
    # Validation while the run trains (and its final one): the fraction of a process's selected val samples that may
    # be missing (undecodable, invalid, in a short shard; logged, and val/samples counts what was read) before it
    # fails. `nar evaluate` tolerates none; a validation that read nothing fails even with allow_missing.
    val_missing_tolerance: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        _at_least(self, 1, "batch_size", "shuffle_buffer")
        _at_least(self, 0, "num_workers")
        _at_least(self, 1, "eval_batch_size", "limit_val_samples", optional=True)
        if not 0 <= self.val_missing_tolerance < 1:  # also refuses NaN; any shortfall: allow_missing
            raise ConfigError(f"must be in [0, 1), got {self.val_missing_tolerance}; data.allow_missing=true "
                              "accepts any shortfall", key="val_missing_tolerance")


def _apply_global_batch(data: DataConfig | TokenizerDataConfig, trainer: TrainerConfig, remedy: str,
                        accumulates: bool = True) -> None:
    """Set ``data.batch_size`` (per process) from ``data.global_batch``, the batch over all processes and
    accumulation steps: ``global_batch / (devices x nodes x accumulate)``, which must divide evenly. Nothing when
    ``global_batch`` is None. ``remedy`` ends the warning about a ``data.batch_size`` of its own beside it;
    ``accumulates``: whether the run may change ``trainer.accumulate`` (tokenizer runs may not).

    Raises:
        ConfigError: ``data.global_batch`` not divisible, naming the keys that split it.
    """
    g = data.global_batch
    if g is None:
        return
    parts = trainer.world_size * trainer.accumulate
    if g % parts:
        keys = ("trainer.devices x trainer.num_nodes x trainer.accumulate", (trainer.devices, trainer.num_nodes,
                trainer.accumulate)) if accumulates else ("trainer.devices x trainer.num_nodes",
                                                          (trainer.devices, trainer.num_nodes))
        raise ConfigError(f"{g} is not divisible by {keys[0]} = {' x '.join(map(str, keys[1]))}; change one of "
                          "these keys", key="data.global_batch")
    per_process = g // parts
    # A batch size of its own is replaced: say so. Not refused, as tests/lightning/test_fsdp.py and the
    # run configs stored in multi-GPU checkpoints (read back by `nar evaluate` on one device) carry one.
    # The derived value itself (to_dict of this config read back) is no conflict.
    if data.batch_size not in (type(data).batch_size, per_process):
        log.warning("key 'data.batch_size': %d is ignored: data.global_batch %d decides the per-process batch "
                    "(%d / (%d x %d x %d) = %d); %s", data.batch_size, g, g, trainer.devices, trainer.num_nodes,
                    trainer.accumulate, per_process, remedy)
    data.batch_size = per_process


# --------------------------------------------------------------------------------------------------
# Generator runs
# --------------------------------------------------------------------------------------------------


@dataclass
class DataConfig(DataSection):
    """Token shards (``nar data tokens``), or image/video shards tokenized on the fly."""

    samples_per_epoch: int | None = None
    # Batch over all processes and accumulation steps (official: 256). Set, it decides data.batch_size per process
    # (another data.batch_size beside it is replaced, with a warning):
    # global_batch / (devices x nodes x trainer.accumulate), which must divide evenly.
    global_batch: int | None = None
    image_size: int | None = None  # pixels on the fly: None = the shards' size
    random_augmentation: bool = True  # token shards: pick one of the stored crops (ten-crop extraction)
    caption_features: bool = False  # text-to-image token shards

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least(self, 1, "samples_per_epoch", "image_size", "global_batch", optional=True)


@dataclass
class OptimConfig:
    """AdamW; weight decay only on >= 2-D weights (matrices and, unless ``decay_embeddings`` is false, the lookup
    tables), never on norms."""

    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.05
    # false: token/class tables, the null caption and absolute positions get no decay (NAR-videos' trainer decays
    # nn.Linear weights only); true: the official image recipe's rule, every >= 2-D parameter
    decay_embeddings: bool = True
    eps: float = 1e-8
    warmup_steps: int = 0
    # The warm-up's line starts at this fraction of lr one step before the first: step s (0-based) trains at
    # lr * (r + (1 - r) * (s + 1) / warmup_steps), full lr at step warmup_steps - 1. 0 = (s + 1) / warmup_steps;
    # NAR-videos' trainer starts at its min_lr_mult (0.01): its 1-based step counter in the same formula.
    warmup_start_ratio: float = 0.0
    # After warm-up: constant | cosine | linear (decay to min_lr_ratio * lr) | multistep (the official recipe:
    # lr * gamma ** (milestones passed), stepped once per epoch, like torch's MultiStepLR).
    schedule: str = "constant"
    min_lr_ratio: float = 0.0
    # When cosine / linear move: step (every optimizer step, over trainer.max_steps after the warm-up) or epoch
    # (at epoch boundaries, over optim.epochs: every step of epoch step // epoch_steps = e trains at the value for
    # e / epochs, as the official t2i recipe's CosineAnnealingLR(T_max=epochs) stepped after each epoch; e >= epochs
    # at min_lr_ratio). A warm-up still moves every step, and the epochs count from step 0 (it overlaps the first,
    # as with multistep). constant and multistep (always per epoch) take either.
    schedule_interval: str = "step"
    epochs: int = 300  # multistep, schedule_interval=epoch: the training length in epochs the schedule spans
    milestones: list[int] | None = None  # multistep: epochs; None = the official [E/2, 2E/3, 5E/6] (int())
    gamma: float = 0.2  # multistep: factor at each milestone
    # multistep, schedule_interval=epoch: optimizer steps per epoch; None = train samples // global batch
    epoch_steps: int | None = None
    grad_clip: float = 1.0  # 0 = off
    cond_dropout: float = 0.1  # class / caption dropped to null (CFG training)

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"must be > 0, got {self.lr}", key="lr")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"needs two values in [0, 1), got {list(self.betas)}", key="betas")
        _at_least(self, 0, "weight_decay", "warmup_steps", "grad_clip", "eps")
        _one_of(self, "schedule", SCHEDULES)
        _one_of(self, "schedule_interval", ("step", "epoch"))
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"must be in [0, 1], got {self.min_lr_ratio}", key="min_lr_ratio")
        if not 0.0 <= self.warmup_start_ratio <= 1.0:  # also refuses NaN
            raise ConfigError(f"must be in [0, 1], got {self.warmup_start_ratio}", key="warmup_start_ratio")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ConfigError(f"must be in [0, 1), got {self.cond_dropout}", key="cond_dropout")
        _at_least(self, 1, "epochs")
        _at_least(self, 1, "epoch_steps", optional=True)
        if not 0.0 < self.gamma <= 1.0:
            raise ConfigError(f"must be in (0, 1], got {self.gamma}", key="gamma")
        if self.milestones is not None and list(self.milestones) != sorted(self.milestones):
            raise ConfigError(f"must be increasing epochs, got {list(self.milestones)}", key="milestones")

    @property
    def milestone_epochs(self) -> list[int]:
        """The multistep milestones in epochs: given, or the official ``int(E/2), int(2E/3), int(5E/6)``."""
        if self.milestones is not None:
            return [int(m) for m in self.milestones]
        return [int(self.epochs * 0.5), int(self.epochs * 2 / 3), int(self.epochs * 5 / 6)]

    @property
    def counts_epochs(self) -> bool:
        """Whether the schedule moves at epoch boundaries (and so needs ``epoch_steps``)."""
        return self.schedule == "multistep" or (self.schedule_interval == "epoch" and self.schedule != "constant")


@dataclass
class EMAConfig:
    """Exponential moving average of the weights; evaluation and sampling use it when enabled."""

    enabled: bool = True
    decay: float = 0.9999
    warmup: bool = True  # effective decay min(decay, (1 + step) / (10 + step)): short runs still average

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise ConfigError(f"must be in [0, 1), got {self.decay}", key="decay")


@dataclass
class TokenizerRef:
    """The frozen tokenizer: decodes samples to pixels, and tokenizes pixel shards on the fly."""

    path: str = ""  # our tokenizer file / Lightning checkpoint, an official VQ .pt, or a preset name
    config: str = ""  # preset name describing an official checkpoint ("" = inferred from the weights)


@dataclass
class EvalConfig:
    """Frontier-decoding validation (during training) and ``nar evaluate``."""

    # Validation: generate this many samples (class ids per eval.labels, or the first captions).
    num_samples: int = 64
    # Class ids of the generated samples: balanced (round-robin, num_samples / classes each), random (uniform
    # draws seeded from eval.seed, as the official c2i sampler's torch.randint) or real (sample i takes the class of
    # real sample i scored against, as NAR-videos' sample.py: eval.real_root's labels.npy or cls members, or a
    # reference batch's arr_1; needs as many real samples as generated). The same on every rank and resume.
    labels: str = "balanced"
    grid_samples: int = 64  # how many of them go into the logged image grid
    batch_size: int = 64
    real_root: str = ""  # image/video shard folder of real samples ("": the val samples of pixel data, else the
    # tokenizer reconstructions of the val tokens)
    real_split: str = "val"
    # 0 = as many as generated (a reference batch's arr_0: all its images, ADM's 10k, whatever num_samples, as the
    # ADM evaluator). Fewer than the split holds: a uniform random subset drawn with real_seed (not its first,
    # class-sorted samples).
    num_real: int = 0
    real_seed: int = 0  # NAR-videos draws its 10k real clips with seed 42
    metrics: list[str] = field(default_factory=lambda: ["fid"])  # fid, is, pr, kid, sfid, fvd, fvd_proxy, text
    inception_weights: str = ""  # "" = the offline-converted FID InceptionV3
    i3d_path: str = ""  # TorchScript I3D for FVD ("" = the Inception proxy, reported as fvd_proxy_inception)
    reference_stats: str = ""  # ADM-style .npz with the reference mu/sigma (instead of real samples)
    # nar evaluate's budget when neither --num-samples nor --per-class is given: per_class x classes (ImageNet
    # protocol: 50 -> 50k); None = eval.num_samples, the validation budget.
    per_class: int | None = None
    # Generate and score samples at every k-th validation during training (and always at the last); the
    # teacher-forced val loss (exact bits/token) runs at every one. 1 = every validation.
    decode_every: int = 1
    seed: int = 0
    # Score on fewer real samples than asked (eval.num_real, else eval.num_samples) instead of failing.
    allow_fewer: bool = False
    # On a GPU, torch.compile the tokenizer's decoder once (VQ-16 bf16 decode 390 -> 1099 img/s on an H100,
    # ~20 s to compile): worth it for FID-10k/50k evaluations, not for a 64-sample validation.
    compile_decoder: bool = False
    # The sampling path (nar.sampling.parse_sampler): fast (the CUDA-graph sampler), or options joined by '+'
    # from compile, autotune, wavefront (two cohorts in flight; class conditions), fp8 (float8 block weights),
    # fp8kv (float8 KV caches).
    # Compiling costs ~1 min once per process; see benchmarks/results for what each one measured.
    sampler: str = "fast"

    def __post_init__(self) -> None:
        parse_sampler(self.sampler)
        _at_least(self, 1, "num_samples", "batch_size", "decode_every")
        _at_least(self, 1, "per_class", optional=True)
        _at_least(self, 0, "grid_samples", "num_real", "real_seed")
        _one_of(self, "labels", ("balanced", "random", "real"))
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ConfigError(f"unknown {unknown}; known: {METRICS}", key="metrics")


@dataclass
class TrainConfig(RunConfig):
    """One generator run: everything ``nar train`` needs. ``data.global_batch`` sets the per-process batch
    (checked divisible, :meth:`__post_init__`); a ``data.batch_size`` of another value beside it is replaced,
    with a warning."""

    model: NARConfig = field(default_factory=NARConfig)
    tokenizer: TokenizerRef = field(default_factory=TokenizerRef)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # Caption models: the frozen text encoder whose features the model reads (pre-extracted into the token
    # shards by `nar data tokens --text-encoder`, or computed on the fly from the batch captions; `nar sample`
    # encodes prompts with it). Its max_len follows model.caption_len.
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    # Class names of the training data in id order (filled from the token shards' meta.json); `nar sample
    # --classes` accepts them.
    classes: list[str] = field(default_factory=list)
    # Weights to start from when the run has no checkpoint yet (e.g. stage 2 at 512 px from stage 1 at 256 px):
    # our .ckpt (EMA weights) or an official .pt. Rotary positions make the weights grid-independent.
    init_from: str = ""

    def validation_metrics(self) -> dict[str, str]:
        """The teacher-forced loss (every validation) and the scores of ``eval.metrics`` (decoding validations,
        :attr:`EvalConfig.decode_every`): videos score FVD, images the image metrics."""
        from nar.shapes.scene import FAMILIES

        out = {"val/loss": "min", "val/bits_per_token": "min", "val/bits_per_image": "min"}
        asked = set(self.eval.metrics)
        if len(self.model.grid) == 3:
            if asked & {"fvd", "fvd_proxy"}:  # FVD with a local I3D, else its Inception proxy under its own name
                out["val/fvd" if self.eval.i3d_path else "val/fvd_proxy_inception"] = "min"
        else:
            if not self.eval.inception_weights:
                asked.discard("is")  # the default FID network has no classifier: IS is skipped
            for name in sorted(asked & set(DECODING_METRICS)):
                out.update(DECODING_METRICS[name])
        if "text" in asked:
            out.update({f"val/geneval_{family}": "max" for family in FAMILIES})
        return out

    def __post_init__(self) -> None:
        super().__post_init__()
        _apply_global_batch(self.data, self.trainer, "set data.global_batch, or trainer.accumulate to fit memory, instead")


# --------------------------------------------------------------------------------------------------
# Tokenizer runs
# --------------------------------------------------------------------------------------------------


@dataclass
class TokenizerDataConfig(DataSection):
    """Image or video shards the tokenizer learns to reconstruct."""

    batch_size: int = 32
    eval_batch_size: int | None = 32
    num_workers: int = 2
    shuffle_buffer: int = 1000
    limit_val_samples: int | None = 256  # spread over the val split, as DataSection says
    # Batch over all processes, as DataConfig.global_batch (LlamaGen's --global-batch-size); set, it decides
    # data.batch_size per process: global_batch / (devices x nodes), which must divide evenly.
    global_batch: int | None = None
    hflip: bool = False  # random horizontal flips while training
    # Images: train on random crops (validation keeps the centre crop). The short side first goes to a random
    # size in [image_size, image_size / min_crop_frac], as LlamaGen's random_crop_arr (0.8); 1 = no scale jitter.
    random_crop: bool = False
    min_crop_frac: float = 0.8

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least(self, 1, "global_batch", optional=True)
        if not 0 < self.min_crop_frac <= 1:  # also refuses NaN
            raise ConfigError(f"must be in (0, 1], got {self.min_crop_frac}", key="min_crop_frac")


@dataclass
class TokenizerRunConfig(RunConfig):
    """One tokenizer run: everything ``nar train-tokenizer`` needs. ``model.preset`` names a VQ preset."""

    name: str = "tokenizer"
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(
        max_steps=2000, precision="32-true", val_every=500, ckpt_every=500, log_every=20, best_metric="val/rfid"))
    model: VQConfig = field(default_factory=VQConfig)
    loss: TokenizerLossConfig = field(default_factory=TokenizerLossConfig)
    optim: TokenizerOptimConfig = field(default_factory=TokenizerOptimConfig)
    val: TokenizerValConfig = field(default_factory=TokenizerValConfig)
    data: TokenizerDataConfig = field(default_factory=TokenizerDataConfig)

    def validation_metrics(self) -> dict[str, str]:
        """What :class:`~nar.lightning.tokenizer_module.TokenizerModule` logs at every validation."""
        out = {"val/loss": "min", "val/psnr": "max", "val/ssim": "max", "val/codebook_usage": "max",
               "val/codebook_perplexity": "max"}
        if self.val.rfid:
            out["val/rfid"] = "min"
        return out

    def __post_init__(self) -> None:
        super().__post_init__()
        # The discriminator step bypasses a grad scaler, and the tokenizer has no sharded or accumulated path.
        if self.trainer.precision not in ("32-true", "bf16-mixed"):
            raise ConfigError(f"tokenizers train in '32-true' or 'bf16-mixed', got {self.trainer.precision!r}",
                              key="trainer.precision")
        if self.trainer.strategy == "fsdp":
            raise ConfigError("tokenizers train with ddp (72M parameters fit every GPU)", key="trainer.strategy")
        if self.trainer.accumulate != 1:
            raise ConfigError("tokenizer training steps every batch (manual optimisation)", key="trainer.accumulate")
        if self.data.random_crop and self.model.kind != "image":
            raise ConfigError(f"image tokenizers only; {self.model.kind} clips are centre-cropped",
                              key="data.random_crop")
        _apply_global_batch(self.data, self.trainer, "set data.global_batch (or data.global_batch=null) instead",
                            accumulates=False)


def val_samples(data: DataSection, world_size: int = 1) -> int | None:
    """How many samples a validation reads in all, from ``data.limit_val_samples`` (None: the whole split): whole
    batches per process, as many as keep the total within the limit, at least one per process. The run's DataModule
    (:mod:`nar.lightning.data`) picks them spread evenly over the split."""
    if data.limit_val_samples is None:
        return None
    batch = data.eval_batch_size or data.batch_size
    return max(1, data.limit_val_samples // (batch * world_size)) * batch * world_size

