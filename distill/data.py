"""Data glue for distillation: unlabeled folders with optional labels, and the teacher-output cache.

Distillation (MobileNets paper, Section 4.5) trains on the teacher's outputs over unlabeled images.
Labels are optional: where a label file names some of the images, ``--hard-weight`` mixes in the
ground truth for those (unknown labels are masked).

* attributes: a label file of ``datasets.attributes`` (CelebA 1/-1 or CSV 1/0/empty).
* classification: a CSV ``image,label`` with an integer class index (empty = unknown).
* embedding: no labels.

``--cache-teacher`` stores the teacher's outputs for every training image once (the teacher is the
expensive part); valid only without augmentation, since the teacher must see the student's input.
The cache file records what it was computed from and is recomputed when any of that changes.
"""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from datasets.attributes import align_labels, read_attribute_file
from datasets.images import ImageFiles
from tasks.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

__all__ = ["IGNORE_INDEX", "compute_teacher_outputs", "labelled_class_images", "load_labels_for", "read_class_labels",
           "teacher_cache"]

IGNORE_INDEX = -100


def read_class_labels(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """A classification label CSV: header ``image,label``, integer class indices, empty = unknown.

    Returns:
        (image names, int64 labels with ``IGNORE_INDEX`` for unknown).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"label file not found: {path}")
    names: list[str] = []
    labels: list[int] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a text file (an image,label CSV): byte {e.start} is not UTF-8") from None
    if not rows or len(rows[0]) != 2:
        raise ValueError(f"{path}: expected a CSV with the header 'image,label'")
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 2:
            raise ValueError(f"{path}, line {lineno}: expected 2 columns (image,label), got {len(row)}")
        name, value = row[0].strip(), row[1].strip()
        if not name:
            raise ValueError(f"{path}, line {lineno}: empty image name")
        if value == "":
            labels.append(IGNORE_INDEX)
        else:
            try:
                v = int(value)
            except ValueError:
                raise ValueError(f"{path}, line {lineno}: label {value!r} is not an integer class index") from None
            if v < 0:
                raise ValueError(f"{path}, line {lineno}: label {v} is negative; classes are 0..C-1")
            labels.append(v)
        names.append(name)
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: some images are listed more than once")
    if not names:
        raise ValueError(f"{path}: no rows")
    return names, np.asarray(labels, dtype=np.int64)


def labelled_class_images(root: str | os.PathLike, ann: str | os.PathLike, transform: Any, *,
                          skip_bad_images: bool = False) -> ImageFiles:
    """The images of a classification label CSV (:func:`read_class_labels`) under ``root``, with targets."""
    names, labels = read_class_labels(ann)
    return ImageFiles(names, transform, targets=labels, root=root, skip_bad_images=skip_bad_images)


def load_labels_for(task: str, path: str, image_names: Sequence[str]) -> tuple[np.ndarray, list[str] | None]:
    """Labels for ``image_names`` (a folder's files) from ``path``: rows for unlabeled images are unknown.

    Returns:
        (targets aligned with ``image_names``, attribute names or None).
    """
    if task == "attributes":
        table = read_attribute_file(path)
        return align_labels(image_names, table), list(table.attribute_names)
    if task == "classification":
        names, labels = read_class_labels(path)
        pos = {n: i for i, n in enumerate(image_names)}
        out = np.full(len(image_names), IGNORE_INDEX, dtype=np.int64)
        absent = [n for n in names if n not in pos]
        if absent:
            raise ValueError(f"{path}: {len(absent)} labeled image(s) are not in the image folder, e.g. {absent[:3]}")
        for n, v in zip(names, labels):
            out[pos[n]] = v
        return out, None
    raise ValueError(f"the {task} task takes no labels (got {path})")


@torch.no_grad()
def compute_teacher_outputs(teacher: Any, dataset: Dataset, *, batch_size: int, num_workers: int,
                            mean: Sequence[float], std: Sequence[float], amp: bool = False,
                            progress: bool = True, desc: str = "teacher") -> Tensor:
    """Teacher outputs [N, D] (float32, CPU) for every image of ``dataset``, row i = sample "index" i."""
    from tqdm import tqdm

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    device = teacher.device
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    out: Tensor | None = None
    filled = torch.zeros(len(dataset), dtype=torch.bool)
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            t = teacher(batch["image"], mean=mean, std=std).float().cpu()
        if out is None:
            out = torch.zeros(len(dataset), t.shape[1])
        idx = torch.as_tensor(batch["index"])
        out[idx] = t
        filled[idx] = True
    assert out is not None
    # A bad image served by its neighbour leaves its own row empty; give it the neighbour's outputs.
    if not filled.all():
        for i in torch.nonzero(~filled).flatten().tolist():
            j = next((k % len(dataset) for k in range(i + 1, i + len(dataset)) if filled[k % len(dataset)]), None)
            if j is not None:
                out[i] = out[j]
    return out


def _fingerprint(names: Sequence[str]) -> str:
    h = hashlib.sha1()
    for n in names:
        h.update(n.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()


def _teacher_file_stamp(spec: str) -> list[Any]:
    """Size and mtime of the teacher file(s) named by the spec, so a retrained teacher invalidates a cache."""
    kind, _, rest = spec.partition(":")
    path = rest.partition(":")[2] if kind == "timm" else (rest if kind in ("torchscript", "export", "onnx") else "")
    if path and os.path.isfile(path):
        st = os.stat(path)
        return [st.st_size, int(st.st_mtime_ns)]
    return []


def teacher_cache(path: str | Path, teacher: Any, dataset: ImageFiles, *, resolution: int,
                  mean: Sequence[float], std: Sequence[float], batch_size: int, num_workers: int,
                  amp: bool = False, progress: bool = True) -> tuple[Tensor, bool]:
    """Load the cached teacher outputs for ``dataset`` from ``path``, or compute and save them.

    Returns:
        (outputs [N, D], True when they were loaded from the file).
    """
    key = {
        "spec": teacher.spec,
        "teacher_file": _teacher_file_stamp(teacher.spec),
        "teacher_config": teacher.config.to_dict(),
        "images": _fingerprint(dataset.paths),
        "count": len(dataset),
        "resolution": int(resolution),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "amp": bool(amp),
    }
    path = Path(path)
    if path.is_file():
        try:
            ckpt = load_checkpoint(path)
            if ckpt.get("key") == key and isinstance(ckpt.get("outputs"), Tensor):
                return ckpt["outputs"], True
        except CheckpointError:
            pass  # a stale or damaged cache is simply recomputed
    outputs = compute_teacher_outputs(teacher, dataset, batch_size=batch_size, num_workers=num_workers, mean=mean,
                                      std=std, amp=amp, progress=progress, desc="caching teacher outputs")
    save_checkpoint(path, {"key": key, "outputs": outputs})
    return outputs, False
