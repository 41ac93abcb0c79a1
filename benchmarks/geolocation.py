"""Partition throughput (PlaNet's adaptive S2 cells, MobileNets Section 4.4): photos/s of
``tasks.geolocation.partition`` on a million random points, against the per-point S2 library call.

Two point sets of ``--points`` photos each: uniform on the sphere, and clustered (photos around 300
"cities" of Pareto-distributed sizes with 0.05-3 degree spreads, plus a 5 % uniform background), which is
closer to where photos are taken and makes the split go deeper. For each, the median of ``--repeats``
runs of:

* leaf ids: ``s2.leaf_cell_ids`` (lat/lon -> level-30 S2 ids, numpy);
* partition: ``build_partition`` at t_min 50, t_max 5000 (leaf ids, sort, split, drop, spherical means);
* hierarchy: ``build_partitions`` at t_max 5000, 2000, 1000 (photos/s counts each partition's photos);
* assign: ``Partition.assign`` (points -> class labels, what a trainer does once per dataset);
* reference: ``s2cell.lat_lon_to_cell_id`` one point at a time (on 20,000 points, scaled).

Usage:
    python benchmarks/geolocation.py [--points 1000000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import s2cell  # noqa: E402

from tasks.geolocation import s2  # noqa: E402
from tasks.geolocation.partition import build_partition, build_partitions  # noqa: E402


def uniform_points(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return np.degrees(np.arcsin(rng.uniform(-1, 1, n))), rng.uniform(-180, 180, n)


def clustered_points(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    k = 300
    centres = np.c_[np.degrees(np.arcsin(rng.uniform(-0.8, 0.95, k))), rng.uniform(-180, 180, k)]
    w = rng.pareto(1.0, k) + 0.05
    c = rng.choice(k, n - n // 20, p=w / w.sum())
    spread = rng.choice([0.05, 0.5, 3.0], c.size)
    lat = np.clip(centres[c, 0] + rng.normal(0, 1, c.size) * spread, -90, 90)
    lon = (centres[c, 1] + rng.normal(0, 1, c.size) * spread + 180) % 360 - 180
    bl, bo = uniform_points(n // 20, rng)
    return np.r_[lat, bl], np.r_[lon, bo]


def timed(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: the first pass over fresh arrays pays for page faults
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=int, default=1_000_000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    n = args.points
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; numpy {np.__version__}; {n:,} points")
    rng = np.random.default_rng(0)
    rows = []
    for name, make in (("uniform", uniform_points), ("clustered", clustered_points)):
        lat, lon = make(n, rng)
        part = build_partition(lat, lon, t_min=50, t_max=5000)
        parts = build_partitions(lat, lon, t_min=50, t_max=(5000, 2000, 1000))
        rows.append((name, "leaf ids", n / timed(lambda: s2.leaf_cell_ids(lat, lon), args.repeats), ""))
        rows.append((name, "partition t_max 5000", n / timed(lambda: build_partition(lat, lon, t_min=50, t_max=5000),
                                                          args.repeats),
                     f"{len(part)} cells, levels {part.levels.min()}-{part.levels.max()}, "
                     f"{part.num_outside} outside"))
        rows.append((name, "3 partitions (5000/2000/1000)",
                     3 * n / timed(lambda: build_partitions(lat, lon, t_min=50, t_max=(5000, 2000, 1000)),
                                   args.repeats), "/".join(str(len(q)) for q in parts) + " cells"))
        rows.append((name, "assign (points -> labels)", n / timed(lambda: part.assign(lat, lon), args.repeats), ""))
        m = min(n, 20_000)
        ll = list(zip(lat[:m].tolist(), lon[:m].tolist()))
        t = time.perf_counter()
        for a, b in ll:
            s2cell.lat_lon_to_cell_id(a, b, 30)
        rows.append((name, "s2cell, one call per point", m / (time.perf_counter() - t), f"on {m:,} points"))
    print(f"| points | step | photos/s | notes |\n|---|---|---:|---|")
    for name, step, rate, note in rows:
        print(f"| {name} | {step} | {rate / 1e6:.2f} M | {note} |")


if __name__ == "__main__":
    main()
