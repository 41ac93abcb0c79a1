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

Training images/s from tar shards vs from an image folder (``--only training``): the same synthetic photos
(``datasets.synthetic_geotagged``) written once as JPEG files plus a CSV and once as webdataset shards
(``write_geotagged_shards``: the same bytes), the same model (MobileNet, one head over a partition of the
photos), loss (``GeoLoss``), batch size, workers and number of steps, through the engine's loader
(``build_train_loader``: a ``DistributedSampler`` over ``GeotaggedImages`` vs ``ShardStream`` over
``GeotaggedShards``). Each measurement runs in its own process (torch's thread pool and the page cache of
the other reader stay out of it), the two kinds interleaved over ``--rounds`` rounds, the order swapped
every round; reported: median images/s of the data loader alone and of training steps (forward, backward,
SGD), and the ratio shards / folder. Both read from the page cache after the first round: this compares
the readers' overheads (one open and stat per file vs one read at an offset), not disk seeks, which favour
shards further on spinning or network storage.

Usage:
    python benchmarks/geolocation.py [--points 1000000] [--repeats 3] [--only partition|training]
    python benchmarks/geolocation.py --only training [--train-photos 2048 --steps 24 --rounds 3 --workers 2]
    python benchmarks/geolocation.py --quick          # a smoke check of both parts (seconds; numbers meaningless)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import s2cell  # noqa: E402

from benchmarks._machine import cpu_model, load_average, timestamp  # noqa: E402

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


def machine_line() -> str:
    load = load_average()
    return (f"{timestamp(utc=True)}; {cpu_model()}, {os.cpu_count()} CPUs, load average "
            f"{'n/a' if load is None else f'{load[0]:.1f}'}; numpy {np.__version__}")


def partition_benchmark(n: int, repeats: int) -> None:
    print(f"{machine_line()}; {n:,} points")
    rng = np.random.default_rng(0)
    rows = []
    for name, make in (("uniform", uniform_points), ("clustered", clustered_points)):
        lat, lon = make(n, rng)
        part = build_partition(lat, lon, t_min=50, t_max=5000)
        parts = build_partitions(lat, lon, t_min=50, t_max=(5000, 2000, 1000))
        rows.append((name, "leaf ids", n / timed(lambda: s2.leaf_cell_ids(lat, lon), repeats), ""))
        rows.append((name, "partition t_max 5000", n / timed(lambda: build_partition(lat, lon, t_min=50, t_max=5000),
                                                          repeats),
                     f"{len(part)} cells, levels {part.levels.min()}-{part.levels.max()}, "
                     f"{part.num_outside} outside"))
        rows.append((name, "3 partitions (5000/2000/1000)",
                     3 * n / timed(lambda: build_partitions(lat, lon, t_min=50, t_max=(5000, 2000, 1000)),
                                   repeats), "/".join(str(len(q)) for q in parts) + " cells"))
        rows.append((name, "assign (points -> labels)", n / timed(lambda: part.assign(lat, lon), repeats), ""))
        m = min(n, 20_000)
        ll = list(zip(lat[:m].tolist(), lon[:m].tolist()))
        t = time.perf_counter()
        for a, b in ll:
            s2cell.lat_lon_to_cell_id(a, b, 30)
        rows.append((name, "s2cell, one call per point", m / (time.perf_counter() - t), f"on {m:,} points"))
    print("| points | step | photos/s | notes |\n|---|---|---:|---|")
    for name, step, rate, note in rows:
        print(f"| {name} | {step} | {rate / 1e6:.2f} M | {note} |")


# --------------------------------------------------------------------------------------------------
# training images/s: shards vs an image folder


def _training_child(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement (run in its own process): loader-only and training images/s of one reader."""
    import torch

    from datasets.geotagged import geotagged_dataset, read_locations
    from datasets.images import build_image_transform
    from datasets.shards import ShardStream
    from tasks.classifier import ClassifierModelConfig
    from tasks.engine import EngineConfig, build_optimizer, build_train_loader
    from tasks.geolocation.model import GeoLoss
    from tasks.geolocation.train import CellLabeled

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = json.loads(Path(args.data).read_text())
    tf = build_image_transform(args.resolution)
    locations = read_locations(data["shards"] if args.child == "shards" else data["root"],
                               None if args.child == "shards" else data["ann"])
    part = build_partition(locations.lat, locations.lon, t_min=args.t_min, t_max=args.t_max)
    inside = np.flatnonzero(part.assign(locations.lat, locations.lon) >= 0)  # as training leaves out the others
    base = geotagged_dataset(locations.select(inside), data["root"], tf)
    train_set: Any = CellLabeled(base, [part])
    if args.child == "shards":
        train_set = ShardStream(train_set, shuffle_buffer=args.shuffle_buffer)
    loader = build_train_loader(train_set, args.batch_size, num_workers=args.workers, seed=0)
    need = args.warmup + args.steps
    if len(loader) < need:  # one epoch each: the same photos for the loader and the training passes
        raise SystemExit(f"{len(loader)} batches per epoch < {need} (warm-up + steps): write more photos")
    # the loader alone
    it = iter(loader)
    for _ in range(args.warmup):
        next(it)
    t = time.perf_counter()
    seen = 0
    for _ in range(args.steps):
        seen += int(next(it)["image"].shape[0])
    load_rate = seen / (time.perf_counter() - t)
    del it
    # training steps
    model = ClassifierModelConfig(alpha=args.alpha, resolution=args.resolution).build(len(part))
    cfg = EngineConfig(optimizer="sgd", lr=0.01)
    optimizer = build_optimizer(model, cfg)
    loss_fn = GeoLoss([len(part)], [part.lat_mean], [part.lon_mean])
    model.train()
    it = iter(loader)
    t = 0.0
    seen = 0
    for k in range(need):
        if k == args.warmup:
            t, seen = time.perf_counter(), 0
        batch = next(it)
        loss = sum(loss_fn(model, batch, torch.device("cpu")).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += int(batch["image"].shape[0])
    train_rate = seen / (time.perf_counter() - t)
    return {"kind": args.child, "loader_images_per_s": load_rate, "train_images_per_s": train_rate,
            "photos": len(base), "cells": len(part), "threads": torch.get_num_threads()}


def training_benchmark(args: argparse.Namespace) -> None:
    from datasets.geotagged import write_geotagged_shards
    from datasets.shards import shard_pattern
    from datasets.synthetic_geotagged import write_synthetic_geotagged

    with tempfile.TemporaryDirectory(prefix="geo_bench_") as tmp:
        root = Path(tmp)
        photos = write_synthetic_geotagged(root / "photos", num_train=args.train_photos, num_val=1,
                                           image_size=args.image_size, seed=0)
        paths = write_geotagged_shards(photos["train_ann"], photos["train_root"], root / "shards",
                                       shard_size=args.shard_size)
        data = root / "data.json"
        data.write_text(json.dumps({"root": photos["train_root"], "ann": photos["train_ann"],
                                    "shards": shard_pattern(paths)}))
        print(f"{machine_line()}; {args.train_photos} synthetic photos of {args.image_size} px (JPEG), "
              f"{len(paths)} shards of {args.shard_size}; MobileNet alpha {args.alpha} @ {args.resolution}, batch "
              f"{args.batch_size}, {args.workers} workers, {args.warmup} warm-up + {args.steps} timed steps, "
              f"{args.rounds} interleaved rounds, each in its own process")
        child = [sys.executable, str(Path(__file__).resolve()), "--data", str(data)]
        for flag in ("resolution", "alpha", "batch_size", "workers", "steps", "warmup", "threads", "t_min", "t_max",
                     "shuffle_buffer"):
            child += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
        results: dict[str, list[dict[str, Any]]] = {"folder": [], "shards": []}
        for r in range(args.rounds):
            for kind in (("folder", "shards") if r % 2 == 0 else ("shards", "folder")):
                proc = subprocess.run([*child, "--child", kind], capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SystemExit(f"{kind} run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
                results[kind].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    med = {k: {m: statistics.median(x[m] for x in v) for m in ("loader_images_per_s", "train_images_per_s")}
           for k, v in results.items()}
    print("| reader | loader images/s | training images/s | rounds (training) |\n|---|---:|---:|---|")
    for kind in ("folder", "shards"):
        each = ", ".join(f"{x['train_images_per_s']:.0f}" for x in results[kind])
        print(f"| {kind} | {med[kind]['loader_images_per_s']:.0f} | {med[kind]['train_images_per_s']:.0f} | {each} |")
    ratio = {m: med["shards"][m] / med["folder"][m] for m in ("loader_images_per_s", "train_images_per_s")}
    print(f"shards / folder: loader {ratio['loader_images_per_s']:.2f}x, training {ratio['train_images_per_s']:.2f}x "
          f"({results['shards'][0]['cells']} cells, {results['shards'][0]['threads']} torch threads)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=int, default=1_000_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", choices=("partition", "training"), help="run one part (default: both)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke check, not a measurement")
    g = p.add_argument_group("training images/s (shards vs folder)")
    g.add_argument("--train-photos", type=int, default=2048)
    g.add_argument("--image-size", type=int, default=160, help="side of the synthetic JPEGs")
    g.add_argument("--shard-size", type=int, default=256)
    g.add_argument("--resolution", type=int, default=128)
    g.add_argument("--alpha", type=float, default=0.25)
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--workers", type=int, default=2)
    g.add_argument("--steps", type=int, default=24)
    g.add_argument("--warmup", type=int, default=3)
    g.add_argument("--rounds", type=int, default=3)
    g.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    g.add_argument("--t-min", type=int, default=5)
    g.add_argument("--t-max", type=int, default=100)
    g.add_argument("--shuffle-buffer", type=int, default=1000)
    p.add_argument("--child", choices=("folder", "shards"), help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_training_child(args)))
        return
    if args.quick:
        args.points, args.repeats = 20_000, 1
        args.train_photos, args.image_size, args.shard_size, args.resolution = 96, 48, 16, 32
        args.batch_size, args.workers, args.steps, args.warmup, args.rounds = 8, 1, 3, 1, 2
        args.t_min, args.t_max = 1, 20
    if args.only in (None, "partition"):
        partition_benchmark(args.points, args.repeats)
    if args.only in (None, "training"):
        training_benchmark(args)


if __name__ == "__main__":
    main()
