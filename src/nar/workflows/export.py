"""``nar export``: one consolidated generator file from a run checkpoint (a ``.ckpt`` or a sharded manifest).

Ours (default): ``{"nar_export": {...}, "hyper_parameters": {"cfg": run config}, "state_dict": {"model.<key>": ...}}``
with one set of weights (the EMA copy by default) under ``model.``; :func:`nar.model.io.load_generator` reads it
and the run config in it, so ``nar sample --ckpt`` and ``nar evaluate --ckpt`` take it like the run's own
checkpoint. ``official=True``: ``{"model": weights}`` under the official key names (NAR_SPEC §5), for the official
code or ``nar sample --official`` / ``nar evaluate --config`` (official files keep no config).

A sharded checkpoint is read on this one process, no process group: only the chosen set of weights
(4 bytes per parameter; the official renaming copies them once more), never the optimizer state. The file is
written atomically (:mod:`nar.atomic`).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from nar.atomic import write_with
from nar.checkpoints import load_strict
from nar.config import from_dict
from nar.errors import CheckpointError, ConfigError
from nar.model.config import NARConfig
from nar.model.io import (
    EXPORT_MARK,
    PREFIXES,
    is_run_checkpoint,
    read_generator_file,
    run_weights,
    sharded_folder,
)
from nar.model.nar import NARModel
from nar.model.official import to_official_state_dict

log = logging.getLogger(__name__)


def export_generator(ckpt: str | Path, out: str | Path, official: bool = False, ema: bool | None = None,
                     force: bool = False) -> dict[str, Any]:
    """Write the generator weights of the run checkpoint ``ckpt`` to ``out`` as one file (see module doc).

    ``ema``: ``None`` takes the EMA copy when the run kept one, else the trained weights; ``True`` requires
    the EMA copy; ``False`` takes the trained weights. Returns a summary (``out``, ``weights``, ``format``,
    ``parameters``, ``global_step``, ``sharded``). An existing ``out`` is replaced only with ``force``, and never
    when it is ``ckpt`` itself.

    Raises:
        ConfigError: ``ckpt`` is not one of our run checkpoints, ``ema=True`` for a run without EMA, ``out`` is
            ``ckpt`` or (without ``force``) an existing file.
        CheckpointError: unreadable, incomplete (a shard missing) or weights that do not fit the stored config.
    """
    ckpt, out = Path(ckpt), Path(out)
    check_out(ckpt, out, force)
    obj = read_generator_file(ckpt)
    if not is_run_checkpoint(obj):
        raise ConfigError(f"{ckpt} is not a nar run checkpoint (an official .pt is already one file)", key="--ckpt")
    run = (obj.get("hyper_parameters") or {}).get("cfg")
    if not run:
        raise CheckpointError(f"{ckpt}: no run config stored; it cannot be exported with its model settings")
    from nar.runs.folder import resolve_stored_paths, run_dir_of

    # an exported file sits outside checkpoints/, so the folder its run was made in could not be told later
    run = resolve_stored_paths(run_dir_of(ckpt), dict(run))
    weights, prefix = run_weights(obj, ckpt, prefer_ema=ema is not False)
    if ema and prefix != PREFIXES[0]:
        raise ConfigError(f"{ckpt} holds no EMA weights (the run had ema.enabled=false); export with --no-ema",
                          key="--ema")
    cfg = from_dict(NARConfig, run.get("model", {}))
    model = _model_of(weights, cfg, f"{ckpt} ({prefix[:-1]} weights)")
    which = "ema" if prefix == PREFIXES[0] else "model"
    step = obj.get("global_step", (obj.get(EXPORT_MARK) or {}).get("global_step"))
    info = {"weights": which, "source": str(ckpt), "global_step": step, "format": "official" if official else "nar"}
    if official:
        payload: dict[str, Any] = {"model": to_official_state_dict(model)}
    else:
        payload = {EXPORT_MARK: info, "hyper_parameters": {"cfg": run},
                   "state_dict": {PREFIXES[1] + k: v for k, v in weights.items()}}
    write_with(out, lambda p: torch.save(payload, p))
    n = sum(v.numel() for v in weights.values())
    log.info("exported %s weights of %s (step %s, %.2fM parameters) to %s%s", which, ckpt, step, n / 1e6, out,
             " (official key names)" if official else "")
    return {**info, "out": out, "parameters": n, "sharded": sharded_folder(obj, ckpt) is not None}


def check_out(ckpt: Path, out: Path, force: bool) -> None:
    """Refuse an ``out`` that would replace the run checkpoint (its optimizer state and config lost for good),
    a folder, or (without ``force``) another existing file."""
    if out.resolve() == ckpt.resolve() or (out.exists() and ckpt.exists() and out.samefile(ckpt)):
        raise ConfigError(f"{out} is the checkpoint being exported ({ckpt}); choose another file", key="--out")
    if out.is_dir():
        raise ConfigError(f"{out} is a folder; give the file to write", key="--out")
    if out.exists() and not force:
        raise ConfigError(f"{out} exists; add --force to replace it", key="--out")


def _model_of(weights: dict[str, torch.Tensor], cfg: NARConfig, label: str) -> NARModel:
    """A ``NARModel(cfg)`` whose parameters are ``weights`` themselves (no copy), after a strict key/shape check."""
    with torch.device("meta"):
        model = NARModel(cfg)
    with warnings.catch_warnings():  # copying into meta tensors does nothing, as intended: only the diff counts
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter")
        load_strict(model, weights, source=label)  # missing/unexpected keys and shapes, readable
    model.load_state_dict(weights, strict=True, assign=True)
    return model
