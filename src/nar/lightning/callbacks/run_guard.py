"""Keeping a run's work when it is stopped: preemption signals, and its config written only once it runs.

:class:`PreemptionCallback`: the first SIGINT or SIGTERM (Ctrl-C, a cluster's preemption) asks the run to
stop at the next step boundary; the callback then saves a resumable checkpoint (``last.ckpt``, through the
atomic checkpoint writer) and stops, and :func:`nar.workflows.train.fit` exits with
:data:`~nar.errors.EXIT_INTERRUPTED`. A second SIGINT aborts at once. Under DDP every rank takes the same
decision (one boolean all-reduce per step, and at most two more per validation), so all of them save and stop
together. A signal that arrives during
a decoding validation ends that validation after its current chunk (the frontier-decoding callback asks
:attr:`PreemptionCallback.signal_name`), so the checkpoint does not wait for the whole validation.

Once a stop was asked, no validation starts (Lightning would validate because ``should_stop`` is set, and the
validation a step was due would keep a preempted job for minutes). A stop asked during a validation saves the
checkpoint of that step when the validation ends, instead of training one more step first. A validation the stop
skipped (one due at the stop step) or cut short (the generator's, whose decoding stops after a chunk: the module
then logs none of it, :meth:`PreemptionCallback.validation_cut_short`) is owed: the stop checkpoint records its
step, and the resumed run validates that step before it trains on (:meth:`PreemptionCallback.on_train_start`).

A validation outside fit (``nar evaluate``, a run's final validation) keeps Lightning's SIGTERM handler, which
stops it after the current loss batch; SIGINT gets ours there, so that Ctrl-C stops it the same way instead of
through Lightning's KeyboardInterrupt path (exit 1): after the current loss batch (one process; under DDP the
ranks go on to the decoding) or decoded chunk. :func:`nar.lightning.trainer.validate_or_interrupt` turns either
stop into :class:`~nar.errors.RunInterrupted`; a second SIGINT aborts at once there too.

:class:`RunConfigCallback`: ``config.yaml`` is written when training starts, i.e. after a resumed
checkpoint has loaded into the model, so a failed ``--resume`` (another ``model.dim``) leaves the folder's
config as it was.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

import lightning as L
from nar.atomic import write_text
from nar.config import to_yaml
from nar.errors import StopAsked

log = logging.getLogger(__name__)


class ValidationStopped(StopAsked):
    """SIGINT asked a validation outside fit to stop; raised after its current loss batch (as Lightning stops on
    SIGTERM) and turned into :class:`~nar.errors.RunInterrupted` by
    :func:`nar.lightning.trainer.validate_or_interrupt`."""


class PreemptionCallback(Callback):
    """Save and stop at the next step boundary after SIGINT/SIGTERM (see the module docstring)."""

    def __init__(self, last_path: str | Path) -> None:
        super().__init__()
        self.last_path = Path(last_path)
        self.signal_name: str | None = None  # set once a stop was asked
        self.saved: Path | None = None
        self._previous: dict[int, Any] = {}
        self._step_seen = -1
        self._validating = False  # in a validation outside fit, with our SIGINT handler
        self._fit_validation = False  # in a validation while fitting
        self._first_batch = False  # the next training batch is the first of this fit
        # the step whose validation a stop skipped or cut short (-1: none): saved in the stop checkpoint, and
        # validated first by the run that resumes it
        self.owed_validation = -1

    @staticmethod
    def of(trainer: L.Trainer) -> PreemptionCallback | None:
        """The trainer's preemption callback (every trainer of :func:`nar.lightning.trainer.build_trainer` has
        one), or None."""
        return next((cb for cb in trainer.callbacks if isinstance(cb, PreemptionCallback)), None)

    # --- signal handling (main thread only) ------------------------------------------------------
    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None and signum == signal.SIGINT:
            log.warning("second SIGINT: aborting without saving")
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        if self.signal_name is None and self._validating:
            log.warning("%s: stopping the validation after its current batch or chunk (Ctrl-C again to abort)",
                        name)
        elif self.signal_name is None and self._fit_validation:
            log.warning("%s: saving a checkpoint of this step once the validation stops, then stopping (Ctrl-C "
                        "again to abort)", name)
        elif self.signal_name is None:
            log.warning("%s: saving a checkpoint at the next step boundary, then stopping (Ctrl-C again to abort)",
                        name)
        self.signal_name = name

    def _install(self, signums: tuple[int, ...]) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in signums:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After Lightning has installed its own SIGTERM handler (which would stop the loop without saving,
        # exit code 0): ours replaces it for the run and Lightning's is restored at the end.
        self._step_seen = trainer.global_step
        self._install((signal.SIGINT, signal.SIGTERM))
        self._first_batch = True
        owed, self.owed_validation = self.owed_validation, -1
        if owed == trainer.global_step:  # after the restore of the checkpoint, before the next step
            if trainer.is_global_zero:
                log.info("step %d: validating it first (the run that saved this checkpoint was stopped before its "
                         "validation ended)", owed)
            _validate_now(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.restore()

    # A validation outside fit: SIGTERM stays Lightning's (it stops after the current loss batch, and
    # validate_or_interrupt reads trainer.received_sigterm); SIGINT, which Lightning turns into exit 1, is ours.
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._validating = True
            self._install((signal.SIGINT,))
        elif trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._fit_validation = True

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        # One process stops after its current loss batch, as Lightning does on SIGTERM. Under DDP the ranks go on
        # to the decoding, whose chunks they stop after together (a rank leaving alone would hang the others).
        if self._validating and self.signal_name is not None and trainer.world_size == 1:
            raise ValidationStopped(self.signal_name)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._validating:
            self._validating = False
            self.restore()
        if not self._fit_validation:
            return
        self._fit_validation = False
        # A stop asked during this validation: the checkpoint of this step now, not after one more training step.
        if self.saved is None and self._asked(trainer):
            self._stop(trainer, "during the validation of")

    def validation_cut_short(self, trainer: L.Trainer) -> bool:
        """Whether a stop was asked during this validation while fitting (the ranks decide together), asked by a
        module as its validation ends. If so the validation counts for nothing: the module logs none of it, the
        scores of an earlier validation leave the callback metrics (the best checkpoints and ``metrics.jsonl`` would
        take them for this step's), and the stop checkpoint records the step, which the resumed run validates first.
        """
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking or not self._asked(trainer):
            return False
        self.owed_validation = trainer.global_step
        for key in [k for k in trainer.callback_metrics if k.startswith("val/")]:
            trainer.callback_metrics.pop(key, None)
        return True

    def _asked(self, trainer: L.Trainer) -> bool:
        """Whether a stop was asked on any rank (one boolean all-reduce under DDP: every rank must call this)."""
        asked = self.signal_name is not None
        if trainer.world_size > 1:
            asked = trainer.strategy.reduce_boolean_decision(asked, all=False)
        if asked:
            self.signal_name = self.signal_name or "a signal on another rank"
        return asked

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._validating = False
        self.restore()

    def restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if not self._first_batch:
            return
        self._first_batch = False
        # Lightning's logging step (its count of the steps before this one, the x of TensorBoard) comes back one too
        # far from a checkpoint saved after a step's validation or at the end of fit (last.ckpt) when that step was a
        # validation step: the resumed run would leave a hole at the resumed step and log everything one step late.
        loop = trainer.fit_loop.epoch_loop
        if loop._batches_that_stepped != trainer.global_step:
            log.debug("logging step %d -> %d (the global step) at the first batch of a resumed run",
                      loop._batches_that_stepped, trainer.global_step)
            loop._batches_that_stepped = trainer.global_step

    # --- the stop --------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        asked = self._asked(trainer)  # every rank stops at the same step, whichever got the signal
        # A step boundary is a batch whose optimizer step ran: under trainer.accumulate the gradients of the
        # micro-batches before it are in no checkpoint, while the data position already is past them.
        stepped, self._step_seen = trainer.global_step != self._step_seen, trainer.global_step
        if not asked or self.saved is not None or not stepped:
            return
        if _validation_due(trainer):
            self.owed_validation = trainer.global_step
        self._stop(trainer, "at")
        # Lightning validates after a batch that set should_stop (as early stopping wants); a preempted run must
        # not: the validation due here, if any, is the resumed run's first work.
        trainer.fit_loop.epoch_loop._skip_next_val = True

    def _stop(self, trainer: L.Trainer, where: str) -> None:
        trainer.save_checkpoint(self.last_path)
        self.saved = self.last_path
        trainer.should_stop = True
        if trainer.is_global_zero:
            then = (f"; the resumed run validates step {self.owed_validation} first"
                    if self.owed_validation == trainer.global_step else "")
            log.warning("stopped by %s %s step %d; resumable checkpoint %s%s", self.signal_name, where,
                        trainer.global_step, self.last_path, then)

    def state_dict(self) -> dict[str, Any]:
        return {"owed_validation": self.owed_validation}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.owed_validation = int(state_dict.get("owed_validation", -1))


def _validation_due(trainer: L.Trainer) -> bool:
    """Whether Lightning's schedule validates after this training batch: every ``val_check_batch`` batches of the
    run (``trainer.val_every`` steps; a run without ``val_every`` validates by epochs, i.e. never while fitting)."""
    every = trainer.val_check_batch
    if not trainer.enable_validation or trainer.check_val_every_n_epoch is not None or not every \
            or every == float("inf"):  # no validation at all (no val data, limit_val_batches=0), or by epochs
        return False
    return (trainer.fit_loop.epoch_loop.total_batch_idx + 1) % int(every) == 0


def _validate_now(trainer: L.Trainer) -> None:
    """Run the fit's validation loop now, as Lightning runs it after a training batch (``TrainingEpochLoop.
    on_advance_end``), logged at the logging step that one uses (the steps before this one)."""
    loop = trainer.fit_loop.epoch_loop
    loop.val_loop.restarting = False  # a validation of its own, not the continuation of a saved one
    first_loop_iter, logging_step = trainer._logger_connector._first_loop_iter, loop._batches_that_stepped
    loop._batches_that_stepped = trainer.global_step - 1  # as during the step's own batch (its logging step)
    trainer.validating = True
    try:
        loop.val_loop.run()
    finally:
        trainer.training = True
        trainer._logger_connector._first_loop_iter = first_loop_iter
        loop._batches_that_stepped = logging_step


def stop_asked(trainer: L.Trainer) -> str | None:
    """The signal that asked this process to stop: ``"SIGTERM"`` when Lightning's own handler took it (in
    ``trainer.validate``), else what the :class:`PreemptionCallback` took; None when no stop was asked."""
    if trainer.received_sigterm:
        return "SIGTERM"
    guard = PreemptionCallback.of(trainer)
    return guard.signal_name if guard is not None else None


class RunConfigCallback(Callback):
    """Writes ``<run>/config.yaml`` (rank 0) when training starts, after any resumed state has loaded."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            write_text(Path(self.cfg.run_dir) / "config.yaml", to_yaml(self.cfg))
