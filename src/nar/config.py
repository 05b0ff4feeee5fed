"""Typed configuration: dataclass schemas, YAML overrides and ``key=value`` overrides via OmegaConf.

The code only ever sees plain dataclass instances. One loader serves every schema (generator runs,
tokenizer runs, ablation grids):

* schema defaults ← each dict ← each YAML file ← ``key=value`` overrides, merged by OmegaConf, which
  rejects unknown keys and values of the wrong type; an override reads its value as YAML, except that a
  ``str`` key keeps the text as given (``name=0601`` is the folder ``0601``, not YAML 1.1's octal 385);
* a section may name a preset (``model: {preset: NAR-L, dim: 512}``): its dataclass says what the preset
  holds (``preset_fields``), and the section's own keys apply on top of it;
* the result is built bottom-up, section by section, so a range error raised by a nested
  ``__post_init__`` (a :class:`~nar.errors.ConfigError` with a key relative to its own dataclass) comes
  out with the full key path and the last file or override that set it: ``key 'optim.lr': must be > 0,
  got -0.001 (set in neg.yaml)``; a float that is NaN or infinite is refused there for every key;
* a YAML file that gives one key twice in a mapping is refused (YAML would keep the later value silently).

Experiment YAMLs ship inside the package (``nar.experiments``, mapped onto the repository's
``experiments/`` folder), so an installed ``nar`` finds ``demo/emoji.yaml`` without a checkout:
:func:`config_path` resolves a path or a packaged name.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import typing
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf, StringNode
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
    try:
        return build(schema, merged)
    except ConfigError as err:
        raise _with_source(err, paths, overrides) from None


def select_resolved(node: DictConfig, key: str, yaml_paths: Sequence[str | Path] = (), overrides: Sequence[str] = (),
                    default: Any = None) -> Any:
    """``OmegaConf.select(node, key, default=default)`` of a :func:`merge_sources` result, for a value needed before
    :func:`load_config` (``data.root``, whose meta.json feeds the config); a value that cannot be resolved (an unset
    ``${oc.env:VAR}``) is the :class:`ConfigError` :func:`load_config` would raise, naming the key and where it was
    set among ``yaml_paths`` and ``overrides``."""
    try:
        return OmegaConf.select(node, key, default=default)
    except OmegaConfBaseException as err:
        raise _with_source(_unresolved(err, key), [Path(p) for p in yaml_paths], overrides) from None


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

    Errors name the file or the override and the offending key; a key ``base``'s schema lists in its
    ``RENAMED_KEYS`` (a removed key → what replaced it) is refused with its replacement named.
    """
    try:
        return _merge_all(base, yaml_paths, overrides, dicts)
    except ConfigError as err:
        renamed = getattr(OmegaConf.get_type(base), "RENAMED_KEYS", None) or {}
        found = re.search(r"key '([^']+)'", err.message) if renamed else None
        if found and found.group(1) in renamed:
            unknown = re.sub(r"\. Did you mean: .*\?$", "", err.message)  # OmegaConf's guess, when it has one
            raise ConfigError(f"{unknown}; it was removed: {renamed[found.group(1)]}", key=err.key) from None
        raise


def _merge_all(base: DictConfig, yaml_paths: Sequence[str | Path], overrides: Sequence[str],
               dicts: Sequence[dict[str, Any]]) -> DictConfig:
    for data in dicts:
        base = _merge(base, OmegaConf.create(data), "stored config")
    for path in yaml_paths:
        base = _merge(base, read_yaml(path), str(path))
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"overrides must look like key=value, got {bad}")
        base = _merge(base, _parse_overrides(base, overrides), "command-line override")
    return base


def _parse_overrides(base: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """``key=value`` overrides as a config to merge onto ``base``, applied in order.

    A value is read as YAML (``model.grid=[8,8]``, ``optim.lr=1e-3``), except that a key ``base`` types as
    ``str`` (``Optional[str]`` too) keeps the text as given: YAML 1.1 would turn ``name=0601`` into 385 and
    ``name=no`` into False before OmegaConf made text of them again. Such a value is still unquoted as YAML
    (``name="x y"``), ``${...}`` stays an interpolation, and ``null``, ``~`` or nothing is None for an optional key.
    """
    out = OmegaConf.create()
    for item in overrides:
        key, _, text = item.partition("=")
        node = _string_node(base, key)
        value = text.strip()
        # null (not the empty text) on a key that may not be None is left to YAML, and so refused naming the key
        raw = (node is not None and value[:1] not in ("'", '"')
               and not (value in _YAML_NULLS and (node._is_optional() or value)))
        try:
            if raw:
                OmegaConf.update(out, key, value, merge=True)
            else:
                out.merge_with_dotlist([item])
        except OmegaConfBaseException as err:
            raise _describe(err, "command-line override") from None
        except yaml.YAMLError as err:  # a value that is not YAML, e.g. a list holding an unquoted ${...}
            raise ConfigError(f"command-line override {item!r}: not a YAML value "
                              f"({getattr(err, 'problem', None) or err}); quote it") from None
    return out


def read_yaml(path: str | Path) -> DictConfig:
    """One YAML file as a mapping; a missing file, a syntax error or a top level that is not a mapping is a
    :class:`ConfigError` naming the file (and the line, for syntax errors)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except _DuplicateKey as err:
        raise ConfigError(f"{path}: key '{err.key}' appears twice in one mapping (lines {err.first} and "
                          f"{err.second}); YAML would keep only the second: merge them into one") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} YAML syntax error: {getattr(err, 'problem', None) or err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got a {type(data).__name__}")
    return OmegaConf.create(data)


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key, self.first, self.second = key, first, second


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load``, except that a mapping giving one key twice is an error (:class:`_DuplicateKey`, with
    both 1-based lines). Keys a ``<<`` merge brings in may still be set again beside it."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._checked: set[int] = set()

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # Every mapping passes here before it is built, and merge sources before their own turn: check each once,
        # while it holds only its own keys (flattening adds the merged ones in front).
        if id(node) not in self._checked:
            self._checked.add(id(node))
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise _DuplicateKey(key, seen[key], line)
                seen[key] = line
        super().flatten_mapping(node)


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


def positive_int(text: str) -> int:
    """An ``argparse`` type for counts that must be >= 1 (``--shard-size``, ``--limit``): a bad value is
    argparse's one-line usage error (exit 2, naming the option) before anything runs."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


class GivenOnce(argparse.Action):
    """An ``argparse`` action for an option a command reads one value of (``nar train-tokenizer --config``): given
    twice, it is argparse's usage error (exit 2) naming both values, where a plain option keeps the last silently.
    ``remedy`` (an ``add_argument`` keyword) says what to do instead."""

    def __init__(self, *args: Any, remedy: str = "put the keys of both into one file, or pass them as key=value",
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.remedy = remedy

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        earlier = getattr(namespace, self.dest, None)
        if earlier is not None and earlier is not self.default:
            parser.error(f"argument {option_string}: given more than once ({earlier!r}, then {values!r}); this "
                         f"command reads one; {self.remedy}")
        setattr(namespace, self.dest, values)


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
            value = OmegaConf.to_container(value, resolve=True)
        except OmegaConfBaseException as err:
            raise _unresolved(err, key) from None
    if not _finite(value):  # NaN passes every `value < minimum` check, and no key wants an infinity
        raise ConfigError(f"must be a finite number, got {value}", key=key)
    return value


def _finite(value: Any) -> bool:
    """Whether every float in ``value`` (a scalar, or a list or dict of them, nested) is finite."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


# What YAML reads as null: such an override of an Optional[str] key means None, as for any other key.
_YAML_NULLS = ("", "~", "null", "Null", "NULL")


def _string_node(base: DictConfig, key: str) -> StringNode | None:
    """The node of dotted ``key`` in ``base`` when it is typed ``str``; None for other types and unknown keys."""
    parent_key, _, leaf = key.rpartition(".")
    try:
        parent = OmegaConf.select(base, parent_key, throw_on_missing=False) if parent_key else base
        node = parent._get_node(leaf, validate_access=False) if isinstance(parent, DictConfig) else None
    except OmegaConfBaseException:
        return None
    return node if isinstance(node, StringNode) else None


def _merge(base: DictConfig, data: DictConfig, source: str) -> DictConfig:
    """``base`` ← ``data``; a failure is a :class:`ConfigError` naming ``source`` and the key."""
    try:
        return OmegaConf.merge(base, data)
    except OmegaConfBaseException as err:
        raise _describe(err, source, _failing_key(base, data)) from None


def _failing_key(base: DictConfig, data: DictConfig, prefix: str = "") -> str | None:
    """The deepest key of ``data`` whose merge onto ``base`` fails: OmegaConf names none when a scalar or a list
    meets a section (``model: 5``). Only called on the error path."""
    for name in data.keys():
        key = f"{prefix}.{name}" if prefix else str(name)
        try:
            OmegaConf.merge(base, OmegaConf.masked_copy(data, [name]))
        except OmegaConfBaseException:
            try:
                inner_base = base._get_node(name, validate_access=False)
                inner = data._get_node(name, validate_access=False)
            except OmegaConfBaseException:
                return key
            if isinstance(inner_base, DictConfig) and isinstance(inner, DictConfig):
                return _failing_key(inner_base, inner, key) or key
            return key
    return None


def _with_source(err: ConfigError, yaml_paths: Sequence[Path], overrides: Sequence[str]) -> ConfigError:
    """``err`` with the file or override that set its key last named after its message, when one did."""
    source = _last_setter(err.key, yaml_paths, overrides) if err.key else None
    return ConfigError(f"{err.message} ({source})", key=err.key) if source else err


def _last_setter(key: str, yaml_paths: Sequence[Path], overrides: Sequence[str]) -> str | None:
    """Which of the YAML files and ``key=value`` overrides set ``key`` last (as ``set in <file>`` or ``set by the
    override '<item>'``), for an error about its value; None when none of them did (a default, a preset, a stored
    config or the data's facts) or when ``key`` is a section (several sources may share it). Error path only."""
    parts = re.findall(r"[^.\[\]]+", key)
    for item in reversed(overrides):
        name = item.partition("=")[0].strip()
        if name == key or key.startswith((f"{name}.", f"{name}[")):
            try:
                if _holds(OmegaConf.from_dotlist([item]), parts):
                    return f"set by the override '{item}'"
            except (OmegaConfBaseException, yaml.YAMLError):
                if name == key:
                    return f"set by the override '{item}'"
    for path in reversed(yaml_paths):
        try:
            if _holds(read_yaml(path), parts):
                return f"set in {path}"
        except ConfigError:
            return None
    return None


def _holds(node: Any, parts: Sequence[str]) -> bool:
    """Whether ``node`` gives a value (not a section) at the path ``parts`` (``["model", "grid", "0"]``)."""
    for part in parts:
        if isinstance(node, DictConfig) and part in node.keys():
            node = node._get_node(part, validate_access=False)
        elif isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
            node = node._get_node(int(part))
        else:
            return False
    return not isinstance(node, DictConfig)


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


def _describe(err: OmegaConfBaseException, source: str, key: str | None = None) -> ConfigError:
    key = getattr(err, "full_key", None) or key
    msg = str(err).splitlines()[0]
    return ConfigError(f"{source}: key '{key}': {msg}" if key else f"{source}: {msg}")
