"""Conversion between our state dicts and the official NAR / LlamaGen generator checkpoints.

Official names (NAR_SPEC §5): ``layers.{i}`` for the trunk and, at ``i = n_layer``, the row head's
extra block; ``norm``/``output`` is the column head, ``medusa_norm``/``medusa_output`` the row head;
``cls_embedding.*`` the condition. LlamaGen's raster GPT has the same trunk with only ``norm``/``output``.
Only the official layouts convert: NAR on a 2-D grid with the chain ``head_blocks=[1, 0]``, and the
raster baseline with one head on the trunk.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from nar.checkpoints import load_strict, read_checkpoint
from nar.errors import CheckpointError, ConfigError
from nar.model.config import NARConfig
from nar.model.nar import NARModel

# Buffers the official code saves with the weights; they are inference scratch space, not weights.
OFFICIAL_IGNORED = ("kv_cache.", "freqs_cis", "causal_mask", "diagonal_mask")


def _check_layout(cfg: NARConfig) -> str:
    if cfg.mode == "par":
        raise ConfigError("no official NAR or LlamaGen checkpoint holds a PAR model (mode 'par')")
    if cfg.position != "rope" or cfg.head_sharing != "per_axis" or len(cfg.grid) != 2:
        raise ConfigError("only the official layout converts: 2-D grid, rotary positions, one head per axis")
    if cfg.mode == "nar" and (cfg.head_layout != "chain" or cfg.blocks_per_axis != [1, 0]):
        raise ConfigError(f"official NAR checkpoints use head_blocks=[1, 0] (chain); got {cfg.blocks_per_axis}")
    if cfg.mode == "raster" and cfg.blocks_per_axis != [0]:
        raise ConfigError(f"official LlamaGen checkpoints use head_blocks=[0]; got {cfg.blocks_per_axis}")
    return cfg.mode


def _check_export(cfg: NARConfig) -> None:
    """A file in the official format is read back (by the official code, and by :func:`load_official`) as the
    mean of logits over every parent; an ablation written in it would come back as another model. Loading
    official weights into an ablation is fine: the weights hold no mixing rule."""
    _check_layout(cfg)
    for key, official in (("mixing", "logits"), ("parents", "all")):
        if getattr(cfg, key) != official:
            raise ConfigError(f"official checkpoints hold {key}='{official}' models (it is not stored, readers "
                              f"assume it); got '{getattr(cfg, key)}': save this model in our format", key=key)


def _rename_pairs(cfg: NARConfig) -> list[tuple[str, str]]:
    """(official prefix, our prefix), longest first."""
    pairs = [(f"layers.{cfg.n_layer}.", "branches.0.0.")] if cfg.mode == "nar" else []
    if cfg.mode == "nar":
        pairs += [("norm.", "heads.1.norm."), ("output.", "heads.1.proj."),
                  ("medusa_norm.", "heads.0.norm."), ("medusa_output.", "heads.0.proj.")]
    else:
        pairs += [("norm.", "heads.0.norm."), ("output.", "heads.0.proj.")]
    return pairs


def from_official_state_dict(state: dict[str, torch.Tensor], cfg: NARConfig) -> dict[str, torch.Tensor]:
    """Official key names → ours (official inference buffers are dropped)."""
    _check_layout(cfg)
    pairs = _rename_pairs(cfg)
    out = {}
    for key, value in state.items():
        if any(s in key for s in OFFICIAL_IGNORED):
            continue
        for theirs, ours in pairs:
            if key.startswith(theirs):
                key = ours + key[len(theirs):]
                break
        out[key] = value
    return out


def to_official_state_dict(model: NARModel) -> dict[str, torch.Tensor]:
    """Our weights under the official key names (loadable by the official code)."""
    _check_export(model.cfg)
    pairs = _rename_pairs(model.cfg)
    out = {}
    for key, value in model.state_dict().items():
        for theirs, ours in pairs:
            if key.startswith(ours):
                key = theirs + key[len(ours):]
                break
        out[key] = value.detach().clone()
    return out


def config_from_official(state: dict[str, torch.Tensor], n_head: int, *, source: str = "state dict",
                         **overrides) -> NARConfig:
    """Infer sizes from an official state dict. ``n_head`` cannot be inferred and must be given; ``overrides``
    (NARConfig fields, e.g. ``grid``) are applied on top; ``source`` names the file in errors.

    Raises:
        ConfigError: an override is not a NARConfig field, or a value is invalid (naming the key).
        CheckpointError: ``state`` is not a whole official generator (naming ``source`` and the key).
    """
    NARConfig.check_field_names(overrides)
    layers = {int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k))}
    if "tok_embeddings.weight" not in state or not layers:
        raise CheckpointError(f"{source}: not an official NAR/LlamaGen generator state dict (no tok_embeddings/layers)")
    vocab, dim = state["tok_embeddings.weight"].shape
    nar = "medusa_output.weight" in state
    fields: dict = dict(dim=dim, vocab_size=vocab, n_head=n_head, mode="nar" if nar else "raster",
                        n_layer=len(layers) - (1 if nar else 0))
    if "cls_embedding.embedding_table.weight" in state:
        fields.update(condition="class", num_classes=state["cls_embedding.embedding_table.weight"].shape[0] - 1)
    elif "cls_embedding.uncond_embedding" in state:
        length, cap_dim = state["cls_embedding.uncond_embedding"].shape
        fields.update(condition="caption", caption_len=length, caption_dim=cap_dim)
    ffn_key = "layers.0.feed_forward.w1.weight"
    if ffn_key not in state:  # the FFN width is read off it
        raise CheckpointError(f"{source}: no {ffn_key} (a truncated or partial file?)")
    hidden = state[ffn_key].shape[0]
    fields.update(overrides)
    cfg = NARConfig(**fields)
    if cfg.ffn_hidden != hidden:
        raise CheckpointError(f"{source}: FFN hidden size {hidden} does not follow from dim={dim} and "
                              f"multiple_of={cfg.multiple_of}; pass multiple_of/ffn_dim_multiplier")
    return cfg


def load_official(path: str | Path, cfg: NARConfig | None = None, n_head: int | None = None,
                  prefer: str | None = None, **overrides) -> NARModel:
    """Build a model from an official checkpoint file (weights under model/ema/module/state_dict or raw).

    Give either ``cfg`` (e.g. ``NARConfig.from_name('NAR-L')``) or ``n_head`` (plus ``overrides`` such as
    ``grid``) to infer the rest.

    Raises:
        ConfigError: neither ``cfg`` nor ``n_head``, or ``overrides`` next to ``cfg`` (they would be ignored).
        CheckpointError: the file is missing, unreadable, or does not match the config.
    """
    if cfg is not None and overrides:
        raise ConfigError(f"overrides ({', '.join(overrides)}) apply to an inferred config; with cfg given, "
                          "change cfg instead (dataclasses.replace)")
    state = read_checkpoint(path, prefer=prefer)
    if cfg is None:
        if n_head is None:
            raise ConfigError("load_official needs cfg or n_head (the head count is not stored in the file)")
        cfg = config_from_official(state, n_head, source=str(path), **overrides)
    model = NARModel(cfg)
    load_strict(model, from_official_state_dict(state, cfg), source=str(path))
    return model
