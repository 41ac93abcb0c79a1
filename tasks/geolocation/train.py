"""Train PlaNet geolocation on MobileNet (MobileNets paper, Section 4.4, Table 11; PlaNet, Weyand et al. 2016).

    python -m tasks.geolocation.train                  # built-in synthetic geotagged photos, a few CPU minutes
    python -m tasks.geolocation.train --data-root IMGS --ann train.csv --val-ann val.csv [--cells cells.csv ...]
        [--haversine-smoothing 75] [common flags]
    python -m tasks.geolocation.train --data-root 'shards/{000000..000999}.tar' --val-data-root 'val/{0..9}.tar'
    python -m tasks.geolocation.train --data-root IMGS --exif-gps

Section 4.4 retrains PlaNet, a classifier over adaptive S2 cells (``tasks.geolocation.partition``), on the
MobileNet architecture and scores the share of photos located within 1 / 25 / 200 / 750 / 2500 km. Here: a
MobileNet with one softmax head per partition (``--cells`` given several times, or ``--t-max`` with several
values: the prediction is then the product of the partitions' probabilities, ``tasks.geolocation.model``),
cross-entropy, optionally with PIGEON's haversine label smoothing (``--haversine-smoothing TAU_KM``).
Without ``--cells`` the partition is built from the training locations (``--t-min``, ``--t-max``) and saved
as ``cells.csv`` in the output folder. Photos outside every cell are left out of training and counted.

Locations come from the CSV (``--ann``), from the photos' EXIF GPS tags (``--exif-gps``), or, for millions of
photos, from webdataset tar shards (``--data-root`` naming ``.tar`` files: each sample an image plus a
``.json`` with lat/lon). Shards are indexed once (headers and JSON only: the partition needs no image) and
streamed for training, split over DDP ranks and data-loader workers so that each photo is read once per
epoch with the same number of steps on every rank (``datasets.shards``); validation reads its shards by offset.

best.pt is chosen by GeoScore on the validation split (``--val-ann``, images under ``--val-data-root``,
default ``--data-root``; else a held-out tenth of ``--ann``, kept out of the partition too); the final
report scores it there at the five scales beside the "always the most populous cell" baseline, writes
``error_cdf.png``, and the checkpoint carries the cells' tokens and locations (``meta["cells"]``), so a
predictor maps classes to places from the checkpoint alone.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datasets.geotagged import GeoTable, GeotaggedImages, GeotaggedShards, geotagged_dataset, read_locations
from datasets.images import build_image_transform, split_holdout
from datasets.shards import ShardStream, is_shard_spec
from eval.geolocation import format_geolocation_table, geolocation_metrics, haversine_km, plot_error_cdf
from tasks.checkpoint import checkpoint_meta
from tasks.classifier import ClassifierModelConfig, ImageDataConfig, predict_outputs
from tasks.cli import run_cli
from tasks.config import load_config
from tasks.distributed import DistInfo
from tasks.engine import EngineConfig
from tasks.flags import flag_overrides, train_parser
from tasks.geolocation.model import (
    CellDecoder,
    GeoLoss,
    build_geo_classifier,
    geo_classifier_spec,
    partition_meta,
)
from tasks.geolocation.partition import (
    DEFAULT_T_MAX,
    DEFAULT_T_MIN,
    Partition,
    build_partitions,
    partition_paths,
    read_cells_csv,
    write_cells_csv,
)
from tasks.lifecycle import Report, TrainJob, resolve_workers, run_training

__all__ = ["GeolocationConfig", "GeolocationData", "build_parser", "evaluate_geolocation", "main", "resolve_config"]

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "geolocation"
DEFAULT_CONFIG = CONFIG_DIR / "synthetic.yaml"


@dataclass
class GeolocationData(ImageDataConfig):
    cells: list[str] = field(default_factory=list)  # cells.csv files; empty: partition data.ann
    t_min: int = DEFAULT_T_MIN
    t_max: list[int] = field(default_factory=lambda: [DEFAULT_T_MAX])
    min_level: int = 2
    max_level: int = 30
    id_col: str | None = None
    lat_col: str | None = None
    lon_col: str | None = None
    image_suffix: str = ""
    exif_gps: bool = False  # locations from the photos' EXIF GPS tags instead of data.ann / data.val_ann
    shuffle_buffer: int = 1000  # tar shards: samples each data-loader worker mixes
    eval_batch_size: int = 64
    synthetic: dict[str, Any] | None = None  # the embedded default's generator parameters (used without data.root)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.t_max:
            raise ValueError("data.t_max=[]: give at least one value")
        if self.eval_batch_size < 1:
            raise ValueError(f"data.eval_batch_size={self.eval_batch_size!r}: must be >= 1")
        if self.shuffle_buffer < 0:
            raise ValueError(f"data.shuffle_buffer={self.shuffle_buffer!r}: must be >= 0")


@dataclass
class GeolocationLoss:
    haversine_smoothing: float | None = None  # tau in km (PIGEON uses about 65-75); None: one-hot targets

    def __post_init__(self) -> None:
        if self.haversine_smoothing is not None and not self.haversine_smoothing > 0:
            raise ValueError(f"loss.haversine_smoothing={self.haversine_smoothing!r}: must be > 0 (km) or null")


@dataclass
class GeolocationConfig:
    model: ClassifierModelConfig = field(default_factory=ClassifierModelConfig)
    data: GeolocationData = field(default_factory=GeolocationData)
    loss: GeolocationLoss = field(default_factory=GeolocationLoss)
    # From scratch, the attributes task's recipe (AdamW 1e-2, short warmup, cosine) also learns cells: see the
    # README's measured default.
    train: EngineConfig = field(default_factory=lambda: EngineConfig(
        epochs=20, batch_size=32, optimizer="adamw", lr=0.01, weight_decay=4e-5, warmup_iters=100))

    def validate(self) -> None:
        d = self.data
        own_data = d.root is not None or d.ann is not None or d.exif_gps or d.synthetic is None
        if not own_data:  # the built-in photos are used only when no data is named
            return
        shards = is_shard_spec(d.root)
        if not d.root or not (d.ann or shards or d.exif_gps):
            raise ValueError("data.root and data.ann are required together (--data-root IMGS --ann train.csv), "
                             "or data.root with data.exif_gps (--exif-gps), or data.root naming tar shards "
                             "(--data-root 'shards/{000000..000999}.tar')")
        if shards and (d.ann or d.exif_gps):
            raise ValueError(f"data.root {d.root!r} names tar shards, which carry each photo's location in its .json: "
                             "drop " + ("--ann" if d.ann else "--exif-gps"))
        if d.exif_gps and d.ann:
            raise ValueError("data.exif_gps reads the locations from the photos' EXIF: drop --ann (or --exif-gps)")
        if d.val_root and not (d.val_ann or is_shard_spec(d.val_root) or d.exif_gps):
            raise ValueError("data.val_root needs data.val_ann (--val-ann val.csv), unless it names tar shards or "
                             "data.exif_gps is set")
        if d.val_ann and not d.val_root and shards:
            raise ValueError("data.val_ann lists images: give their folder as data.val_root (--val-data-root), "
                             "data.root names tar shards")


@dataclass
class Prepared:
    train: Dataset  # CellLabeled, or a ShardStream over one
    val: GeotaggedImages | GeotaggedShards
    partitions: list[Partition]
    outside: int  # training photos outside every cell (left out)
    listed: int  # training photos listed


class CellLabeled(Dataset):
    """A geotagged dataset whose samples also carry ``"cells"``: int64 [P], the photo's class per partition.

    Over shards it also passes on what ``datasets.shards.ShardStream`` reads through (``shard_of``, ``raw``,
    ``from_raw``), so the stream reads the shards' bytes in file order and the labels are added here."""

    def __init__(self, base: GeotaggedImages | GeotaggedShards, partitions: Sequence[Partition]) -> None:
        self.base = base
        self.stats, self.skipped = base.stats, getattr(base, "skipped", None)  # shards skip while indexing
        self.labels = np.stack([p.assign(base.lat, base.lon) for p in partitions], axis=1)

    def __len__(self) -> int:
        return len(self.base)

    def _label(self, sample: dict[str, Any]) -> dict[str, Any]:
        sample["cells"] = torch.from_numpy(self.labels[sample["index"]])
        return sample

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._label(self.base[index])

    @property
    def shard_of(self) -> np.ndarray:
        return self.base.shard_of

    def raw(self, index: int) -> bytes:
        return self.base.raw(index)

    def from_raw(self, index: int, data: bytes) -> dict[str, Any]:
        return self._label(self.base.from_raw(index, data))


def build_parser() -> argparse.ArgumentParser:
    p = train_parser("python -m tasks.geolocation.train", __doc__.split("\n\n")[0],
                     default_config=str(DEFAULT_CONFIG.relative_to(CONFIG_DIR.parents[1])) + " without --data-root")
    g = p.add_argument_group("geolocation (--ann / --val-ann: geotagged CSVs with image id, latitude, longitude; "
                             "or --exif-gps; or --data-root / --val-data-root naming tar shards)")
    g.add_argument("--cells", action="append", help="a cells.csv (python -m tasks.geolocation.partition); repeat for "
                   "hierarchical prediction [data.cells]")
    g.add_argument("--t-min", type=int, help=f"without --cells: drop cells with at most this many photos "
                   f"(default {DEFAULT_T_MIN}) [data.t_min]")
    g.add_argument("--t-max", type=int, nargs="+", help=f"without --cells: split cells with more photos; several "
                   f"values train one head each (default {DEFAULT_T_MAX}) [data.t_max]")
    g.add_argument("--haversine-smoothing", type=float, metavar="TAU_KM",
                   help="targets proportional to exp(-d(photo, cell) / TAU_KM) (PIGEON) [loss.haversine_smoothing]")
    g.add_argument("--id-col", help="image id column (default: found by name) [data.id_col]")
    g.add_argument("--lat-col", help="latitude column [data.lat_col]")
    g.add_argument("--lon-col", help="longitude column [data.lon_col]")
    g.add_argument("--image-suffix", help="appended to each id to make the file name, e.g. .jpg [data.image_suffix]")
    g.add_argument("--exif-gps", action="store_true", default=None,
                   help="read each photo's location from its EXIF GPS tags instead of --ann [data.exif_gps]")
    g.add_argument("--shuffle-buffer", type=int, help="tar shards: samples each data-loader worker mixes "
                   "(default 1000) [data.shuffle_buffer]")
    g.add_argument("--augment", action="store_true", default=None, help="random resized crop + flip [data.augment]")
    g.add_argument("--skip-bad-images", action="store_true", default=None,
                   help="skip and count missing/corrupt images [data.skip_bad_images]")
    return p


_TASK_FLAGS = {"cells": "data.cells", "t_min": "data.t_min", "t_max": "data.t_max",
               "haversine_smoothing": "loss.haversine_smoothing", "id_col": "data.id_col", "lat_col": "data.lat_col",
               "lon_col": "data.lon_col", "image_suffix": "data.image_suffix", "augment": "data.augment",
               "skip_bad_images": "data.skip_bad_images", "exif_gps": "data.exif_gps",
               "shuffle_buffer": "data.shuffle_buffer"}


def resolve_config(args: argparse.Namespace) -> GeolocationConfig:
    """The YAML (``--config``; without it and without data, the embedded synthetic default), then the flags."""
    overrides = flag_overrides(args, _TASK_FLAGS)
    own_data = args.data_root is not None or args.ann is not None or bool(args.exif_gps)
    return load_config(GeolocationConfig, args.config, overrides=overrides,
                       default=None if own_data else DEFAULT_CONFIG)


# --------------------------------------------------------------------------------------------------
# data


def _locations(cfg: GeolocationConfig, root: str, ann: str | None, dist: DistInfo) -> GeoTable | GeotaggedShards:
    d = cfg.data
    return read_locations(root, ann, exif_gps=d.exif_gps and ann is None and not is_shard_spec(root),
                          id_col=d.id_col, lat_col=d.lat_col, lon_col=d.lon_col, skip_bad_images=d.skip_bad_images,
                          progress=dist.is_main)


def _partitions(cfg: GeolocationConfig, lat: np.ndarray, lon: np.ndarray, out: Path,
                dist: DistInfo) -> list[Partition]:
    d = cfg.data
    if d.cells:
        parts = [read_cells_csv(c) for c in d.cells]
    else:
        parts = build_partitions(lat, lon, t_min=d.t_min, t_max=d.t_max, min_level=d.min_level,
                                 max_level=d.max_level)
        paths = partition_paths(out / "cells.csv", d.t_max)
        if dist.is_main:  # the other ranks prepare after rank 0 and read its files
            out.mkdir(parents=True, exist_ok=True)
            for part, path in zip(parts, paths):
                write_cells_csv(path, part)
        # read back, so this run and a rerun from its config.yaml use the very same (rounded) cell locations
        parts = [read_cells_csv(p) for p in paths]
        d.cells = [str(p) for p in paths]
    return sorted(parts, key=len)  # coarse to fine: the heads' order; the last one is predicted


def _prepare(cfg: GeolocationConfig, dist: DistInfo, out: Path) -> Prepared:
    d = cfg.data
    if d.root is None and d.ann is None and d.synthetic is not None:
        from datasets.synthetic_geotagged import ensure_synthetic_geotagged

        paths = ensure_synthetic_geotagged(**d.synthetic)
        d.root, d.ann, d.val_root, d.val_ann = paths["train_root"], paths["train_ann"], paths["val_root"], \
            paths["val_ann"]
    res = cfg.model.resolution
    train_tf = build_image_transform(res, mean=d.mean, std=d.std, augment=d.augment)
    eval_tf = build_image_transform(res, mean=d.mean, std=d.std)
    table = _locations(cfg, d.root, d.ann, dist)
    val_root = d.val_root or d.root
    if d.val_ann or d.val_root:
        val_table = _locations(cfg, val_root, d.val_ann, dist)
    else:
        tr, va = split_holdout(len(table), d.val_fraction, cfg.train.seed)
        table, val_table = table.select(tr), table.select(va, keep_counts=False)
    parts = _partitions(cfg, table.lat, table.lon, out, dist)
    inside = np.all(np.stack([p.assign(table.lat, table.lon) for p in parts]) >= 0, axis=0)
    if not inside.any():
        raise ValueError(f"none of the {len(table)} photos of {d.ann or d.root} lies in a cell of "
                         f"{', '.join(d.cells)}: the cells and the photos do not match")
    kw = {"image_suffix": d.image_suffix, "skip_bad_images": d.skip_bad_images}
    train = geotagged_dataset(table.select(np.flatnonzero(inside)), d.root, train_tf, **kw)
    val = geotagged_dataset(val_table, val_root, eval_tf, **kw)
    if d.skip_bad_images:  # shards were decoded once while indexing
        for ds in (train, val):
            if isinstance(ds, GeotaggedImages):
                ds.scan_images(progress=dist.is_main)
    labeled: Dataset = CellLabeled(train, parts)
    if isinstance(train, GeotaggedShards):
        labeled = ShardStream(labeled, shuffle_buffer=d.shuffle_buffer, seed=cfg.train.seed)
    return Prepared(labeled, val, parts, int((~inside).sum()), len(table))


# --------------------------------------------------------------------------------------------------
# evaluation


def evaluate_geolocation(model: torch.nn.Module, loader: DataLoader, decoder: CellDecoder, lat: np.ndarray,
                         lon: np.ndarray, device: torch.device, *, amp: bool = False,
                         progress: bool = False) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Locate every photo of ``loader`` at its best cell's mean location and score the great-circle errors.

    Args:
        lat, lon: the loader dataset's true coordinates, by dataset index.

    Returns:
        (metrics of ``eval.geolocation.geolocation_metrics`` plus ``cell_accuracy``, distances km [N],
        predicted labels [N]; both in dataset-index order).
    """
    outputs, _, index = predict_outputs(model, loader, device, amp=amp, progress=progress, desc="evaluate")
    order = np.argsort(index, kind="stable")
    labels = decoder.top_k(outputs[order], 1)[0][:, 0]
    idx = index[order]
    d = np.asarray(haversine_km(lat[idx], lon[idx], decoder.lat[labels], decoder.lon[labels]))
    metrics = geolocation_metrics(d)
    metrics["cell_accuracy"] = float(np.mean(decoder.partitions[-1].assign(lat[idx], lon[idx]) == labels))
    return metrics, d, labels


def baseline_distances(partition: Partition, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Errors of always answering the location of the cell with the most training photos."""
    k = int(np.argmax(partition.counts))
    return np.asarray(haversine_km(lat, lon, partition.lat_mean[k], partition.lon_mean[k]))


# --------------------------------------------------------------------------------------------------
# job


def _build(cfg: GeolocationConfig, data: Prepared, dist: DistInfo) -> TrainJob:
    parts, val = data.partitions, data.val
    num_cells = [len(p) for p in parts]
    m = cfg.model
    if len(parts) == 1:
        model, name, spec = m.build(num_cells[0]), "classifier", m.spec(num_cells[0])
    else:
        model = build_geo_classifier(num_cells=num_cells, backbone=m.backbone, alpha=m.alpha, dropout=m.dropout,
                                     pretrained_backbone=m.pretrained_backbone)
        name, spec = "geo_classifier", geo_classifier_spec(num_cells=num_cells, backbone=m.backbone, alpha=m.alpha,
                                                           dropout=m.dropout)
    decoder = CellDecoder(parts)
    meta = checkpoint_meta("geolocation", name, spec, resolution=m.resolution, mean=cfg.data.mean, std=cfg.data.std,
                           labels=decoder.tokens, cells=[partition_meta(p) for p in parts], num_cells=num_cells,
                           output="geolocation")
    loss = GeoLoss(num_cells, [p.lat_mean for p in parts], [p.lon_mean for p in parts],
                   tau_km=cfg.loss.haversine_smoothing)
    loader = DataLoader(val, batch_size=cfg.data.eval_batch_size, shuffle=False,
                        num_workers=resolve_workers(cfg.data.workers, dist))
    val_lat, val_lon = val.lat, val.lon

    def evaluate_fn(net: torch.nn.Module) -> dict[str, float]:
        return evaluate_geolocation(net, loader, decoder, val_lat, val_lon, dist.device, amp=cfg.train.amp)[0]

    def report(best: torch.nn.Module, meta: Mapping[str, Any], out: Path) -> Report:
        ours, d, _ = evaluate_geolocation(best, loader, decoder, val_lat, val_lon, dist.device, amp=cfg.train.amp,
                                          progress=True)
        d_base = baseline_distances(parts[-1], val_lat, val_lon)
        base = geolocation_metrics(d_base)
        table = format_geolocation_table({"best.pt": ours, "most populous cell": base})
        source = cfg.data.val_ann or cfg.data.val_root or f"held out of {cfg.data.ann or cfg.data.root}"
        text = (f"validation: {len(val)} photos ({source}); "
                f"share located within\n{table}\ncell accuracy {100 * ours['cell_accuracy']:.1f}% over "
                f"{num_cells[-1]} cells")
        plot = plot_error_cdf({"best.pt": d, "most populous cell (baseline)": d_base}, out / "error_cdf.png",
                              title=f"validation error, {len(val)} photos")
        metrics = {**ours, **{f"baseline/{k}": v for k, v in base.items() if k != "count"}}
        return Report(metrics=metrics, text=text, plots=[plot],
                      extra={"partition": {"cells": num_cells, "files": list(cfg.data.cells),
                                           "train_photos_outside": data.outside, "train_photos": data.listed}})

    share = data.outside / max(data.listed, 1)
    lines = [f"partition: {' / '.join(str(k) for k in num_cells)} cells ({', '.join(cfg.data.cells)}); "
             f"{data.outside} of {data.listed} training photos ({share:.1%}) lie outside every cell and are left out",
             f"train {len(data.train)} photos{_streamed(data.train)}, val {len(val)} photos; {m.backbone} alpha "
             f"{m.alpha} @ {m.resolution}"
             + (f"; haversine smoothing tau {cfg.loss.haversine_smoothing:g} km" if cfg.loss.haversine_smoothing else "")]
    return TrainJob(model=model, train_set=data.train, loss_fn=loss, meta=meta, evaluate_fn=evaluate_fn,
                    metric="geoscore", metric_mode="max", report=report, val_set=val, lines=lines)


def _streamed(train: Dataset) -> str:
    if not isinstance(train, ShardStream):
        return ""
    shards = np.unique(train.source.shard_of).size
    return f" (streamed from {shards} tar shards, shuffle buffer {train.shuffle_buffer})"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    cfg = resolve_config(args)
    output_dir = Path(args.output_dir or "runs/geolocation")
    summary = run_training("geolocation", cfg, output_dir=output_dir,
                           prepare=lambda c, dist: _prepare(c, dist, output_dir), build=_build,
                           device=args.device, resume=args.resume, resume_anyway=args.resume_anyway)
    summary.update({k: v for k, v in summary.get("metrics", {}).items() if not k.startswith("baseline/")})
    return summary


if __name__ == "__main__":
    run_cli(main)
