"""Typed configuration: dataclass schemas, YAML overrides and ``key=value`` overrides via OmegaConf.

The code only ever sees plain dataclass instances. One loader serves every schema (generator runs,
tokenizer runs, ablation grids):

* schema defaults ← each dict ← each YAML file ← ``key=value`` overrides, merged by OmegaConf, which
  rejects unknown keys and values of the wrong type;
* a section may name a preset (``model: {preset: NAR-L, dim: 512}``): its dataclass says what the preset
  holds (``preset_fields``), and the section's own keys apply on top of it;
* the result is built bottom-up, section by section, so a range error raised by a nested
  ``__post_init__`` (a :class:`~nar.errors.ConfigError` with a key relative to its own dataclass) comes
  out with the full key path: ``key 'optim.lr': must be > 0``.

Experiment YAMLs ship inside the package (``nar.experiments``, mapped onto the repository's
``experiments/`` folder), so an installed ``nar`` finds ``demo/emoji.yaml`` without a checkout:
:func:`config_path` resolves a path or a packaged name.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nar.errors import ConfigError

T = TypeVar("T")

# The field through which a section names its preset, when its dataclass has ``preset_fields``.
PRESET_KEY = "preset"


def load_config(schema: type[T], yaml_paths: Sequence[str | Path] = (), overrides: Sequence[str] = (),
                dicts: Sequence[dict[str, Any]] = ()) -> T:
    """Merge ``schema`` defaults, each dict, each YAML file, then ``key=value`` overrides; return a ``schema``.

    Raises:
        ConfigError: a file is missing or malformed, a key is unknown, or a value has the wrong type or
            range; the message names the file and the full key path.
    """
    paths = [config_path(p) for p in yaml_paths]
    merged = merge_sources(OmegaConf.structured(schema), paths, overrides, dicts)
    presets = _preset_sections(schema, merged)
    if presets:  # the presets become the defaults, and every source applies again on top of them
        base = OmegaConf.structured(schema)
        for path, fields in presets.items():
            _set(base, path, fields)
        merged = merge_sources(base, paths, overrides, dicts)
    return build(schema, merged)


def from_dict(schema: type[T], data: dict[str, Any]) -> T:
    """Rebuild a config dataclass from :func:`to_dict` output, validated as :func:`load_config` does."""
    return load_config(schema, dicts=[data])


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict of a config dataclass (for logging and checkpoints)."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    """A config dataclass as YAML text (``config.yaml`` of a run)."""
    return OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg)))


def merge_sources(base: DictConfig, yaml_paths: Sequence[str | Path] = (), overrides: Sequence[str] = (),
                  dicts: Sequence[dict[str, Any]] = ()) -> DictConfig:
    """``base`` ← each dict ← each YAML file ← ``key=value`` overrides (no conversion to objects yet).

    Errors name the file or the override and the offending key.
    """
    for data in dicts:
        try:
            base = OmegaConf.merge(base, OmegaConf.create(data))
        except OmegaConfBaseException as err:
            raise _describe(err, "stored config") from None
    for path in yaml_paths:
        data = read_yaml(path)
        try:
            base = OmegaConf.merge(base, data)
        except OmegaConfBaseException as err:
            raise _describe(err, str(path)) from None
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"overrides must look like key=value, got {bad}")
        try:
            base = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
        except OmegaConfBaseException as err:
            raise _describe(err, "command-line override") from None
        except yaml.YAMLError as err:  # a value that is not YAML, e.g. a list holding an unquoted ${...}
            raise ConfigError(f"command-line override {_unparsable(overrides)!r}: not a YAML value "
                              f"({getattr(err, 'problem', None) or err}); quote it") from None
    return base


def read_yaml(path: str | Path) -> DictConfig:
    """One YAML file as a mapping; a missing file, a syntax error or a top level that is not a mapping is a
    :class:`ConfigError` naming the file (and the line, for syntax errors)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} YAML syntax error: {getattr(err, 'problem', None) or err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got a {type(data).__name__}")
    return OmegaConf.create(data)


def config_path(ref: str | Path) -> Path:
    """A YAML path as given when it exists, else the packaged experiment config of that name.

    ``demo/emoji.yaml``, ``demo/emoji`` and ``experiments/demo/emoji.yaml`` all name the packaged file,
    so commands work from an installed wheel as from a checkout.
    """
    path = Path(ref)
    if path.is_file():
        return path
    parts = path.parts[1:] if path.parts and path.parts[0] == "experiments" else path.parts
    if parts:
        packaged = resources.files("nar.experiments").joinpath(*parts)
        for candidate in (packaged, packaged.with_name(packaged.name + ".yaml")) if path.suffix == "" else (packaged,):
            if candidate.is_file():
                return Path(str(candidate))
    return path  # missing: read_yaml names it


def experiments_dir() -> Path:
    """The folder of the packaged experiment YAMLs (``experiments/`` in a checkout)."""
    return Path(str(resources.files("nar.experiments")))


# --------------------------------------------------------------------------------------------------
# Building dataclasses bottom-up, so errors carry their key path
# --------------------------------------------------------------------------------------------------


def build(schema: type[T], node: Any, path: str = "") -> T:
    """Turn a merged OmegaConf node into a ``schema`` instance, nested dataclasses first.

    A :class:`ConfigError` raised inside gets ``path`` in front of its key; any other ``ValueError`` or
    ``TypeError`` from a ``__post_init__`` becomes a :class:`ConfigError` naming ``path``.
    """
    hints = typing.get_type_hints(schema)
    kwargs = {}
    for f in dataclasses.fields(schema):  # type: ignore[arg-type]
        if not f.init:
            continue
        key = f"{path}.{f.name}" if path else f.name
        try:
            value = node[f.name]  # resolves ${...} interpolations
        except OmegaConfBaseException as err:
            raise _unresolved(err, key) from None
        kwargs[f.name] = _value(hints[f.name], value, key)
    try:
        return schema(**kwargs)
    except ConfigError as err:
        raise err.under(path) from None
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err), key=path or None) from None


def _value(hint: Any, value: Any, key: str) -> Any:
    cls = _dataclass_of(hint)
    if cls is not None and isinstance(value, DictConfig):
        return build(cls, value, key)
    item = _list_item_dataclass(hint)
    if item is not None and isinstance(value, ListConfig):
        return [build(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (DictConfig, ListConfig)):
        try:
            return OmegaConf.to_container(value, resolve=True)
        except OmegaConfBaseException as err:
            raise _unresolved(err, key) from None
    return value


def _unparsable(overrides: Sequence[str]) -> str:
    """The first ``key=value`` whose value YAML cannot parse (all of them joined when none alone fails)."""
    for item in overrides:
        try:
            OmegaConf.from_dotlist([item])
        except yaml.YAMLError:
            return item
        except OmegaConfBaseException:
            continue
    return " ".join(overrides)


def _unresolved(err: OmegaConfBaseException, key: str) -> ConfigError:
    """A value OmegaConf cannot produce (a bad ``${...}`` interpolation) as a :class:`ConfigError` naming ``key``."""
    return ConfigError(f"cannot resolve its value: {str(err).splitlines()[0]}", key=key)


def _dataclass_of(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint
    for arg in typing.get_args(hint):  # Optional[Section]
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _list_item_dataclass(hint: Any) -> type | None:
    if typing.get_origin(hint) in (list, Sequence):
        args = typing.get_args(hint)
        if args and dataclasses.is_dataclass(args[0]):
            return args[0]
    return None


def _preset_sections(schema: type, node: DictConfig, path: str = "") -> dict[str, dict[str, Any]]:
    """``{section path: preset fields}`` for every section whose dataclass has presets and names one."""
    out: dict[str, dict[str, Any]] = {}
    hints = typing.get_type_hints(schema)
    try:
        name = node.get(PRESET_KEY) if hasattr(schema, "preset_fields") else None
    except OmegaConfBaseException as err:
        raise _unresolved(err, f"{path}.{PRESET_KEY}" if path else PRESET_KEY) from None
    if name:
        try:
            out[path] = {**schema.preset_fields(name), PRESET_KEY: name}
        except ConfigError as err:
            raise ConfigError(err.message, key=f"{path}.{PRESET_KEY}" if path else PRESET_KEY) from None
    for f in dataclasses.fields(schema):
        cls = _dataclass_of(hints[f.name])
        if cls is not None and isinstance(node.get(f.name), DictConfig):
            out.update(_preset_sections(cls, node[f.name], f"{path}.{f.name}" if path else f.name))
    return out


def _set(base: DictConfig, path: str, fields: dict[str, Any]) -> None:
    target = OmegaConf.select(base, path) if path else base
    merged = OmegaConf.merge(target, OmegaConf.create(fields))
    if path:
        OmegaConf.update(base, path, merged, merge=False)
    else:
        for k, v in merged.items():
            base[k] = v


def _describe(err: OmegaConfBaseException, source: str) -> ConfigError:
    key = getattr(err, "full_key", None)
    msg = str(err).splitlines()[0]
    return ConfigError(f"{source}: key '{key}': {msg}" if key else f"{source}: {msg}")
