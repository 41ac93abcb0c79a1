"""Checkpoint files for the training engine: atomic writes, safe loads, RNG snapshots.

A checkpoint is a plain dict of tensors and Python primitives, so it loads with
``torch.load(weights_only=True)``: opening a checkpoint never runs code from it. Random-number
generator states (torch, CUDA, Python ``random``, NumPy) are converted to such types too, which
is what lets ``--resume`` reproduce an uninterrupted run exactly.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

# atomic_write_text is re-exported: tasks write config.yaml, metrics.jsonl and summaries through it.
from datasets.io import atomic_write, atomic_write_text

__all__ = [
    "CheckpointError",
    "atomic_write_text",
    "capture_rng_state",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
    "to_plain",
]


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be read as a safe, plain checkpoint."""


def save_checkpoint(path: str | Path, obj: dict[str, Any]) -> Path:
    """Save ``obj`` with ``torch.save`` atomically (``datasets.io.atomic_write``: temp file + fsync + rename).

    Args:
        path: destination file, e.g. ``out/last.pt``; parent directories are created.
        obj: a plain dict (tensors, numbers, strings, lists, tuples, dicts).

    Returns:
        The destination path.
    """
    if not isinstance(obj, dict):
        raise TypeError(f"checkpoint must be a dict, got {type(obj).__name__} for {path}")
    return atomic_write(path, lambda f: torch.save(obj, f), "wb")


def load_checkpoint(path: str | Path, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(..., weights_only=True)``.

    Args:
        path: checkpoint file.
        map_location: passed to ``torch.load`` (default: everything on CPU).

    Returns:
        The checkpoint dict.

    Raises:
        FileNotFoundError: ``path`` does not exist or is not a file.
        CheckpointError: the file is truncated/corrupt, holds objects that safe loading refuses,
            or is not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint {path} holds objects that weights_only loading refuses "
            f"(only tensors and plain Python values are allowed): {e}"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {e}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return obj


def to_plain(value: Any, name: str = "value") -> Any:
    """Return ``value`` as plain data that both ``weights_only`` loading and YAML accept.

    Tuples become lists and ``Path`` objects strings; dict keys must be str/int/float/bool.
    NumPy scalars become Python numbers. Anything else (tensors, arrays, custom objects) raises
    ``TypeError`` naming where it sits, so configs and metadata stay human-readable.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [to_plain(v, f"{name}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, (str, int, float, bool)):
                raise TypeError(f"{name} has a key of type {type(k).__name__} ({k!r}); use str or int keys")
            out[k] = to_plain(v, f"{name}[{k!r}]")
        return out
    raise TypeError(
        f"{name} is a {type(value).__name__}; only None, bool, int, float, str, lists and dicts "
        "are allowed in configs and checkpoint metadata"
    )


def capture_rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Snapshot every RNG the training loop draws from, as ``weights_only``-loadable data.

    Args:
        device: the training device; the CUDA generator of that device is included when it is a
            CUDA device (CPU runs never touch CUDA, so no context is created on a GPU machine).

    Returns:
        ``{"torch": ByteTensor, "cuda": ByteTensor | None, "python": {...}, "numpy": {...}}``.
    """
    version, internal, gauss_next = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    cuda_state = None
    if device is not None and torch.device(device).type == "cuda":
        cuda_state = torch.cuda.get_rng_state(torch.device(device))
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda_state,
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
        # NumPy's key is a uint32 array; an int64 tensor holds it exactly and loads safely.
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
    }


def restore_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Inverse of :func:`capture_rng_state`.

    Raises:
        CheckpointError: ``state`` lacks a generator or has the wrong shape.
    """
    try:
        torch.set_rng_state(state["torch"].cpu())
        py = state["python"]
        random.setstate((py["version"], tuple(int(x) for x in py["internal"]), py["gauss_next"]))
        npst = state["numpy"]
        np.random.set_state(
            (
                npst["name"],
                npst["keys"].cpu().numpy().astype(np.uint32),
                int(npst["pos"]),
                int(npst["has_gauss"]),
                float(npst["cached_gaussian"]),
            )
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"checkpoint 'rng' entry is malformed: {e!r}") from e
    cuda_state = state.get("cuda")
    if cuda_state is not None and device is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(cuda_state.cpu(), torch.device(device))
