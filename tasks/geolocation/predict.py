"""Where were these photos taken? The top-k cells of a geolocation checkpoint (MobileNets paper, Section 4.4).

    python -m tasks.geolocation.predict --checkpoint runs/geolocation/best.pt photo1.jpg photo2.jpg \
        [--top-k 5] [--geojson places.geojson]

For each image: the k best cells of the finest partition (scored by the hierarchical product when the
checkpoint has several partitions), each with its S2 token, its location (the mean of its training photos)
and its score. ``--geojson`` writes them as a FeatureCollection of points (properties ``image``, ``rank``,
``token``, ``score``), which any GIS or web map opens.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import torch

from datasets.images import build_image_transform, drop_unreadable, load_rgb_image, report_skipped
from datasets.io import prepare_output_dir, prepare_output_file
from tasks.checkpoint import atomic_write_text, load_model
from tasks.cli import run_cli
from tasks.distributed import pick_device
from tasks.flags import add_eval_flags
from tasks.geolocation.model import CellDecoder

__all__ = ["build_parser", "main", "predict_images"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tasks.geolocation.predict", description=__doc__.split("\n\n")[0])
    add_eval_flags(p, batch_size=32)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--top-k", type=int, default=5, help="cells per image (default 5)")
    p.add_argument("--geojson", help="write the cells as GeoJSON points to this file")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="skip (and count) files that are missing or cannot be decoded; default: stop at the first")
    return p


@torch.no_grad()
def predict_images(model: torch.nn.Module, meta: dict[str, Any], paths: Sequence[str], *, top_k: int = 5,
                   batch_size: int = 32, device: torch.device | str = "cpu") -> list[list[dict[str, Any]]]:
    """Per image, its ``top_k`` cells as ``{"rank", "token", "lat", "lon", "score"}``, best first."""
    if top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {top_k}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    decoder = CellDecoder.from_meta(meta)
    pre = meta["preprocess"]
    tf = build_image_transform(int(pre["resolution"]), mean=pre["mean"], std=pre["std"])
    model.eval()
    results: list[list[dict[str, Any]]] = []
    for start in range(0, len(paths), batch_size):
        batch = torch.stack([tf(load_rgb_image(p)) for p in paths[start:start + batch_size]]).to(device)
        labels, scores = decoder.top_k(model(batch).float().cpu().numpy(), top_k)
        for row_labels, row_scores in zip(labels, scores):
            results.append([{"rank": r + 1, "token": decoder.tokens[int(k)], "lat": float(decoder.lat[int(k)]),
                             "lon": float(decoder.lon[int(k)]), "score": float(s)}
                            for r, (k, s) in enumerate(zip(row_labels, row_scores))])
    return results


def _geojson(paths: Sequence[str], results: list[list[dict[str, Any]]]) -> dict[str, Any]:
    features = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [c["lon"], c["lat"]]},
                 "properties": {"image": str(p), "rank": c["rank"], "token": c["token"], "score": c["score"]}}
                for p, cells in zip(paths, results) for c in cells]
    return {"type": "FeatureCollection", "features": features}


def main(argv: Sequence[str] | None = None) -> list[list[dict[str, Any]]]:
    args = build_parser().parse_args(argv)
    device = pick_device(args.device)
    out = prepare_output_dir(args.out_dir) if args.out_dir else None
    if args.geojson:
        prepare_output_file(args.geojson, "--geojson")
    model, meta = load_model(args.checkpoint, device, task="geolocation")
    args.images, skipped = drop_unreadable(args.images) if args.skip_bad_images else (args.images, [])
    results = predict_images(model, meta, args.images, top_k=args.top_k, batch_size=args.batch_size, device=device)
    for path, cells in zip(args.images, results):
        print(path)
        for c in cells:
            print(f"  {c['rank']:>2}. cell {c['token']:<12} lat {c['lat']:9.4f} lon {c['lon']:10.4f}  "
                  f"score {c['score']:.4f}")
    if args.geojson:
        atomic_write_text(Path(args.geojson), json.dumps(_geojson(args.images, results), indent=1) + "\n")
        print(f"wrote {args.geojson}")
    if out is not None:
        atomic_write_text(out / "predictions.json", json.dumps(
            [{"image": str(p), "cells": c} for p, c in zip(args.images, results)], indent=1) + "\n")
    report_skipped(skipped)
    return results


if __name__ == "__main__":
    run_cli(main)
