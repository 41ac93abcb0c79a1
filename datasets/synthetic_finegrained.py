"""The built-in fine-grained set: drawn dogs in the Stanford Dogs layout (MobileNets paper, Section 4.3, Table 10).

What makes Stanford Dogs hard is that breeds come in look-alike families told apart by a detail. This
set keeps that shape: breeds are pairs that share a coat colour and differ in exactly one small detail
(ear shape, tail carriage, a chest patch, a dark muzzle, spots, a collar, ...), so the coat colour gets a
model to about 1/2 of the way and only the detail gets it the rest. Every image has cluttered background
(random shapes in random colours, some of them coat-coloured), dogs of random size, position and facing,
and a few images hold two dogs (each with its own box, as the real annotations have). The odd files of
the real set are planted too: a PNG named ``.jpg``, grayscale and CMYK JPEGs.

The files are the real format (``datasets.synthetic_dogs`` writes the XML and ``.mat`` lists), so
``datasets.stanford_dogs.open_finegrained`` reads them like the real data. Image sizes vary (like the
real set's), breed folders carry real Stanford Dogs wnids and names (the drawings do not look like those
breeds; the names only exercise the real naming).

:func:`ensure_synthetic_dogs` writes the set once into the suite's cache (``datasets.cache``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from datasets.cache import ensure_cached
from datasets.synthetic_dogs import save_image_as, write_annotation_xml, write_mat_list

__all__ = ["BREEDS", "DETAILS", "GENERATOR_VERSION", "ensure_synthetic_dogs", "write_synthetic_dogs", "write_web_set"]

GENERATOR_VERSION = 2

# Real Stanford Dogs folder names (wnid-breed), in wnid order: the label order the lists use.
BREEDS: tuple[tuple[str, str], ...] = (
    ("n02085620", "Chihuahua"),
    ("n02085782", "Japanese_spaniel"),
    ("n02085936", "Maltese_dog"),
    ("n02086079", "Pekinese"),
    ("n02086240", "Shih-Tzu"),
    ("n02086646", "Blenheim_spaniel"),
    ("n02086910", "papillon"),
    ("n02087046", "toy_terrier"),
    ("n02087394", "Rhodesian_ridgeback"),
    ("n02088094", "Afghan_hound"),
    ("n02088238", "basset"),
    ("n02088364", "beagle"),
)

# Breed 2k and 2k + 1 share COATS[k] and differ in DETAILS[k] only (absent for 2k, present for 2k + 1).
COATS: tuple[tuple[int, int, int], ...] = (
    (196, 150, 96), (60, 52, 48), (226, 220, 200), (132, 80, 44), (150, 150, 156), (204, 120, 60))
DETAILS: tuple[str, ...] = ("pointy_ears", "raised_tail", "chest_patch", "dark_muzzle", "spots", "red_collar")


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)  # type: ignore[return-value]


def _background(w: int, h: int, rng: np.random.Generator, clutter: int) -> Image.Image:
    top, bottom = rng.integers(40, 220, size=3), rng.integers(40, 220, size=3)
    ramp = np.linspace(0.0, 1.0, h)[:, None, None]
    arr = (top[None, None, :] * (1 - ramp) + bottom[None, None, :] * ramp).repeat(w, axis=1)
    arr = arr + rng.normal(0, 6, size=arr.shape)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(clutter):
        # a third of the clutter takes a coat colour, so colour alone does not find the dog
        color = _jitter(COATS[int(rng.integers(len(COATS)))], rng, 20) if rng.random() < 0.33 else \
            tuple(int(v) for v in rng.integers(0, 256, size=3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        s = int(rng.integers(max(3, w // 20), max(4, w // 5)))
        kind = rng.integers(3)
        if kind == 0:
            draw.rectangle([x, y, x + s, y + int(s * rng.uniform(0.3, 1.5))], fill=color)
        elif kind == 1:
            draw.ellipse([x, y, x + s, y + s], fill=color)
        else:
            draw.line([x, y, x + int(rng.integers(-s, s + 1)), y + int(rng.integers(-s, s + 1))], fill=color,
                      width=max(1, s // 6))
    return img


def _draw_dog(draw: ImageDraw.ImageDraw, breed: int, x: float, y: float, size: float, facing: int,
              rng: np.random.Generator) -> list[int]:
    """Draw one dog whose body box starts at (x, y) with width ``size``; returns its xyxy box."""
    coat = _jitter(COATS[breed // 2], rng, 14)
    detail = DETAILS[breed // 2] if breed % 2 else None
    dark = tuple(max(0, c - 90) for c in coat)
    light = (246, 244, 236)
    bw, bh = size, size * 0.45
    leg_h = size * 0.3
    # body, legs
    body = [x, y + size * 0.25, x + bw, y + size * 0.25 + bh]
    draw.ellipse(body, fill=coat)
    for k in range(4):
        lx = x + bw * (0.12 + 0.22 * k)
        draw.rectangle([lx, body[3] - bh * 0.2, lx + bw * 0.09, body[3] + leg_h], fill=coat)
    # head at the front end (facing = +1: right, -1: left)
    hr = size * 0.2
    hx = x + bw + hr * 0.2 if facing > 0 else x - hr * 0.2
    hy = y + size * 0.2
    draw.ellipse([hx - hr, hy - hr, hx + hr, hy + hr], fill=coat)
    mx = hx + facing * hr * 0.9
    muzzle = [mx - hr * 0.55, hy - hr * 0.05, mx + hr * 0.55, hy + hr * 0.6]
    draw.ellipse(muzzle, fill=(25, 18, 16) if detail == "dark_muzzle" else coat)
    draw.ellipse([hx + facing * hr * 0.2 - 1.5, hy - hr * 0.4 - 1.5, hx + facing * hr * 0.2 + 1.5,
                  hy - hr * 0.4 + 1.5], fill=(10, 10, 10))
    # ears: pointy triangles up, or floppy ones hanging down
    for ex in (hx - hr * 0.5, hx + hr * 0.2):
        if detail == "pointy_ears":
            draw.polygon([(ex - hr * 0.35, hy - hr * 0.7), (ex + hr * 0.35, hy - hr * 0.7), (ex, hy - hr * 1.9)],
                         fill=dark)
        else:
            draw.ellipse([ex - hr * 0.25, hy - hr * 0.8, ex + hr * 0.25, hy + hr * 0.3], fill=dark)
    # tail at the back end: raised (up) or hanging (down)
    tx = x if facing > 0 else x + bw
    ty = body[1] + bh * 0.3
    tip_y = ty - size * 0.45 if detail == "raised_tail" else ty + size * 0.3
    draw.line([tx, ty, tx - facing * size * 0.18, tip_y], fill=coat, width=max(2, int(size * 0.08)))
    if detail == "chest_patch":
        cx = x + bw * (0.8 if facing > 0 else 0.2)
        draw.ellipse([cx - bw * 0.16, body[1] + bh * 0.2, cx + bw * 0.16, body[1] + bh * 0.9], fill=light)
    if detail == "spots":
        for _ in range(4):
            sx = x + bw * rng.uniform(0.25, 0.75)
            sy = body[1] + bh * rng.uniform(0.25, 0.6)
            r = size * 0.06
            draw.ellipse([sx - r, sy - r, sx + r, sy + r], fill=dark)
    if detail == "red_collar":
        draw.line([hx - facing * hr * 0.6, hy + hr * 0.4, hx - facing * hr * 0.1, hy + hr * 1.0],
                  fill=(220, 20, 30), width=max(2, int(size * 0.07)))
    x1 = min(body[0], hx - hr, tx - size * 0.25)
    x2 = max(body[2], hx + hr * 1.5, tx + size * 0.25)
    y1 = min(hy - hr * 2.0, tip_y)
    y2 = body[3] + leg_h
    return [int(math.floor(x1)), int(math.floor(y1)), int(math.ceil(x2)), int(math.ceil(y2))]


def _draw_scene(label: int | None, rng: np.random.Generator, *, image_size: int, clutter: int,
                two_dog_fraction: float) -> tuple[Image.Image, list[list[int]]]:
    """One image of breed ``label`` (None: background only) and its dogs' xyxy boxes."""
    w = int(image_size * rng.uniform(0.8, 1.25))
    h = int(image_size * rng.uniform(0.8, 1.25))
    img = _background(w, h, rng, clutter)
    if label is None:
        return img, []
    draw = ImageDraw.Draw(img)
    n = 2 if rng.random() < two_dog_fraction else 1
    boxes = []
    for d in range(n):
        size = min(w, h) * (rng.uniform(0.5, 0.68) if n == 1 else rng.uniform(0.32, 0.42))
        lo_x = size * 0.45 + (d * w / 2 if n == 2 else 0)
        hi_x = (w / 2 if n == 2 and d == 0 else w) - size * 1.45
        x = rng.uniform(lo_x, max(lo_x, hi_x))
        y = rng.uniform(size * 0.45, max(size * 0.45, h - size * 1.05))
        box = _draw_dog(draw, label, x, y, size, 1 if rng.random() < 0.5 else -1, rng)
        boxes.append([max(0, box[0]), max(0, box[1]), min(w, box[2]), min(h, box[3])])
    return img, boxes


def write_synthetic_dogs(root: str | os.PathLike, *, num_breeds: int = 12, train_per_breed: int = 80,
                         test_per_breed: int = 40, image_size: int = 96, two_dog_fraction: float = 0.15,
                         clutter: int = 10, seed: int = 0, web_per_breed: int = 0, web_noise: float = 0.35,
                         web_no_dog: float = 0.05, web_planted: int = 8, progress: bool = False) -> dict[str, Any]:
    """Write the set under ``root`` (module docstring).

    Args:
        num_breeds: an even number in 2..len(BREEDS) (breeds come in pairs).
        train_per_breed, test_per_breed: images per breed in ``train_list.mat`` / ``test_list.mat``.
        image_size: the typical image side; each image's sides vary within 80-125 % of it.
        two_dog_fraction: share of images with two dogs.
        clutter: background shapes per image.
        seed: everything is drawn from it.
        web_per_breed, web_noise, web_no_dog, web_planted: the noisy web folder (:func:`write_web_set`);
            0 images per breed: none.

    Returns:
        ``{"root", "breeds", "odd_files", "two_dog_images"}`` (and ``"web"``: the web set's manifest).
    """
    if num_breeds % 2 or not 2 <= num_breeds <= len(BREEDS):
        raise ValueError(f"num_breeds must be even and in 2..{len(BREEDS)}, got {num_breeds}")
    for name, v in (("train_per_breed", train_per_breed), ("test_per_breed", test_per_breed)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 2:
            raise ValueError(f"{name} must be an int >= 2, got {v!r}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    if not 0.0 <= two_dog_fraction <= 1.0:
        raise ValueError(f"two_dog_fraction must be in [0, 1], got {two_dog_fraction}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    folders = [f"{wnid}-{name}" for wnid, name in BREEDS[:num_breeds]]
    lists: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    odd: dict[str, str] = {}
    two_dogs = 0
    plan = [(label, k) for label in range(num_breeds) for k in range(train_per_breed + test_per_breed)]
    it: Any = plan
    if progress:
        from tqdm import tqdm

        it = tqdm(plan, desc="synthetic dogs", unit="img", leave=False)
    for label, k in it:
        wnid, name = BREEDS[label]
        img, boxes = _draw_scene(label, rng, image_size=image_size, clutter=clutter,
                                 two_dog_fraction=two_dog_fraction)
        w, h = img.size
        two_dogs += len(boxes) == 2
        stem = f"{wnid}_{10000 + 7 * k + label}"
        rel = f"{folders[label]}/{stem}.jpg"
        path = root / "Images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        kind = {(0, 3): "grayscale", (1, 5): "cmyk", (num_breeds - 1, 2): "png_as_jpg"}.get((label, k))
        save_image_as(img, path, kind, quality=92)
        if kind:
            odd[kind] = rel
        write_annotation_xml(root / "Annotation" / folders[label] / stem, folder=wnid[1:], filename=stem,
                             width=w, height=h, objects=[(name, b) for b in boxes])
        lists["train" if k < train_per_breed else "test"].append((rel, label))
    for split, items in (("train", lists["train"]), ("test", lists["test"]),
                         ("file", lists["train"] + lists["test"])):
        write_mat_list(root / "lists" / f"{split}_list.mat", [f for f, _ in items], [lab for _, lab in items])
    info: dict[str, Any] = {"root": str(root), "breeds": folders, "odd_files": odd, "two_dog_images": int(two_dogs)}
    if web_per_breed:
        info["web"] = write_web_set(root, [rel for rel, _ in lists["test"]], num_breeds=num_breeds,
                                    per_breed=web_per_breed, noise=web_noise, no_dog=web_no_dog,
                                    planted=web_planted, image_size=image_size, clutter=clutter,
                                    seed=seed, progress=progress)
    return info


def write_web_set(root: str | os.PathLike, test_files: list[str], *, num_breeds: int, per_breed: int,
                  noise: float = 0.35, no_dog: float = 0.05, planted: int = 8, image_size: int = 96,
                  clutter: int = 10, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """The noisy web folder ``root/web/<class>/*.jpg`` beside the clean set (as a web crawl would give it).

    ``per_breed`` images are filed under each breed. A share ``noise`` of them shows another breed (half
    of those the look-alike partner, the mistake a search engine makes most, half any other breed) and a
    share ``no_dog`` shows no dog at all: wrong labels, ``noise + no_dog`` in all. Class folders are
    named as users' crawls name them: some by the full folder name, some by the breed name, some by the
    wnid. ``planted`` test images are copied in exactly and ``planted`` more as near copies (resized,
    re-encoded at a lower JPEG quality, every other one mirrored), under their true breed: the leak that
    deduplication must remove. ``root/web_manifest.json`` records every file's listed and true breed and
    the planted copies (for measuring; the trainer never reads it).

    Returns:
        The manifest (``images``, ``planted``, ``wrong_label_fraction``).
    """
    if not 0 <= noise + no_dog < 1 or noise < 0 or no_dog < 0:
        raise ValueError(f"web noise {noise} + no_dog {no_dog} must be in [0, 1)")
    if not 0 <= 2 * planted <= len(test_files):
        raise ValueError(f"web_planted={planted}: need 0 <= 2 * planted <= {len(test_files)} test images")
    root = Path(root)
    rng = np.random.default_rng([seed, 1])  # its own stream: the clean set does not change with these options
    names = [(f"{w}-{n}", n, w)[i % 3] for i, (w, n) in enumerate(BREEDS[:num_breeds])]
    images: dict[str, dict[str, Any]] = {}
    plan = [(listed, k) for listed in range(num_breeds) for k in range(per_breed)]
    it: Any = plan
    if progress:
        from tqdm import tqdm

        it = tqdm(plan, desc="synthetic web set", unit="img", leave=False)
    for listed, k in it:
        u = rng.random()
        if u < no_dog:
            true: int | None = None
        elif u < no_dog + noise:
            others = [b for b in range(num_breeds) if b != listed]
            true = listed ^ 1 if rng.random() < 0.5 else int(rng.choice(others))
        else:
            true = listed
        img, _ = _draw_scene(true, rng, image_size=int(image_size * rng.uniform(0.9, 1.3)),
                             clutter=int(rng.integers(max(1, clutter // 2), 2 * clutter + 1)), two_dog_fraction=0.1)
        rel = f"{names[listed]}/web_{listed:03d}_{k:05d}.jpg"
        (root / "web" / rel).parent.mkdir(parents=True, exist_ok=True)
        img.save(root / "web" / rel, format="JPEG", quality=int(rng.integers(70, 95)))
        images[rel] = {"listed": listed, "true": true}
    copies = []
    picks = rng.choice(len(test_files), size=2 * planted, replace=False) if planted else []
    for j, t in enumerate(picks):
        src = root / "Images" / test_files[int(t)]
        label = next(i for i, (w, n) in enumerate(BREEDS[:num_breeds]) if test_files[int(t)].startswith(f"{w}-{n}/"))
        exact = j < planted
        rel = f"{names[label]}/copy_{j:03d}.jpg"
        if exact:
            shutil.copyfile(src, root / "web" / rel)
        else:
            with Image.open(src) as im:
                im = im.convert("RGB")
                scale = rng.uniform(0.8, 0.95)
                im = im.resize((max(8, int(im.width * scale)), max(8, int(im.height * scale))),
                               Image.Resampling.BILINEAR)
                if j % 2:
                    im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                im.save(root / "web" / rel, format="JPEG", quality=int(rng.integers(60, 80)))
        images[rel] = {"listed": label, "true": label}
        copies.append({"web": rel, "test": test_files[int(t)], "kind": "exact" if exact else "near"})
    wrong = sum(1 for v in images.values() if v["true"] != v["listed"])
    manifest = {"images": images, "planted": copies, "wrong_label_fraction": wrong / len(images),
                "class_folders": names}
    (root / "web_manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def ensure_synthetic_dogs(cache_dir: str | os.PathLike | None = None, *, progress: bool = False,
                          **params: Any) -> str:
    """The data root of the built-in set with ``params`` (:func:`write_synthetic_dogs`'s), written on first use."""
    known = {"num_breeds", "train_per_breed", "test_per_breed", "image_size", "two_dog_fraction", "clutter", "seed",
             "web_per_breed", "web_noise", "web_no_dog", "web_planted"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"data.synthetic: unknown key {unknown[0]!r} (known: {sorted(known)})")
    root = ensure_cached("finegrained-dogs", params,
                         lambda tmp: write_synthetic_dogs(tmp, progress=progress, **params),
                         version=GENERATOR_VERSION, cache_dir=cache_dir)
    return str(root)
