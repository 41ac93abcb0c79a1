"""The cache of built-in datasets (and other built-once artefacts such as the default distillation teacher).

:func:`ensure_cached` is the one way the suite builds them. A build lives in
``<cache>/<name>-v<version>-<key>``, ``key`` a hash of the name, the generator version and the
generator parameters, so other settings never reuse it. It is written into a temp folder and renamed
into place; the marker file ``.complete`` is written last and holds the name, version and parameters, so
a folder counts as present only when its marker matches the request. Concurrent callers (DDP ranks,
parallel test processes) wait on a per-folder lock and then reuse the first one's build; where locking
is unavailable they both build and the first rename wins.

The cache is ``$MOBILENET_SUITE_CACHE`` if set, else ``~/.cache/mobilenet_suite``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from datasets.io import atomic_dir, atomic_write_json, remove_dir

try:  # POSIX only; elsewhere concurrent builders race and the first rename wins
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "CACHE_ENV",
    "MARKER",
    "build_once",
    "cache_key",
    "cache_marker",
    "default_cache_dir",
    "ensure_cached",
    "is_complete",
]

CACHE_ENV = "MOBILENET_SUITE_CACHE"
MARKER = ".complete"

Writer = Callable[[Path], Any]


def default_cache_dir() -> str:
    """``$MOBILENET_SUITE_CACHE`` if set, else ``~/.cache/mobilenet_suite``."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "mobilenet_suite")


def _plain(marker: Any) -> Any:
    # What the marker reads back as (tuples become lists ...), so a fresh request compares equal to it.
    try:
        return json.loads(json.dumps(marker, sort_keys=True))
    except TypeError as e:
        raise TypeError(f"cache parameters must be JSON data (numbers, strings, lists, dicts): {e}") from None


def is_complete(root: str | os.PathLike, marker: Any) -> bool:
    """True when ``root`` holds a finished build whose marker equals ``marker``."""
    try:
        with open(os.path.join(root, MARKER), encoding="utf-8") as f:
            return json.load(f) == _plain(marker)
    except (OSError, ValueError):
        return False


def cache_marker(name: str, params: Mapping[str, Any], version: int) -> dict[str, Any]:
    """What the marker of a build of ``name`` (generator ``version``, ``params``) holds."""
    return _plain({"name": name, "version": version, "params": dict(params)})


def cache_key(name: str, params: Mapping[str, Any], version: int) -> str:
    """The folder-name hash of a build: name, generator version and parameters."""
    text = json.dumps(cache_marker(name, params, version), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@contextlib.contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive lock for building ``root`` (a hidden ``.<name>.lock`` file next to it).

    flock locks belong to the open file, so threads and processes alike wait for each other, and the
    kernel drops the lock when its holder dies. The lock file is left in place: deleting it would let a
    waiter and a newcomer lock different files.
    """
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    with open(root.parent / f".{root.name}.lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def build_once(root: str | os.PathLike, marker: Mapping[str, Any], writer: Writer, *, force: bool = False) -> Path:
    """``root`` holding a complete build described by ``marker``, written by ``writer`` unless it already is.

    Args:
        root: the folder (its parent is created).
        marker: JSON data describing the build; stored in ``root/.complete``, written last.
        writer: ``writer(tmp_dir)`` writes the build into an empty temp folder next to ``root``.
        force: rebuild even when ``root`` is complete.

    Returns:
        ``root`` as a ``Path``.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():  # a user's file is never replaced by a dataset
        raise NotADirectoryError(f"{root} is a file, not a dataset folder; choose another folder")
    if not force and is_complete(root, marker):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(root):
        if not force and is_complete(root, marker):  # built by whoever held the lock before us
            return root
        if root.exists():
            remove_dir(root)  # stale, interrupted or to be replaced: never reused half-way
        try:
            with atomic_dir(root) as tmp:
                writer(tmp)
                atomic_write_json(tmp / MARKER, _plain(marker))  # last: its presence means complete
        except FileExistsError:
            if not is_complete(root, marker):  # someone finished first without the lock: use theirs
                raise
    return root


def ensure_cached(name: str, params: Mapping[str, Any], writer: Writer, *, version: int,
                  cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder of dataset ``name`` built with ``params``, calling ``writer`` on first use.

    Args:
        name: dataset name, the folder's prefix (e.g. "shapes").
        params: the generator's parameters (JSON data); hashed into the folder name with ``version``.
        writer: ``writer(tmp_dir)`` writes the dataset into an empty temp folder.
        version: the generator version; bump it when the output changes so old builds are not reused.
        cache_dir: default :func:`default_cache_dir`.

    Returns:
        The final folder, ``<cache>/<name>-v<version>-<key>``.
    """
    if not name or os.sep in name or name.startswith("."):
        raise ValueError(f"cache name must be a plain folder name, got {name!r}")
    cache = Path(cache_dir or default_cache_dir())
    if cache.exists() and not cache.is_dir():
        raise NotADirectoryError(f"cache folder {cache} is a file ({CACHE_ENV} or --cache-dir): give a folder")
    root = cache / f"{name}-v{version}-{cache_key(name, params, version)}"
    return build_once(root, cache_marker(name, params, version), writer)
