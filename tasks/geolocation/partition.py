"""The adaptive S2 partition of PlaNet (Weyand et al. 2016, Section 3; MobileNets paper Section 4.4, Table 11):
geolocation as classification over S2 cells that are small where photos are dense and absent where there
are none.

    python -m tasks.geolocation.partition --ann train.csv --t-min 50 --t-max 5000 --out cells.csv
    python -m tasks.geolocation.partition --ann train.csv --t-max 5000 2000 1000 --out cells.csv
        # -> cells_tmax5000.csv, cells_tmax2000.csv, cells_tmax1000.csv (hierarchical prediction)
    python -m tasks.geolocation.partition --data-root 'shards/{000000..000999}.tar' --out cells.csv  # JSON only
    python -m tasks.geolocation.partition --data-root IMGS --exif-gps --out cells.csv

The procedure (as published by PlaNet and, with these parameter names, by GeoEstimation, Mueller-Budack et
al. 2018): every photo starts in its S2 cell at ``min_level``; cells with at most ``t_min`` photos are
dropped; a cell with more than ``t_max`` photos is split into its four children, level by level, until no
cell holds more than ``t_max`` or ``max_level`` is reached; the cells with at most ``t_min`` photos are
dropped again. With ``t_min < t_max`` the first drop removes only cells the split never touches (they
hold at most ``t_min < t_max`` photos), so one drop after the split gives the same cells. Photos in
dropped cells are outside the partition: they are counted and reported, never silently reassigned.

A cell's location (``lat_mean, lon_mean``) is the mean of its training photos, not the cell's centre:
computed on the sphere, as the direction of the sum of the photos' unit vectors, so a cell across the
antimeridian (lon 179 and -179) has its mean near 180, not near 0.

Class labels number the cells in S2 id order (the Hilbert curve: neighbouring labels are mostly
neighbouring cells). ``cells.csv`` has the columns ``class_label, token, level, count, lat_mean,
lon_mean``; :func:`read_cells_csv` reads it back, checking every field, and :meth:`Partition.assign` maps
points to labels (-1 outside), vectorised, for the trainer.

The hot path is numpy throughout (:mod:`tasks.geolocation.s2`): one leaf id per photo, one sort, then per
level a parent id by bit arithmetic and the runs of equal ids in the sorted order (the leaves of one cell
are contiguous). ``benchmarks/geolocation.py`` measures photos/s on a million points.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from datasets.geotagged import read_locations
from datasets.io import atomic_write_text, prepare_output_file
from tasks.cli import run_cli
from tasks.geolocation import s2

__all__ = [
    "CELL_COLUMNS",
    "Partition",
    "build_partition",
    "build_partitions",
    "main",
    "partition_paths",
    "read_cells_csv",
    "spherical_mean",
    "write_cells_csv",
]

CELL_COLUMNS = ("class_label", "token", "level", "count", "lat_mean", "lon_mean")
DEFAULT_T_MIN = 50
DEFAULT_T_MAX = 5000
DEFAULT_MIN_LEVEL = 2
DEFAULT_MAX_LEVEL = s2.MAX_LEVEL


@dataclass
class Partition:
    """A set of disjoint S2 cells, one class per cell; arrays are in class-label order.

    Attributes:
        ids: uint64 [K] S2 cell ids.
        levels: int64 [K].
        counts: int64 [K] training photos per cell.
        lat_mean, lon_mean: float64 [K], the cell's location (spherical mean of its photos), degrees.
        t_min, t_max, min_level, max_level: the thresholds it was built with (``None`` when read from a file).
        num_photos: photos it was built from (``None`` when read from a file).
        num_outside: of those, photos in dropped cells.
        path: the file it was read from, if any.
    """

    ids: np.ndarray
    levels: np.ndarray
    counts: np.ndarray
    lat_mean: np.ndarray
    lon_mean: np.ndarray
    t_min: int | None = None
    t_max: int | None = None
    min_level: int | None = None
    max_level: int | None = None
    num_photos: int | None = None
    num_outside: int | None = None
    path: str | None = None
    _first: np.ndarray = field(init=False, repr=False)
    _last: np.ndarray = field(init=False, repr=False)
    _order: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=np.uint64)
        first, last = s2.cell_id_ranges(self.ids)
        self._order = np.argsort(first, kind="stable")
        self._first, self._last = first[self._order], last[self._order]

    def __len__(self) -> int:
        return int(self.ids.size)

    @property
    def tokens(self) -> list[str]:
        """S2 tokens in class-label order."""
        return s2.cell_tokens(self.ids)

    def overlapping(self) -> tuple[int, int] | None:
        """Class labels of two cells that overlap (one contains the other), or ``None``."""
        if len(self) < 2:
            return None
        clash = np.flatnonzero(self._first[1:] <= self._last[:-1])
        if clash.size == 0:
            return None
        k = int(clash[0])
        return int(self._order[k]), int(self._order[k + 1])

    def locate(self, cell_ids: np.ndarray) -> np.ndarray:
        """Class label (int64) of the partition cell containing each given S2 cell (any level); -1 when no
        partition cell contains it whole."""
        ids = np.asarray(cell_ids, dtype=np.uint64).reshape(-1)
        first, last = s2.cell_id_ranges(ids)
        k = np.searchsorted(self._first, first, side="right") - 1
        ok = k >= 0
        kk = np.where(ok, k, 0)
        ok &= last <= self._last[kk]
        return np.where(ok, self._order[kk], -1).astype(np.int64)

    def assign(self, lat: np.ndarray | Sequence[float], lon: np.ndarray | Sequence[float]) -> np.ndarray:
        """Class label (int64 [N]) of the cell containing each point (degrees); -1 for points outside every
        cell (vectorised: one leaf id per point and a binary search over the cells' id ranges)."""
        return self.locate(s2.leaf_cell_ids(lat, lon))

    def parent_labels(self, coarse: Partition) -> np.ndarray:
        """For each cell here, the label of the cell of the coarser partition ``coarse`` that contains it
        (-1: none). Partitions built from the same photos with the same ``t_min`` and a larger ``t_max``
        contain every cell of a smaller one: the map of hierarchical prediction."""
        return coarse.locate(self.ids)


def spherical_mean(lat: np.ndarray, lon: np.ndarray, groups: np.ndarray, num_groups: int) -> tuple[np.ndarray,
                                                                                                      np.ndarray]:
    """Mean location of each group of points on the sphere: the direction of the sum of their unit vectors.

    Args:
        lat, lon: degrees [N].
        groups: int [N] group of each point, in [0, num_groups).
        num_groups: K.

    Returns:
        ``(lat_mean, lon_mean)``, float64 [K] degrees (an empty group gives NaN).
    """
    phi, theta = np.radians(np.asarray(lat, dtype=np.float64)), np.radians(np.asarray(lon, dtype=np.float64))
    cos_phi = np.cos(phi)
    sums = np.stack([np.bincount(groups, w, minlength=num_groups)
                     for w in (cos_phi * np.cos(theta), cos_phi * np.sin(theta), np.sin(phi))])
    norm = np.linalg.norm(sums, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        lat_mean = np.degrees(np.arcsin(np.clip(sums[2] / norm, -1.0, 1.0)))
    lon_mean = np.degrees(np.arctan2(sums[1], sums[0]))
    empty = norm == 0
    lat_mean[empty] = np.nan
    lon_mean[empty] = np.nan
    return lat_mean, lon_mean


def _check_thresholds(t_min: int, t_max: int, min_level: int, max_level: int) -> None:
    for name, v in (("t_min", t_min), ("t_max", t_max), ("min_level", min_level), ("max_level", max_level)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {v!r}")
    if t_min < 0:
        raise ValueError(f"t_min must be >= 0, got {t_min}")
    if t_max <= t_min:
        raise ValueError(f"t_max must be larger than t_min, got t_max={t_max}, t_min={t_min}")
    if not 0 <= min_level <= max_level <= s2.MAX_LEVEL:
        raise ValueError(f"levels must satisfy 0 <= min_level <= max_level <= {s2.MAX_LEVEL}, got "
                         f"min_level={min_level}, max_level={max_level}")


def _split(sorted_leaves: np.ndarray, t_max: int, min_level: int,
           max_level: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The cells after splitting (before any drop): (ids, levels, start, count) with ``start`` the
    position of the cell's first photo in ``sorted_leaves``, in id order."""
    ids, levels, starts, counts = [], [], [], []
    pos = np.arange(sorted_leaves.size)  # positions (in sorted order) of the photos still being split
    for level in range(min_level, max_level + 1):
        if pos.size == 0:
            break
        parents = s2.parent_cell_ids(sorted_leaves[pos], level)
        run_starts = np.flatnonzero(np.r_[True, parents[1:] != parents[:-1]])
        run_counts = np.diff(np.r_[run_starts, pos.size])
        big = run_counts > t_max if level < max_level else np.zeros(run_starts.size, dtype=bool)
        keep = ~big
        ids.append(parents[run_starts[keep]])
        levels.append(np.full(int(keep.sum()), level, dtype=np.int64))
        starts.append(pos[run_starts[keep]])
        counts.append(run_counts[keep])
        pos = pos[np.repeat(big, run_counts)]
    ids_a, levels_a, starts_a, counts_a = (np.concatenate(x) for x in (ids, levels, starts, counts))
    order = np.argsort(starts_a, kind="stable")  # position order = id order (cells are disjoint)
    return ids_a[order], levels_a[order], starts_a[order], counts_a[order]


def _prepare(lat: np.ndarray | Sequence[float], lon: np.ndarray | Sequence[float]):
    lat = np.asarray(lat, dtype=np.float64).reshape(-1)
    lon = np.asarray(lon, dtype=np.float64).reshape(-1)
    leaves = s2.leaf_cell_ids(lat, lon)
    order = np.argsort(leaves, kind="stable")
    return lat[order], lon[order], leaves[order]


def _fit_hint(counts: np.ndarray, levels: np.ndarray, t_min: int, t_max: int, max_level: int) -> str:
    if counts.size >= 2:
        second = int(np.sort(counts)[-2])
        return (f"a t_min below {second} keeps at least 2 cells at t_max={t_max} (the two largest cells "
                f"hold {int(np.sort(counts)[-1])} and {second} photos), e.g. --t-min {second - 1}")
    if counts.size == 1 and int(levels[0]) < max_level:
        return (f"all photos fall into one cell of {int(counts[0])} photos: a t_max below {int(counts[0])} "
                "splits it")
    return (f"all photos fall into one S2 cell at level {max_level}: no thresholds separate them; give "
            "photos at more than one place or a larger --max-level")


def _finish(lat_s: np.ndarray, lon_s: np.ndarray, leaves_s: np.ndarray, t_min: int, t_max: int,
            min_level: int, max_level: int) -> Partition:
    ids, levels, starts, counts = _split(leaves_s, t_max, min_level, max_level)
    kept = counts > t_min
    if int(kept.sum()) < 2:
        raise ValueError(
            f"t_min={t_min}, t_max={t_max} (levels {min_level}-{max_level}) leave {int(kept.sum())} cell(s) "
            f"for {leaves_s.size} photos; a partition needs at least 2: "
            + _fit_hint(counts, levels, t_min, t_max, max_level))
    label_of_cell = np.where(kept, np.cumsum(kept) - 1, -1)
    photo_label = np.repeat(label_of_cell, counts)
    inside = photo_label >= 0
    k = int(kept.sum())
    lat_mean, lon_mean = spherical_mean(lat_s[inside], lon_s[inside], photo_label[inside], k)
    return Partition(ids[kept], levels[kept], counts[kept].astype(np.int64), lat_mean, lon_mean, t_min=t_min,
                     t_max=t_max, min_level=min_level, max_level=max_level, num_photos=int(leaves_s.size),
                     num_outside=int((~inside).sum()))


def build_partition(lat: np.ndarray | Sequence[float], lon: np.ndarray | Sequence[float], *,
                    t_min: int = DEFAULT_T_MIN, t_max: int = DEFAULT_T_MAX, min_level: int = DEFAULT_MIN_LEVEL,
                    max_level: int = DEFAULT_MAX_LEVEL) -> Partition:
    """The adaptive S2 partition of photos at ``(lat, lon)`` (degrees; see the module docstring).

    Args:
        lat, lon: photo coordinates [N].
        t_min: cells with at most this many photos are dropped.
        t_max: cells with more photos are split (until ``max_level``).
        min_level, max_level: the S2 levels the cells start at and may go down to.

    Returns:
        The partition, with ``num_photos`` and ``num_outside`` (photos in dropped cells).

    Raises:
        ValueError: bad thresholds or coordinates, or thresholds that leave fewer than two cells (the
            message says which thresholds would fit).
    """
    return build_partitions(lat, lon, t_min=t_min, t_max=(t_max,), min_level=min_level, max_level=max_level)[0]


def build_partitions(lat: np.ndarray | Sequence[float], lon: np.ndarray | Sequence[float], *,
                     t_min: int = DEFAULT_T_MIN, t_max: Sequence[int] = (DEFAULT_T_MAX,),
                     min_level: int = DEFAULT_MIN_LEVEL, max_level: int = DEFAULT_MAX_LEVEL) -> list[Partition]:
    """One partition per ``t_max`` (coarse to fine when given in decreasing order), sharing the leaf ids
    and the sort; see :func:`build_partition`."""
    if isinstance(t_max, (int, np.integer)):
        t_max = (int(t_max),)
    if not t_max:
        raise ValueError("give at least one t_max")
    if len(set(t_max)) < len(t_max):
        raise ValueError(f"t_max values repeat: {list(t_max)}")
    for t in t_max:
        _check_thresholds(t_min, t, min_level, max_level)
    lat_s, lon_s, leaves_s = _prepare(lat, lon)
    if leaves_s.size == 0:
        raise ValueError("no photos to partition")
    return [_finish(lat_s, lon_s, leaves_s, t_min, int(t), min_level, max_level) for t in t_max]


# --------------------------------------------------------------------------------------------------
# cells.csv


def write_cells_csv(path: str | os.PathLike, partition: Partition) -> str:
    """Write ``class_label, token, level, count, lat_mean, lon_mean`` rows atomically; returns the path."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CELL_COLUMNS)
    for label, (token, level, count, la, lo) in enumerate(zip(
            partition.tokens, partition.levels.tolist(), partition.counts.tolist(),
            partition.lat_mean.tolist(), partition.lon_mean.tolist())):
        w.writerow([label, token, level, count, f"{la:.7f}", f"{lo:.7f}"])
    atomic_write_text(path, buf.getvalue())
    return os.fspath(path)


def _int_field(path: str, lineno: int, name: str, raw: str, minimum: int) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(f"{path}, line {lineno}, column {name!r}: value {raw!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"{path}, line {lineno}, column {name!r}: value {value} is below {minimum}")
    return value


def _float_field(path: str, lineno: int, name: str, raw: str, bound: float) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError(f"{path}, line {lineno}, column {name!r}: value {raw!r} is not a number") from None
    if not np.isfinite(value) or abs(value) > bound:
        raise ValueError(f"{path}, line {lineno}, column {name!r}: value {raw!r} is not within "
                         f"[-{bound:g}, {bound:g}]")
    return value


def read_cells_csv(path: str | os.PathLike) -> Partition:
    """Read a ``cells.csv`` written by :func:`write_cells_csv` (or by hand), checking every field.

    Rows may come in any order; the partition is returned in class-label order.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a missing column, a bad S2 token, a level that is not the token's, a bad count or
            coordinate (naming file, line, column and value), a duplicate class label or token, labels
            that are not exactly 0..K-1, overlapping cells, or fewer than two cells.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"cells file not found: {path}")
    try:
        with open(path, encoding="utf-8-sig", newline="") as raw:
            text = raw.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a text file (a cells CSV): byte {e.start} is not UTF-8") from None
    with io.StringIO(text, newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in CELL_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)} in the header {header}; expected "
                             f"{', '.join(CELL_COLUMNS)}")
        col = {c: header.index(c) for c in CELL_COLUMNS}
        by_label: dict[int, tuple[int, int, int, float, float, int]] = {}
        seen_tokens: dict[str, int] = {}
        for row in reader:
            lineno = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) < len(header):
                raise ValueError(f"{path}, line {lineno}: expected {len(header)} fields, got {len(row)}")
            label = _int_field(path, lineno, "class_label", row[col["class_label"]], 0)
            token = row[col["token"]].strip()
            try:
                cell = s2.token_to_cell_id(token)
            except ValueError as e:
                raise ValueError(f"{path}, line {lineno}, column 'token': {e}") from None
            canonical = s2.cell_tokens(np.array([cell], dtype=np.uint64))[0]
            level = _int_field(path, lineno, "level", row[col["level"]], 0)
            true_level = int(s2.cell_levels(np.array([cell], dtype=np.uint64))[0])
            if level != true_level:
                raise ValueError(f"{path}, line {lineno}, column 'level': value {level} but token {token!r} is a "
                                 f"level-{true_level} cell")
            count = _int_field(path, lineno, "count", row[col["count"]], 0)
            la = _float_field(path, lineno, "lat_mean", row[col["lat_mean"]], 90.0)
            lo = _float_field(path, lineno, "lon_mean", row[col["lon_mean"]], 180.0)
            if label in by_label:
                raise ValueError(f"{path}, line {lineno}: class_label {label} already given on line "
                                 f"{by_label[label][5]}")
            if canonical in seen_tokens:
                raise ValueError(f"{path}, line {lineno}: token {token!r} already given on line "
                                 f"{seen_tokens[canonical]}")
            seen_tokens[canonical] = lineno
            by_label[label] = (cell, level, count, la, lo, lineno)
    if len(by_label) < 2:
        raise ValueError(f"{path}: {len(by_label)} cell(s); a partition needs at least 2")
    labels = sorted(by_label)
    if labels != list(range(len(labels))):
        gap = next(k for k, v in enumerate(labels) if k != v)
        raise ValueError(f"{path}: class labels must be 0..{len(labels) - 1} without gaps; label {gap} is "
                         f"missing (the labels run {labels[0]}..{labels[-1]})")
    rows = [by_label[k] for k in labels]
    part = Partition(np.array([r[0] for r in rows], dtype=np.uint64), np.array([r[1] for r in rows]),
                     np.array([r[2] for r in rows], dtype=np.int64), np.array([r[3] for r in rows]),
                     np.array([r[4] for r in rows]), path=path)
    clash = part.overlapping()
    if clash is not None:
        a, b = clash
        raise ValueError(f"{path}: cells overlap: class {a} (line {rows[a][5]}, token {part.tokens[a]}) and "
                         f"class {b} (line {rows[b][5]}, token {part.tokens[b]}); a partition's cells must be "
                         "disjoint")
    return part


def partition_paths(out: str | os.PathLike, t_max: Sequence[int]) -> list[Path]:
    """Where each partition goes: ``out`` itself for one ``t_max``, else ``<stem>_tmax<T><suffix>`` beside it
    (``cells.csv`` -> ``cells_tmax5000.csv``, ``cells_tmax2000.csv``, ...)."""
    out = Path(out)
    if len(t_max) == 1:
        return [out]
    return [out.with_name(f"{out.stem}_tmax{int(t)}{out.suffix or '.csv'}") for t in t_max]


# --------------------------------------------------------------------------------------------------
# command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tasks.geolocation.partition",
        description="Build PlaNet's adaptive S2 partition (cells.csv) from a geotagged CSV, tar shards or EXIF.")
    p.add_argument("--ann", help="geotagged CSV of the training photos (id, lat, lon)")
    p.add_argument("--data-root", help="instead of --ann: tar shards ('shards/{000000..000999}.tar'; their .json "
                   "only is read), or with --exif-gps an image folder")
    p.add_argument("--exif-gps", action="store_true", help="read the photos' locations from their EXIF GPS tags")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="skip and count photos without a location (EXIF) or samples without an image (shards)")
    p.add_argument("--out", required=True,
                   help="cells CSV to write; with several --t-max values, <stem>_tmax<T>.csv beside it")
    p.add_argument("--t-min", type=int, default=DEFAULT_T_MIN,
                   help=f"drop cells with at most this many photos (default {DEFAULT_T_MIN})")
    p.add_argument("--t-max", type=int, nargs="+", default=[DEFAULT_T_MAX],
                   help=f"split cells with more photos; several values write several partitions "
                        f"(default {DEFAULT_T_MAX})")
    p.add_argument("--min-level", type=int, default=DEFAULT_MIN_LEVEL,
                   help=f"S2 level the cells start at (default {DEFAULT_MIN_LEVEL})")
    p.add_argument("--max-level", type=int, default=DEFAULT_MAX_LEVEL,
                   help=f"deepest S2 level a cell may be split to (default {DEFAULT_MAX_LEVEL})")
    p.add_argument("--id-col", help="image id column (default: found by name, e.g. IMG_ID, id, image)")
    p.add_argument("--lat-col", help="latitude column (default: LAT, latitude, ...)")
    p.add_argument("--lon-col", help="longitude column (default: LON, lng, longitude, ...)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The command: read ``--ann``, build one partition per ``--t-max``, write them, print a summary."""
    args = _parser().parse_args(argv)
    if (args.ann is None) == (args.data_root is None):
        raise ValueError("give --ann train.csv, or --data-root naming tar shards (or an image folder with --exif-gps)")
    if args.ann is not None and args.exif_gps:
        raise ValueError("--exif-gps reads an image folder: give it as --data-root, not --ann")
    for path in partition_paths(args.out, args.t_max):  # a bad output path fails before the work, not after
        prepare_output_file(path)
    table = read_locations(args.data_root or ".", args.ann, exif_gps=args.exif_gps, id_col=args.id_col,
                           lat_col=args.lat_col, lon_col=args.lon_col, skip_bad_images=args.skip_bad_images,
                           progress=True)
    source = args.ann or args.data_root
    start = time.perf_counter()
    parts = build_partitions(table.lat, table.lon, t_min=args.t_min, t_max=args.t_max,
                             min_level=args.min_level, max_level=args.max_level)
    seconds = time.perf_counter() - start
    paths = partition_paths(args.out, args.t_max)
    for part, path in zip(parts, paths):
        write_cells_csv(path, part)
    print(f"{len(table)} photos from {source}; t_min={args.t_min}, levels {args.min_level}-{args.max_level}; "
          f"{seconds:.2f} s ({len(table) * len(parts) / max(seconds, 1e-9):,.0f} photos/s)")
    print(f"{'t_max':>8} {'cells':>7} {'levels':>7} {'photos/cell (min-median-max)':>30} {'outside':>16}  file")
    for part, path in zip(parts, paths):
        share = part.num_outside / part.num_photos if part.num_photos else 0.0
        print(f"{part.t_max:>8} {len(part):>7} {int(part.levels.min()):>3}-{int(part.levels.max()):<3} "
              f"{int(part.counts.min()):>12}-{int(np.median(part.counts))}-{int(part.counts.max()):<10} "
              f"{part.num_outside:>8} ({share:5.1%})  {path}")
    if any(p.num_outside for p in parts):
        print("photos outside every cell lie in dropped cells (at most t_min photos each); "
              "Partition.assign labels them -1", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
