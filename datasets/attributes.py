"""Face-attribute label files: image -> N binary attributes (MobileNets paper, Section 4.5, Table 12).

Two layouts are read and written:

* CelebA's ``list_attr_celeba.txt``: first line the number of images, second line the attribute
  names separated by spaces, then one line per image: ``000001.jpg -1  1  1 -1 ...`` with 1 (has the
  attribute) or -1 (does not). Every value must be known.
* A plain CSV (``.csv``): a header ``image,<attr1>,<attr2>,...`` and one row per image with 1, 0, or
  an empty cell for an unknown label.

In memory labels are a float32 array [N, A] with 1.0, 0.0 and NaN for unknown; losses and mean AP
leave the unknown entries out, per attribute.

CelebA's ``list_eval_partition.txt`` (``name 0|1|2`` for train/val/test) is read by
:func:`read_partition_file` to select a split.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from datasets.images import ImageFiles
from datasets.io import atomic_write_text

__all__ = [
    "AttributeDataset",
    "AttributeTable",
    "PARTITIONS",
    "align_labels",
    "read_attribute_file",
    "read_partition_file",
    "write_attribute_file",
]

PARTITIONS = {"train": 0, "val": 1, "test": 2}


@dataclass
class AttributeTable:
    """The contents of a label file.

    Attributes:
        path: the file read.
        attribute_names: A names, in file order.
        image_names: N image paths as written in the file (relative to an image folder).
        labels: float32 [N, A]: 1.0, 0.0, NaN (unknown).
    """

    path: str
    attribute_names: list[str]
    image_names: list[str]
    labels: np.ndarray

    def select(self, names: Sequence[str]) -> AttributeTable:
        """The rows of ``names`` (in that order); unknown names raise ``ValueError``."""
        pos = {n: i for i, n in enumerate(self.image_names)}
        missing = [n for n in names if n not in pos]
        if missing:
            raise ValueError(f"{self.path}: no labels for {len(missing)} image(s), e.g. {missing[:3]}")
        idx = [pos[n] for n in names]
        return AttributeTable(self.path, list(self.attribute_names), list(names), self.labels[idx])


def _detect_format(path: str, first_line: str) -> str:
    if path.lower().endswith(".csv"):
        return "csv"
    if first_line.strip().isdigit():
        return "celeba"
    if "," in first_line:
        return "csv"
    raise ValueError(
        f"{path}: cannot tell the label format: expected CelebA's list_attr_celeba.txt (first line = number "
        f"of images) or a CSV with a header 'image,<attr>,...'; first line is {first_line.strip()[:80]!r}"
    )


def _check_names(names: list[str], path: str, where: str) -> None:
    if not names:
        raise ValueError(f"{path}: {where} lists no attributes")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{path}: {where} has duplicate attribute names {dup}")


def _read_celeba(path: str, lines: list[str]) -> AttributeTable:
    lines = list(lines)
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) < 2:
        raise ValueError(f"{path}: a CelebA attribute file needs a count line and a names line")
    count = int(lines[0].strip())
    names = lines[1].split()
    _check_names(names, path, "line 2")
    images: list[str] = []
    rows: list[list[float]] = []
    for lineno, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            raise ValueError(f"{path}, line {lineno}: empty line inside the table")
        if len(parts) != len(names) + 1:
            raise ValueError(f"{path}, line {lineno}: expected an image name and {len(names)} values, "
                             f"got {len(parts) - 1} values")
        row = []
        for name, value in zip(names, parts[1:]):
            if value == "1":
                row.append(1.0)
            elif value == "-1":
                row.append(0.0)
            else:
                raise ValueError(f"{path}, line {lineno}, attribute {name!r}: value {value!r} is not 1 or -1 "
                                 "(use the CSV layout for unknown labels)")
        images.append(parts[0])
        rows.append(row)
    if count != len(images):
        raise ValueError(f"{path}: line 1 says {count} images but the table has {len(images)} rows")
    return AttributeTable(path, names, images, np.asarray(rows, dtype=np.float32).reshape(len(rows), len(names)))


def _read_csv(path: str, text: str) -> AttributeTable:
    reader = csv.reader(text.splitlines())
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ValueError(f"{path}: empty CSV file") from None
    if len(header) < 2:
        raise ValueError(f"{path}: the header needs an image column and at least one attribute, got {header}")
    names = header[1:]
    _check_names(names, path, "the header")
    if any(not n for n in names):
        raise ValueError(f"{path}: the header has an empty attribute name: {header}")
    images: list[str] = []
    rows: list[list[float]] = []
    for lineno, parts in enumerate(reader, start=2):
        if not parts or all(not p.strip() for p in parts):
            continue
        if len(parts) != len(header):
            raise ValueError(f"{path}, line {lineno}: expected {len(header)} columns, got {len(parts)}")
        image = parts[0].strip()
        if not image:
            raise ValueError(f"{path}, line {lineno}: empty image name")
        row = []
        for name, raw in zip(names, parts[1:]):
            value = raw.strip()
            if value == "1":
                row.append(1.0)
            elif value == "0":
                row.append(0.0)
            elif value == "":
                row.append(math.nan)
            else:
                raise ValueError(f"{path}, line {lineno}, attribute {name!r}: value {value!r} is not 1, 0 or "
                                 "empty (unknown)")
        images.append(image)
        rows.append(row)
    return AttributeTable(path, names, images, np.asarray(rows, dtype=np.float32).reshape(len(rows), len(names)))


def read_attribute_file(path: str | os.PathLike, *, fmt: str | None = None) -> AttributeTable:
    """Read a label file in CelebA or CSV layout (see the module docstring).

    Args:
        path: the file.
        fmt: "celeba" or "csv"; ``None`` decides by the ``.csv`` suffix or, failing that, by the
            first line (a lone number means CelebA).

    Raises:
        FileNotFoundError: no such file.
        ValueError: malformed content, naming the file, line and attribute; duplicate image names;
            no rows.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"attribute label file {path} is a folder; give the label file inside it")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"attribute label file not found: {path}")
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a text file: {e}") from e
    lines = text.splitlines()
    if not lines:
        raise ValueError(f"{path}: empty label file")
    fmt = fmt or _detect_format(path, lines[0])
    if fmt == "celeba":
        if not lines[0].strip().isdigit():
            raise ValueError(f"{path}: line 1 of a CelebA attribute file must be the number of images, "
                             f"got {lines[0].strip()[:80]!r}")
        table = _read_celeba(path, lines)
    elif fmt == "csv":
        table = _read_csv(path, text)
    else:
        raise ValueError(f"fmt must be 'celeba', 'csv' or None, got {fmt!r}")
    if not table.image_names:
        raise ValueError(f"{path}: no image rows")
    seen: set[str] = set()
    for name in table.image_names:
        if name in seen:
            raise ValueError(f"{path}: image {name!r} is listed more than once")
        seen.add(name)
    return table


def write_attribute_file(
    path: str | os.PathLike,
    image_names: Sequence[str],
    attribute_names: Sequence[str],
    labels: np.ndarray,
    *,
    fmt: str = "csv",
) -> str:
    """Write labels (1.0 / 0.0 / NaN) in CelebA (1/-1, no unknowns) or CSV (1/0/empty) layout, atomically.

    Returns:
        The path written.
    """
    path = os.fspath(path)
    labels = np.asarray(labels, dtype=np.float32)
    names = list(attribute_names)
    if labels.shape != (len(image_names), len(names)):
        raise ValueError(f"labels has shape {labels.shape}, expected ({len(image_names)}, {len(names)})")
    known = ~np.isnan(labels)
    if np.any(known & (labels != 0) & (labels != 1)):
        raise ValueError("labels must be 1, 0 or NaN (unknown)")
    if fmt == "celeba":
        if not known.all():
            raise ValueError(f"{path}: CelebA layout cannot hold unknown labels; write a CSV instead")
        if any(" " in n for n in list(names) + list(image_names)):
            raise ValueError(f"{path}: CelebA layout is space-separated; names must not contain spaces")
        out = [str(len(image_names)), " ".join(names)]
        for img, row in zip(image_names, labels):
            out.append(img + " " + " ".join("%2d" % (1 if v == 1 else -1) for v in row))
        text = "\n".join(out) + "\n"
    elif fmt == "csv":
        rows = [["image", *names]]
        for img, row in zip(image_names, labels):
            rows.append([img, *("" if math.isnan(v) else str(int(v)) for v in row)])
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        text = buf.getvalue()
    else:
        raise ValueError(f"fmt must be 'celeba' or 'csv', got {fmt!r}")
    atomic_write_text(path, text)
    return path


def read_partition_file(path: str | os.PathLike) -> dict[str, int]:
    """CelebA's ``list_eval_partition.txt``: ``name -> 0 (train) | 1 (val) | 2 (test)``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"partition file not found: {path}")
    out: dict[str, int] = {}
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a text file (a list_eval_partition.txt): byte {e.start} is not "
                         "UTF-8") from None
    for lineno, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise ValueError(f"{path}, line {lineno}: expected '<image> 0|1|2', got {line.strip()!r}")
        out[parts[0]] = int(parts[1])
    return out


def align_labels(image_names: Sequence[str], table: AttributeTable, *, strict: bool = True) -> np.ndarray:
    """Label rows for ``image_names`` (e.g. every file of a folder): NaN rows for unlabeled images.

    Args:
        image_names: names relative to the image folder, '/'-separated.
        table: labels; its names are matched after normalising separators and a leading './'.
        strict: raise when the table names an image that is not among ``image_names``.

    Returns:
        float32 [len(image_names), A].
    """
    def norm(n: str) -> str:
        n = n.replace("\\", "/")
        return n[2:] if n.startswith("./") else n

    pos = {norm(n): i for i, n in enumerate(image_names)}
    out = np.full((len(image_names), len(table.attribute_names)), np.nan, dtype=np.float32)
    absent = []
    for row, name in enumerate(table.image_names):
        i = pos.get(norm(name))
        if i is None:
            absent.append(name)
            continue
        out[i] = table.labels[row]
    if absent and strict:
        raise ValueError(f"{table.path}: {len(absent)} labeled image(s) are not in the image folder, "
                         f"e.g. {absent[:3]}")
    return out


class AttributeDataset(ImageFiles):
    """Images of a label file with their attribute vectors: samples ``{"image", "target", "index"}``,
    ``target`` float32 [A] with NaN for unknown.

    Args:
        image_root: folder the file's image names are relative to.
        labels: a label file path or an :class:`AttributeTable`.
        transform: PIL -> tensor (``datasets.images.build_image_transform``).
        partition: optional ``(partition file, split)`` with split "train", "val" or "test"
            (CelebA's ``list_eval_partition.txt``) to keep one split.
        skip_bad_images: as in :class:`datasets.images.ImageFiles`.
    """

    def __init__(
        self,
        image_root: str | os.PathLike,
        labels: str | os.PathLike | AttributeTable,
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        partition: tuple[str, str] | None = None,
        skip_bad_images: bool = False,
    ) -> None:
        if not os.path.isdir(image_root):
            raise FileNotFoundError(f"image folder not found: {os.fspath(image_root)}")
        table = labels if isinstance(labels, AttributeTable) else read_attribute_file(labels)
        if partition is not None:
            part_file, split = partition
            if split not in PARTITIONS:
                raise ValueError(f"split must be one of {sorted(PARTITIONS)}, got {split!r}")
            parts = read_partition_file(part_file)
            keep = [n for n in table.image_names if parts.get(n) == PARTITIONS[split]]
            if not keep:
                raise ValueError(f"{part_file}: no image of {table.path} is in split {split!r}")
            table = table.select(keep)
        self.table = table
        self.attribute_names: list[str] = list(table.attribute_names)
        super().__init__(table.image_names, transform, targets=table.labels, root=image_root,
                         skip_bad_images=skip_bad_images)

    @property
    def num_attributes(self) -> int:
        return len(self.attribute_names)
