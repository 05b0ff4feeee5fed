"""Saving and loading tokenizers: our own files (config + weights) and LlamaGen's official VQ checkpoints.

Our file is a dict ``{"format": "nar-tokenizer", "version": 1, "config": {...}, "state_dict": {...}}``;
a Lightning checkpoint of :class:`~nar.lightning.tokenizer_module.TokenizerModule` is accepted too.
An official checkpoint (``{"model": state}``, or ``"ema"`` …) has no config: pass one, or let it be read
off the weights' shapes. Every load is strict; a mismatch lists missing/unexpected keys and shapes.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from nar.atomic import write_with
from nar.checkpoints import load_file, load_strict, unwrap_state_dict
from nar.config import from_dict, to_dict
from nar.errors import CheckpointError, ConfigError
from nar.tokenizers.config import VQConfig
from nar.tokenizers.quantizer import USAGE_WINDOW
from nar.tokenizers.vq import VQTokenizer

log = logging.getLogger(__name__)

FORMAT = "nar-tokenizer"
VERSION = 1
# Key under which TokenizerModule stores the tokenizer config in its Lightning checkpoints.
LIGHTNING_CONFIG_KEY = "nar_tokenizer_config"
LIGHTNING_PREFIX = "tokenizer."


def save_tokenizer(tokenizer: VQTokenizer, path: str | Path) -> Path:
    """Write ``tokenizer`` (its typed config and weights, on CPU) to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": to_dict(tokenizer.config),
        "state_dict": {k: v.detach().cpu() for k, v in tokenizer.state_dict().items()},
    }
    return write_with(path, lambda tmp: torch.save(payload, tmp))  # never a half-written file under the name


def load_tokenizer(
    source: str | Path | VQConfig,
    config: VQConfig | str | dict[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
) -> VQTokenizer:
    """Build a tokenizer in eval mode from any of:

    - a :class:`VQConfig` or a preset name such as ``"vq-16"`` (random weights);
    - a file written by :func:`save_tokenizer` or a TokenizerModule Lightning checkpoint (``config``
      must be ``None`` or agree with the stored one);
    - an official LlamaGen VQ checkpoint; ``config`` (a :class:`VQConfig`, preset name, or LlamaGen's
      ``ModelArgs`` fields as a dict) describes it, or, when ``None`` (or ``""``), is inferred from the weights.
    """
    config = config or None
    if _not_a_file(source):
        return VQTokenizer(_as_config(source)).eval()
    path = Path(source)
    obj = load_file(path, what="tokenizer checkpoint")
    if isinstance(obj, dict) and (obj.get("format") == FORMAT or LIGHTNING_CONFIG_KEY in obj):
        tokenizer = VQTokenizer(_file_config(obj, config, path))
        if obj.get("format") == FORMAT:
            state = obj["state_dict"]
        else:
            state = {k[len(LIGHTNING_PREFIX):]: v for k, v in obj["state_dict"].items() if k.startswith(LIGHTNING_PREFIX)}
        load_strict(tokenizer, state, source=str(path))
    else:
        tokenizer = load_official_vq(unwrap_state_dict(obj, source=str(path)), config, source=str(path))
    return tokenizer.to(map_location).eval()


def read_tokenizer_config(source: str | Path | VQConfig,
                          config: VQConfig | str | dict[str, Any] | None = None) -> VQConfig:
    """The config :func:`load_tokenizer` would build ``source`` with (same arguments, same checks), without building
    the tokenizer or reading its weights: a file is memory-mapped and only its stored config (or, for an official
    checkpoint without one, its tensors' shapes) is read. For start-up checks.

    Raises:
        CheckpointError: the file is missing, unreadable, or holds no tokenizer (naming it).
        ConfigError: ``config`` disagrees with the file's stored config; an unknown preset.
    """
    config = config or None
    if _not_a_file(source):
        return _as_config(source)
    path = Path(source)
    return _file_config(load_file(path, what="tokenizer checkpoint", mmap=True), config, path)


def _file_config(obj: Any, config: VQConfig | str | dict[str, Any] | None, path: Path) -> VQConfig:
    """The config of the loaded file ``obj``: the one it stores (ours, or a TokenizerModule Lightning checkpoint's),
    which ``config`` must agree with; else an official checkpoint's (``config``, or read off its shapes)."""
    if isinstance(obj, dict) and (obj.get("format") == FORMAT or LIGHTNING_CONFIG_KEY in obj):
        stored = stored_config(obj["config"] if obj.get("format") == FORMAT else obj[LIGHTNING_CONFIG_KEY], path)
        _check_same(stored, config, path)
        return stored
    return _official_config(unwrap_state_dict(obj, source=str(path)), config, str(path))


def _official_config(state: dict[str, torch.Tensor], config: VQConfig | str | dict[str, Any] | None,
                     source: str) -> VQConfig:
    """An official checkpoint's config: ``config``, or (None) read off the shapes of ``state``; an image one."""
    cfg = infer_official_config(state, source=source) if config is None else _as_config(config)
    if cfg.kind != "image":
        raise ConfigError(f"official LlamaGen checkpoints are image tokenizers; config has kind={cfg.kind!r}")
    return cfg


def load_official_vq(
    state: dict[str, torch.Tensor],
    config: VQConfig | str | dict[str, Any] | None = None,
    source: str = "official VQ checkpoint",
) -> VQTokenizer:
    """An image tokenizer holding LlamaGen VQ weights ``state`` (official key names), loaded strictly.

    ``quantize.codebook_used`` is optional in official files; when absent ours keeps its zeros.
    """
    tokenizer = VQTokenizer(_official_config(state, config, source))
    state = dict(state)
    state.setdefault("quantize.codebook_used", tokenizer.quantize.codebook_used.clone())
    load_strict(tokenizer, state, source=source)
    return tokenizer


def export_official_vq(tokenizer: VQTokenizer) -> dict[str, dict[str, torch.Tensor]]:
    """The checkpoint LlamaGen's code loads (``{"model": state}``): our image keys are already its keys."""
    if tokenizer.config.kind != "image":
        raise ConfigError("only image tokenizers have an official (LlamaGen) format")
    return {"model": {k: v.detach().cpu().clone() for k, v in tokenizer.state_dict().items()}}


def infer_official_config(state: dict[str, torch.Tensor], image_size: int | None = None,
                          source: str = "state dict") -> VQConfig:
    """Read widths, levels, res-blocks and codebook off the shapes of an official VQ state dict
    (LlamaGen always uses GroupNorm(32); the training image size is not stored, ``image_size`` sets it, else 256
    is guessed and the config says so: ``image_size_guessed``).
    ``source`` names where ``state`` came from in the error of a state dict that is not a VQ tokenizer's."""
    try:
        base = state["encoder.conv_in.weight"].shape[0]
        codebook_size, embed_dim = state["quantize.embedding.weight"].shape
        z_channels = state["quant_conv.weight"].shape[1]

        def mults(prefix: str) -> list[int]:
            levels = sorted({int(m.group(1)) for k in state if (m := re.match(rf"{prefix}\.conv_blocks\.(\d+)\.", k))})
            out = [state[f"{prefix}.conv_blocks.{i}.res.0.conv2.weight"].shape[0] // base for i in levels]
            return out if prefix == "encoder" else out[::-1]  # decoder blocks run lowest level first

        res_blocks = len({m.group(1) for k in state if (m := re.match(r"encoder\.conv_blocks\.0\.res\.(\d+)\.", k))})
    except (KeyError, IndexError) as err:
        raise CheckpointError(f"{source}: neither a nar tokenizer file nor a LlamaGen VQ state dict "
                              f"(missing {err})") from None
    enc = mults("encoder")
    cfg = VQConfig(image_size=max(image_size or 256, 2 ** (len(enc) - 1)), base_channels=int(base),
                   encoder_ch_mult=enc, decoder_ch_mult=mults("decoder"), num_res_blocks=res_blocks,
                   z_channels=int(z_channels), codebook_size=int(codebook_size), codebook_embed_dim=int(embed_dim),
                   norm_groups=32)
    cfg.image_size_guessed = image_size is None  # not a field (see VQConfig.from_official)
    return cfg


def _not_a_file(source: str | Path | VQConfig) -> bool:
    """``source`` is a config or a preset name, not a file."""
    return isinstance(source, VQConfig) or (isinstance(source, str) and not Path(source).exists()
                                            and not _looks_like_path(source))


def _looks_like_path(source: str) -> bool:
    """A name with a folder or a suffix is a file (a missing one is "not found"); preset names have neither."""
    return "/" in source or "\\" in source or bool(Path(source).suffix)


def _as_config(config: VQConfig | str | dict[str, Any]) -> VQConfig:
    if isinstance(config, VQConfig):
        return config
    if isinstance(config, str):
        return VQConfig.from_name(config)
    if isinstance(config, dict):
        return VQConfig.from_official(config)
    raise ConfigError(f"tokenizer config must be a VQConfig, preset name or dict, got {type(config).__name__}")


def stored_config(fields: dict[str, Any], path: Path) -> VQConfig:
    """The config a file stores. A video tokenizer saved before ``causal_pad`` existed was built with
    ``causal_pad="kernel"``, which its weights need (a warning says what that layout misses)."""
    if fields.get("kind") == "video" and "causal_pad" not in fields:
        log.warning("%s: a video tokenizer saved before 2026-12-07: loaded with causal_pad='kernel', its layout, "
                    "whose time-halving steps never read every second frame (the last frames of a clip reach no "
                    "code); a tokenizer trained now uses causal_pad='stride'", path)
        fields = {**fields, "causal_pad": "kernel"}
    return from_dict(VQConfig, fields)


def _check_same(stored: VQConfig, given: VQConfig | str | dict[str, Any] | None, path: Path) -> None:
    """``given`` must describe ``stored`` (dataclass equality: the informational ``preset`` is not compared;
    ``causal_pad`` is the file's own, as its weights were trained with it)."""
    if given is None:
        return
    given_cfg = replace(_as_config(given), causal_pad=stored.causal_pad)
    if given_cfg != stored:
        ours, theirs = to_dict(given_cfg), to_dict(stored)
        diff = {k: (v, theirs[k]) for k, v in ours.items() if k != "preset" and theirs[k] != v}
        raise ConfigError(f"{path} was saved with a different tokenizer config; differing keys "
                          f"(given, stored): {diff}")


__all__ = ["save_tokenizer", "load_tokenizer", "read_tokenizer_config", "load_official_vq", "export_official_vq",
           "infer_official_config", "USAGE_WINDOW"]
