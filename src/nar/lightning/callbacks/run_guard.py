"""Keeping a run's work when it is stopped: preemption signals, and its config written only once it runs.

:class:`PreemptionCallback`: the first SIGINT or SIGTERM (Ctrl-C, a cluster's preemption) asks the run to
stop at the next step boundary; the callback then saves a resumable checkpoint (``last.ckpt``, through the
atomic checkpoint writer) and stops, and :func:`nar.workflows.train.fit` exits with
:data:`~nar.errors.EXIT_INTERRUPTED`. A second SIGINT aborts at once. Under DDP every rank takes the same
decision (one boolean all-reduce per step), so all of them save and stop together. A signal that arrives during
a decoding validation ends that validation after its current chunk (the frontier-decoding callback asks
:attr:`PreemptionCallback.signal_name`), so the checkpoint does not wait for the whole validation.

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

import lightning as L
from nar.atomic import write_text
from nar.config import to_yaml

log = logging.getLogger(__name__)


class PreemptionCallback(Callback):
    """Save and stop at the next step boundary after SIGINT/SIGTERM (see the module docstring)."""

    def __init__(self, last_path: str | Path) -> None:
        super().__init__()
        self.last_path = Path(last_path)
        self.signal_name: str | None = None  # set once a stop was asked
        self.saved: Path | None = None
        self._previous: dict[int, Any] = {}
        self._step_seen = -1

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
        if self.signal_name is None:
            log.warning("%s: saving a checkpoint at the next step boundary, then stopping (Ctrl-C again to abort)",
                        name)
        self.signal_name = name

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After Lightning has installed its own SIGTERM handler (which would stop the loop without saving,
        # exit code 0): ours replaces it for the run and Lightning's is restored at the end.
        self._step_seen = trainer.global_step
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.restore()

    def restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    # --- the stop --------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        asked = self.signal_name is not None
        if trainer.world_size > 1:  # every rank stops at the same step, whichever got the signal
            asked = trainer.strategy.reduce_boolean_decision(asked, all=False)
        # A step boundary is a batch whose optimizer step ran: under trainer.accumulate the gradients of the
        # micro-batches before it are in no checkpoint, while the data position already is past them.
        stepped, self._step_seen = trainer.global_step != self._step_seen, trainer.global_step
        if not asked or self.saved is not None or not stepped:
            return
        self.signal_name = self.signal_name or "a signal on another rank"
        trainer.save_checkpoint(self.last_path)
        self.saved = self.last_path
        trainer.should_stop = True
        if trainer.is_global_zero:
            log.warning("stopped by %s at step %d; resumable checkpoint %s", self.signal_name, trainer.global_step,
                        self.last_path)


class RunConfigCallback(Callback):
    """Writes ``<run>/config.yaml`` (rank 0) when training starts, after any resumed state has loaded."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            write_text(Path(self.cfg.run_dir) / "config.yaml", to_yaml(self.cfg))
