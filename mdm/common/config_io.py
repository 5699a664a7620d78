"""Reading and writing configs: YAML files and ``--set a.b=value`` overrides mapped onto the
dataclasses of ``config``. Loading rejects unknown keys and values of the wrong type with a
``ConfigError`` that names the key; ``dump`` writes YAML that ``load`` reads back into an equal
object.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, fields
from pathlib import Path

import yaml

from .config import Config
from .config_checks import validate
from .errors import ConfigError
from .io import write_text_atomic


def _check_type(key: str, value, tp):
    """Return ``value`` converted to type ``tp`` where that is lossless (int or "1e-4" -> float,
    scalar -> 1-list, tuple -> list), else raise ``ConfigError``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(key, value, arg)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {tp}, got {type(value).__name__} {value!r}")
    if dataclasses.is_dataclass(tp):  # a list of sections (bench.variants)
        return _build(tp, value, f"{key}.")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, (list, tuple)):
            return [_check_type(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
        return [_check_type(key, value, item_tp)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    # YAML 1.1 reads no / off as false: mixed_precision=no is meant
    if tp is str and isinstance(value, bool):
        return "no" if not value else "yes"
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]!s} (known keys in "
                          f"{prefix.rstrip('.') or 'config'}: {', '.join(sorted(known))})")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_type(f"{prefix}{name}", value, tp)
    return cls(**kwargs)


def from_dict(data: dict) -> Config:
    """Build and validate a ``Config`` from nested dicts; missing keys take the dataclass
    defaults."""
    return validate(_build(Config, data or {}, ""))


def set_nested(data: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {part} is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, object]:
    """``"a.b=value"`` -> ``("a.b", parsed value)``; values are read as YAML (``3``, ``1e-4``,
    ``[1,2]``, ``true``)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. train.max_steps=100")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load(path: str | Path | None = None, overrides: list[str] = (),
         sections: tuple[str, ...] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply ``KEY=VALUE`` overrides;
    with ``sections``, only those top-level sections are read (the others take their defaults)."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            text = path.read_text()
            if not text.strip():
                raise ConfigError(
                    f"{path}: empty (a YAML config was expected; a run killed while writing its "
                    f"config leaves it so: write it again or start a new run)")
            data = yaml.safe_load(text) or {}
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a text file (a YAML config was expected)") from None
        except yaml.YAMLError as e:
            where = getattr(e, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
            raise ConfigError(f"{path}: not valid YAML{at}: {getattr(e, 'problem', None) or 'unreadable'}") from None
        if not isinstance(data, dict):
            raise ConfigError(
                f"{path}: expected a mapping of sections (model:, train:, ...), got a "
                f"{type(data).__name__}")
    data = {k: v for k, v in data.items() if k in sections} if sections else data
    for text in overrides:
        key, value = parse_override(text)
        set_nested(data, key, value)
    return from_dict(data)


def to_dict(cfg) -> dict:
    return asdict(cfg)


def dump(cfg, path: str | Path) -> None:
    """Write the resolved config as YAML (readable by ``load``), atomically: a kill leaves the old
    file or none."""
    write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
