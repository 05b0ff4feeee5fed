"""Run an ablation grid: the shared data/tokenizer once, then each variant trained, scored and timed the
same way for every seed, one complete row of ``results.csv`` per run (a finished row is never redone).

With ``jobs > 1`` runs train side by side, each in its own process with ``cores / jobs`` CPU threads; the
parent writes every row as its run completes, so an interrupted grid resumes where it stopped.

Each run's config is ``nar train``'s (:func:`nar.workflows.train.generator_config`: grid, vocabulary and classes
from ``data.root``'s ``meta.json`` unless set). A rerun keeps a finished row and resumes a run folder's
checkpoints, so both must have been made with the run's configuration: a row or a run folder made with another
(a shared setting changed since) is refused before anything trains, naming every such run and what differs. One
made by an ``nar ablate`` that did not read ``meta.json`` yet, from the same YAMLs and overrides, holds the run as
that one built it, and is kept (:func:`fingerprints`). A run that fails is logged by name (its traceback in
``<run>/error.log``) and the others go on; the grid then reports the failed runs (``nar ablate`` exits non-zero).
A stop (SIGINT/SIGTERM) stops the grid: run the same command again to continue.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import re
import signal
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nar.config import load_config
from nar.errors import EXIT_RUNTIME, ConfigError, NarError, RunInterrupted
from nar.runs.config import TrainConfig
from nar.workflows.ablation.config import AblationConfig, BenchConfig, VariantConfig, variant_overrides
from nar.workflows.ablation.report import (
    log_hparams,
    plot_learning_curves,
    plot_score_vs_speed,
    read_rows,
    write_markdown,
    write_rows,
)

log = logging.getLogger(__name__)

SCORE_KEYS = ("val/fid", "val/fvd", "val/fvd_proxy_inception")


@dataclasses.dataclass
class Run:
    """One training run of the grid: a variant at one seed (``name`` = its run folder and CSV key). ``earlier_cfg``:
    its config as an ``nar ablate`` before the grid read ``data.root``'s ``meta.json`` built it (the same YAMLs and
    overrides, :func:`~nar.config.load_config` alone), whose rows and run folders are this run's; None where that
    builder refuses the overrides (no such row can exist)."""

    variant: VariantConfig
    seed: int
    name: str
    train_cfg: Any
    earlier_cfg: Any = None


def run_name(variant: str, seed: int, seeds: Sequence[int]) -> str:
    return variant if len(seeds) == 1 else f"{variant}-s{seed}"


def build_train_configs(cfg: AblationConfig, shared: Sequence[str] = ()) -> list[tuple[VariantConfig, Any]]:
    """Each variant's :class:`~nar.runs.TrainConfig` (first seed), built as ``nar train`` builds one: what
    ``data.root``'s ``meta.json`` says (grid, vocabulary, classes, tokenizer) <- base YAMLs <- the ablation's
    overrides <- ``shared`` (data paths, devices, command line) <- the variant's ``model.*``. Validates every
    variant before anything runs; errors name the variant and the key."""
    return [(r.variant, r.train_cfg) for r in build_runs(cfg, shared) if r.seed == cfg.seeds[0]]


# Keys the runner sets for every run, with the grid key that decides them: set in the ablation's `overrides` or
# the shared ones they would be silently replaced.
RUNNER_KEYS = {"trainer.seed": "seeds", "data.seed": "seeds", "eval.seed": "seeds", "name": "out", "runs_root": "out"}


def check_runner_keys(overrides: Sequence[str], where: str) -> None:
    """Refuse an override of a key the runner sets itself (:data:`RUNNER_KEYS`), naming the grid key to use."""
    for override in overrides:
        key, _, value = override.partition("=")
        grid_key = RUNNER_KEYS.get(key.strip())
        if grid_key == "seeds":
            raise ConfigError(f"{where}: '{override}' would be replaced: every run sets trainer.seed, data.seed and "
                              f"eval.seed from the grid's key 'seeds'; write seeds: [{value.strip()}] in the grid "
                              f"YAML (or --set seeds=[{value.strip()}]) instead")
        if grid_key == "out":
            raise ConfigError(f"{where}: '{override}' would be replaced: every run is named <variant>[-s<seed>] under "
                              "<out>/runs; choose the grid's folder with its key 'out' (--set out=...) instead")


def build_runs(cfg: AblationConfig, shared: Sequence[str] = ()) -> list[Run]:
    """Every (variant, seed) run of the grid, variant-major; the seed sets ``trainer.seed``, ``data.seed`` and
    ``eval.seed``, so the seeds are independent replicates of training, data order and sampling."""
    from nar.workflows.train import generator_config  # nar train's: data.root's meta.json, then ours

    check_runner_keys(cfg.overrides, "key 'overrides'")
    check_runner_keys(shared, "shared override (command line)")
    runs_root = cfg.out_dir / "runs"
    out = []
    for i, variant in enumerate(cfg.variants):
        for seed in cfg.seeds:
            name = run_name(variant.name, seed, cfg.seeds)
            overrides = [*cfg.overrides, *shared, f"name={name}", f"runs_root={runs_root}",
                         f"trainer.seed={seed}", f"data.seed={seed}", f"eval.seed={seed}", *variant_overrides(variant)]
            try:
                train_cfg = generator_config(cfg.base, overrides)
            except ConfigError as err:
                raise ConfigError(f"variants[{i}] ({variant.name}): {err}") from None
            try:
                earlier = load_config(TrainConfig, cfg.base, overrides)
            except ConfigError:
                earlier = None
            out.append(Run(variant, seed, name, train_cfg, earlier))
    return out


# Keys added after fingerprints were first stored, with the default that reproduces the behaviour before them: a
# config that leaves them there hashes as it did, so finished grid rows and demo runs are still found. (Not
# eval.real_seed where real samples come from eval.real_root: a limited real set is now a random subset, not the
# first samples, so earlier scores differ and those rows are refused.)
LATER_KEYS = {("eval", "labels"): "balanced", ("optim", "decay_embeddings"): True,
              ("optim", "warmup_start_ratio"): 0.0, ("data", "val_missing_tolerance"): 0.01,
              ("trainer", "fsdp_param_dtype"): None, ("trainer", "fsdp_reduce_dtype"): None,
              ("text", "clean_captions"): "none", ("optim", "schedule_interval"): "step"}


def fingerprint(train_cfg: Any) -> str:
    """A hash of everything that decides a row's numbers. Head settings that build the same network
    (e.g. a shared head's unused ``head_blocks`` entries, chain vs parallel with one branch) hash equal."""
    text = json.dumps(_hashed(train_cfg), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def fingerprints(train_cfg: Any, earlier_cfg: Any = None) -> tuple[str, ...]:
    """The run's :func:`fingerprint`, then those a row of the same run holds when an older ``nar ablate`` wrote it,
    which built configs without ``data.root``'s ``meta.json``: ``earlier_cfg``'s (:attr:`Run.earlier_cfg`: none of
    the class names, ``tokenizer.path`` and ``eval.real_root`` / ``real_split`` that file names, grid and vocabulary
    as the YAMLs said), and the run's without class names (``classes`` label samples; no number depends on
    them)."""
    fps = [fingerprint(train_cfg)]
    if train_cfg.classes:
        fps.append(fingerprint(dataclasses.replace(train_cfg, classes=[])))
    if earlier_cfg is not None:
        fps.append(fingerprint(earlier_cfg))
    return tuple(dict.fromkeys(fps))


def _hashed(train_cfg: Any) -> dict[str, Any]:
    """The settings :func:`fingerprint` hashes, as a nested dict."""
    data = dataclasses.asdict(train_cfg)
    for key in ("name", "runs_root"):
        data.pop(key)
    data["trainer"].pop("threads", None)
    m = data["model"]
    m.pop("preset", None)  # informational: the fields decide
    blocks = train_cfg.model.blocks_per_axis
    m["head_blocks"] = blocks
    if m["mode"] == "nar" and m["head_sharing"] == "shared":
        m["head_blocks"], m["shared_axis"] = [blocks[m["shared_axis"]]], 0
    if m["mode"] in ("raster", "par"):  # one head, one parent: sharing and mixing change nothing
        m.update(head_sharing="per_axis", shared_axis=-1, mixing="logits")
    if sum(b > 0 for b in m["head_blocks"]) <= 1:
        m["head_layout"] = "chain"  # one branch at most: chain and parallel are the same network
    t = data["trainer"]  # FSDP's collective dtypes as they act: fp32 is the weights' own (no cast, as null), a
    # null reduce dtype follows the param dtype, and other strategies, or FSDP without bf16 autocast, use neither
    # (nar.lightning.sharding.ShardedStrategy.mixed_precision)
    acts = t["strategy"] == "fsdp" and t["precision"] == "bf16-mixed"
    param = (t["fsdp_param_dtype"] or "fp32") if acts else "fp32"
    reduce = (t["fsdp_reduce_dtype"] or param) if acts else "fp32"
    t["fsdp_param_dtype"], t["fsdp_reduce_dtype"] = (None if param == "fp32" else param,
                                                     None if reduce == param else reduce)
    for (section, key), default in LATER_KEYS.items():  # at their defaults: hashed as before they existed
        if data[section].get(key) == default:
            data[section].pop(key)
    if not train_cfg.eval.real_root:  # no real samples drawn from a split: the seed of their subset changes nothing
        data["eval"].pop("real_seed")
    return data


def settings_changed(before: Any, now: Any, most: int = 6) -> str:
    """``key=old (now new)`` for each hashed setting (:func:`fingerprint`) that differs between two run configs,
    the first ``most`` of them."""
    changed = _changed(before, now)
    text = ", ".join(f"{key}={old} (now {new})" for key, old, new in changed[:most])
    return text + (f" and {len(changed) - most} more" if len(changed) > most else "")


def _changed(before: Any, now: Any) -> list[tuple[str, str, str]]:
    """``(key, old, new)`` for each hashed setting that differs between two run configs, sorted by key."""

    def flat(node: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(node, dict):
            return {prefix: node}
        return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}

    def show(value: Any) -> str:
        return value if isinstance(value, str) else json.dumps(value, default=str)

    old, new = flat(_hashed(before)), flat(_hashed(now))
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return [(k[:-1], show(old.get(k)), show(new.get(k))) for k in keys]


def other_checkpoint(run_dir: Path, like: Any, earlier: Any = None) -> tuple[Path, str] | None:
    """``(checkpoint, what differs)`` for the newest intact checkpoint of ``run_dir`` made neither with run config
    ``like`` nor with ``earlier`` (the same run as an older ``nar ablate`` built it, :attr:`Run.earlier_cfg`), as
    :func:`fingerprint` sees them, or whose config cannot be read; None when every one was (or there is none: the
    run starts from scratch). Every checkpoint, not just the one a resume continues from: a run resumed with
    another setting writes that setting into the checkpoints it saves after its old steps. What differs is told
    against the closer of the two.

    The class names (labels only) and an epoch length the config it is compared with leaves to the data (filled in
    when the run started, ``with_epoch_steps``) are taken from that config."""
    from nar.config import from_dict
    from nar.model.io import read_generator_file, run_config_of
    from nar.runs.folder import intact_checkpoints

    def as_made_like(theirs: Any, cfg: Any) -> Any:
        theirs = dataclasses.replace(theirs, classes=cfg.classes)
        if cfg.optim.epoch_steps is None:
            theirs = dataclasses.replace(theirs, optim=dataclasses.replace(theirs.optim, epoch_steps=None))
        return theirs

    good, _ = intact_checkpoints(run_dir)
    configs = [(cfg, fingerprint(cfg)) for cfg in (like, earlier) if cfg is not None]
    for info in reversed(good):
        try:
            stored = run_config_of(read_generator_file(info.path))
            if not stored:
                return info.path, "it stores no run config"
            theirs = from_dict(TrainConfig, stored)
        except NarError as err:
            return info.path, f"its run config cannot be read ({err})"
        compared = [(as_made_like(theirs, cfg), cfg, fp) for cfg, fp in configs]
        if all(fingerprint(made) != fp for made, _, fp in compared):
            made, cfg, _ = min(compared, key=lambda c: len(_changed(c[0], c[1])))  # the first (now) on a tie
            return info.path, settings_changed(made, cfg)
    return None


def refuse_other_configurations(runs: Sequence[tuple[Run, tuple[str, ...]]], done: dict[str, dict[str, Any]],
                                csv_path: Path) -> None:
    """Refuse, before anything trains, runs whose finished row (in ``done``) or run folder (checkpoints that a
    resume would continue) was made with another configuration than the run's now (``runs``: each with its
    :func:`fingerprints`): one :class:`ConfigError` naming every such run, what differs and how to start it
    again. A finished run would not train again: its old numbers would be filed under the new configuration."""
    conflicts, rows, folders = [], [], []
    for run, fps in runs:
        what = []
        row = done.get(run.name)
        if row is not None and row["fingerprint"] not in fps:
            what.append(f"its row in {csv_path.name}: fingerprint {row['fingerprint']}, now {fps[0]}")
            rows.append(run.name)
        elif (row is not None and run.earlier_cfg is not None and row["fingerprint"] != fps[0]
              and row["fingerprint"] == fingerprint(run.earlier_cfg)):
            log.info("%s: its row was made by an nar ablate that did not read %s/meta.json; kept (the data fill in "
                     "%s)", run.name, run.train_cfg.data.root, settings_changed(run.earlier_cfg, run.train_cfg))
        run_dir = Path(run.train_cfg.run_dir)
        other = other_checkpoint(run_dir, run.train_cfg, run.earlier_cfg)
        if other is not None:
            what.append(f"{other[0].relative_to(run_dir.parent.parent)}: {other[1]}")
            folders.append(run_dir)
            if row is not None and run.name not in rows:  # a row of this fingerprint collected from that folder
                rows.append(run.name)                      # (a resume under the new setting): the old numbers
        if what:
            conflicts.append(f"{run.name} ({'; '.join(what)})")
    if not conflicts:
        return
    remedy = []
    if rows:
        remedy.append(f"their rows from {csv_path}")
    if folders:
        remedy.append(f"their run folders {' '.join(str(f) for f in folders)}")
    raise ConfigError(f"{len(conflicts)} run(s) of this grid were made with another configuration than the grid "
                      f"gives them now: {', '.join(conflicts)}. A rerun keeps a finished row and resumes a run "
                      "folder's checkpoints (optimizer state and step included), so the old configuration's numbers "
                      f"would be filed under the new one: to train them again delete {' and '.join(remedy)}; or "
                      "pick another out= (--set out=...)")


def prepare_shared(cfg: AblationConfig, threads: int) -> list[str]:
    """Embedded data -> tokenizer -> token shards for ``prepare.domain`` (``nar demo``'s steps, each skipped when
    its output exists), as ``key=value`` overrides shared by every variant; [] without a domain."""
    p = cfg.prepare
    if not p.domain:
        return []
    from nar.data.shards import read_meta
    from nar.workflows.demo import ensure_embedded, ensure_tokenizer, ensure_tokens

    images = ensure_embedded(p.domain, Path(p.data), p.smoke)
    tok_dir = Path(p.tokenizer_dir) if p.tokenizer_dir else cfg.out_dir / "tokenizer"
    tokenizer = ensure_tokenizer(p.domain, images, tok_dir, p.smoke, threads, p.tokenizer_steps)
    # Tokens live beside the tokenizer that made them, so a grid reusing `make demo`'s tokenizer reuses its tokens.
    tokens = ensure_tokens(images, tokenizer, tok_dir.parent / "tokens")
    meta = read_meta(tokens)
    return [f"data.root={tokens}", f"tokenizer.path={tokenizer}", f"eval.real_root={images}",
            f"model.grid=[{','.join(map(str, meta['grid']))}]", f"model.vocab_size={meta['codebook_size']}",
            f"model.num_classes={len(meta['classes'])}"]


def measure_images_per_s(model: Any, train_cfg: Any, bench: BenchConfig) -> float | None:
    """Images/s of token generation with :class:`~nar.sampling.fast.FastSampler` (the sampling settings of the
    run, CFG included; no pixel decoding; ``bench.weights``) at ``bench.batch``, best of ``bench.iters`` calls after
    ``bench.warmup``; None for caption models or when disabled."""
    if not bench.enabled or model.cfg.condition != "class":
        return None
    import torch

    from nar.sampling.bench import time_call
    from nar.sampling.fast import FastSampler

    device = next(model.parameters()).device
    if bench.weights == "random":
        from nar.sampling.bench import random_model

        model = random_model(model.cfg, device, next(model.parameters()).dtype, seed=train_cfg.trainer.seed)
    sampler = FastSampler(model, bench.batch, train_cfg.sampling)
    labels = torch.arange(bench.batch, device=device) % model.cfg.num_classes
    gen = torch.Generator(device=device).manual_seed(train_cfg.trainer.seed)
    for _ in range(bench.warmup):
        sampler(labels, generator=gen)
    # Best of `iters` single calls: on a shared machine the fastest call is the least disturbed one.
    seconds = min(time_call(lambda: sampler(labels, generator=gen), device, 0, 1, 0.0) for _ in range(bench.iters))
    return bench.batch / seconds


def run_variant(variant: VariantConfig, train_cfg: Any, bench: BenchConfig, seed: int = 0,
                name: str | None = None) -> dict[str, Any] | None:
    """Train (resuming its own checkpoint if a previous attempt was interrupted), score and time one run;
    its row, or None on ranks other than 0."""
    from nar.lightning.logs import read_metrics
    from nar.runs.folder import has_checkpoints
    from nar.workflows.train import fit

    e = train_cfg.eval
    # Sampling and Inception features take minutes on CPU after the last training step, before the scores' line.
    log.info("%s: %d steps; its last validation samples %d images (batches of %d) and scores %s", name or variant.name,
             train_cfg.trainer.max_steps, e.num_samples, e.batch_size, ",".join(e.metrics))
    start = time.perf_counter()
    result = fit(train_cfg, resume=has_checkpoints(train_cfg.run_dir), enable_progress_bar=False)
    seconds = time.perf_counter() - start
    if not result["trainer"].is_global_zero:
        return None
    # A run that had already finished validates no more: its last validation is in metrics.jsonl.
    history = read_metrics(train_cfg.run_dir)
    scores = {**(history[-1] if history else {}), **result["metrics"]}
    score_key = next((k for k in SCORE_KEYS if k in scores), None)
    model = result["module"].eval_model
    m = train_cfg.model
    return {
        "run": name or variant.name, "seed": seed, "bits_per_token": scores.get("val/bits_per_token"),
        "kid": scores.get("val/kid_mean"), "kid_std": scores.get("val/kid_std"),
        "variant": variant.name, "label": variant.label, "mode": m.mode, "head_sharing": m.head_sharing,
        "shared_axis": m.shared_axis, "head_blocks": json.dumps(m.blocks_per_axis), "head_layout": m.head_layout,
        "regions": json.dumps(list(m.regions)) if m.regions else "",
        "mixing": m.mixing, "score_name": score_key[4:] if score_key else "",
        "score": scores[score_key] if score_key else None, "paper_score": variant.paper_score,
        "val_loss": scores.get("val/loss"), "forward_passes": int(model.num_passes),
        "images_per_s": measure_images_per_s(model, train_cfg, bench), "parameters": int(model.num_parameters()),
        # the run's own training clock (metrics.jsonl, validation excluded, summed over resumes); the wall time
        # of this call only when the run records none (a run already finished takes ~1 s to collect)
        "steps": int(result["global_step"]), "train_seconds": scores.get("train_seconds", seconds), "same_as": "",
    }


_STOP: Any = None  # in a grid worker: the grid's stop event (set when the grid is stopping)


def _init_worker(stop: Any) -> None:
    """A grid worker: its own process group (a terminal's Ctrl-C reaches the grid process only) and the stop
    event, which a run queued to this worker before the stop checks before it starts."""
    global _STOP
    os.setpgrp()
    _STOP = stop


def _run_in_process(run: Run, bench: BenchConfig, threads: int) -> dict[str, Any] | None:
    """A grid run in a worker process (``jobs > 1``): its own logging and CPU threads."""
    from nar.logconfig import configure_logging  # the worker is a fresh interpreter

    if _STOP is not None and _STOP.is_set():
        raise RunInterrupted(f"{run.name}: not started, the grid is stopping")

    configure_logging(lightning=True)
    run.train_cfg = dataclasses.replace(run.train_cfg, trainer=dataclasses.replace(run.train_cfg.trainer,
                                                                                   threads=threads))
    return run_variant(run.variant, run.train_cfg, bench, run.seed, run.name)


def _run_side_by_side(todo: list[tuple[Run, str]], jobs: int, bench: BenchConfig, threads: int, finish: Any,
                      failed: Any) -> None:
    """The grid's runs in ``jobs`` worker processes, each row written (``finish(row, fp)``) as its run completes;
    a run that raises is handed to ``failed(run, err)`` and the others go on.

    A stop (SIGINT or SIGTERM to this process, or a run stopped by a signal of its own) does not wait for the
    queue: runs not started are cancelled, the running ones get one SIGTERM, save a checkpoint and stop (their
    trainer's handler), and the grid ends with :class:`RunInterrupted` (exit 75). The workers have their own
    process group, so a terminal's Ctrl-C reaches this process only and each worker hears of it once (a second
    SIGINT would make a worker abort without saving). Rerunning the command keeps the finished rows and resumes
    the interrupted runs from their checkpoints."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no forked torch state
    stop = context.Event()
    pool = concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker,
                                                  initargs=(stop,))
    futures = {pool.submit(_run_in_process, run, bench, threads): (run, fp) for run, fp in todo}
    main_thread = threading.current_thread() is threading.main_thread()
    # Both stop signals get our handler, as a training run's do (PreemptionCallback): a grid started in the
    # background by a shell inherits SIGINT ignored, and Python then installs no KeyboardInterrupt for it.
    stops = (signal.SIGINT, signal.SIGTERM) if main_thread else ()
    previous = {signum: signal.signal(signum, _interrupt) for signum in stops}
    try:
        for future in concurrent.futures.as_completed(futures):
            run, fp = futures[future]
            try:
                row = future.result()
            except RunInterrupted as err:
                raise _for_the_grid(err, run.name) from None
            except Exception as err:  # noqa: BLE001 - a failed run is reported; the others go on
                failed(run, err)
                continue
            finish(row, fp)
    except BaseException as err:
        stop.set()  # a run already handed to a worker's queue does not start
        for future in futures:
            future.cancel()
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(process.pid, signal.SIGTERM)
        pool.shutdown(wait=True, cancel_futures=True)
        if isinstance(err, KeyboardInterrupt):
            raise RunInterrupted("grid stopped by a signal: the running runs saved their checkpoints, finished rows "
                                 "are in results.csv; run the same command again to continue") from None
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    pool.shutdown(wait=True)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _for_the_grid(err: RunInterrupted, name: str) -> RunInterrupted:
    """A run's stop as the grid's: named, and with what to do in ``nar ablate`` (the trainer's message says
    ``continue with --resume``, an option of ``nar train`` only; a grid resumes by running it again)."""
    text = re.sub(r";?\s*continue with --resume\b", "", str(err)).rstrip("; ")
    return RunInterrupted(f"{name}: {text}; the grid stopped (finished rows are in results.csv): run the same "
                          "command again to continue, this run from its checkpoint")


TRACEBACK = "error.log"  # in a failed run's folder


def record_failure(run: Run, err: BaseException) -> str:
    """Log a failed run by name (its traceback at debug level and in ``<run>/error.log``); the one-line reason."""
    reason = str(err) if isinstance(err, NarError) else f"{type(err).__name__}: {err}"
    text = "".join(traceback.format_exception(err))  # a worker's error carries the worker's traceback (__cause__)
    path = Path(run.train_cfg.run_dir) / TRACEBACK
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        where = f"traceback in {path}"
    except OSError as write_err:
        where = f"its traceback could not be written to {path}: {write_err}"
    log.error("variant %s failed: %s (%s); the grid goes on", run.name, reason, where)
    log.debug("%s", text)
    return f"{reason}; {where}"


def run_ablation(cfg: AblationConfig, shared: Sequence[str] = (), only: Sequence[str] | None = None,
                 threads: int | None = None) -> dict[str, Any]:
    """Run every (variant, seed) of ``cfg`` not yet in ``<out>/results.csv``; returns ``{"rows", "csv", "markdown",
    "plot", "curves", "tensorboard", "ran", "skipped", "missing", "failed", "exit_code"}``.

    ``shared``: extra ``key=value`` overrides for every variant (devices, budget); ``only``: variant names
    to run (the others keep their rows). ``rows`` and the report hold the rows of this grid's runs only (the CSV
    keeps rows of seeds or variants since dropped); ``missing`` lists ``(variant, seeds)`` still without a row;
    ``failed`` lists ``(run, reason)`` of the runs that raised (the others ran on) and ``exit_code`` is what
    ``nar ablate`` exits with (0 when none failed).

    Raises:
        ConfigError: a variant's config is invalid, or rows or run folders were made with another configuration
            (:func:`refuse_other_configurations`), before anything trains.
        RunInterrupted: a signal stopped the grid (its runs saved their checkpoints).
    """
    # Fail on a bad variant before spending minutes on the tokenizer.
    first = build_runs(cfg, shared)[0].train_cfg
    if only:
        unknown = sorted(set(only) - {v.name for v in cfg.variants})
        if unknown:
            raise ConfigError(f"--only: unknown variant(s) {unknown}; known: {[v.name for v in cfg.variants]}")
    if cfg.jobs > 1 and first.trainer.world_size > 1:
        raise ConfigError("jobs > 1 runs CPU processes side by side; with several devices per run keep jobs=1",
                          key="jobs")
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    prepared = prepare_shared(cfg, threads or first.trainer.threads or 2)
    runs = build_runs(cfg, [*prepared, *shared])
    paths = {"csv": out / "results.csv", "markdown": out / "results.md", "plot": out / "fid_vs_speed.png",
             "curves": out / "learning_curves.png", "tensorboard": out / "tb"}
    order = {r.name: i for i, r in enumerate(runs)}
    rows = read_rows(paths["csv"])
    done = {r["run"]: r for r in rows}
    by_fingerprint = {r["fingerprint"]: r for r in rows}
    chosen = [(run, fingerprints(run.train_cfg, run.earlier_cfg))
              for run in runs if not only or run.variant.name in only]
    refuse_other_configurations(chosen, done, paths["csv"])
    todo, skipped, twins = [], [], []
    for run, fps in chosen:
        fp = fps[0]
        if run.name in done:
            skipped.append(run.name)
            continue
        # the same network, budget and seed as another row (or a run to train first): the same numbers
        same = next((f for f in fps if f in by_fingerprint or any(f == t for _, t in todo)), None)
        if same is not None:
            twins.append((run, fp, same))
        else:
            todo.append((run, fp))
    ran: list[str] = []
    failed: list[tuple[str, str]] = []
    exit_codes: list[int] = []

    def current() -> list[dict[str, Any]]:
        """The rows of this grid's runs: the CSV keeps rows of runs no longer in it (other seeds), not the report."""
        return [r for r in rows if r["run"] in order]

    def finish(row: dict[str, Any] | None, fp: str) -> None:
        if row is None:  # not rank 0: rank 0 writes the results
            return
        row["fingerprint"] = fp
        rows.append(row)
        by_fingerprint.setdefault(fp, row)
        rows.sort(key=lambda r: order.get(r["run"], len(order)))
        write_rows(paths["csv"], rows)  # the row exists only once complete
        reported = current()
        write_markdown(paths["markdown"], reported, title=cfg.name, runs_root=out / "runs",
                       missing=missing_runs(runs, reported))
        log_hparams(paths["tensorboard"], row)
        plot_score_vs_speed(paths["plot"], reported)
        plot_learning_curves(paths["curves"], reported, out / "runs")
        ran.append(row["run"])

    def fail(run: Run, err: BaseException) -> None:
        failed.append((run.name, record_failure(run, err)))
        exit_codes.append(err.exit_code if isinstance(err, NarError) else EXIT_RUNTIME)

    for run, _ in todo:  # an earlier attempt's failure, if any, is not this one's
        (Path(run.train_cfg.run_dir) / TRACEBACK).unlink(missing_ok=True)
    log.info("%s: %d runs to train (%d variants x %d seeds), %d done, %d twins, %d at a time", cfg.name, len(todo),
             len(set(only)) if only else len(cfg.variants), len(cfg.seeds), len(skipped), len(twins), cfg.jobs)
    if cfg.jobs > 1 and len(todo) > 1:
        _run_side_by_side(todo, cfg.jobs, cfg.bench, max(1, (os.cpu_count() or 2) // cfg.jobs), finish, fail)
    else:
        for run, fp in todo:
            log.info("%s: training %s", run.name, " ".join(variant_overrides(run.variant)) or "(base config)")
            try:
                row = run_variant(run.variant, run.train_cfg, cfg.bench, run.seed, run.name)
            except RunInterrupted as err:  # a stop, not a failure: the grid stops
                raise _for_the_grid(err, run.name) from None
            except Exception as err:  # noqa: BLE001 - a failed run is reported; the others go on
                fail(run, err)
                continue
            finish(row, fp)
    failed_names = {name for name, _ in failed}
    for run, fp, same in twins:
        twin = by_fingerprint.get(same)
        if twin is None:
            first_of = next((r.name for r, t in todo if t == same and r.name in failed_names), None)
            if first_of is not None:  # its numbers were to come from a run that failed
                failed.append((run.name, f"the same network as {first_of}, which failed"))
            continue  # else not rank 0
        log.info("%s: the same network as %s; its row is reused", run.name, twin["run"])
        m = run.train_cfg.model
        finish({**twin, "run": run.name, "variant": run.variant.name, "label": run.variant.label,
                "paper_score": run.variant.paper_score, "head_sharing": m.head_sharing, "shared_axis": m.shared_axis,
                "head_blocks": json.dumps(m.blocks_per_axis), "head_layout": m.head_layout, "same_as": twin["run"]},
               fp)
    reported = current()
    missing = missing_runs(runs, reported)
    # Nothing to train (or the last runs failed), so nothing rewrote the report, but the grid (seeds, variants)
    # may have changed. Every rank gets here with the same CSV; after training only rank 0's rows are complete,
    # and its finish() wrote them.
    if reported and (failed or (not todo and not ran)):
        write_markdown(paths["markdown"], reported, title=cfg.name, runs_root=out / "runs", missing=missing)
    return {"rows": reported, **{k: (v if k in ("csv", "markdown", "tensorboard") or v.is_file() else None)
                                 for k, v in paths.items()}, "ran": ran, "skipped": skipped, "missing": missing,
            "failed": failed, "exit_code": max(exit_codes, default=0)}


def missing_runs(runs: Sequence[Run], rows: Sequence[dict[str, Any]]) -> list[tuple[str, list[int]]]:
    """``[(variant, seeds)]`` of the grid's runs without a row (grid order): a partial grid (``--only``, stopped,
    still running) says what its tables leave out."""
    done = {r["run"] for r in rows}
    missing: dict[str, list[int]] = {}
    for run in runs:
        if run.name not in done:
            missing.setdefault(run.variant.name, []).append(run.seed)
    return list(missing.items())
