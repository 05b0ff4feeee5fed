"""Typed configuration: dataclass schemas, YAML overrides and ``key=value`` overrides via OmegaConf.

The code only ever sees plain dataclass instances. Unknown keys and values of the wrong type fail at
start-up with a :class:`~nar.errors.ConfigError` naming the key; range checks live in each dataclass's
``__post_init__``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nar.errors import ConfigError

T = TypeVar("T")


def load_config(schema: type[T], yaml_paths: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> T:
    """Merge ``schema`` defaults, then each YAML file, then ``key=value`` overrides; return a ``schema``.

    Raises:
        ConfigError: a file is missing, a key is unknown, or a value has the wrong type or range.
    """
    try:
        merged = merge_sources(OmegaConf.structured(schema), yaml_paths, overrides)
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(_describe(err)) from None
    except (ValueError, TypeError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(str(err)) from None
    return obj  # type: ignore[return-value]


def merge_sources(base: DictConfig, yaml_paths: Sequence[str | Path] = (), overrides: Sequence[str] = (),
                  dicts: Sequence[dict[str, Any]] = ()) -> DictConfig:
    """``base`` ← each dict ← each YAML file ← ``key=value`` overrides (no conversion to objects yet).

    Errors name the file or the override and the offending key.
    """
    for data in dicts:
        base = OmegaConf.merge(base, OmegaConf.create(data))
    for path in yaml_paths:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            base = OmegaConf.merge(base, OmegaConf.load(path))
        except OmegaConfBaseException as err:
            raise ConfigError(f"{path}: {_describe(err)}") from None
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"overrides must look like key=value, got {bad}")
        try:
            base = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
        except OmegaConfBaseException as err:
            raise ConfigError(f"command-line override: {_describe(err)}") from None
    return base


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict of a config dataclass (for logging and checkpoints)."""
    return dataclasses.asdict(cfg)


def from_dict(schema: type[T], data: dict[str, Any]) -> T:
    """Rebuild a config dataclass from :func:`to_dict` output, validating as :func:`load_config` does."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(data)))  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise ConfigError(_describe(err)) from None


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    msg = str(err).splitlines()[0]
    return f"key '{key}': {msg}" if key else msg
