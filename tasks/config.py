"""The one config scheme of every task: a sectioned dataclass, read from YAML, then flags, then validated.

A task's config is a dataclass whose fields are sections (``model``, ``data``, ``train`` -- the
``tasks.engine.EngineConfig`` -- plus the task's own), each a dataclass of plain values::

    cfg = load_config(DetectionConfig, "configs/detection/shapes_ssd.yaml", overrides={"train": {"lr": 0.01}})

:func:`load_config` merges the flags' overrides into the YAML mapping and builds the dataclass once,
so every value, whether it came from the file or from a flag, passes the same checks: an unknown key
(with the closest known key suggested), a value of the wrong type, or a value a section's
``__post_init__`` rejects raises ``ValueError`` naming the file (or "command line"), the key and the
value. :func:`config_to_dict` gives the plain mapping a run saves as ``config.yaml``; reading that
file back with :func:`load_config` reproduces the config exactly.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from tasks.checkpoint import to_plain

__all__ = ["build_section", "check_keys", "config_to_dict", "deep_merge", "load_config", "read_yaml_mapping"]

T = TypeVar("T")


def read_yaml_mapping(path: str | os.PathLike) -> dict[str, Any]:
    """The top-level mapping of a YAML file (an empty file gives ``{}``); errors name the file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"config {path} is a folder, expected a YAML file")
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"{path}: not valid YAML{where}: {what}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text (YAML) file: {exc}") from exc
    if data is not None and not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return dict(data or {})


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` on top; nested mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    if not close:  # 'lr_rate' -> 'lr': a known key that is the unknown one's first word
        first = str(key).split("_")[0]
        close = sorted((k for k in known if k == first or k.split("_")[0] == first), key=len)[:1]
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(data: Mapping[str, Any], known: list[str] | set[str], where: str) -> None:
    """The one unknown-key check: a key outside ``known`` is a ``ValueError`` suggesting the closest."""
    known = sorted(known)
    for key in data:
        if key not in known:
            raise ValueError(f"{where}: unknown key {key!r}{_suggest(key, known)}; known: {known}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked against annotation ``tp`` (ints become floats where a float is expected)."""
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in typing.get_args(tp):
            try:
                return _check(value, arm, where)
            except ValueError as e:
                errors.append(e)
        raise ValueError(f"{where}={value!r}: expected {_type_name(tp)}")
    if tp is type(None):
        if value is not None:
            raise ValueError(f"{where}={value!r}: expected null")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}={value!r}: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}={value!r}: expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}={value!r}: expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}={value!r}: expected a string")
        return value
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}={value!r}: expected a list")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ValueError(f"{where}={value!r}: expected {len(args)} values")
            return tuple(_check(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        checked = [_check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(checked) if origin is tuple else checked
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}={value!r}: expected a mapping")
        args = typing.get_args(tp)
        if not args:
            return dict(value)
        return {_check(k, args[0], f"{where} key"): _check(v, args[1], f"{where}[{k!r}]") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build_section(tp, value, where, _root=False)
    return value


def build_section(cls: type[T], data: Mapping[str, Any] | None, where: str, *, _root: bool = True) -> T:
    """Build dataclass ``cls`` from a mapping: the one unknown-key and type check of every config.

    Nested dataclass fields are built recursively from nested mappings; a missing key keeps the
    field's default. Errors are ``ValueError`` naming ``where`` (e.g. ``"cfg.yaml: train"``), the key
    and the value.
    """
    if isinstance(data, cls):
        return data
    if data is not None and not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    check_keys(data, [f.name for f in dataclasses.fields(cls) if f.init], where)
    defaults = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        tp = hints.get(key, Any)
        if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
            # a partial section keeps the parent's defaults for it (e.g. a task's own EngineConfig defaults)
            f = defaults[key]
            base = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(base):
                value = deep_merge(dataclasses.asdict(base), value)
        values[key] = _check(value, tp, f"{where}: {key}" if _root else f"{where}.{key}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None


def load_config(cls: type[T], path: str | os.PathLike | None, *, overrides: Mapping[str, Any] | None = None,
                default: str | os.PathLike | None = None) -> T:
    """YAML (``path``, else ``default``, else the dataclass defaults), then ``overrides``, then validation.

    Args:
        cls: the task's config dataclass.
        path: ``--config``.
        overrides: nested mapping from the flags, e.g. ``{"train": {"lr": 0.01}}``.
        default: the task's embedded default YAML, used when ``path`` is None.

    Returns:
        The validated config; a ``validate()`` method of ``cls``, if any, has been called.
    """
    source = path if path is not None else default
    data = read_yaml_mapping(source) if source is not None else {}
    where = str(source) if source is not None else "config"
    if overrides:
        data = deep_merge(data, overrides)
        where = f"{where} + command line"
    cfg = build_section(cls, data, where)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The plain mapping of a config dataclass (what ``config.yaml`` holds; tuples become lists)."""
    return to_plain(dataclasses.asdict(cfg), type(cfg).__name__)
