"""One Lightning ``Trainer`` for every run (generators and tokenizers), and one run-folder layout.

A run folder ``<runs_root>/<name>/`` holds::

    config.yaml          the validated run config (written once the run has started)
    tb/                  TensorBoard logs (a resumed run hides the events an earlier process wrote past the step it
                         resumes from: each step shows once after a kill)
    checkpoints/         step_<step>.ckpt every trainer.ckpt_every steps, and last.ckpt (fsdp: manifests of
                         the shard folders in checkpoints/sharded/, see nar.lightning.sharding)
    metrics.jsonl        every validation's scores (generators)
    samples/             PNG sample grids (generators)
    tokenizer.pt         the exported tokenizer (tokenizer runs)
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ThroughputMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import RunningStage, TrainerFn

import lightning as L
from nar.errors import ConfigError, RunInterrupted
from nar.lightning.callbacks.data_position import DataPositionCallback
from nar.lightning.callbacks.progress_log import LogProgressCallback
from nar.lightning.callbacks.run_guard import (
    PreemptionCallback,
    RunConfigCallback,
    ValidationStopped,
    stop_asked,
)
from nar.lightning.checkpointing import AtomicCheckpointIO
from nar.locks import FolderLock
from nar.runs.config import RunConfig, TrainConfig
from nar.runs.folder import CHECKPOINTS, read_checkpoint_info

log = logging.getLogger(__name__)

TENSORBOARD = "tb"
LAST = "last.ckpt"


def resolve_accelerator(accelerator: str) -> str:
    """``auto`` → ``gpu`` when CUDA is available, else ``cpu``."""
    if accelerator == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return accelerator


def strategy_for(run: RunConfig, block_types: set[type] | None = None) -> Any:
    """The Lightning strategy of ``trainer.strategy``: DDP (gloo on CPU, NCCL on GPUs) when more than one
    process runs; ``fsdp``: FSDP2 over every process, each of ``block_types`` its own unit, sharded
    checkpoints (:class:`~nar.lightning.sharding.ShardedStrategy`, also with one process, so that any number
    of processes resumes a sharded run)."""
    t = run.trainer
    if t.strategy == "fsdp":
        from nar.lightning.sharding import ShardedStrategy, fsdp_mixed_precision

        if t.precision == "16-mixed" and resolve_accelerator(t.accelerator) != "cpu":
            raise ConfigError("fsdp trains in bf16-mixed, bf16-true or 32-true (Lightning's FSDP2 has no fp16 "
                              "loss scaling)", key="trainer.precision")
        return ShardedStrategy(t.world_size, block_types or (), mp_policy=fsdp_mixed_precision(t))
    if t.strategy == "ddp" or (t.strategy == "auto" and t.world_size > 1):
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(process_group_backend=None, find_unused_parameters=False)
    return "auto"


def build_trainer(run: RunConfig, callbacks: list | None = None, *, grad_clip: float = 0.0,
                  strategy: Any = None, logger: bool = True, enable_progress_bar: bool | None = None) -> L.Trainer:
    """The trainer of ``run``: its accelerator, precision (CPU runs fall back to full precision), strategy,
    step budget, validation and checkpoint cadence, TensorBoard logger and learning-rate monitor.

    ``grad_clip`` > 0 clips gradients by global norm (automatic optimisation only); ``strategy``
    overrides :func:`strategy_for` (e.g. DDP with unused parameters for a GAN's idle discriminator).
    """
    t = run.trainer
    run_dir = run.run_dir
    accelerator = resolve_accelerator(t.accelerator)
    precision = t.precision
    if accelerator == "cpu" and precision in ("bf16-mixed", "16-mixed"):
        log.info("CPU run: precision %s -> 32-true", precision)
        precision = "32-true"
    callbacks = [
        RunConfigCallback(run),
        # every checkpoint holds the stream position and RNG: resume to the exact sample; first, so that the RNG is
        # restored before the preemption guard runs a validation a stop left owed, as an unbroken run runs it
        DataPositionCallback(),
        PreemptionCallback(run_dir / CHECKPOINTS / LAST),
        *(callbacks or []),
        *retention(run),
    ]
    if t.throughput and isinstance(run, TrainConfig):  # generator runs: their module counts FLOPs per batch
        # rates over a window of steps: the first values appear after `window_size` steps
        callbacks.append(TrainThroughputMonitor(batch_size_fn=_batch_size, length_fn=_tokens_in_batch,
                                                window_size=max(2, min(50, 2 * t.log_every))))
    show_bar = enable_progress_bar if enable_progress_bar is not None else os.isatty(2)
    if not show_bar:  # a log file: progress as a line every 30 s instead of a bar flushed at exit
        callbacks.append(LogProgressCallback())
    loggers = []
    if logger:
        loggers.append(RunTensorBoardLogger(str(run_dir), name=TENSORBOARD, version="", default_hp_metric=False))
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    return L.Trainer(
        accelerator=accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=strategy if strategy is not None else strategy_for(run),
        precision=precision, max_steps=t.max_steps, max_epochs=-1,
        # Lightning counts val_check_interval in batches; val_every is in optimizer steps (accumulate batches each)
        val_check_interval=t.val_every * t.accumulate if t.val_every else None,
        check_val_every_n_epoch=None if t.val_every else 10**9,
        # every batch of the validation loader: it holds only data.limit_val_samples, spread over the split (a limit
        # here would take a loader's first batches, a class-sorted split's first classes; nar.lightning.data)
        num_sanity_val_steps=0, limit_val_batches=1.0,
        gradient_clip_val=grad_clip or None, gradient_clip_algorithm="norm",
        accumulate_grad_batches=t.accumulate, log_every_n_steps=t.log_every, logger=loggers or False,
        callbacks=callbacks, plugins=[AtomicCheckpointIO()], default_root_dir=str(run_dir),
        use_distributed_sampler=False,
        enable_progress_bar=show_bar,
        enable_model_summary=False, deterministic=t.deterministic or None,
        profiler=(_profiler(t.profiler, run_dir) if t.profiler else None),
    )


def _finished_run(ckpt_path: str | os.PathLike[str]) -> bool:
    """Whether the checkpoint is of a run that reached its own ``trainer.max_steps`` (its hyper-parameters; a
    checkpoint without them counts as unfinished)."""
    try:
        obj = torch.load(ckpt_path, map_location="cpu", mmap=True, weights_only=False)
        max_steps = obj["hyper_parameters"]["cfg"]["trainer"]["max_steps"]
        return isinstance(max_steps, int) and 0 < max_steps <= int(obj["global_step"])
    except Exception:  # noqa: BLE001 - an FSDP manifest, an older file: purge as for any unfinished run
        return False


class RunTensorBoardLogger(TensorBoardLogger):
    """Lightning's TensorBoard logger, told the step a run resumes from (:meth:`resume_at`)."""

    def resume_at(self, step: int) -> None:
        """Hide the events of steps >= ``step`` that an earlier process wrote (a run killed after its last
        checkpoint logged steps this run logs again): the writer starts with TensorBoard's restart marker
        (``purge_step``), which TensorBoard and an ``EventAccumulator`` over the folder honour. The first event a
        resumed run logs is at ``step`` (Lightning's logging step counts the steps before the current one)."""
        if self._experiment is not None:  # too late for the marker: the run goes on, its log may repeat steps
            log.warning("TensorBoard: the event writer of %s is already open; events of steps >= %d that an earlier "
                        "process wrote stay beside this run's", self.log_dir, step)
            return
        self._kwargs["purge_step"] = int(step)


def take_optimizer_settings(optimizer: torch.optim.Optimizer, settings: Sequence[dict[str, Any]],
                            scheduler: torch.optim.lr_scheduler.LambdaLR | None = None) -> list[str]:
    """Give each parameter group of ``optimizer`` the hyper-parameters of ``settings`` (one dict per group, keys
    among ``lr``, ``weight_decay``, ``betas``, ``eps``) and return what changed, as ``"key old -> new"``.

    A resumed run's optimizer and scheduler come back from the checkpoint with the values of the run that saved
    them, whatever the config says now; this puts the configured ones back. ``lr`` is a group's base rate (the
    scheduler's ``base_lrs``, the group's ``initial_lr``); the group's current rate becomes base x the scheduler's
    lambda at its step (the lambdas are this run's: a checkpoint stores none of them), so the next step already
    trains at this run's schedule (a cosine run given more ``trainer.max_steps`` included). Settings that did not
    change leave every value as it was, bit for bit (the product is the one ``LambdaLR`` computes).
    """
    changed: list[str] = []

    def note(what: str, old: Any, new: Any) -> None:
        text = f"{what} {_show(old)} -> {_show(new)}"
        if text not in changed:
            changed.append(text)

    for i, (group, wanted) in enumerate(zip(optimizer.param_groups, settings, strict=True)):
        for key in ("weight_decay", "betas", "eps"):
            if key not in wanted:
                continue
            old, new = group[key], wanted[key]
            if key == "betas":
                old, new = tuple(float(b) for b in old), tuple(float(b) for b in new)
            if old != new:
                note(key, old, new)
                group[key] = new
        if "lr" not in wanted:
            continue
        base = float(wanted["lr"])
        old_base = scheduler.base_lrs[i] if scheduler is not None else group.get("initial_lr", group["lr"])
        if old_base != base:
            note("lr", old_base, base)
        if scheduler is not None:
            scheduler.base_lrs[i] = base
        if "initial_lr" in group:
            group["initial_lr"] = base
        rate = base * scheduler.lr_lambdas[i](scheduler.last_epoch) if scheduler is not None else base
        if group["lr"] != rate:
            note("current lr", group["lr"], rate)
            group["lr"] = rate
    if scheduler is not None:
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports
    return changed


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(f"{float(v):g}" for v in value) + ")"
    return f"{float(value):g}"


def retention(run: RunConfig) -> list[ModelCheckpoint]:
    """The checkpoint callbacks of ``trainer.keep_*`` (see :class:`~nar.runs.TrainerConfig`). None of them makes
    ``-v1`` copies: a resumed (or copied) run keeps writing the same names, and resume reads by content."""
    t = run.trainer
    folder = run.run_dir / CHECKPOINTS
    common = dict(dirpath=folder, auto_insert_metric_name=False, enable_version_counter=False)
    out = [ModelCheckpoint(filename="step_{step:07d}", every_n_train_steps=t.ckpt_every or t.max_steps,
                           save_top_k=t.keep_recent, monitor="step", mode="max", save_last=True, **common)]
    if t.keep_every:
        out.append(ModelCheckpoint(filename="keep_{step:07d}", every_n_train_steps=t.keep_every, save_top_k=-1,
                                   **common))
    if t.keep_best:
        out.append(BestCheckpoint(filename="best_{step:07d}", monitor=t.best_metric, mode=run.best_mode(),
                                  save_top_k=t.keep_best, save_on_train_epoch_end=False, **common))
    return out


class BestCheckpoint(ModelCheckpoint):
    """The ``trainer.keep_best`` best checkpoints by ``trainer.best_metric``, ranked only at validations that
    logged it.

    A decoding score (``val/fid``…) is logged at decoding validations only (``eval.decode_every``); Lightning's
    callback would raise at a validation without it, ending the run, and the decoding callback drops its
    previous scores when a validation starts, so a stale score never ranks another step. The first validation
    without the key is noted in the log; a key that the config check (:meth:`RunConfig.best_mode`) allowed but
    that the run never logged (a metric dropped by ``allow_degraded``) gets a warning when training ends, and the
    run goes on without best checkpoints.
    """

    _seen = False  # the monitored key was logged at some validation of this process
    _told = False
    # The validation a run ends with (trainer.validate after fit, when the last step was not validated) ranks
    # too; Lightning ranks only while fitting. Its file holds no optimizer states: last.ckpt of the step does.
    final_validation = False

    def _should_skip_saving_checkpoint(self, trainer: L.Trainer) -> bool:
        if self.final_validation and trainer.state.fn == TrainerFn.VALIDATING:
            return (bool(trainer.fast_dev_run) or trainer.sanity_checking
                    or self._last_global_step_saved == trainer.global_step)
        return super()._should_skip_saving_checkpoint(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor in trainer.callback_metrics:
            self._seen = self._seen or not trainer.sanity_checking
            super().on_validation_end(trainer, pl_module)
            return
        if not self._told and trainer.is_global_zero:
            log.info("step %d: this validation logged no %s; best checkpoints rank only validations that log it",
                     trainer.global_step, self.monitor)
            self._told = True

    def finish(self, trainer: L.Trainer) -> None:
        """At the end of a run (after its final validation): warn when no validation logged the key."""
        if not self._seen and trainer.is_global_zero and trainer.global_step >= trainer.max_steps:
            logged = sorted(k for k in trainer.callback_metrics if k.startswith("val/"))
            log.warning("no best checkpoint: no validation of this run logged trainer.best_metric=%s (they logged "
                        "%s)", self.monitor, logged)


def validate_or_interrupt(trainer: L.Trainer, module: L.LightningModule, on_stop: str, **validate_kwargs: Any) -> None:
    """``trainer.validate``; SIGTERM or SIGINT during it becomes :class:`RunInterrupted` with ``on_stop`` (what is
    kept and how to go on) instead of Lightning's ``SIGTERMException`` (a ``SystemExit`` whose exit status is 0)
    or its KeyboardInterrupt exit 1 (:class:`~nar.lightning.callbacks.run_guard.PreemptionCallback` takes SIGINT
    during the validation)."""
    try:
        trainer.validate(module, verbose=False, **validate_kwargs)
    except (SystemExit, ValidationStopped):
        if stop_asked(trainer) is None:
            raise
    signal_name = stop_asked(trainer)
    if signal_name is not None:  # raised out of the loss batches, or the decoding stopped after a chunk
        raise RunInterrupted(f"stopped by {signal_name} during a validation at step {trainer.global_step}; {on_stop}")


def finish_run(trainer: L.Trainer, module: L.LightningModule, last: Any, validate: bool,
               **validate_kwargs: Any) -> None:
    """What a run does after ``fit``: the checkpoint of its last step at ``last`` (``trainer.ckpt_every``: always
    one at the end); with ``validate``, the final validation (ranked by the best checkpoints too; SIGTERM in it is
    an interruption and ``--resume`` from ``last`` validates the step again); then the best checkpoints' end of
    run check."""
    trainer.save_checkpoint(last)
    best = [cb for cb in trainer.callbacks if isinstance(cb, BestCheckpoint)]
    if validate:
        for cb in best:
            cb.final_validation = True
        validate_or_interrupt(trainer, module, f"checkpoint {last}; continue with --resume", **validate_kwargs)
    for cb in best:
        cb.finish(trainer)


def disk_estimate(run: RunConfig, parameters: int, ema: bool) -> str:
    """One line: the size of a checkpoint (fp32 weights, EMA copy, two Adam moments) and of all kept at once."""
    each = parameters * 4 * (3 + (1 if ema else 0))
    kept = run.trainer.checkpoints_kept()
    return (f"checkpoints: ~{each / 1e9:.2f} GB each ({parameters / 1e6:.1f}M parameters x 4 bytes x "
            f"{3 + int(ema)}: weights{', EMA' if ema else ''}, Adam moments), up to {kept} kept (last + "
            f"{run.trainer.keep_recent} recent + permanent every {run.trainer.keep_every or '-'} + "
            f"{run.trainer.keep_best} best) = ~{each * kept / 1e9:.1f} GB")


def _profiler(kind: str, run_dir: Any) -> Any:
    from lightning.pytorch import profilers

    cls = {"simple": profilers.SimpleProfiler, "advanced": profilers.AdvancedProfiler,
           "pytorch": profilers.PyTorchProfiler}[kind]
    return cls(dirpath=str(run_dir), filename="profile")


class TrainThroughputMonitor(ThroughputMonitor):
    """Lightning's monitor for the training steps only: samples, tokens and FLOPs per second (MFU where the
    device's peak is known). ``flops_per_batch`` counts a training step, so validation batches (a loss forward,
    then frontier decoding) are not rated; their wall time is taken out of the training clock instead, as the
    parent does, so a validation does not sink the training rate. ``trainer.validate`` runs rate nothing."""

    def on_validation_start(self, trainer: L.Trainer, *_: Any) -> None:
        self._val_started = time.perf_counter()

    def on_validation_batch_end(self, *_: Any, **__: Any) -> None:
        pass

    def on_validation_end(self, trainer: L.Trainer, *_: Any) -> None:
        started = getattr(self, "_val_started", None)
        if started is not None and trainer.state.fn == TrainerFn.FITTING and RunningStage.TRAINING in self._t0s:
            self._t0s[RunningStage.TRAINING] += time.perf_counter() - started
        self._val_started = None

    def on_test_start(self, *_: Any) -> None:
        pass

    def on_test_batch_end(self, *_: Any, **__: Any) -> None:
        pass

    def on_predict_start(self, *_: Any) -> None:
        pass

    def on_predict_batch_end(self, *_: Any, **__: Any) -> None:
        pass


def _first_tensor(batch: Any) -> torch.Tensor:
    """The batch's token grids (or pixels): the dict entry every generator/tokenizer batch has."""
    if isinstance(batch, dict):
        for key in ("tokens", "image", "video"):
            if isinstance(batch.get(key), torch.Tensor):
                return batch[key]
        raise KeyError(f"a training batch without tokens, image or video (keys: {sorted(batch)})")
    return batch


def _batch_size(batch: Any) -> int:
    return int(_first_tensor(batch).shape[0])


def _tokens_in_batch(batch: Any) -> int:
    """Tokens in the whole batch (Lightning's ``length_fn`` sums it across batches, and needs it >= samples)."""
    value = _first_tensor(batch)
    return int(value.numel()) if isinstance(batch, dict) and "tokens" in batch else int(value.shape[0])


def prepare_process(run: RunConfig) -> None:
    """Per-process set-up every run does first: CPU threads and the seed (workers included)."""
    if run.trainer.threads:
        torch.set_num_threads(run.trainer.threads)
    L.seed_everything(run.trainer.seed, workers=True, verbose=False)


@contextlib.contextmanager
def run_folder_lock(run: RunConfig) -> Iterator[None]:
    """Hold ``run.run_dir`` exclusively for this job (rank 0 takes the lock; the other ranks are its own)."""
    if rank_zero_only.rank != 0:
        yield
        return
    with FolderLock(run.run_dir, f"training {run.name}"):
        yield


def fit_or_interrupt(trainer: L.Trainer, module: L.LightningModule, **fit_kwargs: Any) -> None:
    """``trainer.fit``; a stop asked by SIGINT/SIGTERM (checkpoint saved) becomes :class:`RunInterrupted`. The
    stop checkpoint is saved by :class:`PreemptionCallback` (at a step boundary, or as a validation it cut short
    ends); here only when the signal came after the last validation. Resuming (``ckpt_path``) a run that had not
    finished, the TensorBoard events of its checkpoint's step and later that an earlier process wrote are hidden
    (:meth:`RunTensorBoardLogger.resume_at`)."""
    guard = PreemptionCallback.of(trainer)
    # events a killed process wrote past the checkpoint are logged again; a run that had finished wrote nothing past
    # it, but its final validation at its last step, which a purge would hide and nothing logs again
    if fit_kwargs.get("ckpt_path") and not _finished_run(fit_kwargs["ckpt_path"]):
        step = read_checkpoint_info(fit_kwargs["ckpt_path"]).step
        for logger in trainer.loggers:
            if isinstance(logger, RunTensorBoardLogger):
                logger.resume_at(step)
    try:
        trainer.fit(module, **fit_kwargs)
    except SystemExit:  # Lightning's own SIGTERM stop, raised after our checkpoint was saved
        if guard.saved is None:
            raise
    if guard.signal_name is not None and guard.saved is None:  # no step was left to save at
        trainer.save_checkpoint(guard.last_path)
        guard.saved = guard.last_path
    if guard.saved is not None:
        raise RunInterrupted(f"stopped by {guard.signal_name} at step {trainer.global_step}; checkpoint saved to "
                             f"{guard.saved}; continue with --resume")
