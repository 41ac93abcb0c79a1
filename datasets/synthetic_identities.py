"""Synthetic face identities in the formats of CASIA-WebFace and LFW: the embedded data of Section 4.7.

MobileNets Section 4.7 / Table 14 trains and scores face embeddings; the real data is the user's to
bring. This module draws people with ``datasets.synthetic_faces``: identity traits are fixed per
person while pose, light, expression and noise change per image, and writes them as identity folders
(``datasets.faces`` reads them):

* ``train/<person>/<person>_<i:04d>.jpg``;
* ``test/`` (held-out identities) and ``probe/`` (further images of the test identities, never in a
  gallery built from ``test/``);
* ``pairs.txt``: LFW-format verification pairs over ``test/`` with identity-disjoint folds.

:func:`ensure_synthetic_faces` caches the set (``datasets.cache.ensure_cached``).

Usage: ``python -m datasets.synthetic_identities [--out DIR] [--print-root] [--num-train-identities N ...]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from datasets import synthetic_faces as fs
from datasets.cache import ensure_cached
from datasets.faces import scan_identity_folders, write_pairs
from datasets.io import prepare_output_dir, run_cli

__all__ = ["SYNTH_DEFAULTS", "SYNTH_VERSION", "ensure_synthetic_faces", "main", "write_synthetic_faces"]

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

    The set lives in ``<cache>/faces-ids-v<version>-<hash of the parameters and the renderer version>``
    (cache: ``$MOBILENET_SUITE_CACHE`` or ``~/.cache/mobilenet_suite``), built once by
    ``datasets.cache.ensure_cached``: in a temp folder renamed into place with a completion marker
    last, so concurrent callers never see half a set.

    Returns:
        ``{"root", "train", "test", "probe", "pairs"}`` as :func:`write_synthetic_faces`.
    """
    p = _synth_params(params)
    key = {"renderer": fs.GENERATOR_VERSION, **p}  # a new renderer draws other faces: another folder
    d = ensure_cached("faces-ids", key, lambda tmp: write_synthetic_faces(tmp, progress=progress, **p),
                      version=SYNTH_VERSION, cache_dir=cache_dir)
    return {"root": str(d), "train": str(d / "train"), "test": str(d / "test"), "probe": str(d / "probe"),
            "pairs": str(d / "pairs.txt")}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m datasets.synthetic_identities [--out DIR] [--print-root]``: write (or find) the set."""
    parser = argparse.ArgumentParser(description="Write the synthetic face identities (identity folders + pairs.txt).")
    parser.add_argument("--out", help="folder to write (default: the cache, $MOBILENET_SUITE_CACHE or "
                                      "~/.cache/mobilenet_suite, reused when complete)")
    parser.add_argument("--print-root", action="store_true", help="print only the dataset root (for scripts)")
    for key, value in SYNTH_DEFAULTS.items():
        parser.add_argument("--" + key.replace("_", "-"), type=type(value), default=value)
    args = parser.parse_args(argv)
    params = {k: getattr(args, k) for k in SYNTH_DEFAULTS}
    t0 = time.perf_counter()
    if args.out:
        prepare_output_dir(args.out, "--out")
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
    run_cli(main)
