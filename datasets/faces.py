"""Face data in the formats of CASIA-WebFace, VGGFace2 and LFW, plus a synthetic set written in them.

MobileNets Section 4.7 / Table 14 trains and scores face embeddings; the real data is the user's to
bring. This module reads and writes what those sets look like on disk:

* identity folders: ``root/<identity>/<image>`` (CASIA-WebFace, VGGFace2, LFW). :func:`scan_identity_folders`
  lists them; :class:`IdentityFolder` is the matching ``Dataset`` (image tensor, identity label).
* LFW ``pairs.txt``: a header line (``<folds> <pairs per fold>``, or a single count for the
  ``pairsDevTrain/DevTest`` files), then per fold ``n`` same-person lines ``name i j`` followed by ``n``
  different-person lines ``name1 i name2 j``; image ``i`` of ``name`` is ``<root>/name/name_<i:04d>.<ext>``.
  :func:`read_pairs` resolves every image (a missing one fails with its name) and keeps the fold of
  each pair; :func:`write_pairs` writes the same format.
* the synthetic identities (:func:`write_synthetic_faces`, :func:`ensure_synthetic_faces`): drawn faces
  from ``datasets.faces_synth`` whose identity traits are fixed per person while pose, light,
  expression and noise change per image, written as ``train/``, ``test/`` (held-out identities),
  ``probe/`` (further images of the test identities, never in a gallery built from ``test/``) and
  ``pairs.txt`` over ``test/`` with identity-disjoint folds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from datasets.images import IMAGE_EXTENSIONS, is_image_file, load_rgb_image
from datasets.io import atomic_write_text

__all__ = [
    "SYNTH_DEFAULTS",
    "FaceSample",
    "IdentityFolder",
    "PairList",
    "ensure_synthetic_faces",
    "image_to_tensor",
    "read_pairs",
    "scan_identity_folders",
    "write_pairs",
    "write_synthetic_faces",
]



# --------------------------------------------------------------------------------------------------
# images


def image_to_tensor(img: Image.Image, resolution: int, center_crop: float = 1.0) -> torch.Tensor:
    """Centre-crop ``center_crop`` of the shorter side, resize to ``resolution`` squared, scale to [0, 1].

    Returns:
        ``[3, resolution, resolution]`` float32 tensor.
    """
    w, h = img.size
    side = max(1, int(round(min(w, h) * center_crop)))
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


# --------------------------------------------------------------------------------------------------
# identity folders


@dataclass(frozen=True)
class FaceSample:
    """One image of an identity folder."""

    path: str
    identity: str


def scan_identity_folders(root: str | os.PathLike, *, min_images: int = 1) -> list[FaceSample]:
    """List ``root/<identity>/<image>`` files, sorted by identity then file name.

    Files directly under ``root`` (such as a ``pairs.txt``) and hidden entries are ignored.

    Args:
        root: dataset root.
        min_images: identities with fewer images are left out (2 are needed to form a positive pair).

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no identity folder with at least ``min_images`` images.
    """
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"face data root is not a folder: {r}")
    samples: list[FaceSample] = []
    for ident in sorted(os.listdir(r)):
        d = r / ident
        if ident.startswith(".") or not d.is_dir():
            continue
        files = sorted(f for f in os.listdir(d) if is_image_file(f) and (d / f).is_file())
        if len(files) >= min_images:
            samples.extend(FaceSample(str(d / f), ident) for f in files)
    if not samples:
        raise ValueError(f"no identity folders with >= {min_images} image(s) under {r} "
                         f"(expected root/<identity>/<image>{'|'.join(IMAGE_EXTENSIONS[:3])})")
    return samples


class IdentityFolder(torch.utils.data.Dataset):
    """Identity-folder dataset: ``(image tensor [3, R, R], identity label)``.

    Attributes:
        samples: the :class:`FaceSample` list.
        identities: sorted identity names; label ``i`` is ``identities[i]``.
        labels: label per sample.
    """

    def __init__(self, root: str | os.PathLike, *, resolution: int = 160, center_crop: float = 1.0,
                 transform: Callable[[Image.Image], Image.Image] | None = None, min_images: int = 1):
        self.root = str(root)
        self.samples = scan_identity_folders(root, min_images=min_images)
        self.identities = sorted({s.identity for s in self.samples})
        index = {name: i for i, name in enumerate(self.identities)}
        self.labels = [index[s.identity] for s in self.samples]
        self.resolution = resolution
        self.center_crop = center_crop
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> torch.Tensor:
        img = load_rgb_image(self.samples[i].path)
        if self.transform is not None:
            img = self.transform(img)
        return image_to_tensor(img, self.resolution, self.center_crop)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.load(i), self.labels[i]


# --------------------------------------------------------------------------------------------------
# LFW pairs.txt


@dataclass
class PairList:
    """Resolved verification pairs.

    Attributes:
        path_a, path_b: image paths of each pair.
        same: True for same-person pairs.
        folds: fold index of each pair (from the file's layout).
        num_folds: folds declared by the header.
    """

    path_a: list[str]
    path_b: list[str]
    same: np.ndarray
    folds: np.ndarray
    num_folds: int

    def __len__(self) -> int:
        return len(self.same)

    def unique_paths(self) -> list[str]:
        return sorted(set(self.path_a) | set(self.path_b))


def _resolve_image(root: Path, name: str, num: int, where: str) -> str:
    folder = root / name
    stem = f"{name}_{num:04d}"
    for ext in IMAGE_EXTENSIONS:
        for e in (ext, ext.upper()):
            p = folder / (stem + e)
            if p.is_file():
                return str(p)
    raise FileNotFoundError(f"{where}: image {stem} not found in {folder} (tried {', '.join(IMAGE_EXTENSIONS)})")


def read_pairs(pairs_file: str | os.PathLike, data_root: str | os.PathLike, *, check_images: bool = True) -> PairList:
    """Parse an LFW-format ``pairs.txt`` and resolve its images under ``data_root``.

    Args:
        pairs_file: the pairs file.
        data_root: folder holding ``<name>/<name>_<i:04d>.<ext>``.
        check_images: resolve (and require) every image file; with False, ``.jpg`` paths are assumed.

    Returns:
        :class:`PairList` with one entry per pair, in file order.

    Raises:
        FileNotFoundError: the file, ``data_root`` or a named image is missing (the message names it).
        ValueError: a malformed line (the message names file and line number).
    """
    pf, root = Path(pairs_file), Path(data_root)
    if not pf.is_file():
        raise FileNotFoundError(f"pairs file not found: {pf}")
    if not root.is_dir():
        raise FileNotFoundError(f"face data root is not a folder: {root}")
    lines = [(i + 1, ln.split()) for i, ln in enumerate(pf.read_text().splitlines())]
    lines = [(n, f) for n, f in lines if f]
    if not lines:
        raise ValueError(f"{pf} is empty")
    (hn, header), body = lines[0], lines[1:]
    try:
        nums = [int(x) for x in header]
    except ValueError:
        raise ValueError(f"{pf} line {hn}: header must be '<folds> <pairs per fold>' or '<pairs>', "
                         f"got {' '.join(header)!r}") from None
    if len(nums) == 2:
        num_folds, per_fold = nums
    elif len(nums) == 1:
        num_folds, per_fold = 1, nums[0]
    else:
        raise ValueError(f"{pf} line {hn}: header has {len(nums)} numbers, expected 1 or 2")
    if num_folds < 1 or per_fold < 1:
        raise ValueError(f"{pf} line {hn}: folds and pairs per fold must be >= 1, got {nums}")
    expected = num_folds * 2 * per_fold
    if len(body) != expected:
        raise ValueError(f"{pf}: header {' '.join(header)} announces {expected} pair lines "
                         f"({num_folds} fold(s) x ({per_fold} same + {per_fold} different)), found {len(body)}")

    cache: dict[tuple[str, int], str] = {}

    def resolve(name: str, num_s: str, n: int) -> str:
        where = f"{pf} line {n}"
        if not re.fullmatch(r"\d+", num_s):
            raise ValueError(f"{where}: image number must be a positive integer, got {num_s!r}")
        num = int(num_s)
        key = (name, num)
        if key not in cache:
            cache[key] = (_resolve_image(root, name, num, where) if check_images
                          else str(root / name / f"{name}_{num:04d}.jpg"))
        return cache[key]

    a, b, same, folds = [], [], [], []
    for j, (n, f) in enumerate(body):
        fold, pos_in_fold = divmod(j, 2 * per_fold)
        expect_same = pos_in_fold < per_fold
        if len(f) == 3:
            is_same = True
            pa, pb = resolve(f[0], f[1], n), resolve(f[0], f[2], n)
        elif len(f) == 4:
            is_same = False
            pa, pb = resolve(f[0], f[1], n), resolve(f[2], f[3], n)
        else:
            raise ValueError(f"{pf} line {n}: expected 'name i j' (same person) or 'name1 i name2 j' "
                             f"(different people), got {len(f)} fields")
        if is_same != expect_same:
            kind = "same-person" if expect_same else "different-person"
            raise ValueError(f"{pf} line {n}: fold {fold + 1} expects a {kind} line here "
                             f"({per_fold} same then {per_fold} different per fold)")
        a.append(pa)
        b.append(pb)
        same.append(is_same)
        folds.append(fold)
    return PairList(a, b, np.asarray(same, dtype=bool), np.asarray(folds, dtype=np.int64), num_folds)


def write_pairs(path: str | os.PathLike, folds: Sequence[tuple[Sequence[tuple[str, int, int]],
                                                                Sequence[tuple[str, int, str, int]]]]) -> Path:
    """Write an LFW-format pairs file (atomically).

    Args:
        path: output file.
        folds: per fold ``(same, different)`` with ``same = [(name, i, j)]`` and
            ``different = [(name1, i, name2, j)]``; every fold must have the same count of each.
    """
    if not folds:
        raise ValueError("write_pairs needs at least one fold")
    n = len(folds[0][0])
    for k, (same, diff) in enumerate(folds):
        if len(same) != n or len(diff) != n:
            raise ValueError(f"fold {k}: {len(same)} same and {len(diff)} different pairs; every fold needs "
                             f"{n} of each")
    lines = [f"{len(folds)}\t{n}"]
    for same, diff in folds:
        lines += [f"{a}\t{i}\t{j}" for a, i, j in same]
        lines += [f"{a}\t{i}\t{b}\t{j}" for a, i, b, j in diff]
    out = Path(path)
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out


# --------------------------------------------------------------------------------------------------
# synthetic identities

# Bump when the writer (or the way it uses the renderer) changes, so stale caches are rebuilt.
SYNTH_VERSION = 1
# Attributes that belong to the person (drawn once per identity); the others (smile, glasses, hat,
# earrings) change from photo to photo like pose and light do.
_PERSISTENT_ATTRIBUTES = ("beard", "mustache", "bangs", "rosy_cheeks")
_PHOTO_ATTRIBUTE_PRIORS = {"Eyeglasses": 0.15, "Wearing_Hat": 0.1, "Wearing_Earrings": 0.15}
_SPLIT_CODES = {"train": 0, "test": 1}

SYNTH_DEFAULTS: dict[str, Any] = {
    "num_train_identities": 200,
    "num_test_identities": 100,
    "images_per_identity": 10,
    "test_images_per_identity": 8,
    "probe_images_per_identity": 2,
    "image_size": 64,
    "num_folds": 10,
    "pairs_per_fold": 200,
    "nuisance_strength": 1.0,
    "seed": 0,
}


def _identity_name(split: str, i: int) -> str:
    return f"{'person' if split == 'train' else 'heldout'}_{i + 1:05d}"


def _render_person(split: str, i: int, num_images: int, first: int, size: int, seed: int,
                   strength: float) -> list[Image.Image]:
    """Images ``first..first+num_images-1`` of person ``i``: one identity, a fresh photo each time."""
    from dataclasses import replace

    from datasets import faces_synth as fs

    who = np.random.default_rng([seed, _SPLIT_CODES[split], i])
    identity = fs.sample_identity(who)
    persistent = fs.sample_attributes(who)
    out = []
    for j in range(first, first + num_images):
        rng = np.random.default_rng([seed, _SPLIT_CODES[split], i, j + 1])
        photo = fs.sample_attributes(rng, _PHOTO_ATTRIBUTE_PRIORS)
        attrs = replace(photo, **{a: getattr(persistent, a) for a in _PERSISTENT_ATTRIBUTES})
        params = fs.FaceParams(identity, attrs, fs.sample_nuisance(rng, strength))
        out.append(fs.render_face(params, size, rng))
    return out


def _save_jpeg(img: Image.Image, path: str) -> None:
    img.save(path, format="JPEG", quality=92)


def _make_pairs(names: list[str], num_images: int, num_folds: int, per_fold: int,
                rng: np.random.Generator) -> list[tuple[list[tuple[str, int, int]], list[tuple[str, int, str, int]]]]:
    """Identity-disjoint folds (as LFW's): each fold's pairs use only that fold's identities."""
    groups = np.array_split(np.arange(len(names)), num_folds)
    folds = []
    for k, g in enumerate(groups):
        if len(g) < 2:
            raise ValueError(f"pairs fold {k + 1} has {len(g)} identity; need >= 2 per fold "
                             f"({len(names)} test identities for {num_folds} folds)")
        same_all = [(names[p], a + 1, b + 1) for p in g for a in range(num_images) for b in range(a + 1, num_images)]
        if len(same_all) < per_fold:
            raise ValueError(f"pairs fold {k + 1} can form {len(same_all)} same-person pairs, {per_fold} requested; "
                             "lower pairs_per_fold or add test identities/images")
        same = [same_all[t] for t in sorted(rng.choice(len(same_all), per_fold, replace=False))]
        diff_set: set[tuple[str, int, str, int]] = set()
        max_diff = len(g) * (len(g) - 1) // 2 * num_images * num_images
        if max_diff < per_fold:
            raise ValueError(f"pairs fold {k + 1} can form only {max_diff} different-person pairs")
        while len(diff_set) < per_fold:
            p, q = sorted(rng.choice(g, 2, replace=False))
            diff_set.add((names[p], int(rng.integers(num_images)) + 1, names[q], int(rng.integers(num_images)) + 1))
        folds.append((same, sorted(diff_set)))
    return folds


def write_synthetic_faces(root: str | os.PathLike, *, progress: bool = False, **params: Any) -> dict[str, str]:
    """Write the synthetic identity set (see the module docstring) into ``root``.

    Person ``i`` of a split is drawn from ``np.random.default_rng([seed, split, i])`` and its image
    ``j`` from ``[seed, split, i, j]``, so the output depends only on the parameters.

    Args:
        root: output folder (created).
        progress: show a tqdm bar.
        **params: any of :data:`SYNTH_DEFAULTS` (identity counts, images per identity, image_size,
            num_folds, pairs_per_fold, nuisance_strength, seed).

    Returns:
        ``{"root", "train", "test", "probe", "pairs"}``.
    """
    p = _synth_params(params)
    r = Path(root)
    dirs = {s: r / s for s in ("train", "test", "probe")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    jobs = [("train", i) for i in range(p["num_train_identities"])]
    jobs += [("test", i) for i in range(p["num_test_identities"])]
    n_train, n_test, n_probe = p["images_per_identity"], p["test_images_per_identity"], p["probe_images_per_identity"]
    bar = None
    if progress:
        from tqdm import tqdm

        total = p["num_train_identities"] * n_train + p["num_test_identities"] * (n_test + n_probe)
        bar = tqdm(total=total, desc="synthetic faces", unit="img", leave=False)
    for split, i in jobs:
        name = _identity_name(split, i)
        count = n_train if split == "train" else n_test + n_probe
        images = _render_person(split, i, count, 0, p["image_size"], p["seed"], p["nuisance_strength"])
        for j, img in enumerate(images):
            target = dirs[split] if j < (n_train if split == "train" else n_test) else dirs["probe"]
            (target / name).mkdir(exist_ok=True)
            _save_jpeg(img, str(target / name / f"{name}_{j + 1:04d}.jpg"))
        if bar is not None:
            bar.update(count)
    if bar is not None:
        bar.close()
    names = [_identity_name("test", i) for i in range(p["num_test_identities"])]
    folds = _make_pairs(names, n_test, p["num_folds"], p["pairs_per_fold"], np.random.default_rng([p["seed"], 7]))
    pairs = write_pairs(r / "pairs.txt", folds)
    return {"root": str(r), "train": str(dirs["train"]), "test": str(dirs["test"]), "probe": str(dirs["probe"]),
            "pairs": str(pairs)}


def _synth_params(params: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(params) - set(SYNTH_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown synthetic face setting(s) {unknown}; known: {sorted(SYNTH_DEFAULTS)}")
    p = {**SYNTH_DEFAULTS, **params}
    lows = {"num_train_identities": 2, "num_test_identities": 2, "images_per_identity": 2,
            "test_images_per_identity": 2, "probe_images_per_identity": 0, "image_size": 32, "num_folds": 1,
            "pairs_per_fold": 1, "seed": 0}
    for k, low in lows.items():
        v = p[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"synthetic face setting {k} must be an integer >= {low}, got {v!r}")
    if not 0 <= float(p["nuisance_strength"]) <= 2:
        raise ValueError(f"nuisance_strength must be in [0, 2], got {p['nuisance_strength']!r}")
    p["nuisance_strength"] = float(p["nuisance_strength"])
    return p


def ensure_synthetic_faces(cache_dir: str | None = None, *, progress: bool = False, **params: Any) -> dict[str, str]:
    """Paths of the synthetic identity set for these parameters, writing it on first use.

    The set lives in ``<cache>/faces-ids-v<version>-<hash of the parameters>`` (cache:
    ``$MOBILENET_SUITE_CACHE`` or ``~/.cache/mobilenet_suite``). It is written to a temp folder and
    renamed into place with a completion marker last, so concurrent callers never see half a set.

    Returns:
        ``{"root", "train", "test", "probe", "pairs"}`` as :func:`write_synthetic_faces`.
    """
    import hashlib

    from datasets.cache import MARKER, default_cache_dir, is_complete
    from datasets.faces_synth import GENERATOR_VERSION

    p = _synth_params(params)
    marker = {"version": SYNTH_VERSION, "renderer": GENERATOR_VERSION, **p}
    key = hashlib.sha256(json.dumps(marker, sort_keys=True).encode()).hexdigest()[:10]
    cache = Path(cache_dir or default_cache_dir())
    final = cache / f"faces-ids-v{SYNTH_VERSION}-s{p['image_size']}-{key}"

    def complete(d: Path) -> bool:
        return is_complete(d, marker)

    def paths(d: Path) -> dict[str, str]:
        return {"root": str(d), "train": str(d / "train"), "test": str(d / "test"), "probe": str(d / "probe"),
                "pairs": str(d / "pairs.txt")}

    if complete(final):
        return paths(final)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=cache))
    try:
        write_synthetic_faces(tmp, progress=progress, **p)
        (tmp / MARKER).write_text(json.dumps(marker))  # last: its presence means complete
        if final.is_dir() and not complete(final):
            shutil.rmtree(final)
        try:
            os.rename(tmp, final)
        except OSError:
            if not complete(final):  # another process finished first: use theirs
                raise
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
    return paths(final)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m datasets.faces [--out DIR] [--print-root]``: write (or find) the synthetic identities."""
    import argparse
    import time

    parser = argparse.ArgumentParser(description="Write the synthetic face identities (identity folders + pairs.txt).")
    parser.add_argument("--out", help="folder to write (default: the cache, $MOBILENET_SUITE_CACHE or "
                                      "~/.cache/mobilenet_suite, reused when complete)")
    parser.add_argument("--print-root", action="store_true", help="print only the dataset root (for scripts)")
    for key, value in SYNTH_DEFAULTS.items():
        parser.add_argument("--" + key.replace("_", "-"), type=type(value), default=value)
    args = parser.parse_args(argv)
    params = {k: getattr(args, k) for k in SYNTH_DEFAULTS}
    t0 = time.perf_counter()
    try:
        if args.out:
            paths = write_synthetic_faces(args.out, progress=not args.print_root, **params)
        else:
            paths = ensure_synthetic_faces(progress=not args.print_root, **params)
    except ValueError as e:
        parser.error(str(e))
    if args.print_root:
        print(paths["root"])
        return 0
    print(f"synthetic faces at {paths['root']} ({time.perf_counter() - t0:.1f} s)")
    for key in ("train", "test", "probe", "pairs"):
        extra = ""
        if key != "pairs" and (key != "probe" or params["probe_images_per_identity"] > 0):
            samples = scan_identity_folders(paths[key])
            extra = f"  ({len(samples)} images of {len({s.identity for s in samples})} identities)"
        print(f"  {key:6s} {paths[key]}{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
