"""Checkpoint files for the training engine: atomic writes, safe loads, RNG snapshots.

A checkpoint is a plain dict of tensors and Python primitives, so it loads with
``torch.load(weights_only=True)``: opening a checkpoint never runs code from it. Random-number
generator states (torch, CUDA, Python ``random``, NumPy) are converted to such types too, which
is what lets ``--resume`` reproduce an uninterrupted run exactly.
"""

from __future__ import annotations

import importlib
import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

# atomic_write_text is re-exported: tasks write config.yaml, metrics.jsonl and summaries through it.
from backbone.pretrained import check_torch_file
from datasets.io import atomic_write, atomic_write_text

__all__ = [
    "CHECKPOINT_FORMAT",
    "MODEL_BUILDERS",
    "CheckpointError",
    "checkpoint_meta",
    "load_model",
    "normalize_meta",
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
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; give the .pt file (e.g. {path / 'best.pt'})")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        check_torch_file(path)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint {path} holds objects that weights_only loading refuses "
            f"(only tensors and plain Python values are allowed): {_unpickler_reason(e)}"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {e}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return obj


def _unpickler_reason(error: BaseException) -> str:
    """The one line of torch's weights_only refusal that says what was refused (it adds a page of advice)."""
    text = str(error)
    for line in text.splitlines():
        if "WeightsUnpickler error:" in line:
            reason = line.split("WeightsUnpickler error:", 1)[1].strip()
            return reason.split(" Please use", 1)[0].strip() or reason
    return next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)


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


# --------------------------------------------------------------------------------------------
# One metadata shape and one loader for every task's checkpoint
# --------------------------------------------------------------------------------------------

CHECKPOINT_FORMAT = 2

# The networks a checkpoint may name, and where their builders live. A checkpoint only ever selects
# an entry of this table (never a module or function of its own), so loading one runs no code from it.
MODEL_BUILDERS: dict[str, tuple[str, str]] = {
    "classifier": ("tasks.classifier", "build_classifier"),
    "detector": ("tasks.detection.build", "build_detector"),
    "face_embedder": ("tasks.faces.model", "face_embedder"),
    "geo_classifier": ("tasks.geolocation.model", "build_geo_classifier"),
}


def checkpoint_meta(task: str, model: str, args: Mapping[str, Any], *, resolution: int,
                    mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0),
                    labels: Sequence[str] = (), state_prefix: str = "", train_only: Sequence[str] = (),
                    **extra: Any) -> dict[str, Any]:
    """The metadata every task's checkpoint carries (``ckpt["meta"]``), in one shape.

    Args:
        task: the task that wrote it ("detection", "faces", "attributes", "distill", ...).
        model: the :data:`MODEL_BUILDERS` entry that rebuilds the network.
        args: that builder's keyword arguments (plain data).
        resolution: input side the model was trained at.
        mean, std: normalisation the caller applies to RGB in [0, 1] before the model (models that
            normalise inside, the detectors and face embedders, say 0 and 1).
        labels: the names of the outputs (classes, attributes, identities; may be empty).
        state_prefix: prefix of the network's keys in the saved state (a training wrapper's).
        train_only: key prefixes of modules used in training only (a margin head, hint adapters).
        extra: task-specific entries (e.g. detection's ``label_to_cat_id``), kept as they are.
    """
    if model not in MODEL_BUILDERS:
        raise ValueError(f"unknown model builder {model!r}; known: {sorted(MODEL_BUILDERS)}")
    return to_plain({
        "format": CHECKPOINT_FORMAT,
        "task": task,
        "model": {"name": model, "args": dict(args), "state_prefix": state_prefix, "train_only": list(train_only)},
        "preprocess": {"resolution": int(resolution), "mean": [float(v) for v in mean],
                       "std": [float(v) for v in std]},
        "labels": [str(v) for v in labels],
        **extra,
    }, "meta")


def normalize_meta(meta: Mapping[str, Any], path: str | Path = "checkpoint") -> dict[str, Any]:
    """``meta`` in the current shape; checkpoints of the first format (before one shape) are converted."""
    if not isinstance(meta, Mapping):
        raise CheckpointError(f"{path}: 'meta' is a {type(meta).__name__}, expected a mapping")
    fmt = meta.get("format", 1)
    if isinstance(fmt, int) and fmt > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {fmt}; this version reads up to {CHECKPOINT_FORMAT}: "
                              "update mobilenet-suite")
    if fmt == CHECKPOINT_FORMAT:
        for key in ("task", "model", "preprocess", "labels"):
            if key not in meta:
                raise CheckpointError(f"{path}: checkpoint metadata lacks {key!r}")
        return dict(meta)
    # format 1: three shapes, one per loader that existed then
    old = dict(meta)
    if "face_model" in old:  # tasks.faces.train
        fm = old.pop("face_model")
        return checkpoint_meta("faces", "face_embedder", fm, resolution=fm.get("resolution", 160),
                               labels=old.pop("identities", []), train_only=["margin."],
                               center_crop=fm.get("center_crop", 1.0),
                               **{k: v for k, v in old.items() if k != "task"})
    if old.get("task") == "detection" and isinstance(old.get("model"), Mapping):
        args = old.pop("model")
        return checkpoint_meta("detection", "detector", args, resolution=args.get("size") or 300,
                               labels=old.pop("class_names", []),
                               **{k: v for k, v in old.items() if k != "task"})
    if isinstance(old.get("model"), Mapping) and "num_outputs" in old["model"]:  # distill / attributes
        task = old.pop("task", "attributes")
        extra = {k: v for k, v in old.items()
                 if k not in ("model", "resolution", "mean", "std", "attribute_names", "state_prefix")}
        return checkpoint_meta("attributes" if task == "attributes" and "teacher" not in old else "distill",
                               "classifier", old["model"], resolution=old.get("resolution", 224),
                               mean=old.get("mean", (0.485, 0.456, 0.406)), std=old.get("std", (0.229, 0.224, 0.225)),
                               labels=old.get("attribute_names") or [], state_prefix=old.get("state_prefix", ""),
                               output=task, **{k: v for k, v in extra.items() if k != "output"})
    raise CheckpointError(f"{path} is not a model checkpoint of this suite (its metadata names no model)")


def _builder(name: str, path: str | Path) -> Any:
    if name not in MODEL_BUILDERS:
        raise CheckpointError(f"{path} names model {name!r}, which this suite does not build "
                              f"(known: {sorted(MODEL_BUILDERS)})")
    module, function = MODEL_BUILDERS[name]
    return getattr(importlib.import_module(module), function)


def load_state_strict(model: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """``model.load_state_dict(state)``, with a mismatch raised as ``ValueError`` naming the tensors."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} of other shape (file vs model), e.g. {wrong[:3]}")
        if missing:
            parts.append(f"{len(missing)} missing, e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[:3]}")
        raise CheckpointError(f"{where}: weights do not fit the model: " + "; ".join(parts))
    model.load_state_dict(state)


def load_model(path: str | Path, device: str | torch.device = "cpu", *,
               task: str | Sequence[str] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network of any task's checkpoint (``best.pt``, ``last.pt``, ``student.pt``).

    Read with ``weights_only=True``; the network is chosen from :data:`MODEL_BUILDERS` by the
    checkpoint's metadata and gets exactly the saved weights (training-only modules left out).

    Args:
        path: the checkpoint.
        device: where the model goes.
        task: the task(s) the caller accepts; another task's checkpoint is a ``CheckpointError``.

    Returns:
        (model in eval mode on ``device``, metadata in the current shape).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError (a ``ValueError``): not a checkpoint, another task's, or weights that do not fit
            (the tensors are named).
    """
    ckpt = load_checkpoint(path, map_location="cpu")
    if "model" not in ckpt or "meta" not in ckpt:
        raise CheckpointError(f"{path} is not a model checkpoint of this suite (no 'model'/'meta' entries)")
    meta = normalize_meta(ckpt["meta"], path)
    if task is not None:
        accepted = [task] if isinstance(task, str) else list(task)
        if meta["task"] not in accepted:
            raise CheckpointError(f"{path} is a {meta['task']} checkpoint; this command reads {' or '.join(accepted)}")
    spec = meta["model"]
    build = _builder(spec.get("name", ""), path)
    try:
        model = build(**spec.get("args", {}))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot rebuild {spec.get('name')} from {spec.get('args')}: {e}") from e
    prefix, drop = spec.get("state_prefix", ""), tuple(spec.get("train_only", ()))
    state = {k[len(prefix):]: v for k, v in ckpt["model"].items() if k.startswith(prefix)}
    state = {k: v for k, v in state.items() if not (drop and k.startswith(drop))}
    load_state_strict(model, state, str(path))
    return model.to(device).eval(), meta
