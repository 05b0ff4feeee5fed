"""Loading generators: our Lightning checkpoints and the official NAR / LlamaGen ``.pt`` files, read once.

Our checkpoint (written by the training run) is a Lightning dict: the weights under ``state_dict`` with
the prefixes ``model.`` (trained) and ``ema_model.`` (the EMA copy, when the run kept one), and the run
config as a plain dict under ``hyper_parameters["cfg"]`` whose ``model`` section is a :class:`NARConfig`.
A sharded run (``trainer.strategy: fsdp``) writes a manifest instead: the same dict with an empty
``state_dict`` and a ``sharded`` entry naming its shard folder (``torch.distributed.checkpoint`` files, see
:mod:`nar.lightning.sharding`); the weights are read from that folder on one process, one set at a time.
``nar export`` writes one consolidated file, ours (the ``nar_export`` mark, the run config and one set of
weights under ``model.``) or the official key format.
An official file holds only weights (``model``/``ema``/``module``/``state_dict`` or raw, official key
names, NAR_SPEC §5): its :class:`NARConfig` is given, or inferred from the shapes with ``n_head``.
Every load is strict; a mismatch lists missing/unexpected keys and shapes. The model layer imports no
Lightning: a run config comes back as the plain dict, for the caller to type.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from nar.checkpoints import load_file, load_strict, unwrap_state_dict
from nar.errors import CheckpointError, ConfigError
from nar.model.config import NARConfig
from nar.model.nar import NARModel
from nar.model.official import config_from_official, from_official_state_dict

LIGHTNING_MARK = "pytorch-lightning_version"  # a key every Lightning checkpoint has
EXPORT_MARK = "nar_export"  # a consolidated file written by `nar export` (ours)
PREFIXES = ("ema_model.", "model.")  # the EMA copy, then the trained weights
SHARDED_KEY = "sharded"  # a manifest's entry naming its shard folder and files
SHARDS_DIR = "sharded"  # shard folders live in <run>/checkpoints/sharded/
OFFICIAL_FSDP_FILE = "consolidated.pth"  # the full weights in an official FSDP checkpoint folder


def generator_file(path: str | Path) -> Path:
    """The file holding the weights ``path`` names: ``path`` itself, or for an official FSDP checkpoint folder its
    ``consolidated.pth``."""
    path = Path(path)
    return path / OFFICIAL_FSDP_FILE if path.is_dir() and (path / OFFICIAL_FSDP_FILE).is_file() else path


def read_generator_file(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """The object stored in ``path``, memory-mapped where the file allows it (zip format): the tensors are
    read when the weights are copied into a model, not at load time. A folder holding ``consolidated.pth`` (what
    the official train_c2i_fsdp.py writes per checkpoint, beside its optimizer shards) is read as that file.

    Raises:
        CheckpointError: the file is missing or unreadable (naming it).
    """
    return load_file(generator_file(path), what="generator checkpoint", map_location=map_location, mmap=True)


def is_run_checkpoint(obj: Any) -> bool:
    """Whether ``obj`` (a loaded checkpoint) is one of ours: a Lightning checkpoint, a sharded manifest or an
    exported file."""
    return isinstance(obj, Mapping) and (LIGHTNING_MARK in obj or EXPORT_MARK in obj)


def sharded_folder(obj: Any, path: str | Path) -> Path | None:
    """The shard folder of the manifest ``obj`` (loaded from ``path``), checked complete: every file it lists is
    there with its size. ``None`` when ``obj`` is not a sharded manifest.

    Raises:
        CheckpointError: a listed file is missing or has another size (naming them).
    """
    entry = obj.get(SHARDED_KEY) if isinstance(obj, Mapping) else None
    if not entry:
        return None
    folder = Path(path).parent / entry["folder"]
    bad = []
    for name, size in entry["files"].items():
        f = folder / name
        if not f.is_file():
            bad.append(f"{name} missing")
        elif f.stat().st_size != size:
            bad.append(f"{name} has {f.stat().st_size} bytes, {size} written")
    if bad:
        raise CheckpointError(f"{path}: its shard folder {folder} is incomplete ({'; '.join(bad[:8])})")
    return folder


def read_sharded_weights(folder: str | Path, prefer_ema: bool = True) -> tuple[dict[str, torch.Tensor], str]:
    """``(weights under our key names, prefix)`` read from a shard folder on this process alone (no process
    group): the EMA copy (``ema_model.``) when ``prefer_ema`` and it is there, else the trained weights.
    Only that set is read (4 bytes per parameter), not the other one nor the optimizer state."""
    from torch.distributed.checkpoint import FileSystemReader, load
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = FileSystemReader(str(folder))
    stored = {k: m for k, m in reader.read_metadata().state_dict_metadata.items()
              if k.startswith("state_dict.") and isinstance(m, TensorStorageMetadata)}
    ema = any(k.startswith("state_dict." + PREFIXES[0]) for k in stored)
    prefix = PREFIXES[0] if prefer_ema and ema else PREFIXES[1]
    wanted = {k[len("state_dict."):]: torch.empty(m.size, dtype=m.properties.dtype) for k, m in stored.items()
              if k.startswith("state_dict." + prefix)}
    if not wanted:
        raise CheckpointError(f"{folder}: no {prefix[:-1]} weights in this shard folder")
    with warnings.catch_warnings():  # "assuming ... a single process": exactly the intent
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled")
        load({"state_dict": wanted}, storage_reader=reader, no_dist=True)
    return {k[len(prefix):]: v for k, v in wanted.items()}, prefix


def run_config_of(obj: Any) -> dict[str, Any] | None:
    """The run config stored in an already loaded checkpoint object (:func:`stored_run_config` of a file)."""
    if not is_run_checkpoint(obj):
        return None
    stored = (obj.get("hyper_parameters") or {}).get("cfg")
    if not stored:
        return None
    if not isinstance(stored, Mapping):  # an OmegaConf node, should a writer have stored one
        from omegaconf import OmegaConf

        stored = OmegaConf.to_container(stored, resolve=True)
    return dict(stored)


def stored_run_config(path: str | Path) -> dict[str, Any] | None:
    """The run config (a plain dict with ``model``, ``tokenizer``, ``sampling``, ``text`` … sections) stored in
    one of our checkpoints; ``None`` for official files and checkpoints without one. Type a section with
    :func:`nar.config.from_dict`, e.g. ``from_dict(SamplingConfig, run["sampling"])``."""
    return run_config_of(read_generator_file(path))


def _weights(obj: Any, path: str | Path, cfg: NARConfig | None, prefer_ema: bool, n_head: int | None,
             overrides: dict[str, Any], check_given: bool = True) -> tuple[dict[str, torch.Tensor], NARConfig, str]:
    """``(state dict under our key names, the config it belongs to, a label for load errors)`` of a loaded file.
    ``check_given``: a given ``cfg`` must agree with one stored in the file (:func:`_check_given`)."""
    if is_run_checkpoint(obj):
        from nar.config import from_dict  # OmegaConf only when a run config is read

        if overrides:  # they describe official files; silently ignored here they would mislead
            raise ConfigError(f"overrides ({', '.join(overrides)}) describe official files; {path} stores its "
                              "own model config")
        stored = (run_config_of(obj) or {}).get("model")
        # A run config without a model section stores no model: the caller's cfg, not NARConfig's defaults.
        model_cfg = from_dict(NARConfig, stored) if stored else cfg
        if stored and cfg is not None and check_given:
            _check_given(cfg, model_cfg, path)
        if model_cfg is None:
            raise CheckpointError(f"{path}: no run config stored; pass --config")
        weights, prefix = run_weights(obj, path, prefer_ema)
        return weights, model_cfg, f"{path} ({prefix[:-1]} weights)"
    if cfg is None and n_head is None:
        raise CheckpointError(f"{path} is not a nar Lightning checkpoint; official checkpoints need a config (--config)")
    if cfg is not None and overrides:
        raise ConfigError(f"overrides ({', '.join(overrides)}) apply to a config inferred with n_head; with a "
                          "config given, change it instead")
    prefer = "ema" if prefer_ema and isinstance(obj, Mapping) and "ema" in obj else None  # the official EMA weights
    state = unwrap_state_dict(obj, prefer=prefer, source=str(path))
    cfg = cfg if cfg is not None else config_from_official(state, n_head, source=str(path), **overrides)
    return from_official_state_dict(state, cfg), cfg, str(path)


# Fields a given config may differ in from the one a checkpoint stores: they shape training, not what the weights
# compute (the grid too: rotary positions hold no grid-sized weights, and the stored config is the one used).
_FREE_FIELDS = frozenset({"preset", "grid", "token_dropout", "attn_dropout", "resid_dropout", "ffn_dropout",
                          "drop_path", "initializer_range"})


def _meaning(cfg: NARConfig) -> dict[str, Any]:
    """The fields of ``cfg`` that decide what its weights compute, in one spelling each (``n_kv_head`` equal to
    ``n_head`` is None, ``head_blocks=None`` the official layout, a shared head's axis counted from 0), fields
    the model does not use left out (the other condition's, ``shared_axis`` of per-axis heads, ``rope_base`` of
    absolute positions, ``head_layout`` with one branch of head blocks or none)."""
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in _FREE_FIELDS}
    fields.update(n_kv_head=None if cfg.kv_heads == cfg.n_head else cfg.kv_heads, head_blocks=cfg.blocks_per_axis,
                  axes=len(cfg.grid), ffn_hidden=cfg.ffn_hidden)
    for spelling in ("multiple_of", "ffn_dim_multiplier"):  # two ways to one ffn_hidden
        fields.pop(spelling)
    for unused in (("caption_dim", "caption_len") if cfg.condition == "class" else ("num_classes",)):
        fields.pop(unused)
    if cfg.head_sharing == "shared":  # -1 and the last head are one head
        fields["shared_axis"] = cfg.shared_axis % len(cfg.blocks_per_axis)
    else:
        fields.pop("shared_axis")
    if cfg.position != "rope":
        fields.pop("rope_base")
    used = [cfg.blocks_per_axis[cfg.shared_axis]] if cfg.head_sharing == "shared" else cfg.blocks_per_axis
    if sum(b > 0 for b in used) <= 1:  # one branch of blocks at most: chained or parallel, the same network
        fields.pop("head_layout")
    return fields


def _check_given(given: NARConfig, stored: NARConfig, path: str | Path) -> None:
    """A given config must read the stored weights as they were trained: same heads, layout, positions, mixing
    ... (same-shaped weights would otherwise load and silently compute something else).

    Raises:
        ConfigError: naming each differing field with the given and the stored value.
    """
    ours, theirs = _meaning(given), _meaning(stored)
    diff = [f"{k}: given {ours.get(k)!r}, stored {theirs.get(k)!r}" for k in {**theirs, **ours}
            if ours.get(k) != theirs.get(k)]
    if diff:
        raise ConfigError(f"{path} stores a model the given config would read differently ({'; '.join(diff)}); "
                          "give no config (the stored one is used) or one that matches it")


def run_weights(obj: Any, path: str | Path, prefer_ema: bool = True) -> tuple[dict[str, torch.Tensor], str]:
    """``(weights under our key names, the prefix they were stored under)`` of one of our checkpoints ``obj``
    (loaded from ``path``): a ``.ckpt``, a sharded manifest (its folder read) or an exported file. The EMA copy
    when ``prefer_ema`` and the run kept one, else the trained weights."""
    folder = sharded_folder(obj, path)
    if folder is not None:
        return read_sharded_weights(folder, prefer_ema)
    state = obj["state_dict"]
    prefix = PREFIXES[0] if prefer_ema and any(k.startswith(PREFIXES[0]) for k in state) else PREFIXES[1]
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, prefix


def load_generator_and_run_config(path: str | Path, cfg: NARConfig | None = None, prefer_ema: bool = True,
                                  map_location: str | torch.device = "cpu", *, n_head: int | None = None,
                                  **overrides: Any) -> tuple[NARModel, dict[str, Any] | None]:
    """:func:`load_generator` and :func:`stored_run_config` from one read of the file."""
    obj = read_generator_file(path, map_location)
    weights, model_cfg, label = _weights(obj, path, cfg, prefer_ema, n_head, overrides)
    model = NARModel(model_cfg)
    load_strict(model, weights, source=label)
    return model.eval(), run_config_of(obj)


def load_generator(path: str | Path, cfg: NARConfig | None = None, prefer_ema: bool = True,
                   map_location: str | torch.device = "cpu", *, n_head: int | None = None,
                   **overrides: Any) -> NARModel:
    """A generator in eval mode from one of our checkpoints or an official ``.pt``, the file read once.

    Our checkpoints: the stored run config's ``model`` section is used; a given ``cfg`` must agree with it in
    every field that decides what the weights compute (all but the grid and training-only fields such as
    dropouts), and describes the model only when none is stored; the EMA weights when ``prefer_ema`` and the run kept them, else the trained ones.
    Official files: ``cfg`` describes the model, or ``n_head`` (plus ``overrides`` such as ``grid``) lets
    the rest be read off the shapes (:func:`nar.model.official.config_from_official`); the official ``ema``
    entry is taken when ``prefer_ema`` and present.

    Raises:
        CheckpointError: missing or unreadable file, no config for it, or weights that do not match
            (missing/unexpected keys and shape differences listed).
        ConfigError: ``cfg`` disagrees with the stored config (naming each field, given and stored values),
            ``overrides`` that would be ignored (next to ``cfg``, or for one of our checkpoints), or that are not
            NARConfig fields.
    """
    return load_generator_and_run_config(path, cfg, prefer_ema, map_location, n_head=n_head, **overrides)[0]


def load_weights_into(model: NARModel, path: str | Path, prefer_ema: bool = True) -> None:
    """Copy the generator weights of ``path`` (ours or official) into ``model``, strictly (a run's ``init_from``).

    The shapes must match ``model``'s; the grid may differ (rotary positions hold no grid-sized weights).
    Official files are converted for ``model.cfg``.

    Raises:
        CheckpointError: the weights do not fit ``model`` (the diff names the keys and shapes).
    """
    # Not checked against a stored config: a run may start from weights trained with another grid, mixing ...
    weights, _, label = _weights(read_generator_file(path), path, model.cfg, prefer_ema, None, {}, check_given=False)
    load_strict(model, weights, source=f"init_from={label}")


__all__ = ["load_generator", "load_generator_and_run_config", "load_weights_into", "generator_file", "read_generator_file",
           "is_run_checkpoint", "read_sharded_weights", "run_config_of", "run_weights", "sharded_folder",
           "stored_run_config"]
