"""Generator training and evaluation (``nar train``, ``nar evaluate``, and the demo and ablation steps).

One run = one folder (see :mod:`nar.lightning.trainer`); ``fit`` trains with validation by frontier
decoding and can continue a killed run, ``evaluate`` scores a checkpoint (ours or official).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

import lightning as L
from nar.config import from_dict, load_config
from nar.errors import ConfigError, DataError
from nar.lightning.callbacks import FrontierDecodingCallback, MetricsFileCallback
from nar.lightning.data import generator_datamodule
from nar.lightning.generator_module import GeneratorModule
from nar.lightning.trainer import (
    LAST,
    build_trainer,
    disk_estimate,
    finish_run,
    fit_or_interrupt,
    prepare_process,
    run_folder_lock,
    strategy_for,
    validate_or_interrupt,
)
from nar.model.io import (
    generator_file,
    load_generator,
    load_weights_into,
    read_generator_file,
    run_config_of,
    sharded_folder,
    stored_run_config,
)
from nar.runs.config import TrainConfig
from nar.runs.folder import CHECKPOINTS, has_checkpoints, refuse_other_model, resume_checkpoint
from nar.sampling.api import sampler_name

log = logging.getLogger(__name__)


# What a token folder's meta.json tells a run about its model, as config keys.
DATA_FACTS = ("model.grid", "model.vocab_size", "model.num_classes", "classes", "tokenizer.path")


def facts_from_data(root: str | Path) -> dict[str, Any]:
    """Config values a token-shard folder's ``meta.json`` implies: grid, vocabulary (the codebook), number of
    classes and their names, the tokenizer that made the tokens and the real samples they came from (when
    those files still exist), and for caption features the caption model's slots and width and how the captions
    were cleaned."""
    from nar.data.shards import read_meta
    from nar.data.tokens import stored_caption_cleaning

    meta = read_meta(root)
    if meta.get("kind") != "tokens":
        return {}
    out: dict[str, Any] = {"model": {}}
    if meta.get("grid"):
        out["model"]["grid"] = [int(g) for g in meta["grid"]]
    if meta.get("codebook_size"):
        out["model"]["vocab_size"] = int(meta["codebook_size"])
    classes = [str(c) for c in meta.get("class_names") or meta.get("classes") or []]
    if classes:
        out["model"]["num_classes"] = len(classes)
        out["classes"] = classes
    tokenizer = meta.get("tokenizer")
    if tokenizer and Path(tokenizer).is_file():
        out["tokenizer"] = {"path": str(Path(tokenizer).resolve())}  # the run is then usable from any directory
    source = meta.get("source")
    if source and (Path(source) / "meta.json").is_file():
        from nar.data.shards import resolve_split
        from nar.errors import DataError

        try:
            out["eval"] = {"real_root": str(Path(source).resolve()),
                           "real_split": resolve_split(read_meta(source), "val", root=source)}
        except DataError:
            pass  # no evaluation split there: nothing to infer
    if meta.get("caption_features"):
        slots, width = _caption_shape(root, meta)
        out["model"].update(condition="caption", caption_len=slots, caption_dim=width)
        out["data"] = {"caption_features": True}
        # the encoder nar data tokens recorded (kind:path:caption_len); older folders: guessed from the width
        kind, _, rest = str(meta.get("text_encoder") or "").partition(":")
        text_path = rest.rpartition(":")[0]
        out["text"] = {"kind": kind if kind in ("t5", "minilm") else ("t5" if width == 2048 else "minilm"),
                       "max_len": slots, **({"path": text_path} if text_path else {})}
        if (cleaned := stored_caption_cleaning(meta)) != "none":  # prompts encoded later are cleaned as these were
            out["text"]["clean_captions"] = cleaned
    return out


def _caption_shape(root: str | Path, meta: dict[str, Any]) -> tuple[int, int]:
    """``(slots, width)`` of the stored caption features, read off the first sample."""
    from nar.data.shards import first_shard, iter_tar

    shard = first_shard(root, next(iter(meta["splits"].values())))
    for raw in iter_tar(shard) if shard is not None else ():
        if "capfeat.npy" in raw:
            import io

            import numpy as np

            return tuple(int(d) for d in np.load(io.BytesIO(raw["capfeat.npy"])).shape)  # type: ignore[return-value]
    raise ConfigError(f"{root}: meta.json says caption_features but its first shard holds none", key="data.root")


def generator_config(yamls: Sequence[str | Path] = (), overrides: Sequence[str] = (),
                     base: dict[str, Any] | None = None) -> TrainConfig:
    """The run config of ``nar train``: schema defaults ← ``base`` (a stored run config) ← what the token shards'
    ``meta.json`` says (grid, vocabulary, classes, tokenizer) ← the YAMLs ← ``key=value`` overrides.

    So a key a YAML or an override sets always wins, and one nobody sets comes from the data.
    """
    from omegaconf import OmegaConf

    from nar.config import config_path, merge_sources, select_resolved

    dicts = [base] if base else []
    paths = [config_path(p) for p in yamls]
    # Typed as the real pass below types it, so text keys stay text (data.root=0601 is not YAML 1.1's 385).
    user = merge_sources(OmegaConf.structured(TrainConfig), paths, overrides, dicts)
    root = select_resolved(user, "data.root", paths, overrides, default="")
    if root and Path(root, "meta.json").is_file():
        dicts.append(facts_from_data(root))
    return load_config(TrainConfig, yamls, overrides, dicts)


def generator_trainer(cfg: TrainConfig, enable_progress_bar: bool | None = None,
                      logger: bool = True) -> tuple[L.Trainer, FrontierDecodingCallback]:
    """The run's trainer with the frontier-decoding and metrics-file callbacks (FSDP wraps each block)."""
    from nar.model.layers import Block

    decoding = FrontierDecodingCallback(cfg, cfg.run_dir)
    trainer = build_trainer(cfg, [decoding, MetricsFileCallback(cfg.run_dir)], grad_clip=cfg.optim.grad_clip,
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
    from nar.workflows.preflight import check_generator_run

    prepare_process(cfg)
    degraded = check_generator_run(cfg, needs_data=datamodule is None)
    with run_folder_lock(cfg):
        ckpt = resume_checkpoint(cfg.run_dir) if resume else None
        if resume and ckpt is None:
            log.warning("--resume: no intact checkpoint in %s yet; starting from scratch", cfg.run_dir / CHECKPOINTS)
        elif not resume and has_checkpoints(cfg.run_dir):
            raise ConfigError(f"{cfg.run_dir} already holds checkpoints; pass --resume to continue it or pick "
                              "another name=")
        if ckpt is not None:
            check_resumable(cfg, ckpt.path)
        cfg = with_epoch_steps(cfg)
        datamodule = datamodule or generator_datamodule(cfg)
        module = GeneratorModule(cfg, tokenizer=tokenizer)
        if cfg.init_from and ckpt is None:
            init_weights(module, cfg.init_from)
        trainer, decoding = generator_trainer(cfg, enable_progress_bar=enable_progress_bar)
        if trainer.is_global_zero:
            log.info("%s: %s mode, %.2fM parameters, %d forward passes per sample; run folder %s", cfg.name,
                     cfg.model.mode, module.model.num_parameters() / 1e6, module.model.num_passes, cfg.run_dir)
            log.info("%s", disk_estimate(cfg, module.model.num_parameters(), cfg.ema.enabled))
        fit_or_interrupt(trainer, module, datamodule=datamodule, ckpt_path=str(ckpt.path) if ckpt else None)
        last = cfg.run_dir / CHECKPOINTS / LAST
        finish_run(trainer, module, last, final_validation and decoding.validated_step != trainer.global_step,
                   datamodule=datamodule)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return {"metrics": metrics, "run_dir": cfg.run_dir, "checkpoint": last, "samples": decoding.last_grid,
            "global_step": trainer.global_step, "trainer": trainer, "module": module, "degraded": degraded}


def with_epoch_steps(cfg: TrainConfig) -> TrainConfig:
    """``optim.epoch_steps`` for a schedule that moves at epoch boundaries (multistep, or cosine / linear with
    ``optim.schedule_interval=epoch``), when unset: the training split's samples over the global batch, rounded
    down (the official loaders drop the last partial batch of each epoch)."""
    o = cfg.optim
    if not o.counts_epochs or o.epoch_steps is not None:
        return cfg
    from nar.data.shards import read_meta, resolve_split

    meta = read_meta(cfg.data.root)
    samples = int(meta["splits"][resolve_split(meta, cfg.data.train_split, role="training")]["samples"])
    global_batch = cfg.data.batch_size * cfg.trainer.world_size * cfg.trainer.accumulate
    steps = max(1, samples // global_batch)
    if o.schedule == "multistep":
        log.info("multistep schedule: %d samples / global batch %d = %d steps an epoch; lr x%g at epochs %s",
                 samples, global_batch, steps, o.gamma, o.milestone_epochs)
    else:
        log.info("%s schedule per epoch: %d samples / global batch %d = %d steps an epoch, over optim.epochs=%d",
                 o.schedule, samples, global_batch, steps, o.epochs)
        if round(cfg.trainer.max_steps / steps) != o.epochs:  # stops mid-decay, or sits at the floor for epochs
            log.warning("optim.epochs=%d x %d steps = %d steps of %s schedule, but trainer.max_steps=%d (%.2f epochs)",
                        o.epochs, steps, o.epochs * steps, o.schedule, cfg.trainer.max_steps,
                        cfg.trainer.max_steps / steps)
    return replace(cfg, optim=replace(o, epoch_steps=steps))


def check_resumable(cfg: TrainConfig, path: Path) -> None:
    """Refuse (naming the keys) to resume ``path`` into a differently shaped network, before anything is written.

    ``ema.enabled`` may change at a resume (``GeneratorModule.on_load_checkpoint``, or for a sharded checkpoint
    ``ShardedStrategy.load_checkpoint``: turned on, the EMA starts from the resumed weights; turned off, the saved
    EMA is dropped), except that a sharded run (``trainer.strategy: fsdp``) cannot start an EMA from a one-file
    ``.ckpt`` (one written by an unsharded run): its loader reads exactly the keys of the module."""
    from dataclasses import asdict

    checkpoint = read_generator_file(path)  # once: its run config, and whether it is a sharded manifest
    stored = run_config_of(checkpoint)
    if not stored:
        return
    theirs_run = from_dict(TrainConfig, stored)
    if cfg.trainer.strategy == "fsdp" and theirs_run.ema.enabled != cfg.ema.enabled:
        if cfg.ema.enabled and sharded_folder(checkpoint, path) is None:
            raise ConfigError(f"--resume: {path} is a one-file checkpoint trained without an EMA "
                              "(ema.enabled=false); a sharded run (trainer.strategy=fsdp) can start one at a resume "
                              "only from a sharded checkpoint (its loader reads the keys of the module it builds): "
                              "resume with ema.enabled=false", key="ema.enabled")
        if not cfg.ema.enabled:
            log.warning("ema.enabled=false: this run drops the EMA weights of the checkpoint it resumes (%s)", path)
    theirs_cfg = theirs_run.model
    mine = {**asdict(cfg.model), "head_blocks": cfg.model.blocks_per_axis}
    theirs = {**asdict(theirs_cfg), "head_blocks": theirs_cfg.blocks_per_axis}
    shape_keys = ("dim", "n_layer", "n_head", "n_kv_head", "vocab_size", "condition", "num_classes", "caption_dim",
                  "caption_len", "mode", "head_blocks", "head_layout", "head_sharing", "position", "regions")
    refuse_other_model(path, mine, theirs, [k for k in shape_keys if k in mine])


def init_weights(module: GeneratorModule, path: str | Path) -> None:
    """Start ``module`` (and its EMA copy) from the generator weights in ``path`` (shapes must match; the
    grid may differ)."""
    load_weights_into(module.model, path)
    if module.ema_model is not None:
        module.ema_model.load_state_dict(module.model.state_dict())
    log.info("initialised %s from %s", module.cfg.name, path)


def evaluation_config(ckpt: str | Path, yamls: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> TrainConfig:
    """The config ``nar evaluate`` scores ``ckpt`` with: the run config stored in our checkpoints (its model,
    tokenizer, sampling and evaluation budget) ← YAMLs ← ``key=value``. Official ``.pt`` files store none:
    they need a YAML describing the model."""
    stored = stored_run_config(ckpt)
    if stored is None and not yamls:
        raise ConfigError(f"{ckpt} stores no run config (an official checkpoint?): give --config describing the "
                          "model, e.g. --config imagenet/nar_l.yaml")
    if stored is not None:
        from nar.runs.folder import resolve_stored_paths, run_dir_of

        stored = resolve_stored_paths(run_dir_of(ckpt), stored)  # paths stored relative to where the run was made
        # The stored run's folder names stay; evaluation writes under the checkpoint's own run folder.
        # One process unless told otherwise: no sharding (a sharded run's weights are gathered at load). No best
        # checkpoints: an evaluation keeps none, and their metric need not be among the ones scored now.
        stored = {**stored, "trainer": {**stored.get("trainer", {}), "devices": 1, "num_nodes": 1, "strategy": "auto",
                                        "keep_best": 0}}
        # eval.per_class sets nar evaluate's budget from the YAML or the command line only: runs saved before it
        # did store the then-ignored default (50), which would now change their bare evaluations' budget
        stored["eval"] = {k: v for k, v in (stored.get("eval") or {}).items() if k != "per_class"}
    return generator_config(yamls, overrides, base=stored)


def evaluation_dir(cfg: TrainConfig, ckpt: str | Path, num_samples: int) -> Path:
    """``<run>/eval/<checkpoint>-<N>``: beside the checkpoint's run folder (our ``.ckpt`` in ``<run>/checkpoints``),
    else under the config's run folder; never the training outputs themselves."""
    from nar.runs.folder import run_dir_of

    ckpt = Path(ckpt)
    return (run_dir_of(ckpt) or cfg.run_dir) / "eval" / f"{ckpt.stem}-{num_samples}"


def reference_of(cfg: TrainConfig) -> str:
    """What generated samples are scored against, in words (for the log and the results file)."""
    from nar.data.shards import holds_pixels, read_meta, resolve_split

    e = cfg.eval
    if e.reference_stats:
        return f"reference statistics {e.reference_stats}"
    if e.real_root:
        return f"{e.num_real or e.num_samples} real samples of {e.real_root} ({e.real_split})"
    if not cfg.data.root:
        return "nothing (no eval.real_root, eval.reference_stats or data.root)"
    try:  # the split read (UCF-101 has test where val is asked)
        meta = read_meta(cfg.data.root)
        split = resolve_split(meta, cfg.data.val_split)
    except DataError:
        meta, split = {}, cfg.data.val_split
    if holds_pixels(meta):
        return f"the validated samples of {cfg.data.root} ({split})"
    return f"tokenizer reconstructions of {cfg.data.root} ({split}) tokens"


def evaluate(cfg: TrainConfig, ckpt: str | Path, per_class: int | None = None, num_samples: int | None = None,
             out: str | Path | None = None, enable_progress_bar: bool | None = None,
             command: str | None = None) -> dict[str, Any]:
    """Score a checkpoint (ours: EMA weights; or an official ``.pt``) by frontier decoding.

    Sample budget: ``num_samples``, else ``per_class`` (or the config's ``eval.per_class``) × classes (ImageNet
    protocol: 50), else the config's ``eval.num_samples``. Samples stream through the metrics and into ``<out>/chunks`` (a killed evaluation
    continues from them), then into ``<out>/samples_<N>.npz`` (``arr_0`` uint8, the ADM evaluator's input).
    ``<out>`` defaults to :func:`evaluation_dir`. Teacher-forced ``val/loss`` is reported too when
    ``data.root`` is set. Returns the results written to ``<out>/results.json``, which also say how the samples
    were made (seed and its scheme, chunk size, sampler, tokenizer, decoded size, the real images' size) and
    ``command`` (default: this process's ``sys.argv``).
    """
    import shlex
    import sys

    from nar.atomic import write_text
    from nar.lightning.generation import decoded_shape, write_samples_npz
    from nar.workflows.preflight import check_generator_run

    for flag, value in (("--num-samples", num_samples), ("--per-class", per_class)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    if per_class is None and cfg.model.condition == "class":  # per class means nothing for captions
        per_class = cfg.eval.per_class
    n = num_samples or (per_class * cfg.model.num_classes if per_class else cfg.eval.num_samples)
    out = Path(out).resolve() if out else evaluation_dir(cfg, ckpt, n)  # '--out .' has a name once resolved
    cfg = replace(cfg, eval=replace(cfg.eval, num_samples=n), ema=replace(cfg.ema, enabled=False),
                  runs_root=str(out.parent), name=out.name)
    prepare_process(cfg)
    degraded = check_generator_run(cfg, needs_data=False)
    model = load_generator(ckpt, cfg.model)
    log.info("evaluating %s: %d samples (%s, guidance %g, %d passes each) scored %s against %s; results in %s",
             ckpt, n, cfg.model.mode, cfg.sampling.cfg_scale, model.num_passes, "/".join(cfg.eval.metrics) or "-",
             reference_of(cfg), out)
    module = GeneratorModule(cfg)
    module.model.load_state_dict(model.state_dict())
    trainer, decoding = generator_trainer(cfg, enable_progress_bar=enable_progress_bar)
    decoding.sample_dir = out / "chunks"
    sample_shape = decoded_shape(module.tokenizer, cfg.model.grid) if module.tokenizer is not None else None
    if trainer.is_global_zero:
        claim_chunk_folder(decoding.sample_dir, ckpt, cfg, sample_shape=sample_shape)
    kept = f"the samples generated so far are kept in {decoding.sample_dir}: run the same command to go on"
    if cfg.data.root:
        validate_or_interrupt(trainer, module, kept, datamodule=generator_datamodule(cfg, training=False))
    else:
        validate_or_interrupt(trainer, module, kept, dataloaders=[_EmptyLoader()])
    scores = {k: float(v) for k, v in trainer.callback_metrics.items()}
    scores.update(decoding.last_results)
    results: dict[str, Any] = {
        "checkpoint": str(ckpt), "scores": scores, "num_samples": n, "num_real": decoding.last_counts.get("real"),
        "reference": reference_of(cfg), "sampling": vars(cfg.sampling), "mode": cfg.model.mode,
        "labels": cfg.eval.labels, "real_seed": cfg.eval.real_seed, "forward_passes": model.num_passes, "degraded": degraded, "out": str(out),
        "seconds": {k: round(v, 3) for k, v in decoding.last_seconds.items()},  # rank 0's, by stage
        "seed": cfg.eval.seed, "seeds": SEED_SCHEME, "batch_size": cfg.eval.batch_size,
        "sampler": sampler_name(cfg.eval.sampler, key="eval.sampler"), "tokenizer": tokenizer_identity(cfg),
        # the decoded samples' [T,] H, W and the side the real images were centre-cropped to (None: none read)
        "image_size": list(sample_shape[1:]) if sample_shape else None, "real_image_size": decoding.real_image_size,
        "command": command or shlex.join(sys.argv)}
    if trainer.is_global_zero:
        if module.tokenizer is not None:
            chunks = -(-n // cfg.eval.batch_size)
            start = time.perf_counter()
            results["samples_npz"] = str(write_samples_npz(out / "chunks", chunks, out / f"samples_{n}.npz"))
            results["seconds"]["npz"] = round(time.perf_counter() - start, 3)
        write_text(out / "results.json", json.dumps(results, indent=1, sort_keys=True, allow_nan=False,
                                                    default=str))
    return results


# How chunk c of an evaluation is seeded (settings.json's "seeds"): nar.sampling.seeds.batch_seed(eval.seed, c).
# Folders without the key were seeded eval.seed + c by older versions: other samples, refused.
SEED_SCHEME = "batch_seed"


def tokenizer_identity(cfg: TrainConfig) -> dict[str, Any]:
    """Which tokenizer decodes the samples: ``tokenizer.path`` (a file: resolved, with its size and modification
    time in ns, which a retraining that rewrites it changes; a preset name: as given, random weights) and
    ``tokenizer.config``. Size and time, not a hash: reading a VQ-16 file (280 MB) again costs ~0.3 s, an official
    Lightning checkpoint's several GB far more, as the generator checkpoint's own key does."""
    path = cfg.tokenizer.path
    identity: dict[str, Any] = {"path": path, "config": cfg.tokenizer.config}
    if path and Path(path).is_file():
        stat = Path(path).stat()
        identity.update(path=str(Path(path).resolve()), size=stat.st_size, mtime_ns=stat.st_mtime_ns)
    return identity


def claim_chunk_folder(folder: Path, ckpt: str | Path, cfg: TrainConfig,
                       sample_shape: Sequence[int] | None = None) -> None:
    """Chunks on disk are reused by a rerun only when they come from the same samples: the checkpoint (path,
    size, time), the model config the run builds (its grid, heads, …), the tokenizer (:func:`tokenizer_identity`),
    sampling settings, ``eval.sampler`` (the wavefront draws other samples), seed and its scheme
    (:data:`SEED_SCHEME`), chunk size and count, and one decoded sample's shape (``sample_shape``, channels first)
    are written beside them at the first run, and a rerun with other settings into the same folder stops naming
    what differs (instead of mixing samples). A folder of the older seed scheme (no ``seeds``) is refused as such:
    its chunks are other samples than this version makes whatever else matches, so the keys added with the scheme
    (tokenizer, sampler, model, sample_shape) are always recorded."""
    from dataclasses import asdict

    from nar.atomic import write_text

    path = Path(ckpt)
    weights = generator_file(path)  # an official FSDP folder: its consolidated.pth changes, not the folder
    stat = weights.stat() if weights.is_file() else None
    model = {k: v for k, v in asdict(cfg.model).items() if k != "preset"}  # the preset name is informational
    settings = {"checkpoint": str(path.resolve()), "size": stat.st_size if stat else None,
                "mtime": int(stat.st_mtime) if stat else None, "sampling": vars(cfg.sampling),
                "seed": cfg.eval.seed, "seeds": SEED_SCHEME, "batch_size": cfg.eval.batch_size,
                "num_samples": cfg.eval.num_samples, "mode": cfg.model.mode, "model": model,
                "tokenizer": tokenizer_identity(cfg), "sampler": sampler_name(cfg.eval.sampler, key="eval.sampler"),
                "sample_shape": list(sample_shape) if sample_shape is not None else None}
    if cfg.eval.labels != "balanced":  # recorded only when not the default, so folders made before it still match
        settings["labels"] = cfg.eval.labels
    if cfg.eval.labels == "real":  # the list itself: another real source, split, subset or seed gives other classes
        from nar.lightning.callbacks.decoding import real_condition_ids

        ids = real_condition_ids(cfg.eval, cfg.model.num_classes, cfg.eval.num_samples)
        settings["real_labels"] = hashlib.sha1(ids.numpy().tobytes()).hexdigest()[:16]
    settings = json.loads(json.dumps(settings, default=str))
    record = folder / "settings.json"
    if record.is_file():
        before = json.loads(record.read_text())
        if "seeds" not in before:
            raise ConfigError(f"{folder} holds samples made by an older version of nar, which seeded chunk c with "
                              f"eval.seed + c (now {SEED_SCHEME}(eval.seed, c), so neighbouring seeds share no "
                              "sample): they are other samples than this version makes and cannot be continued; "
                              "evaluate into another --out, or delete the folder to start again")
        changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        if changed:
            raise ConfigError(f"{folder} holds samples made with other settings ({', '.join(changed)} differ); "
                              "evaluate into another --out, or delete the folder to start again")
        return
    folder.mkdir(parents=True, exist_ok=True)
    write_text(record, json.dumps(settings, indent=1, sort_keys=True))


class _EmptyLoader(list):
    """One dummy validation batch so the callback runs without a data folder."""

    def __init__(self) -> None:
        super().__init__([{"__empty__": torch.zeros(1)}])
