"""Tokenizer training (``nar train-tokenizer``, and the demo's first step).

The config is :class:`~nar.runs.TokenizerRunConfig`: the packaged ``tokenizers/<data>.yaml`` (or any
YAML), then ``key=value`` overrides. The run folder has the same layout as a generator's, plus
``tokenizer.pt`` (:func:`nar.tokenizers.save_tokenizer`), which token extraction and sampling load.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nar.config import load_config
from nar.errors import ConfigError
from nar.runs.config import TokenizerRunConfig

log = logging.getLogger(__name__)

# --data shorthands: the packaged recipe of each dataset the suite knows.
DATASETS = ("emoji", "atari", "imagenet", "ucf101")
TOKENIZER_FILE = "tokenizer.pt"


# The recipe (packaged YAML) for data of a kind and size when none is named: small images and clips get
# the CPU-sized tokenizers, larger ones LlamaGen's VQ-16 / the UCF-101 video tokenizer.
SMALL = 64
RECIPE_GPUS = 8  # the machines the recipes' global batches were set for (LlamaGen: 128 over 8 GPUs)
RECIPES = {("image", True): "emoji", ("image", False): "imagenet", ("video", True): "atari", ("video", False): "ucf101"}


def recipe_for(root: str | Path, preset: str | None = None) -> tuple[str, list[str]]:
    """``(recipe name, overrides)`` for the shards in ``root``, read off their ``meta.json``: the recipe of their
    kind and stored size, the tokenizer preset (``preset`` or the recipe's) at that size rounded down to a multiple
    of the preset's spatial downsampling factor, and the clips' length.

    Shards written without ``--resize`` (no size in ``meta.json``) train at the median short side of the images
    :func:`probe_image_sides` reads, capped at the recipe's own ``model.image_size`` (what the recipe was tuned
    for): a few odd files (a banner, a 1×1 icon) neither shrink the whole run nor refuse it. The probed ones whose
    short side is under half that median are named in a warning.

    Raises:
        ConfigError: an unknown preset; samples smaller than the preset's downsampling factor (the message says
            the size and how it was read); clips whose length the preset's temporal factor does not divide (clips
            are used whole).
    """
    from nar.data.shards import read_meta
    from nar.tokenizers import VQConfig

    meta = read_meta(root)
    kind = "video" if meta.get("kind") == "video" else "image"
    fixed = meta.get("image_size") or meta.get("resize")
    probed = None if fixed else probe_image_sides(root, meta)
    size = int(fixed or (probed.median if probed else 0))
    recipe = RECIPES[kind, bool(size) and size <= SMALL]
    overrides = [f"name=tokenizer-{Path(root).resolve().name}"]
    if preset:
        VQConfig.from_name(preset)  # ConfigError naming an unknown preset
        overrides.append(f"model.preset={preset}")
    # the recipe's tokenizer as it stands: its own size and its downsampling factors
    recipe_cfg = load_config(TokenizerRunConfig, [f"tokenizers/{recipe}.yaml"], overrides[1:])
    model = recipe_cfg.model
    chosen = []
    if recipe_cfg.data.global_batch:
        # your own data on the machine at hand: the recipe's per-GPU share on its 8 GPUs, per process (its global
        # batch on one GPU would be 8x the memory); data.batch_size=... sets another
        overrides += ["data.global_batch=null", f"data.batch_size={max(1, recipe_cfg.data.global_batch // RECIPE_GPUS)}"]
        chosen.append(overrides[-1])
    if size:
        wanted = size if fixed else min(size, model.image_size)
        factor = model.spatial_downsample
        if wanted < factor:
            how = (f" holds {size}-px samples (meta.json's {'image_size' if meta.get('image_size') else 'resize'})"
                   if fixed else f": the {probed.describe()} is {size} px")
            raise ConfigError(f"{root}{how}, smaller than preset {model.preset}'s spatial downsampling factor "
                              f"{factor}; {_smaller_presets(kind, size)}", key="model.image_size")
        overrides.append(f"model.image_size={wanted // factor * factor}")
        chosen.append(overrides[-1])
        if probed:
            probed.warn_outliers(root, wanted // factor * factor)
    if kind == "video" and meta.get("frames"):
        frames = int(meta["frames"])
        if frames % model.temporal_factor:
            raise ConfigError(f"the clips in {root} have {frames} frames, which preset {model.preset}'s temporal "
                              f"downsampling factor {model.temporal_factor} does not divide (clips are used whole); "
                              f"write clips of a multiple of {model.temporal_factor} frames or pick another preset "
                              "(--preset)", key="model.num_frames")
        overrides.append(f"model.num_frames={frames}")
        chosen.append(overrides[-1])
    how = "" if not size else f" of {size} px" + ("" if fixed else f" (the {probed.describe()})")
    log.info("%s: %s shards%s -> the %r recipe, preset %s%s", root, kind, how, recipe, model.preset,
             f" with {', '.join(chosen)}" if chosen else "")
    return recipe, overrides


# How many leading samples of the first train shard are read to size a run on shards written without --resize: a few
# hundred header reads (PIL decodes no pixels), i.e. the bytes of that many images from the first shard (~25 MB of
# ImageNet-sized JPEGs); the train split is written in a random order, so they are a random draw of it.
PROBED_SAMPLES = 256
NAMED_OUTLIERS = 10  # the warning names this many of the probed images much smaller than the rest, then counts


def _smaller_presets(kind: str, size: int) -> str:
    """The remedy for ``size``-px samples too small for a preset: the presets of ``kind`` that take them, or the
    smallest size any preset takes."""
    from nar.tokenizers import PRESETS

    factors = {name: cfg.spatial_downsample for name, cfg in PRESETS.items() if cfg.kind == kind}
    fits = sorted(name for name, f in factors.items() if f <= size)
    if fits:
        return f"pick a preset whose factor is at most {size} (--preset {' or '.join(fits)})"
    return f"no preset takes them: use images whose short side is at least {min(factors.values())} px"


@dataclasses.dataclass(frozen=True)
class ProbedSides:
    """Short sides of the first samples of a split's first shard (:func:`probe_image_sides`)."""

    shard: str  # where they were read
    split: str
    sides: list[tuple[int, str]]  # (short side, sample named by __key__ and its json "source" where it has one)
    unreadable: int = 0  # samples whose image header could not be read (not counted in ``sides``)

    @property
    def median(self) -> int:
        """The median short side (the lower middle one of an even count, a size some image has).

        The median, not the minimum nor a low percentile: the run must suit the images it mostly holds, and only a
        majority of small images moves it, so one banner or icon among photos, or a few among a small folder where a
        10th percentile would still be the smallest image, cannot set it. The price: up to half the images are
        smaller than the size and are upscaled; :meth:`warn_outliers` names the ones far below it.
        """
        return statistics.median_low(side for side, _ in self.sides)

    def describe(self) -> str:
        """How the size was read, for messages: ``"median short side of 21 train images probed in <shard>"``."""
        return f"median short side of {len(self.sides)} {self.split} images probed in {self.shard}"

    def warn_outliers(self, root: str | Path, image_size: int) -> None:
        """Warn, naming them (:data:`NAMED_OUTLIERS` at most) with a count, about the probed images whose short side
        is under half the median: far smaller than the rest, those under ``image_size`` are upscaled to it."""
        cut = self.median / 2
        small = sorted((side, name) for side, name in self.sides if side < cut)
        if not small:
            return
        named = ", ".join(f"{name}: {side} px" for side, name in small[:NAMED_OUTLIERS])
        more = f" and {len(small) - NAMED_OUTLIERS} more" if len(small) > NAMED_OUTLIERS else ""
        log.warning("%s: %d of %d probed %s images have a short side under half the median %d px, so they do not "
                    "set the size (model.image_size=%d); those under it are upscaled to it in training: %s%s (probed "
                    "in %s)", root, len(small), len(self.sides), self.split, self.median, image_size, named, more,
                    self.shard)


def probe_image_sides(root: str | Path, meta: dict, probe: int = PROBED_SAMPLES) -> ProbedSides | None:
    """The short sides of the first ``probe`` images of the first shard of the train split (else the first split
    ``meta.json`` lists) when the shards were written without ``--resize``; None when there are none to read. A sample whose
    image header cannot be read is skipped and counted (warned about), never fatal. Cost: see :data:`PROBED_SAMPLES`."""
    import io

    from PIL import Image

    from nar.data.shards import first_shard, iter_tar

    splits = meta.get("splits", {})
    name = "train" if splits.get("train") else next(iter(splits), None)
    shard = first_shard(root, splits[name]) if name is not None else None
    if shard is None:
        return None
    sides, unreadable = [], 0
    for raw in iter_tar(shard):
        data = raw.get("png") or raw.get("jpg") or raw.get("jpeg")
        if data is None:
            continue
        try:
            with Image.open(io.BytesIO(data)) as img:
                side = min(img.size)
        except Exception:  # noqa: BLE001 — PIL raises many types; a damaged sample must not stop the probe
            unreadable += 1
            continue
        sides.append((side, _sample_name(raw)))
        if len(sides) >= probe:
            break
    if unreadable:
        log.warning("%s: %d samples of %s have no readable image header; the size is read off the other %d",
                    root, unreadable, shard, len(sides))
    return ProbedSides(str(shard), name, sides, unreadable) if sides else None


def _sample_name(raw: dict[str, Any]) -> str:
    """A shard sample named by its ``__key__`` and, where its json has one, the ``source`` file it was written from."""
    import json

    try:
        source = json.loads(raw["json"]).get("source") if "json" in raw else None
    except (ValueError, AttributeError):  # a json member that is not a JSON object: the key alone names it
        source = None
    return f"{raw['__key__']} ({source})" if source else str(raw["__key__"])


def stored_image_size(root: str | Path, meta: dict, probe: int = PROBED_SAMPLES) -> int | None:
    """The median short side of the first ``probe`` training images when the shards were written without ``--resize`` (no size in
    ``meta.json``; see :meth:`ProbedSides.median` for why the median); None when there are none to read."""
    probed = probe_image_sides(root, meta, probe)
    return probed.median if probed else None


def tokenizer_config(data: str | None = None, config: str | Path | None = None, overrides: Sequence[str] = (),
                     root: str | None = None, preset: str | None = None) -> TokenizerRunConfig:
    """The run config of ``nar train-tokenizer``: a recipe YAML (``tokenizers/<data>.yaml``, ``config``, or, with
    only ``root``, the recipe its data's kind and size call for) ← what ``root``'s ``meta.json`` says (size,
    frames) ← ``preset`` ← ``key=value`` overrides, validated.

    Raises:
        ConfigError: an unknown dataset, preset, key or value; no shard folder; a recipe that would upsample the
            data (its ``model.image_size`` exceeds the shards' stored size and nobody asked for it); a discriminator
            too deep for ``model.image_size`` (``loss.disc_layers``).
    """
    if config is None and data is not None and data not in DATASETS:
        raise ConfigError(f"unknown --data {data!r}; choose from {list(DATASETS)}, give --config, or only --root")
    from_data: list[str] = [f"model.preset={preset}"] if preset else []
    if root and data is None and config is None:  # no recipe named: the data's kind and size pick it
        if not (Path(root) / "meta.json").is_file():
            raise ConfigError(f"--root {root}: {Path(root) / 'meta.json'} not found; is it a dataset folder written "
                              "by `nar data …`? (--data or --config names a recipe without reading it)")
        data, from_data = recipe_for(root, preset)
        # the user's overrides come after and win; a global batch of theirs makes the share's batch_size moot
        if any(o.startswith("data.global_batch=") for o in overrides):
            from_data = [o for o in from_data if not o.startswith("data.batch_size=")]
    if config is None and data is None:
        raise ConfigError("give --root (the recipe follows the data), --data (a named recipe) or --config")
    yamls = [config or f"tokenizers/{data}.yaml"]
    explicit = [*overrides, *([f"data.root={root}"] if root else [])]
    cfg = load_config(TokenizerRunConfig, yamls, [*from_data, *explicit])
    if not cfg.data.root:
        raise ConfigError("no shard folder: give --root (or data.root=...)", key="data.root")
    _check_size(cfg, explicit)
    if cfg.loss.adversarial_weight > 0:
        from nar.tokenizers.losses import check_discriminator_depth

        check_discriminator_depth(cfg.model.image_size, cfg.loss.disc_layers)
    return cfg


def _check_size(cfg: TokenizerRunConfig, explicit: Sequence[str]) -> None:
    """Refuse to upsample the data to the tokenizer's size, unless ``model.image_size`` was set on purpose."""
    from nar.data.shards import read_meta

    if not (Path(cfg.data.root) / "meta.json").is_file():
        return  # the DataModule names the missing folder when training starts
    meta = read_meta(cfg.data.root)
    stored = meta.get("image_size") or meta.get("resize")
    if stored and int(stored) < cfg.model.image_size and not any(o.startswith("model.image_size=") for o in explicit):
        factor = cfg.model.spatial_downsample
        fits = int(stored) // factor * factor  # the size recipe_for would pick: the largest the model takes
        remedy = (f"set model.image_size={fits}" if fits else
                  f"pick a preset whose downsampling factor ({factor} here) is at most {stored}")
        raise ConfigError(f"{cfg.model.image_size}, but {cfg.data.root} holds {stored}-px samples (they would be "
                          f"upsampled {cfg.model.image_size / int(stored):.3g}x); give only --root to pick the recipe "
                          f"by the data's size, or {remedy}", key="model.image_size")


def train_tokenizer(cfg: TokenizerRunConfig, resume: bool = False, enable_progress_bar: bool | None = None) -> Path | None:
    """Train ``cfg``'s tokenizer, holding its run folder exclusively; returns ``<run>/tokenizer.pt`` (on rank 0;
    None elsewhere). ``resume`` continues from the newest intact checkpoint (refused when its ``model.*`` differs
    in shape from ``cfg``'s). Ends with ``checkpoints/last.ckpt`` and, unless the last step already validated, a
    validation. SIGINT/SIGTERM save a checkpoint and raise :class:`~nar.errors.RunInterrupted`."""
    from nar.lightning.trainer import run_folder_lock
    from nar.workflows.preflight import check_tokenizer_run

    check_tokenizer_run(cfg)
    with run_folder_lock(cfg):
        return _train_tokenizer(cfg, resume, enable_progress_bar)


# VQConfig fields a resumed run may change: they shape neither the weights nor what they compute.
RESUMABLE_CHANGES = ("preset", "image_size", "num_frames", "dropout")
# TokenizerLossConfig fields that shape the discriminator's weights (compared when both runs have one).
DISCRIMINATOR_SHAPE = ("disc_channels", "disc_layers")


def check_resumable(cfg: TokenizerRunConfig, path: Path) -> None:
    """Refuse (naming the keys) to resume ``path`` into a differently built tokenizer or discriminator, before
    anything is written. The loss may otherwise change: LPIPS is not saved, and a discriminator turned on starts
    fresh (see :class:`~nar.lightning.tokenizer_module.TokenizerModule`)."""
    import torch

    from nar.config import to_dict
    from nar.runs.folder import refuse_other_model
    from nar.tokenizers.io import LIGHTNING_CONFIG_KEY, stored_config

    obj = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    fields = obj.get(LIGHTNING_CONFIG_KEY) if isinstance(obj, dict) else None
    if not fields:
        return
    theirs, mine = to_dict(stored_config(dict(fields), path)), to_dict(cfg.model)
    refuse_other_model(path, mine, theirs, [k for k in mine if k not in RESUMABLE_CHANGES])
    their_loss = (obj.get("hyper_parameters") or {}).get("loss") or {}
    if cfg.loss.adversarial_weight > 0 and float(their_loss.get("adversarial_weight", 0)) > 0:
        mine_loss = to_dict(cfg.loss)
        differ = [k for k in DISCRIMINATOR_SHAPE if k in their_loss and their_loss[k] != mine_loss[k]]
        if differ:
            pairs = ", ".join(f"loss.{k}={their_loss[k]} (config: {mine_loss[k]})" for k in differ)
            raise ConfigError(f"--resume: {path} was trained with {pairs}; resume with the run's own settings or "
                              "start another name=")


def _train_tokenizer(cfg: TokenizerRunConfig, resume: bool, enable_progress_bar: bool | None) -> Path | None:
    from nar.lightning.data import tokenizer_datamodule
    from nar.lightning.tokenizer_module import TokenizerModule
    from nar.lightning.trainer import LAST, build_trainer, finish_run, fit_or_interrupt, prepare_process
    from nar.runs.folder import CHECKPOINTS, has_checkpoints, resume_checkpoint
    from nar.tokenizers.io import save_tokenizer

    # Lightning suggests saving pre-step weights for manual optimisation; the post-step state is what we want.
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
    prepare_process(cfg)
    ckpt = resume_checkpoint(cfg.run_dir) if resume else None
    if not resume and has_checkpoints(cfg.run_dir):
        raise ConfigError(f"{cfg.run_dir} already holds checkpoints; pass --resume to continue it or pick another name=")
    if ckpt is not None:
        check_resumable(cfg, ckpt.path)
    datamodule = tokenizer_datamodule(cfg)
    module = TokenizerModule(cfg.model, cfg.loss, cfg.optim, cfg.val)
    strategy = None
    if cfg.trainer.world_size > 1 and cfg.loss.adversarial_weight > 0:
        # the discriminator sits idle (no gradients) before loss.adversarial_start_step
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(find_unused_parameters=True)
    # Manual optimisation: the module clips its own gradients (optim.grad_clip).
    validated = validated_step_callback()
    trainer = build_trainer(cfg, [validated], strategy=strategy, enable_progress_bar=enable_progress_bar)
    out = cfg.run_dir
    if trainer.is_global_zero:
        log.info("tokenizer %s: grid %s, codebook %d, %.2fM parameters; run folder %s", cfg.model.kind,
                 cfg.model.grid, cfg.model.codebook_size,
                 sum(p.numel() for p in module.tokenizer.parameters()) / 1e6, out)
    fit_or_interrupt(trainer, module, datamodule=datamodule, ckpt_path=str(ckpt.path) if ckpt else None)
    # The last step's checkpoint, and a final validation unless the last step had one (trainer.val_every=0,
    # max_steps not a multiple of it)
    finish_run(trainer, module, out / CHECKPOINTS / LAST, validated.step != trainer.global_step, datamodule=datamodule)
    if not trainer.is_global_zero:
        return None
    path = save_tokenizer(module.tokenizer, out / TOKENIZER_FILE)
    log.info("saved %s (load with nar.tokenizers.load_tokenizer)", path)
    final = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if final:
        log.info("last validation: %s", ", ".join(f"{k}={v:.4g}" for k, v in sorted(final.items())))
    return path


def validated_step_callback() -> Any:
    """A callback whose ``step`` is the step of this process's last completed validation (-1: none yet)."""
    from lightning.pytorch.callbacks import Callback

    class ValidatedStep(Callback):
        step = -1

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if not trainer.sanity_checking:
                self.step = trainer.global_step

    return ValidatedStep()
