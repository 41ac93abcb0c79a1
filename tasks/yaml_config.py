"""Reading an experiment YAML: the one place that turns a file into a mapping, with errors naming the file."""
from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

import yaml

__all__ = ["read_yaml_mapping", "dataclass_from_mapping"]


def read_yaml_mapping(path: str | os.PathLike) -> dict[str, Any]:
    """The top-level mapping of a YAML file (an empty file gives ``{}``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    if data is not None and not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return dict(data or {})


def dataclass_from_mapping(cls: type, data: Mapping[str, Any] | None, where: str) -> Any:
    """Build config dataclass ``cls`` from one YAML section; unknown keys raise ``ValueError`` naming ``where``."""
    if data is not None and not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    data = dict(data or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    return cls(**data)
