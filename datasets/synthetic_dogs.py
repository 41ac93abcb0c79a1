"""A small Stanford Dogs layout for tests (Khosla et al. 2011; MobileNets paper Section 4.3, Table 10).

:func:`write_stanford_dogs_layout` writes the real on-disk format that ``datasets.stanford_dogs`` reads:
``Images/<wnid>-<Breed>/<wnid>_<n>.jpg``, ``Annotation/<wnid>-<Breed>/<wnid>_<n>`` (VOC-like XML without
extension; images 1, 4, 7 ... of each breed have two dogs), and ``lists/train_list.mat``, ``test_list.mat``,
``file_list.mat`` written by ``scipy.io.savemat`` in the real structure (cell arrays of strings,
labels a double column vector, 1-indexed). It also plants the odd files of the real set: a PNG named
``.jpg`` (as ``n02105855_2933.jpg`` is), a grayscale JPEG and a CMYK JPEG.

Each image is a flat background with one filled rectangle per dog, in the breed's colour, exactly where
its box says, so a test can check that a crop is the box. Deterministic: the same arguments write the
same files. The fuller synthetic fine-grained set (breeds differing in small details, clutter, a noisy
web folder) is a different generator.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["BREEDS", "DogsLayout", "save_image_as", "write_annotation_xml", "write_mat_list",
           "write_stanford_dogs_layout"]

# Real wnids and folder names of Stanford Dogs; Shetland sheepdog is where the real set's PNG lives.
BREEDS: tuple[tuple[str, str], ...] = (
    ("n02085620", "Chihuahua"),
    ("n02085782", "Japanese_spaniel"),
    ("n02086240", "Shih-Tzu"),
    ("n02105855", "Shetland_sheepdog"),
    ("n02110958", "pug"),
    ("n02113799", "standard_poodle"),
)


@dataclass
class DogsLayout:
    """What was written (paths relative to ``root``; Images/ and Annotation/ omitted from list paths).

    Attributes:
        root: the data root.
        folders: the breed folders, in label order.
        train, test: ``(file, label 0-based)`` in list order.
        boxes: ``annotation path -> [[xmin, ymin, xmax, ymax], ...]`` as written.
        odd_files: ``"png_as_jpg" | "grayscale" | "cmyk" -> file`` (relative to Images/).
        colors: the RGB colour of each breed's dogs.
    """

    root: Path
    folders: list[str]
    train: list[tuple[str, int]] = field(default_factory=list)
    test: list[tuple[str, int]] = field(default_factory=list)
    boxes: dict[str, list[list[int]]] = field(default_factory=dict)
    odd_files: dict[str, str] = field(default_factory=dict)
    colors: list[tuple[int, int, int]] = field(default_factory=list)


def write_annotation_xml(path: str | os.PathLike, *, folder: str, filename: str, width: int, height: int,
                         objects: list[tuple[str, list[float]]]) -> None:
    """Write one annotation in Stanford Dogs' VOC-like XML: ``objects`` are ``(name, [xmin, ymin, xmax, ymax])``."""
    parts = [
        "<annotation>",
        f"\t<folder>{escape(folder)}</folder>",
        f"\t<filename>{escape(filename)}</filename>",
        "\t<source>",
        "\t\t<database>ImageNet database</database>",
        "\t</source>",
        "\t<size>",
        f"\t\t<width>{width}</width>",
        f"\t\t<height>{height}</height>",
        "\t\t<depth>3</depth>",
        "\t</size>",
        "\t<segment>0</segment>",
    ]
    for name, (x1, y1, x2, y2) in objects:
        parts += [
            "\t<object>",
            f"\t\t<name>{escape(name)}</name>",
            "\t\t<pose>Unspecified</pose>",
            "\t\t<truncated>0</truncated>",
            "\t\t<difficult>0</difficult>",
            "\t\t<bndbox>",
            f"\t\t\t<xmin>{x1}</xmin>",
            f"\t\t\t<ymin>{y1}</ymin>",
            f"\t\t\t<xmax>{x2}</xmax>",
            f"\t\t\t<ymax>{y2}</ymax>",
            "\t\t</bndbox>",
            "\t</object>",
        ]
    parts.append("</annotation>")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(parts) + "\n", encoding="utf-8")


def write_mat_list(path: str | os.PathLike, files: list[str], labels: list[int], *, layout: str = "column") -> None:
    """Write a Stanford Dogs list with ``scipy.io.savemat``: ``file_list`` / ``annotation_list`` cell arrays of
    strings and 1-indexed double ``labels`` (``labels`` given 0-based).

    Args:
        layout: ``"column"`` (N x 1 cells and labels, as the real files) or ``"row"`` (1 x N).
    """
    import scipy.io

    if layout not in ("column", "row"):
        raise ValueError(f"layout must be 'column' or 'row', got {layout!r}")
    shape = (len(files), 1) if layout == "column" else (1, len(files))
    file_cells = np.empty(shape, dtype=object)
    ann_cells = np.empty(shape, dtype=object)
    for i, f in enumerate(files):
        file_cells.flat[i] = f
        ann_cells.flat[i] = os.path.splitext(f)[0]
    values = np.asarray(labels, dtype=np.float64).reshape(shape) + 1.0
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(os.fspath(path), {"file_list": file_cells, "annotation_list": ann_cells, "labels": values})


def save_image_as(img: Image.Image, path: Path, kind: str | None, *, quality: int = 95) -> None:
    """Save ``img`` as a JPEG, or as one of the odd files of the real set under a ``.jpg`` name.

    Args:
        kind: None (a plain RGB JPEG), ``"grayscale"``, ``"cmyk"`` (JPEGs of those modes) or
            ``"png_as_jpg"`` (PNG bytes behind a ``.jpg`` name).
    """
    if kind == "grayscale":
        img.convert("L").save(path, format="JPEG", quality=quality)
    elif kind == "cmyk":
        img.convert("CMYK").save(path, format="JPEG", quality=quality)
    elif kind == "png_as_jpg":
        img.save(path, format="PNG")
    elif kind is None:
        img.save(path, format="JPEG", quality=quality)
    else:
        raise ValueError(f"unknown odd-file kind {kind!r}; use grayscale, cmyk or png_as_jpg")


def write_stanford_dogs_layout(
    root: str | os.PathLike,
    *,
    num_breeds: int = 3,
    images_per_breed: int = 4,
    train_per_breed: int = 2,
    size: tuple[int, int] = (40, 32),
    odd_files: bool = True,
    mat_layout: str = "column",
    seed: int = 0,
) -> DogsLayout:
    """Write a small Stanford Dogs tree under ``root`` (module docstring).

    Args:
        root: destination folder (created).
        num_breeds: 1..len(BREEDS); breeds are the first ones of :data:`BREEDS`.
        images_per_breed: images per breed; the first ``train_per_breed`` go to the train list.
        size: (width, height) of every image.
        odd_files: plant a grayscale JPEG (breed 0), a CMYK JPEG (breed 1) and a PNG named ``.jpg`` (last breed).
        mat_layout: ``"column"`` (real) or ``"row"`` cell arrays, see :func:`write_mat_list`.
        seed: backgrounds and box positions.

    Returns:
        A :class:`DogsLayout` describing the files.
    """
    if not 1 <= num_breeds <= len(BREEDS):
        raise ValueError(f"num_breeds must be in 1..{len(BREEDS)}, got {num_breeds}")
    if not 0 < train_per_breed < images_per_breed:
        raise ValueError(f"need 0 < train_per_breed < images_per_breed, got {train_per_breed}, {images_per_breed}")
    if odd_files and num_breeds < 2:
        raise ValueError("odd_files needs num_breeds >= 2 (the odd files go to different images)")
    root = Path(root)
    w, h = size
    rng = np.random.default_rng(seed)
    breeds = BREEDS[:num_breeds]
    out = DogsLayout(root, [f"{wnid}-{name}" for wnid, name in breeds])
    palette = [(200, 40, 40), (40, 160, 40), (40, 40, 200), (200, 160, 20), (160, 40, 160), (20, 160, 160)]
    out.colors = palette[:num_breeds]
    odd = {(0, 0): "grayscale", (1, 1): "cmyk", (num_breeds - 1, 0): "png_as_jpg"} if odd_files else {}
    for label, ((wnid, name), folder) in enumerate(zip(breeds, out.folders)):
        for k in range(images_per_breed):
            stem = f"{wnid}_{1000 + 37 * k + label}"
            rel = f"{folder}/{stem}.jpg"
            n_dogs = 2 if k % 3 == 1 else 1
            boxes = []
            for d in range(n_dogs):
                bw, bh = int(rng.integers(w // 4, w // 2)), int(rng.integers(h // 4, h // 2))
                x1 = int(rng.integers(0, w // 2 - bw + 1)) + d * (w // 2)
                y1 = int(rng.integers(0, h - bh + 1))
                boxes.append([x1, y1, x1 + bw, y1 + bh])
            background = tuple(int(v) for v in rng.integers(90, 140, size=3))
            img = Image.new("RGB", (w, h), background)
            draw = ImageDraw.Draw(img)
            for x1, y1, x2, y2 in boxes:
                draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=out.colors[label])
            path = root / "Images" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            kind = odd.get((label, k))
            save_image_as(img, path, kind, quality=95)
            if kind:
                out.odd_files[kind] = rel
            write_annotation_xml(root / "Annotation" / folder / stem, folder=wnid[1:], filename=stem, width=w,
                                 height=h, objects=[(name, b) for b in boxes])
            out.boxes[f"{folder}/{stem}"] = boxes
            (out.train if k < train_per_breed else out.test).append((rel, label))
    for split, items in (("train", out.train), ("test", out.test), ("file", out.train + out.test)):
        write_mat_list(root / "lists" / f"{split}_list.mat", [f for f, _ in items], [lab for _, lab in items],
                       layout=mat_layout)
    return out
