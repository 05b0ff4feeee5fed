"""Strict state-dict loading with a readable diff, shared by every model in the package."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nar.errors import CheckpointError

# Containers the official training scripts wrap weights in, most preferred first.
WEIGHT_CONTAINER_KEYS = ("model", "ema", "module", "state_dict")


def read_checkpoint(path: str | Path, prefer: str | None = None) -> dict[str, torch.Tensor]:
    """Load ``path`` on CPU and return the flat state dict inside it.

    Accepts a raw state dict or one nested under ``"model"``, ``"ema"``, ``"module"`` or ``"state_dict"``
    (``prefer`` picks one when several are present). A ``module.`` prefix left by DDP is removed.
    """
    return unwrap_state_dict(load_file(path), prefer=prefer, source=str(path))


def load_file(path: str | Path, what: str = "checkpoint", map_location: str | torch.device = "cpu",
              mmap: bool = False) -> Any:
    """``torch.load`` a checkpoint file, with a :class:`CheckpointError` naming it when missing or unreadable.
    ``mmap``: tensors memory-mapped, only the pages read are loaded (a file in torch's legacy pre-zip format cannot
    be mapped and is read whole)."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location=map_location, mmap=mmap and zipfile.is_zipfile(path), weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file
        raise CheckpointError(f"cannot read {what} {path}: {err}") from err


def unwrap_state_dict(obj: Any, prefer: str | None = None, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the state dict inside a checkpoint object (see :func:`read_checkpoint`)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict, got {type(obj).__name__}")
    keys = (prefer,) if prefer else WEIGHT_CONTAINER_KEYS
    if prefer and prefer not in obj:
        raise CheckpointError(f"{source}: no '{prefer}' entry (has {sorted(map(str, obj))[:10]})")
    for key in keys:
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{source}: no tensors found")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_strict(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str = "checkpoint",
    ignore: Iterable[str] = (),
) -> None:
    """``module.load_state_dict(state, strict=True)`` with a readable error.

    ``ignore`` lists key substrings that are dropped from ``state`` first (e.g. inference caches that
    the official code saved along with the weights). A mismatch raises :class:`CheckpointError` listing
    missing keys, unexpected keys and shape differences.
    """
    ignore = tuple(ignore)
    state = {k: v for k, v in state.items() if not any(s in k for s in ignore)}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(own[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or shapes:
        lines = [f"{source} does not match {type(module).__name__}:"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape differences", shapes)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:20]) + (" ..." if len(items) > 20 else ""))
        raise CheckpointError("\n".join(lines))
    module.load_state_dict(state, strict=True)
