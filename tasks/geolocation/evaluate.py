"""Score a geolocation checkpoint on a geotagged test set (MobileNets paper, Section 4.4, Table 11).

    python -m tasks.geolocation.evaluate --checkpoint runs/geolocation/best.pt --data-root IMGS --ann test.csv \
        --out-dir D
    python -m tasks.geolocation.evaluate --checkpoint C --data-root 'test/{000000..000009}.tar' --out-dir D
    python -m tasks.geolocation.evaluate --checkpoint C --data-root IMGS --exif-gps --out-dir D

Every photo is placed at its best cell's mean location (the hierarchical product over the checkpoint's
partitions, as in training) and scored by the great-circle error at 1 / 25 / 200 / 750 / 2500 km, median km and
GeoScore, beside the "always the most populous cell" baseline. ``--out-dir`` receives ``summary.json``,
``predictions.csv`` (``IMG_ID, lat, lon, pred_lat, pred_lon, km, token``), ``error_cdf.png`` and
``world.png``: photos on an equirectangular world (plain matplotlib, nothing downloaded), each at its true
place coloured by its error, with a line to where it was placed.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch.utils.data import DataLoader

from datasets.geotagged import GeotaggedImages, geotagged_dataset, read_locations
from datasets.images import build_image_transform
from datasets.io import prepare_output_dir
from eval.geolocation import format_geolocation_table, geolocation_metrics, plot_error_cdf
from eval.plots import new_figure, save_png
from tasks.checkpoint import atomic_write_text, load_model
from tasks.cli import run_cli
from tasks.distributed import pick_device
from tasks.flags import add_eval_flags
from tasks.geolocation.model import CellDecoder
from tasks.geolocation.train import baseline_distances, evaluate_geolocation

__all__ = ["build_parser", "main", "open_geotagged", "plot_world"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tasks.geolocation.evaluate", description=__doc__.split("\n\n")[0])
    add_eval_flags(p, batch_size=64)
    p.add_argument("--data-root", required=True, help="the test images: a folder, or tar shards "
                   "('test/{000000..000009}.tar', each sample an image + .json with lat/lon)")
    p.add_argument("--ann", help="geotagged CSV of the test images (id, lat, lon); not with shards or --exif-gps")
    p.add_argument("--exif-gps", action="store_true", help="read each photo's location from its EXIF GPS tags")
    p.add_argument("--id-col", help="image id column (default: found by name)")
    p.add_argument("--lat-col", help="latitude column")
    p.add_argument("--lon-col", help="longitude column")
    p.add_argument("--image-suffix", default="", help="appended to each id to make the file name, e.g. .jpg")
    p.add_argument("--skip-bad-images", action="store_true", help="skip and count missing/corrupt images")
    p.add_argument("--workers", type=int, default=0, help="data-loader workers")
    return p


def plot_world(lat: np.ndarray, lon: np.ndarray, pred_lat: np.ndarray, pred_lon: np.ndarray, km: np.ndarray,
               path: str | Path, title: str = "geolocation errors") -> Path:
    """Write a PNG of photos on an equirectangular world: true places coloured by error (log km), a thin line
    to each prediction, the predicted places as small crosses. No map data: a graticule only."""
    from matplotlib.collections import LineCollection
    from matplotlib.colors import LogNorm

    out = Path(path)
    fig = new_figure((10, 5.4))
    ax = fig.add_subplot(1, 1, 1)
    # a line across the antimeridian would cross the whole map: draw the shorter way only when it stays on it
    keep = np.abs(pred_lon - lon) <= 180
    segs = np.stack([np.stack([lon, lat], 1), np.stack([pred_lon, pred_lat], 1)], 1)[keep]
    ax.add_collection(LineCollection(segs, colors="grey", linewidths=0.3, alpha=0.4))
    sc = ax.scatter(lon, lat, c=np.maximum(km, 1.0), s=6, cmap="viridis_r", norm=LogNorm(vmin=1, vmax=20000),
                    label="true place")
    ax.scatter(pred_lon, pred_lat, marker="x", s=10, c="crimson", linewidths=0.6, label="predicted place")
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_xticks(np.arange(-180, 181, 60))
    ax.set_yticks(np.arange(-90, 91, 30))
    ax.set_aspect("equal")
    ax.grid(True, alpha=0.3)
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8)
    fig.colorbar(sc, ax=ax, shrink=0.7, label="error (km)")
    fig.tight_layout()
    return save_png(fig, out)


def open_geotagged(meta: dict[str, Any], data_root: str, ann: str | None, *, resolution: int | None = None,
                   skip_bad_images: bool = False, exif_gps: bool = False, id_col: str | None = None,
                   lat_col: str | None = None, lon_col: str | None = None,
                   image_suffix: str | None = None) -> Any:
    """The geotagged test photos (a CSV + image folder, tar shards, or EXIF GPS of a folder) through the
    checkpoint's preprocessing (``resolution``: default the checkpoint's)."""
    pre = meta["preprocess"]
    tf = build_image_transform(int(resolution or pre["resolution"]), mean=pre["mean"], std=pre["std"])
    locations = read_locations(data_root, ann, exif_gps=exif_gps, id_col=id_col, lat_col=lat_col, lon_col=lon_col,
                               skip_bad_images=skip_bad_images, progress=True)
    ds = geotagged_dataset(locations, data_root, tf, image_suffix=image_suffix, skip_bad_images=skip_bad_images)
    if skip_bad_images and isinstance(ds, GeotaggedImages):  # shards were decoded once while indexing
        ds.scan_images(progress=True)
    return ds


def _predictions_csv(ids: list[str], lat: np.ndarray, lon: np.ndarray, plat: np.ndarray, plon: np.ndarray,
                     km: np.ndarray, tokens: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["IMG_ID", "lat", "lon", "pred_lat", "pred_lon", "km", "token"])
    for row in zip(ids, lat.tolist(), lon.tolist(), plat.tolist(), plon.tolist(), km.tolist(), tokens):
        w.writerow([row[0], f"{row[1]:.6f}", f"{row[2]:.6f}", f"{row[3]:.6f}", f"{row[4]:.6f}", f"{row[5]:.3f}",
                    row[6]])
    return buf.getvalue()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = pick_device(args.device)
    out = prepare_output_dir(args.out_dir) if args.out_dir else None
    model, meta = load_model(args.checkpoint, device, task="geolocation")
    decoder = CellDecoder.from_meta(meta)
    ds = open_geotagged(meta, args.data_root, args.ann, exif_gps=args.exif_gps, id_col=args.id_col,
                        lat_col=args.lat_col, lon_col=args.lon_col, image_suffix=args.image_suffix,
                        skip_bad_images=args.skip_bad_images)
    source = args.ann or args.data_root
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=False, num_workers=args.workers)
    lat, lon = ds.lat, ds.lon
    ours, km, labels = evaluate_geolocation(model, loader, decoder, lat, lon, device, progress=True)
    base = geolocation_metrics(baseline_distances(decoder.partitions[-1], lat, lon))
    print(f"{args.checkpoint} on {len(ds)} photos of {source}; share located within")
    print(format_geolocation_table({"checkpoint": ours, "most populous cell": base}))
    summary: dict[str, Any] = {"checkpoint": str(args.checkpoint), "ann": str(source), "metrics": ours,
                               "baseline": base, "bad_images_skipped": int(ds.stats.get("bad_images_skipped", 0)),
                               "bad_images": ds.skipped.files() if hasattr(ds, "skipped") else []}
    if out is not None:
        plat, plon = decoder.lat[labels], decoder.lon[labels]
        atomic_write_text(out / "predictions.csv", _predictions_csv(ds.ids, lat, lon, plat, plon, km,
                                                                     [decoder.tokens[k] for k in labels]))
        d_base = baseline_distances(decoder.partitions[-1], lat, lon)
        plots = [plot_error_cdf({"checkpoint": km, "most populous cell (baseline)": d_base}, out / "error_cdf.png",
                                title=f"error on {len(ds)} photos"),
                 plot_world(lat, lon, plat, plon, km, out / "world.png", title=f"{len(ds)} photos: true place "
                            "coloured by error, line to the prediction")]
        summary["plots"] = [str(p) for p in plots]
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        print(f"wrote {out / 'summary.json'}, {out / 'predictions.csv'}, " + ", ".join(summary["plots"]))
    return summary


if __name__ == "__main__":
    run_cli(main)
