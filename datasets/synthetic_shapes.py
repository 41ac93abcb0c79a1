"""Synthetic "shapes" detection set in COCO format: the embedded default data for Table 13's detectors.

COCO itself is the user's to bring; tests and out-of-the-box runs train on this instead. It is written
exactly like COCO (``<root>/<split>/<id:012d>.jpg`` plus ``<root>/annotations/instances_<split>.json``
with ``images`` / ``annotations`` / ``categories``), so the same ``datasets.coco.CocoDetection`` and
COCOeval code paths run on it. The category ids are deliberately non-contiguous (1, 3, 7, 11, 13) so
the id <-> label mapping is exercised.

Each image has 1..``max_objects`` shapes (circle, square, triangle, star, cross) of random size, colour,
aspect and rotation on a textured background (gradient, stripes, blotchy noise or flat noise). Later
shapes may cover earlier ones, but placement is rejected when it would leave an earlier shape less than
``MIN_VISIBLE`` visible, and every box, area and RLE mask is computed from the visible pixels, so the
ground truth is exact. Sizes, counts and contrast are chosen so a small SSD learns the set in minutes
on a CPU.

Usage: ``python -m datasets.synthetic_shapes --out DIR [--num-train N --num-val M --image-size S]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from datasets.cache import CACHE_ENV, MARKER, build_once, cache_marker, default_cache_dir, ensure_cached
from datasets.io import atomic_write_json, run_cli

__all__ = [
    "CATEGORIES",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_MAX_OBJECTS",
    "DEFAULT_NUM_TRAIN",
    "DEFAULT_NUM_VAL",
    "write_shapes_dataset",
    "ensure_shapes_dataset",
    "default_cache_dir",
    "main",
]

# Bump when the rendering changes, so cached copies from an older generator are not reused.
GENERATOR_VERSION = 1

CATEGORIES: list[dict[str, Any]] = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 3, "name": "square", "supercategory": "shape"},
    {"id": 7, "name": "triangle", "supercategory": "shape"},
    {"id": 11, "name": "star", "supercategory": "shape"},
    {"id": 13, "name": "cross", "supercategory": "shape"},
]

DEFAULT_NUM_TRAIN = 1000
DEFAULT_NUM_VAL = 200
DEFAULT_IMAGE_SIZE = 192
DEFAULT_MAX_OBJECTS = 4

# Shape extent as a fraction of the image side: the smallest still spans ~15% of the image (29 px at
# 192), large enough for a stride-16 feature map; the largest leaves room for a few more shapes.
MIN_SIZE_FRAC = 0.16
MAX_SIZE_FRAC = 0.50
# An earlier shape must keep this fraction of its pixels when a later one is placed over it.
MIN_VISIBLE = 0.6
# Smallest RGB distance between a shape and what lies under it, so edges are always visible.
MIN_CONTRAST = 90.0
PLACEMENT_TRIES = 30



# --------------------------------------------------------------------------------------------------
# rendering


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, dtype=np.float32) * 255.0


def _background_color(rng: np.random.Generator) -> np.ndarray:
    # Muted colours leave room for saturated shapes to stand out.
    return _hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.45), rng.uniform(0.2, 0.9))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float32 [S, S, 3] textured background in 0..255."""
    c1, c2 = _background_color(rng), _background_color(rng)
    kind = int(rng.integers(4))
    coords = (np.arange(size, dtype=np.float32) + 0.5)
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    theta = rng.uniform(0, math.pi)
    along = xx * math.cos(theta) + yy * math.sin(theta)
    if kind == 0:  # linear gradient
        t = (along - along.min()) / max(float(along.max() - along.min()), 1e-6)
    elif kind == 1:  # stripes, soft or hard
        period = rng.uniform(6.0, 28.0)
        t = 0.5 + 0.5 * np.sin(2 * math.pi * along / period + rng.uniform(0, 2 * math.pi))
        if rng.random() < 0.5:
            t = (t > 0.5).astype(np.float32)
        # Low-contrast stripes: straight edges as strong as a shape's would drown the shapes.
        c2 = c1 + (c2 - c1) * 0.35
    elif kind == 2:  # blotchy low-frequency noise
        cells = int(rng.integers(3, 9))
        low = (rng.random((cells, cells)) * 255).astype(np.uint8)
        t = np.asarray(Image.fromarray(low).resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
    else:  # flat colour, texture comes from the noise below
        t = np.zeros((size, size), dtype=np.float32)
    img = c1[None, None, :] * (1 - t[..., None]) + c2[None, None, :] * t[..., None]
    img += rng.normal(0.0, rng.uniform(2.0, 14.0), size=img.shape).astype(np.float32)
    return img


def _regular_polygon(n: int, radius: float, phase: float) -> np.ndarray:
    ang = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([radius * np.cos(ang), radius * np.sin(ang)], axis=1)


def _rotate(points: np.ndarray, theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return points @ np.array([[c, s], [-s, c]], dtype=np.float64)


def _shape_outline(name: str, extent: float, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """Vertices (relative to the centre) of a shape about ``extent`` px across.

    Returns ("ellipse", [[-rx, -ry], [rx, ry]]) for circles, ("polygon", [K, 2]) for the rest.
    """
    r = extent / 2.0
    aspect = math.sqrt(rng.uniform(0.75, 1.33))
    if name == "circle":
        rx, ry = r * aspect, r / aspect
        return "ellipse", np.array([[-rx, -ry], [rx, ry]])
    if name == "square":
        hx, hy = 0.85 * r * aspect, 0.85 * r / aspect
        pts = np.array([[-hx, -hy], [hx, -hy], [hx, hy], [-hx, hy]])
        return "polygon", _rotate(pts, rng.uniform(-0.35, 0.35))
    if name == "triangle":
        pts = _regular_polygon(3, r, -math.pi / 2) * np.array([aspect, 1 / aspect])
        return "polygon", _rotate(pts, rng.uniform(-math.pi, math.pi))
    if name == "star":
        outer = _regular_polygon(5, r, -math.pi / 2)
        inner = _regular_polygon(5, 0.42 * r, -math.pi / 2 + math.pi / 5)
        pts = np.empty((10, 2))
        pts[0::2], pts[1::2] = outer, inner
        return "polygon", _rotate(pts, rng.uniform(-math.pi, math.pi))
    if name == "cross":
        a, b = 0.9 * r, 0.3 * r  # arm half-length, arm half-width
        pts = np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b],
                        [b, a], [-b, a], [-b, b], [-a, b], [-a, -b], [-b, -b]])
        return "polygon", _rotate(pts * np.array([aspect, 1 / aspect]), rng.uniform(-0.5, 0.5))
    raise AssertionError(name)


def _draw_mask(kind: str, pts: np.ndarray, center: tuple[float, float], size: int) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    shifted = pts + np.asarray(center)
    if kind == "ellipse":
        draw.ellipse([float(shifted[0, 0]), float(shifted[0, 1]), float(shifted[1, 0]), float(shifted[1, 1])], fill=255)
    else:
        draw.polygon([(float(x), float(y)) for x, y in shifted], fill=255)
    return np.asarray(canvas) > 0


def _pick_color(rng: np.random.Generator, under: list[np.ndarray]) -> np.ndarray:
    """A saturated colour at least MIN_CONTRAST away from every colour in ``under``."""
    best, best_dist = None, -1.0
    for _ in range(20):
        color = _hsv_to_rgb(rng.random(), rng.uniform(0.55, 1.0), rng.uniform(0.45, 1.0))
        dist = min(float(np.linalg.norm(color - u)) for u in under) if under else 1e9
        if dist >= MIN_CONTRAST:
            return color
        if dist > best_dist:
            best, best_dist = color, dist
    # Very rare: fall back to black or white, whichever stands out more.
    for extreme in (np.zeros(3, np.float32), np.full(3, 255.0, np.float32)):
        dist = min(float(np.linalg.norm(extreme - u)) for u in under)
        if dist > best_dist:
            best, best_dist = extreme, dist
    return best


def render_shapes_image(rng: np.random.Generator, image_size: int, max_objects: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Draw one image.

    Returns:
        (uint8 [S, S, 3] image, [(index into CATEGORIES, visible bool mask [S, S]), ...]) in drawing order.
    """
    size = image_size
    canvas = _background(rng, size)
    num = int(rng.integers(1, max_objects + 1))
    full: list[np.ndarray] = []
    visible: list[np.ndarray] = []
    cats: list[int] = []
    colors: list[np.ndarray] = []
    for _ in range(num):
        cat = int(rng.integers(len(CATEGORIES)))
        for _try in range(PLACEMENT_TRIES):
            extent = size * rng.uniform(MIN_SIZE_FRAC, MAX_SIZE_FRAC)
            kind, pts = _shape_outline(CATEGORIES[cat]["name"], extent, rng)
            lo, hi = pts.min(axis=0), pts.max(axis=0)
            if np.any(hi - lo > size - 2):
                continue
            center = (rng.uniform(-lo[0] + 0.5, size - 0.5 - hi[0]), rng.uniform(-lo[1] + 0.5, size - 0.5 - hi[1]))
            mask = _draw_mask(kind, pts, center, size)
            if mask.sum() < 16:
                continue
            if all((v & ~mask).sum() >= MIN_VISIBLE * f.sum() for v, f in zip(visible, full)):
                break
        else:
            continue  # no room for this shape; the image just gets fewer
        under = [canvas[mask].mean(axis=0)] + [c for c, v in zip(colors, visible) if (v & mask).any()]
        color = _pick_color(rng, under)
        # A gentle shading ramp so shapes are not perfectly flat.
        ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32)
        ramp2d = np.broadcast_to(ramp[None, :] if rng.random() < 0.5 else ramp[:, None], (size, size))
        shade = 1.0 + rng.uniform(-0.15, 0.15) * ramp2d[mask]
        canvas[mask] = color[None, :] * shade[:, None]
        for i in range(len(visible)):
            visible[i] = visible[i] & ~mask
        full.append(mask)
        visible.append(mask.copy())
        cats.append(cat)
        colors.append(color)
    canvas += rng.normal(0.0, 3.0, size=canvas.shape).astype(np.float32)
    image = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
    return image, list(zip(cats, visible))


def _annotation(mask: np.ndarray, ann_id: int, image_id: int, category_id: int) -> dict[str, Any]:
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        # Pixel (x, y) covers [x, x + 1), so the box spans min .. max + 1.
        "bbox": [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)],
        "area": float(mask.sum()),
        "iscrowd": 0,
        "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
    }


# --------------------------------------------------------------------------------------------------
# writing


def _check_params(num_images: int, image_size: int, seed: int, max_objects: int) -> None:
    for name, value, low in (("num_images", num_images, 0), ("image_size", image_size, 32),
                             ("seed", seed, 0), ("max_objects", max_objects, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def write_shapes_dataset(
    root: str,
    *,
    num_images: int,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int,
    split_name: str,
    max_objects: int = DEFAULT_MAX_OBJECTS,
    image_format: str = "jpg",
    progress: bool = False,
) -> tuple[str, str]:
    """Write one split: ``root/<split_name>/*.jpg`` and ``root/annotations/instances_<split_name>.json``.

    Image ``i`` is drawn from ``np.random.default_rng([seed, i])``, so the output depends only on the
    arguments (and the Pillow/JPEG encoder version).

    Args:
        root: dataset root (created if needed).
        num_images: images in the split.
        image_size: side of the square images in pixels.
        seed: non-negative seed; use different seeds for different splits.
        split_name: folder / json name of the split, e.g. "train".
        max_objects: each image gets 1..max_objects shapes (fewer when there is no room).
        image_format: "jpg" (quality 90, like COCO) or "png".
        progress: show a tqdm bar.

    Returns:
        (image folder, annotation json path).
    """
    _check_params(num_images, image_size, seed, max_objects)
    if not split_name or os.sep in split_name or split_name in (".", "..", "annotations"):
        raise ValueError(f"split_name must be a plain folder name, got {split_name!r}")
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    image_dir = os.path.join(root, split_name)
    ann_dir = os.path.join(root, "annotations")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    indices: Any = range(num_images)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc=f"writing {split_name}", unit="img")
    for i in indices:
        image_id = i + 1
        rng = np.random.default_rng([seed, i])
        pixels, objects = render_shapes_image(rng, image_size, max_objects)
        file_name = f"{image_id:012d}.{image_format}"
        pil = Image.fromarray(pixels, mode="RGB")
        if image_format == "jpg":
            pil.save(os.path.join(image_dir, file_name), format="JPEG", quality=90)
        else:
            pil.save(os.path.join(image_dir, file_name), format="PNG")
        images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
        for cat, mask in objects:
            annotations.append(_annotation(mask, len(annotations) + 1, image_id, CATEGORIES[cat]["id"]))

    ann_path = os.path.join(ann_dir, f"instances_{split_name}.json")
    coco = {
        "info": {"description": "MobileNet Suite synthetic shapes", "version": str(GENERATOR_VERSION),
                 "split": split_name, "seed": seed, "image_size": image_size, "max_objects": max_objects},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [dict(c) for c in CATEGORIES],
    }
    atomic_write_json(ann_path, coco, indent=None)
    return image_dir, ann_path



def _paths(root: str) -> dict[str, str]:
    return {
        "root": root,
        "train_root": os.path.join(root, "train"),
        "train_ann": os.path.join(root, "annotations", "instances_train.json"),
        "val_root": os.path.join(root, "val"),
        "val_ann": os.path.join(root, "annotations", "instances_val.json"),
    }



def _writer(params: dict[str, Any], progress: bool) -> Callable[[Path], None]:
    """Writes both splits of the set ``params`` describe into a (temp) folder."""
    def write(root: Path) -> None:
        # Train and val come from disjoint seed streams (2s and 2s + 1).
        for split, seed, n in (("train", 2 * params["seed"], params["num_train"]),
                               ("val", 2 * params["seed"] + 1, params["num_val"])):
            write_shapes_dataset(str(root), num_images=n, image_size=params["image_size"], seed=seed,
                                 split_name=split, max_objects=params["max_objects"], progress=progress)
    return write


def ensure_shapes_dataset(
    cache_dir: str | None = None,
    *,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    image_size: int = DEFAULT_IMAGE_SIZE,
    max_objects: int = DEFAULT_MAX_OBJECTS,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, str]:
    """Return the paths of the shapes set for these parameters, writing it on first use.

    The set lives in ``<cache_dir>/shapes-v<version>-<hash of the parameters>`` (``cache_dir`` defaults
    to ``$MOBILENET_SUITE_CACHE`` or ``~/.cache/mobilenet_suite``), built once by
    ``datasets.cache.ensure_cached``: in a temp folder renamed into place, with a completion marker, so
    concurrent callers (e.g. DDP ranks) never see a half-written set.

    Returns:
        {"root", "train_root", "train_ann", "val_root", "val_ann"}.
    """
    _check_params(num_train, image_size, seed, max_objects)
    _check_params(num_val, image_size, seed, max_objects)
    params = {"num_train": num_train, "num_val": num_val, "image_size": image_size, "max_objects": max_objects,
              "seed": seed}
    root = ensure_cached("shapes", params, _writer(params, progress), version=GENERATOR_VERSION, cache_dir=cache_dir)
    return _paths(str(root))


# --------------------------------------------------------------------------------------------------
# CLI


def _split_summary(ann_path: str) -> dict[str, Any]:
    with open(ann_path) as f:
        data = json.load(f)
    names = {c["id"]: c["name"] for c in data["categories"]}
    per_class = {n: 0 for n in names.values()}
    sides = []
    for a in data["annotations"]:
        per_class[names[a["category_id"]]] += 1
        sides.append(min(a["bbox"][2], a["bbox"][3]))
    return {"images": len(data["images"]), "annotations": len(data["annotations"]), "per_class": per_class,
            "min_side": (min(sides) if sides else 0.0, float(np.median(sides)) if sides else 0.0,
                         max(sides) if sides else 0.0)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the synthetic COCO-format shapes detection set.")
    parser.add_argument("--out", default=None,
                        help="dataset root to write (default: a parameter-named folder in the cache, "
                             f"${CACHE_ENV} or ~/.cache/mobilenet_suite)")
    parser.add_argument("--num-train", type=int, default=DEFAULT_NUM_TRAIN)
    parser.add_argument("--num-val", type=int, default=DEFAULT_NUM_VAL)
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE)
    parser.add_argument("--max-objects", type=int, default=DEFAULT_MAX_OBJECTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rewrite --out even if it is complete")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    if args.out is None:
        paths = ensure_shapes_dataset(num_train=args.num_train, num_val=args.num_val, image_size=args.image_size,
                                      max_objects=args.max_objects, seed=args.seed, progress=True)
    else:
        for name, value, low in (("--num-train", args.num_train, 0), ("--num-val", args.num_val, 0),
                                 ("--image-size", args.image_size, 32), ("--max-objects", args.max_objects, 1),
                                 ("--seed", args.seed, 0)):
            if value < low:
                parser.error(f"{name} must be >= {low}, got {value}")
        params = {"num_train": args.num_train, "num_val": args.num_val, "image_size": args.image_size,
                  "max_objects": args.max_objects, "seed": args.seed}
        out = os.path.abspath(args.out)
        if os.path.isdir(out) and os.listdir(out) and not os.path.exists(os.path.join(out, MARKER)):
            parser.error(f"{out} exists and is not a shapes dataset written by this tool; "
                         "choose another --out or remove it")
        build_once(out, cache_marker("shapes", params, GENERATOR_VERSION), _writer(params, progress=True),
                   force=args.force)
        paths = _paths(out)
    elapsed = time.perf_counter() - start

    print(f"shapes dataset at {paths['root']} ({elapsed:.1f} s)")
    for split in ("train", "val"):
        s = _split_summary(paths[f"{split}_ann"])
        lo, med, hi = s["min_side"]
        print(f"  {split:5s} {s['images']:6d} images {s['annotations']:7d} boxes  "
              f"shorter box side min/median/max {lo:.0f}/{med:.0f}/{hi:.0f} px")
        print("        " + ", ".join(f"{k}: {v}" for k, v in s["per_class"].items()))
        print(f"        images {paths[f'{split}_root']}\n        json   {paths[f'{split}_ann']}")
    print("categories: " + ", ".join(f"{c['id']}={c['name']}" for c in CATEGORIES))
    return 0


if __name__ == "__main__":
    run_cli(main)
