"""Resume to the exact sample: the training stream's position and the RNG states in every checkpoint.

The training stream of :mod:`nar.data` is a function of the seed, rank, DataLoader worker and epoch, and every
training batch carries ``__stream__``: per sample ``(epoch, reader, readers, draw)``, a plain list that stays on
the CPU. :class:`DataPositionCallback` notes, as each batch starts its step, how many batches of the epoch were
consumed and how many draws each reader made for them; ``state_dict`` saves that (every rank's draws) with every
rank's RNG states (torch CPU and CUDA, numpy, ``random``). On resume, ``load_state_dict`` hands the position to the
DataModule (``resume_train_stream``) before the train dataloader starts, which fast-forwards each worker past
what was consumed without reading or decoding it, and ``on_train_start`` puts the RNG states back. Every epoch
start hands the stream the position of the last batch trained on again, so the next pass continues from what was
trained, not from how many passes were begun: resumed at an epoch's last batch, Lightning begins a pass and drops
it (once or twice, depending on where the checkpoint was saved). A run killed
at any step (``kill -9`` included) and resumed from its newest checkpoint then sees exactly the batches an
uninterrupted run would have seen next; optimizer, scheduler and EMA come back with Lightning's own state.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

import lightning as L
from nar.data.readers import STREAM_KEY, ResampledShardStream, StreamPosition

log = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors, ints and lists (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)),
                                                                      int(pos), int(has_gauss), float(gauss)],
                             "python": _listify(random.getstate())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(_tuplify(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _listify(x: Any) -> Any:
    return [_listify(v) for v in x] if isinstance(x, tuple) else x


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


class DataPositionCallback(Callback):
    """Saves the training stream's position and the RNG states in every checkpoint and restores both on resume
    (see the module docstring). Needs a DataModule with ``resume_train_stream`` (every
    :class:`~nar.data.datamodules.ShardDataModule`); with another one it warns and only restores the RNG."""

    def __init__(self) -> None:
        super().__init__()
        self._trainer: L.Trainer | None = None
        self.epoch, self.batches, self.workers = 0, 0, 1
        self.draws: list[int] = [0]
        self._rng_to_restore: dict[str, Any] | None = None
        self._warned = False

    @property
    def position(self) -> dict[str, Any]:
        """This rank's position: ``{"epoch", "batches", "workers", "draws"}`` (draws per reader)."""
        return {"epoch": self.epoch, "batches": self.batches, "workers": self.workers, "draws": list(self.draws)}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer  # load_state_dict gets no trainer, and runs after this

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        # at the start of the step: a checkpoint saved by any callback at this step's end then counts this batch
        stream = batch.get(STREAM_KEY) if isinstance(batch, dict) else None
        if not stream:
            if not self._warned:
                log.warning("training batches carry no %r: the data position is not saved, a resumed run will not "
                            "continue at the exact sample", STREAM_KEY)
                self._warned = True
            return
        epoch, reader, readers, draw = max(stream, key=lambda s: s[3])
        if epoch != self.epoch or readers != self.workers:
            self.epoch, self.batches, self.workers, self.draws = int(epoch), 0, int(readers), [0] * int(readers)
        self.batches += 1
        self.draws[int(reader)] = int(draw) + 1

    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        world = trainer.world_size if trainer is not None else 1
        mine = (list(self.draws), rng_state())
        if world > 1:  # every rank calls save_checkpoint: gather each rank's draws and RNG
            gathered: list[Any] = [None] * world
            torch.distributed.all_gather_object(gathered, mine)
        else:
            gathered = [mine]
        position = StreamPosition(epoch=self.epoch, batches=self.batches, workers=self.workers, world_size=world,
                                  draws=tuple(tuple(d) for d, _ in gathered))
        return {"position": position.to_dict(), "rng": [r for _, r in gathered]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        position = StreamPosition.from_dict(state_dict["position"])
        trainer = self._trainer
        rank = trainer.global_rank if trainer is not None else 0
        world = trainer.world_size if trainer is not None else 1
        self.epoch, self.batches, self.workers = position.epoch, position.batches, position.workers
        self.draws = list(position.draws[rank]) if rank < len(position.draws) else [0] * position.workers
        rngs = state_dict.get("rng") or []
        if len(rngs) == world:
            self._rng_to_restore = rngs[rank]
        else:
            log.warning("checkpoint RNG states are for %d ranks, this run has %d: not restored", len(rngs), world)
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        if datamodule is not None and hasattr(datamodule, "resume_train_stream"):
            datamodule.resume_train_stream(position)
            log.info("data position restored: epoch %d, %d batches consumed", position.epoch, position.batches)
        else:
            log.warning("the DataModule cannot resume its training stream (no resume_train_stream): the resumed run "
                        "does not continue at the exact sample")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._rng_to_restore is not None:
            set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The next pass starts from what was trained on (normalized: a finished epoch moves on to the next one).
        # A pass begun before this hook (the fit's first) has its position already; this one is then unused.
        stream = getattr(getattr(trainer, "train_dataloader", None), "dataset", None)
        if isinstance(stream, ResampledShardStream):
            rank, world = trainer.global_rank, trainer.world_size
            draws = tuple(tuple(self.draws) if r == rank else (0,) * self.workers for r in range(world))
            stream.position = StreamPosition(epoch=self.epoch, batches=self.batches, workers=self.workers,
                                             world_size=world, draws=draws)  # other ranks' draws: theirs to keep
