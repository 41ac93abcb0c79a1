"""Where the built-in synthetic datasets are cached, and how a cached copy is known to be complete.

A dataset is written into a temp folder, then renamed into place; the marker file, written last, holds
the generation parameters, so a folder counts as present only when its marker matches the request.
"""
from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["CACHE_ENV", "MARKER", "default_cache_dir", "is_complete"]

CACHE_ENV = "MOBILENET_SUITE_CACHE"
MARKER = ".complete"


def default_cache_dir() -> str:
    """``$MOBILENET_SUITE_CACHE`` if set, else ``~/.cache/mobilenet_suite``."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "mobilenet_suite")


def is_complete(root: str | os.PathLike, params: Any) -> bool:
    """True when ``root`` holds a finished dataset generated with exactly ``params``."""
    try:
        with open(os.path.join(root, MARKER)) as f:
            return json.load(f) == params
    except (OSError, ValueError):
        return False
