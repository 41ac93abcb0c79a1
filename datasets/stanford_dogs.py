"""Fine-grained classification data: Stanford Dogs, class folders and ``path,label`` CSVs (MobileNets
paper, Section 4.3, Table 10).

Stanford Dogs: A. Khosla, N. Jayadevaprakash, B. Yao and L. Fei-Fei, "Novel dataset for fine-grained
image categorization", First Workshop on Fine-Grained Visual Categorization, CVPR 2011. 120 breeds,
20,580 images (ImageNet images of the 120 dog wnids); official split 12,000 train / 8,580 test.

Three on-disk formats give one result, a :class:`FineGrainedIndex` (classes + image records per split),
which :class:`FineGrainedDataset` serves:

* **Stanford Dogs** (:func:`read_stanford_dogs`), the official layout::

      Images/<wnid>-<Breed>/<wnid>_<n>.jpg
      Annotation/<wnid>-<Breed>/<wnid>_<n>     VOC-like XML, no extension, one or more <object>
      lists/train_list.mat, lists/test_list.mat (also accepted directly under the root, as lists.tar unpacks)

  A list holds ``file_list`` and ``annotation_list`` (cell arrays of paths relative to ``Images/`` and
  ``Annotation/``) and ``labels`` (1-indexed, wnid order). ``scipy.io.loadmat`` nests each cell twice
  (``[[array(['a.jpg'])], ...]``) without ``squeeze_me`` and flattens it with; :func:`parse_mat_list`
  reads either, and row or column cells. Classes are the breed folders of ``Images/`` in sorted (= wnid)
  order; each listed label must agree with its file's folder. Splits: ``"train"`` and ``"test"``.
* **Class folders** (:func:`read_class_folders`): ``root/<class>/<image>`` (torchvision's ImageFolder
  arrangement; CUB and most user sets). Class folders are searched recursively for images. One split,
  ``"all"``.
* **CSV** (:func:`read_label_csv`): rows ``path,label`` (further columns are ignored). The first row is a
  header when its first cell is neither an image file name (an image extension) nor an existing file. A
  label is a class name, or, when every label of the file is an integer, a 0-based class index. Paths
  are relative to the CSV's folder unless an image root is given. One split, ``"all"``.

:func:`open_finegrained` tells the three apart. Pass ``classes=`` (the training data's
:class:`ClassList`) when reading a second source, such as a separate test CSV: every class is then
mapped to the training index (by folder name, wnid or readable name), and an unknown class is an
error naming it, so the same class has the same index in every split.

Class names: a folder ``n02085620-Chihuahua`` is the class with key ``n02085620-Chihuahua``, wnid
``n02085620`` and readable name ``Chihuahua``; underscores become spaces (``Japanese_spaniel`` ->
``Japanese spaniel``), hyphens stay (``Shih-Tzu``).

Validation: :func:`stratified_holdout` holds out ``val_fraction`` of every class of the training records
(seeded; at least one image per class that has two or more, never its last one). :func:`standard_splits`
gives ``train``/``val``/``test`` for any source; validation is never the test list.

Boxes (``crop="box"``: every annotated box is a sample, served as the crop of its image). The rule, in
the spirit of ``datasets.coco``: coordinates must be numbers (else ``ValueError``); a box is clipped to
the image size the XML states (counted in ``stats["clipped_boxes"]``) and dropped when it has no area
(``xmax <= xmin`` or ``ymax <= ymin``, before or after clipping; ``stats["degenerate_boxes_dropped"]``).
An image whose boxes are all dropped gives no sample (``stats["images_without_boxes"]``). When the crop is
taken the box is clipped again to the decoded image; if nothing is left the XML size was wrong and
loading stops naming the annotation. Coordinates are used as written (pixel units, xyxy).

Images are decoded by ``datasets.images.load_rgb_image`` (the set's PNG named ``.jpg``, its grayscale
and CMYK JPEGs come out RGB); bad images are handled the suite's way (``datasets.images``): a missing
listed file raises ``FileNotFoundError`` naming it and its list, or with ``skip_bad_images=True`` is
dropped and counted; :meth:`FineGrainedDataset.scan_images` decodes everything once and drops (and
counts) undecodable files.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from datasets.images import SkippedImages, is_image_file, list_images, load_readable, scan_images, split_holdout

__all__ = [
    "CROP_MODES",
    "FORMATS",
    "Annotation",
    "ClassList",
    "FineGrainedDataset",
    "FineGrainedIndex",
    "ImageRecord",
    "MatList",
    "breed_from_folder",
    "clean_boxes",
    "detect_format",
    "find_dogs_list",
    "open_finegrained",
    "parse_mat_list",
    "read_annotation",
    "read_class_folders",
    "read_label_csv",
    "read_mat_list",
    "read_stanford_dogs",
    "standard_splits",
    "stratified_holdout",
]

logger = logging.getLogger(__name__)

FORMATS = ("stanford_dogs", "folders", "csv")
CROP_MODES = ("none", "box")
_WNID_FOLDER = re.compile(r"^(n\d{8})-(.+)$")
_MAT_VARIABLES = ("file_list", "annotation_list", "labels")


# --------------------------------------------------------------------------------------------------
# classes


def breed_from_folder(folder: str) -> tuple[str | None, str]:
    """``(wnid, readable name)`` of a class folder: ``"n02085782-Japanese_spaniel"`` ->
    ``("n02085782", "Japanese spaniel")``; a folder without a wnid prefix -> ``(None, name)``."""
    m = _WNID_FOLDER.match(folder)
    wnid, rest = (m.group(1), m.group(2)) if m else (None, folder)
    name = " ".join(rest.replace("_", " ").split())
    return wnid, name or folder


def _norm(label: str) -> str:
    return " ".join(label.replace("_", " ").split()).casefold()


@dataclass(frozen=True)
class ClassList:
    """The classes of a data set, index = position.

    Attributes:
        keys: the class as on disk (folder name or CSV label), unique.
        names: readable names (``breed_from_folder``).
        wnids: WordNet ids where the key carries one, else ``None``.
    """

    keys: tuple[str, ...]
    names: tuple[str, ...]
    wnids: tuple[str | None, ...]
    _lookup: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not len(self.keys) == len(self.names) == len(self.wnids):
            raise ValueError(f"class list: {len(self.keys)} keys, {len(self.names)} names, {len(self.wnids)} wnids")
        dup = sorted({k for k in self.keys if self.keys.count(k) > 1})
        if dup:
            raise ValueError(f"class list: duplicate classes {dup}")
        # Exact keys win; a wnid or readable name counts where it points to one class only.
        owners: dict[str, set[int]] = {}
        for i, (key, name, wnid) in enumerate(zip(self.keys, self.names, self.wnids)):
            for c in (_norm(key), _norm(name), (wnid or "").casefold()):
                if c:
                    owners.setdefault(c, set()).add(i)
        self._lookup.update({c: next(iter(o)) for c, o in owners.items() if len(o) == 1})
        self._lookup.update({_norm(k): i for i, k in enumerate(self.keys)})

    @classmethod
    def from_keys(cls, keys: Sequence[str]) -> ClassList:
        """Classes named by folder names or labels; wnids and readable names from :func:`breed_from_folder`."""
        parsed = [breed_from_folder(k) for k in keys]
        return cls(tuple(keys), tuple(p[1] for p in parsed), tuple(p[0] for p in parsed))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassList:
        """The inverse of :meth:`as_dict` (e.g. from a checkpoint's metadata)."""
        try:
            return cls(tuple(data["keys"]), tuple(data["names"]), tuple(data["wnids"]))
        except KeyError as e:
            raise ValueError(f"class list: field {e.args[0]!r} missing (need keys, names, wnids)") from None

    def as_dict(self) -> dict[str, list]:
        """Plain JSON data: ``{"keys": [...], "names": [...], "wnids": [...]}``."""
        return {"keys": list(self.keys), "names": list(self.names), "wnids": list(self.wnids)}

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, label: str) -> int | None:
        """Index of a class given by key, wnid or readable name (case and ``_``/space insensitive), or None."""
        return self._lookup.get(_norm(str(label)))

    def index(self, label: str, where: str) -> int:
        """Like :meth:`lookup`, but an unknown class raises ``ValueError`` naming it and ``where``."""
        i = self.lookup(label)
        if i is None:
            some = ", ".join(repr(k) for k in self.keys[:5]) + (", ..." if len(self) > 5 else "")
            raise ValueError(f"{where}: unknown class {label!r} (not one of the {len(self)} classes {some})")
        return i


# --------------------------------------------------------------------------------------------------
# records and index


@dataclass(frozen=True)
class ImageRecord:
    """One listed image.

    Attributes:
        path: the file (root joined).
        name: the path as listed (relative to the image root), '/'-separated.
        label: class index.
        annotation: the box annotation file (Stanford Dogs), else ``None``.
        source: the list, CSV or folder it comes from (for error messages).
    """

    path: str
    name: str
    label: int
    annotation: str | None = None
    source: str = ""


@dataclass
class FineGrainedIndex:
    """What :func:`open_finegrained` returns: the classes and the image records of each split.

    Attributes:
        format: one of :data:`FORMATS`.
        root: the data root.
        classes: the class list every record's label indexes.
        splits: ``{"train", "test"}`` for Stanford Dogs, ``{"all"}`` for class folders and CSVs.
    """

    format: str
    root: str
    classes: ClassList
    splits: dict[str, list[ImageRecord]]

    def split(self, name: str) -> list[ImageRecord]:
        """The records of split ``name``; an unknown split raises ``ValueError`` listing the known ones."""
        if name not in self.splits:
            raise ValueError(f"{self.root}: no split {name!r} in this {self.format} data (has {sorted(self.splits)})")
        return self.splits[name]


def _remap(index: FineGrainedIndex, classes: ClassList | None) -> FineGrainedIndex:
    """Express ``index``'s labels in ``classes`` (the training data's), by key, wnid or readable name."""
    if classes is None:
        return index
    to_ref = [classes.index(k, f"{index.root}: class {k!r}") for k in index.classes.keys]
    splits = {s: [ImageRecord(r.path, r.name, to_ref[r.label], r.annotation, r.source) for r in recs]
              for s, recs in index.splits.items()}
    return FineGrainedIndex(index.format, index.root, classes, splits)


# --------------------------------------------------------------------------------------------------
# Stanford Dogs .mat lists


@dataclass
class MatList:
    """A Stanford Dogs list file: ``files`` / ``annotations`` (relative paths) and 1-indexed ``labels``."""

    path: str
    files: list[str]
    annotations: list[str]
    labels: np.ndarray  # int64 [N], 1-indexed as in the file


def _cell_strings(value: Any, var: str, where: str) -> list[str]:
    """The strings of a cell array of strings as loadmat returns it (either nesting, row or column)."""
    arr = np.asarray(value, dtype=object) if not isinstance(value, np.ndarray) else value
    if arr.ndim > 2 or (arr.ndim == 2 and min(arr.shape) > 1):
        raise ValueError(f"{where}: variable {var!r} must be a vector of file names, got shape {arr.shape}")
    out = []
    for i, item in enumerate(arr.reshape(-1)):
        while isinstance(item, np.ndarray):  # each cell is its own 1x1 char array without squeeze_me
            if item.size == 0:
                raise ValueError(f"{where}: {var}[{i}] is an empty string")
            if item.size != 1:
                raise ValueError(f"{where}: {var}[{i}] must hold one string, got an array of shape {item.shape}")
            item = item.reshape(-1)[0]
        if not isinstance(item, str):
            raise ValueError(f"{where}: {var}[{i}] must be a string, got {type(item).__name__} {item!r}")
        text = item.strip()
        if not text:
            raise ValueError(f"{where}: {var}[{i}] is an empty string")
        out.append(text.replace("\\", "/"))
    return out


def parse_mat_list(variables: Mapping[str, Any], where: str) -> MatList:
    """Read a list's variables from ``scipy.io.loadmat(path)``'s dict, with or without ``squeeze_me``.

    Args:
        variables: loadmat's result.
        where: the file, for messages.

    Raises:
        ValueError: a variable missing, of the wrong shape or type, non-integer or non-positive labels,
            or counts that differ.
    """
    missing = [v for v in _MAT_VARIABLES if v not in variables]
    if missing:
        has = sorted(k for k in variables if not k.startswith("__"))
        raise ValueError(f"{where}: variable {missing[0]!r} missing (the file has {has}; a Stanford Dogs list "
                         f"needs {list(_MAT_VARIABLES)})")
    files = _cell_strings(variables["file_list"], "file_list", where)
    annotations = _cell_strings(variables["annotation_list"], "annotation_list", where)
    raw = np.asarray(variables["labels"])
    if raw.ndim > 2 or (raw.ndim == 2 and min(raw.shape) > 1):
        raise ValueError(f"{where}: variable 'labels' must be a vector, got shape {raw.shape}")
    if raw.dtype.kind not in "iuf":
        raise ValueError(f"{where}: variable 'labels' must be numbers, got {raw.dtype}")
    flat = raw.reshape(-1).astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(flat) | (flat != np.round(flat)))
    if bad.size:
        raise ValueError(f"{where}: labels[{bad[0]}] = {float(flat[bad[0]])!r} is not an integer")
    labels = flat.astype(np.int64)
    for var, n in (("annotation_list", len(annotations)), ("labels", len(labels))):
        if n != len(files):
            raise ValueError(f"{where}: variable {var!r} has {n} entries but 'file_list' has {len(files)}")
    if not files:
        raise ValueError(f"{where}: 'file_list' is empty")
    low = np.flatnonzero(labels < 1)
    if low.size:
        raise ValueError(f"{where}: labels[{low[0]}] = {labels[low[0]]} is out of range (labels are 1-indexed)")
    return MatList(where, files, annotations, labels)


def read_mat_list(path: str | os.PathLike, *, squeeze_me: bool = False) -> MatList:
    """Read ``train_list.mat`` / ``test_list.mat`` (``scipy.io.loadmat``; either nesting is accepted).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable MAT file (v7.3/HDF5 included), or bad content (:func:`parse_mat_list`).
    """
    import scipy.io

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Stanford Dogs list file not found: {path}")
    try:
        variables = scipy.io.loadmat(path, squeeze_me=squeeze_me)
    except NotImplementedError as e:  # what loadmat says for v7.3 (HDF5) files
        raise ValueError(f"{path}: cannot read this MAT file ({e}); save it in MATLAB's -v7 format") from e
    except (ValueError, TypeError, OSError, EOFError, KeyError, IndexError) as e:
        raise ValueError(f"{path} is not a readable MAT file: {type(e).__name__}: {e}") from e
    return parse_mat_list(variables, path)


def find_dogs_list(root: str | os.PathLike, split: str) -> str:
    """``root/lists/<split>_list.mat``, or ``root/<split>_list.mat`` (lists.tar unpacked in place).

    Raises:
        FileNotFoundError: neither exists (both named).
    """
    root = os.fspath(root)
    candidates = [os.path.join(root, "lists", f"{split}_list.mat"), os.path.join(root, f"{split}_list.mat")]
    for c in candidates:
        if os.path.isfile(c):
            return c
    raise FileNotFoundError(f"Stanford Dogs list not found: {candidates[0]} (nor {candidates[1]})")


# --------------------------------------------------------------------------------------------------
# Stanford Dogs annotations


@dataclass
class Annotation:
    """One annotation file: the image size it states (0 when absent) and its objects' raw boxes."""

    path: str
    width: int
    height: int
    names: list[str]
    boxes: np.ndarray  # float32 [N, 4] xyxy as written


def _size_field(size: ET.Element | None, tag: str) -> int:
    text = size.findtext(tag) if size is not None else None
    try:
        value = float(text) if text is not None else 0.0
    except ValueError:
        return 0
    return int(value) if math.isfinite(value) and value > 0 else 0


def read_annotation(path: str | os.PathLike) -> Annotation:
    """Parse one VOC-like annotation (``<size>``, ``<object>`` with ``<name>`` and ``<bndbox>``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not XML, no ``<object>``, an object without ``<bndbox>``, a coordinate missing or not
            a finite number; the message names the file, object and field.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        tree = ET.parse(path)
    except ET.ParseError as e:
        raise ValueError(f"annotation {path} is not valid XML: {e}") from e
    root = tree.getroot()
    size = root.find("size")
    objects = root.findall("object")
    if not objects:
        raise ValueError(f"annotation {path}: no <object> element")
    names: list[str] = []
    boxes: list[list[float]] = []
    for k, obj in enumerate(objects, start=1):
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"annotation {path}: object {k} has no <bndbox>")
        coords = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            text = box.findtext(tag)
            if text is None or not text.strip():
                raise ValueError(f"annotation {path}: object {k}: <bndbox> lacks <{tag}>")
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"annotation {path}: object {k}: <{tag}> is not a number: {text.strip()!r}") from None
            if not math.isfinite(value):
                raise ValueError(f"annotation {path}: object {k}: <{tag}> is not finite: {text.strip()!r}")
            coords.append(value)
        names.append((obj.findtext("name") or "").strip())
        boxes.append(coords)
    return Annotation(path, _size_field(size, "width"), _size_field(size, "height"), names,
                      np.asarray(boxes, dtype=np.float32).reshape(-1, 4))


def clean_boxes(ann: Annotation) -> tuple[np.ndarray, int, int]:
    """Apply the box rule (module docstring): ``(kept boxes [M, 4], number clipped, number dropped)``."""
    b = ann.boxes.astype(np.float64)
    ok = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    c = b.copy()
    if ann.width > 0 and ann.height > 0:
        c[:, 0::2] = np.clip(c[:, 0::2], 0, ann.width)
        c[:, 1::2] = np.clip(c[:, 1::2], 0, ann.height)
    clipped = ok & np.any(c != b, axis=1)
    ok &= (c[:, 2] > c[:, 0]) & (c[:, 3] > c[:, 1])
    return c[ok].astype(np.float32), int(np.sum(clipped & ok)), int(np.sum(~ok))


# --------------------------------------------------------------------------------------------------
# the three formats


def _class_folders(folder: str) -> list[str]:
    return sorted(d for d in os.listdir(folder) if not d.startswith(".") and os.path.isdir(os.path.join(folder, d)))


def _safe_relative(name: str, var: str, i: int, where: str) -> str:
    norm = os.path.normpath(name).replace(os.sep, "/")
    if os.path.isabs(name) or norm == ".." or norm.startswith("../"):
        raise ValueError(f"{where}: {var}[{i}] = {name!r} must be a path inside the data folder")
    return norm


def read_stanford_dogs(root: str | os.PathLike, *, classes: ClassList | None = None) -> FineGrainedIndex:
    """The official Stanford Dogs layout (module docstring): splits ``train`` and ``test``.

    Args:
        root: the folder holding ``Images/``, ``Annotation/`` and ``lists/``.
        classes: map onto this class list (see :func:`open_finegrained`).

    Raises:
        FileNotFoundError: ``Images/`` or a list file is missing.
        ValueError: a malformed list; a label out of range or disagreeing with its file's folder; an
            annotation entry that does not match its file.
    """
    root = os.fspath(root)
    images = os.path.join(root, "Images")
    if not os.path.isdir(images):
        raise FileNotFoundError(f"Stanford Dogs image folder not found: {images}")
    folders = _class_folders(images)
    if not folders:
        raise ValueError(f"{images}: no breed folders (expected Images/<wnid>-<breed>/)")
    odd = [f for f in folders if not _WNID_FOLDER.match(f)]
    if odd:
        raise ValueError(f"{images}: folder {odd[0]!r} is not named <wnid>-<breed> (e.g. n02085620-Chihuahua)")
    own = ClassList.from_keys(folders)
    folder_index = {f: i for i, f in enumerate(folders)}
    splits: dict[str, list[ImageRecord]] = {}
    for split in ("train", "test"):
        mat = read_mat_list(find_dogs_list(root, split))
        records = []
        for i, (name, ann, label) in enumerate(zip(mat.files, mat.annotations, mat.labels)):
            name = _safe_relative(name, "file_list", i, mat.path)
            ann = _safe_relative(ann, "annotation_list", i, mat.path)
            if label > len(folders):
                raise ValueError(f"{mat.path}: labels[{i}] = {label} is out of range 1..{len(folders)} "
                                 f"({len(folders)} breed folders in {images})")
            if os.path.splitext(name)[0] != ann:
                raise ValueError(f"{mat.path}: entry {i}: annotation_list {ann!r} does not match file_list {name!r}")
            folder = name.split("/")[0]
            if folder in folder_index and folder_index[folder] != label - 1:
                raise ValueError(f"{mat.path}: entry {i} ({name!r}) has label {label} ({folders[label - 1]}) but "
                                 f"lies in folder {folder!r} (label {folder_index[folder] + 1})")
            records.append(ImageRecord(os.path.join(images, name), name, int(label) - 1,
                                       os.path.join(root, "Annotation", ann), mat.path))
        splits[split] = records
    return _remap(FineGrainedIndex("stanford_dogs", root, own, splits), classes)


def read_class_folders(root: str | os.PathLike, *, classes: ClassList | None = None) -> FineGrainedIndex:
    """``root/<class>/<image>`` (images found recursively in each class folder): split ``all``.

    Empty class folders are left out (logged). With ``classes``, every folder must name a known class.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no class folder holds an image (images lying directly in ``root`` are named).
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder not found: {root}")
    keys, records, empty = [], [], []
    for folder in _class_folders(root):
        names = list_images(os.path.join(root, folder))
        if not names:
            empty.append(folder)
            continue
        label = len(keys)
        keys.append(folder)
        records += [ImageRecord(os.path.join(root, folder, n), f"{folder}/{n}", label, None, root) for n in names]
    if not keys:
        loose = [n for n in os.listdir(root) if is_image_file(n)]
        hint = f"; images lie directly in it (e.g. {loose[0]!r}), put them in one folder per class" if loose else ""
        raise ValueError(f"{root}: no class folder with images (expected {root}/<class>/<image>){hint}")
    if empty:
        logger.warning("%s: %d class folders without images left out (first: %s)", root, len(empty), empty[0])
    return _remap(FineGrainedIndex("folders", root, ClassList.from_keys(keys), {"all": records}), classes)


def _is_header(row: list[str], image_root: str) -> bool:
    first = row[0].strip()
    return not is_image_file(first) and not os.path.isfile(os.path.join(image_root, first))


def read_label_csv(csv_path: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                   classes: ClassList | None = None) -> FineGrainedIndex:
    """A ``path,label`` CSV (module docstring): split ``all``.

    Args:
        csv_path: the CSV.
        image_root: folder the relative paths are joined to; default the CSV's folder.
        classes: the training data's classes: labels are looked up in them (names by key, wnid or
            readable name; integer labels as indices) and an unknown one is an error.

    Raises:
        FileNotFoundError: no such CSV.
        ValueError: a row with fewer than two cells, an empty path or label, a path listed twice, a
            negative or out-of-range index, an unknown class; all naming the file and line.
    """
    csv_path = os.fspath(csv_path)
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(f"label CSV not found: {csv_path}")
    base = os.fspath(image_root) if image_root is not None else os.path.dirname(os.path.abspath(csv_path))
    try:
        with open(csv_path, encoding="utf-8-sig", newline="") as f:
            rows = [(n, r) for n, r in enumerate(csv.reader(f), start=1) if r and any(c.strip() for c in r)]
    except UnicodeDecodeError as e:
        raise ValueError(f"{csv_path} is not a UTF-8 text file: {e}") from e
    except csv.Error as e:
        raise ValueError(f"{csv_path}: not a readable CSV: {e}") from e
    if rows and len(rows[0][1]) >= 2 and _is_header(rows[0][1], base):
        rows = rows[1:]
    if not rows:
        raise ValueError(f"{csv_path}: no rows (expected 'path,label' lines)")
    entries: list[tuple[int, str, str]] = []
    seen: dict[str, int] = {}
    for lineno, row in rows:
        if len(row) < 2:
            raise ValueError(f"{csv_path}, line {lineno}: expected 'path,label', got {','.join(row)!r}")
        path, label = row[0].strip(), row[1].strip()
        if not path or not label:
            raise ValueError(f"{csv_path}, line {lineno}: empty {'path' if not path else 'label'}")
        name = path.replace("\\", "/")
        if name in seen:
            raise ValueError(f"{csv_path}, line {lineno}: {path!r} is already listed on line {seen[name]}")
        seen[name] = lineno
        entries.append((lineno, name, label))
    as_index = all(re.fullmatch(r"[+-]?\d+", lab) for _, _, lab in entries)
    if as_index:
        values = [int(lab) for _, _, lab in entries]
        limit = len(classes) if classes is not None else None
        for (lineno, _, lab), v in zip(entries, values):
            if v < 0 or (limit is not None and v >= limit):
                top = f"0..{limit - 1}" if limit is not None else ">= 0"
                raise ValueError(f"{csv_path}, line {lineno}: class index {lab} out of range ({top})")
        own = classes if classes is not None else ClassList.from_keys([str(i) for i in range(max(values) + 1)])
        labels = values
    elif classes is not None:
        own = classes
        labels = [classes.index(lab, f"{csv_path}, line {lineno}") for lineno, _, lab in entries]
    else:
        own = ClassList.from_keys(sorted({lab for _, _, lab in entries}))
        labels = [own.keys.index(lab) for _, _, lab in entries]
    records = [ImageRecord(name if os.path.isabs(name) else os.path.join(base, name), name, lab, None, csv_path)
               for (_, name, _), lab in zip(entries, labels)]
    return FineGrainedIndex("csv", base, own, {"all": records})


def _is_dogs_root(root: str) -> bool:
    lists = [os.path.join(root, d, f"{s}_list.mat") for d in ("lists", "") for s in ("train", "test")]
    both = os.path.isdir(os.path.join(root, "Images")) and os.path.isdir(os.path.join(root, "Annotation"))
    return both or (os.path.isdir(os.path.join(root, "Images")) and any(os.path.isfile(p) for p in lists))


def detect_format(root: str | os.PathLike, ann: str | os.PathLike | None = None) -> str:
    """Which of :data:`FORMATS` ``root`` (and ``ann``) hold.

    ``ann`` given, or ``root`` a ``.csv`` file: ``"csv"``. A folder with ``Images/`` plus ``Annotation/``
    or a train/test list: ``"stanford_dogs"``. A folder whose subfolders hold images: ``"folders"``.

    Raises:
        FileNotFoundError: ``root`` (or ``ann``) does not exist.
        ValueError: none of the three; the message says what each would look like.
    """
    root = os.fspath(root)
    if ann is not None:
        ann = os.fspath(ann)
        if not os.path.isfile(ann):
            raise FileNotFoundError(f"label file not found: {ann}")
        if not ann.lower().endswith((".csv", ".txt")):
            raise ValueError(f"label file {ann}: expected a 'path,label' CSV (.csv)")
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image folder not found: {root}")
        return "csv"
    if os.path.isfile(root):
        if root.lower().endswith(".csv"):
            return "csv"
        raise ValueError(f"{root} is a file but not a .csv; give a data folder or a 'path,label' CSV")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data root not found: {root}")
    if _is_dogs_root(root):
        return "stanford_dogs"
    for folder in _class_folders(root):
        for _, _, files in os.walk(os.path.join(root, folder), followlinks=True):
            if any(is_image_file(f) for f in files):
                return "folders"
    csvs = sorted(n for n in os.listdir(root) if n.lower().endswith(".csv"))
    hint = f"; to use {csvs[0]!r}, pass it as the root or as the label file" if csvs else ""
    raise ValueError(
        f"{root}: not a fine-grained data set: expected Stanford Dogs (Images/<wnid>-<breed>/ with Annotation/ "
        f"and lists/train_list.mat), class folders (<class>/<image>) or a 'path,label' CSV{hint}")


def open_finegrained(root: str | os.PathLike, ann: str | os.PathLike | None = None, *,
                     classes: ClassList | None = None) -> FineGrainedIndex:
    """Read any of the three formats (:func:`detect_format`) as a :class:`FineGrainedIndex`.

    Args:
        root: a Stanford Dogs folder, a class-folder root, a CSV file, or (with ``ann``) the image root
            the CSV's paths are relative to.
        ann: a ``path,label`` CSV (``--ann``).
        classes: the training data's classes, to read a second source (``--val-data-root``) with the
            same indices; unknown classes are an error naming them.
    """
    fmt = detect_format(root, ann)
    if fmt == "stanford_dogs":
        return read_stanford_dogs(root, classes=classes)
    if fmt == "folders":
        return read_class_folders(root, classes=classes)
    if ann is not None:
        return read_label_csv(ann, image_root=root, classes=classes)
    return read_label_csv(root, classes=classes)


# --------------------------------------------------------------------------------------------------
# splits


def stratified_holdout(records: Sequence[ImageRecord], val_fraction: float = 0.1, seed: int = 0
                       ) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Hold out ``val_fraction`` of each class: ``(train, val)``, both in the input order.

    Per class with n >= 2 images, round(n * val_fraction) of them (at least 1, at most n - 1) go to
    validation, chosen by a generator seeded from ``(seed, class)`` so a class's choice does not depend
    on the other classes. A class with one image stays in training.

    Raises:
        ValueError: ``val_fraction`` not in (0, 1), or no class has two images.
    """
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    by_class: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        by_class.setdefault(r.label, []).append(i)
    held: set[int] = set()
    for label, members in sorted(by_class.items()):
        if len(members) < 2:
            continue
        class_seed = int(np.random.SeedSequence([int(seed), int(label)]).generate_state(1)[0])
        _, out = split_holdout(len(members), float(val_fraction), class_seed)
        held.update(members[j] for j in out)
    if not held:
        raise ValueError(f"cannot hold out a validation part: none of the {len(by_class)} classes has two images")
    singles = sum(1 for m in by_class.values() if len(m) < 2)
    if singles:
        logger.warning("%d classes have a single training image and no validation image", singles)
    return ([r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held])


def standard_splits(index: FineGrainedIndex, *, val_fraction: float = 0.1, seed: int = 0
                    ) -> dict[str, list[ImageRecord]]:
    """``train`` / ``val`` (stratified from the training records) and, for Stanford Dogs, ``test``.

    A single-split source (class folders, CSV) gives ``train`` and ``val`` only; its test data is a
    second source read with ``classes=index.classes``.
    """
    base = index.split("train" if "train" in index.splits else "all")
    train, val = stratified_holdout(base, val_fraction, seed)
    out = {"train": train, "val": val}
    if "test" in index.splits:
        out["test"] = index.split("test")
    return out


# --------------------------------------------------------------------------------------------------
# dataset


@dataclass(frozen=True)
class _Sample:
    record: int
    box: tuple[float, float, float, float] | None


class FineGrainedDataset(torch.utils.data.Dataset):
    """Image records served as ``{"image", "target", "index"}`` dicts (``"box"`` too with ``crop="box"``).

    ``image`` is ``transform(PIL RGB image)`` (``None``: uint8 [3, H, W]); ``target`` an int64 class index;
    ``index`` the position of the sample actually served; ``box`` float32 [4] xyxy in the decoded
    image's pixels (the region cropped).

    Args:
        records: e.g. ``standard_splits(index)["train"]``.
        classes: the class list the labels index (``index.classes``).
        transform: PIL image -> tensor (``datasets.images.build_image_transform``).
        crop: ``"none"``: one sample per image; ``"box"``: one per annotated box, cropped (needs
            annotations, i.e. Stanford Dogs).
        skip_bad_images: drop and count missing files (here) and undecodable ones (:meth:`scan_images`)
            instead of raising.

    Attributes:
        records: the records kept. ``targets``: int64 [len(self)], the label of each sample.
        stats: counts, see ``STAT_KEYS``.
    """

    STAT_KEYS = ("images", "samples", "boxes", "clipped_boxes", "degenerate_boxes_dropped", "images_without_boxes",
                 "missing_images", "corrupt_images", "bad_images_skipped")

    def __init__(
        self,
        records: Sequence[ImageRecord],
        classes: ClassList,
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        crop: str = "none",
        skip_bad_images: bool = False,
    ) -> None:
        if crop not in CROP_MODES:
            raise ValueError(f"crop must be one of {CROP_MODES}, got {crop!r}")
        self.classes = classes
        self.transform = transform
        self.crop = crop
        self.skip_bad_images = bool(skip_bad_images)
        self.stats: dict[str, int] = {k: 0 for k in self.STAT_KEYS}
        recs = list(records)
        for r in recs:
            if not 0 <= r.label < len(classes):
                raise ValueError(f"{r.source}: {r.name!r} has label {r.label}, out of range for {len(classes)} classes")
        missing = [r for r in recs if not os.path.isfile(r.path)]
        if missing:
            if not self.skip_bad_images:
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                raise FileNotFoundError(f"image file not found: {missing[0].path} (listed in {missing[0].source})"
                                        f"{more}; pass skip_bad_images=True (--skip-bad-images) to skip missing images")
            self.stats["missing_images"] = self.stats["bad_images_skipped"] = len(missing)
            logger.warning("%d listed image files missing, skipped (first: %s)", len(missing), missing[0].path)
            gone = {id(r) for r in missing}
            recs = [r for r in recs if id(r) not in gone]
        self.records: list[ImageRecord] = recs
        self._samples = self._make_samples()
        self._sync()
        self.skipped = SkippedImages(self._paths, [f"image file not found: {r.path} (listed in {r.source})"
                                                   for r in missing])

    def _make_samples(self) -> list[_Sample]:
        if self.crop == "none":
            return [_Sample(i, None) for i in range(len(self.records))]
        samples = []
        for i, r in enumerate(self.records):
            if r.annotation is None:
                raise ValueError(f"crop='box' needs box annotations, but {r.name!r} (from {r.source}) has none; "
                                 "only the Stanford Dogs layout has them")
            boxes, clipped, dropped = clean_boxes(read_annotation(r.annotation))
            self.stats["clipped_boxes"] += clipped
            self.stats["degenerate_boxes_dropped"] += dropped
            if not len(boxes):
                self.stats["images_without_boxes"] += 1
            samples += [_Sample(i, tuple(float(v) for v in b)) for b in boxes]
        if self.stats["degenerate_boxes_dropped"] or self.stats["images_without_boxes"]:
            logger.warning("dropped %d boxes without area; %d images left without a box",
                           self.stats["degenerate_boxes_dropped"], self.stats["images_without_boxes"])
        return samples

    def _sync(self) -> None:
        self._paths = [self.records[s.record].path for s in self._samples]
        self.targets = np.asarray([self.records[s.record].label for s in self._samples], dtype=np.int64)
        self.stats["images"] = len(self.records)
        self.stats["samples"] = len(self._samples)
        self.stats["boxes"] = sum(1 for s in self._samples if s.box is not None)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def image_path(self, index: int) -> str:
        """The image file of sample ``index``."""
        return self._paths[index]

    def record(self, index: int) -> ImageRecord:
        """The record of sample ``index`` (in box mode several samples share one)."""
        return self.records[self._samples[index].record]

    def scan_images(self, num_threads: int | None = None, progress: bool = False) -> list[str]:
        """Decode every image once; drop (and count) undecodable ones. Call before building DataLoaders.

        Returns:
            Paths of the images that failed to decode.

        Raises:
            ValueError: naming the bad files, when ``skip_bad_images`` is False.
        """
        paths = [r.path for r in self.records]
        bad = scan_images(paths, skip_bad_images=self.skip_bad_images, num_threads=num_threads, progress=progress)
        if bad:
            keep = [i for i in range(len(self.records)) if i not in bad]
            new_pos = {old: new for new, old in enumerate(keep)}
            self.records = [self.records[i] for i in keep]
            self._samples = [_Sample(new_pos[s.record], s.box) for s in self._samples if s.record in new_pos]
            self.stats["corrupt_images"] += len(bad)
            self.stats["bad_images_skipped"] += len(bad)
            self._sync()
            self.skipped.found += list(bad.values())
            self.skipped.reset(self._paths)
        return [paths[i] for i in bad]

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self._samples)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        before = len(self.skipped)
        j, pil = load_readable(self._paths, index % n, self.skipped, skip_bad_images=self.skip_bad_images)
        late = len(self.skipped) - before  # samples, not images, in box mode: a last resort anyway
        self.stats["corrupt_images"] += late
        self.stats["bad_images_skipped"] += late
        sample = self._samples[j]
        out: dict[str, Any] = {}
        if sample.box is not None:
            pil, box = self._crop(pil, sample.box, j)
            out["box"] = torch.tensor(box, dtype=torch.float32)
        image = self.transform(pil) if self.transform is not None else \
            torch.from_numpy(np.array(pil, dtype=np.uint8)).permute(2, 0, 1)
        out.update(image=image, target=torch.tensor(self.targets[j], dtype=torch.int64), index=j)
        return out

    def _crop(self, pil: Image.Image, box: tuple[float, float, float, float], j: int
              ) -> tuple[Image.Image, tuple[float, float, float, float]]:
        w, h = pil.size
        x1, y1 = min(max(box[0], 0.0), w), min(max(box[1], 0.0), h)
        x2, y2 = min(max(box[2], 0.0), w), min(max(box[3], 0.0), h)
        left, top, right, bottom = math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2)
        if right <= left or bottom <= top or x2 <= x1 or y2 <= y1:
            raise ValueError(f"annotation {self.record(j).annotation}: box {list(box)} lies outside the decoded "
                             f"image {self.image_path(j)} ({w}x{h}); the XML <size> does not match the image")
        return pil.crop((left, top, right, bottom)), (x1, y1, x2, y2)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(images={len(self.records)}, samples={len(self)}, "
                f"classes={len(self.classes)}, crop={self.crop!r})")
