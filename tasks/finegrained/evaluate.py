"""Score a fine-grained checkpoint on a split (MobileNets paper, Section 4.3, Table 10: Stanford Dogs test top-1).

    python -m tasks.finegrained.evaluate --checkpoint runs/finegrained/best.pt --data-root DOGS [--split test]
        --out-dir D [--ann CSV] [--crop none|box] [--skip-bad-images] [--device cpu] [--batch-size 64]

Writes ``summary.json`` (top1, top5, mean_class_accuracy, acc/<class>, the ten most-confused pairs),
``predictions.csv`` (path, true, predicted, then the top-5 classes with their probabilities),
``confusion.png``. Splits: ``test`` and ``train`` for Stanford Dogs (``all`` for class folders / a CSV), and
``val``: the training run's held-out part, rebuilt from the fraction and seed the checkpoint records.
Classes are matched to the checkpoint's by folder name, wnid or readable name.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader

from datasets.images import build_image_transform
from datasets.io import atomic_write_text, prepare_output_dir
from datasets.stanford_dogs import CROP_MODES, ClassList, FineGrainedDataset, open_finegrained, standard_splits
from tasks.checkpoint import load_model, to_plain
from tasks.cli import run_cli
from tasks.distributed import pick_device
from tasks.flags import add_eval_flags

from .scoring import score_split

__all__ = ["build_parser", "main", "open_split"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tasks.finegrained.evaluate", description=__doc__.split("\n\n")[0])
    add_eval_flags(p, batch_size=64)
    p.add_argument("--data-root", required=True, help="Stanford Dogs folder, class folders or a CSV")
    p.add_argument("--ann", help="a 'path,label' CSV over --data-root")
    p.add_argument("--split", default="test", help="test (default), train, val or all")
    p.add_argument("--crop", choices=list(CROP_MODES), help="default: the crop the checkpoint was trained with")
    p.add_argument("--skip-bad-images", action="store_true", help="skip and count missing/corrupt images")
    p.add_argument("--workers", type=int, default=0, help="data-loader workers")
    return p


def _records(meta: dict[str, Any], root: str, ann: str | None, split: str | None, classes: ClassList) -> list:
    index = open_finegrained(root, ann, classes=classes)
    if split is None:  # the data's own test split where it has one (Stanford Dogs), else every image
        split = "test" if "test" in index.splits else "all"
    if split == "val" or (split == "train" and "train" not in index.splits):
        if "holdout" in meta and meta["holdout"] is None:
            raise ValueError("--split val: this checkpoint was validated on its own --val-data-root/--val-ann, not "
                             "on a part held out of the train list; evaluate that data with --split all")
        hold = meta.get("holdout") or {}
        parts = standard_splits(index, val_fraction=float(hold.get("val_fraction", 0.1)),
                                seed=int(hold.get("seed", 0)))
        return parts[split]
    return index.split(split)


def open_split(meta: dict[str, Any], data_root: str, ann: str | None, split: str | None, *,
               resolution: int | None = None, crop: str | None = None,
               skip_bad_images: bool = False) -> tuple[FineGrainedDataset, list[str]]:
    """A labelled split in the checkpoint's classes and preprocessing, and the class names.

    Args:
        meta: the checkpoint's metadata (classes, preprocessing, crop, the held-out split's seed).
        data_root, ann: Stanford Dogs, class folders or a CSV (``datasets.stanford_dogs.open_finegrained``).
        split: ``test``, ``train``, ``val``, ``all``; None: ``test`` where the data has one, else ``all``.
        resolution: input side (default: the checkpoint's).
        crop: ``none`` / ``box`` (default: the crop the checkpoint was trained with).
    """
    names = list(meta["labels"])
    classes = ClassList.from_dict(meta["classes"]) if "classes" in meta else ClassList.from_keys(names)
    pre = meta["preprocess"]
    tf = build_image_transform(int(resolution or pre["resolution"]), mean=pre["mean"], std=pre["std"])
    recs = _records(meta, data_root, ann, split, classes)
    ds = FineGrainedDataset(recs, classes, tf, crop=crop or meta.get("crop", "none"), skip_bad_images=skip_bad_images)
    return ds, names


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size}: must be >= 1")
    device = pick_device(args.device)
    model, meta = load_model(args.checkpoint, device, task="finegrained")
    ds, names = open_split(meta, args.data_root, args.ann, args.split, crop=args.crop,
                           skip_bad_images=args.skip_bad_images)
    if args.skip_bad_images:
        ds.scan_images(progress=True)
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=False, num_workers=args.workers)
    out = prepare_output_dir(args.out_dir) if args.out_dir else None
    score = score_split(model, loader, names, device, progress=True,
                        plot_path=out / "confusion.png" if out else None,
                        title=f"{args.split} confusion, {Path(args.checkpoint).name}")
    summary: dict[str, Any] = {"checkpoint": str(args.checkpoint), "data_root": str(args.data_root),
                               "split": args.split, "samples": len(ds), "metrics": score.metrics,
                               "most_confused": score.pairs,
                               "bad_images_skipped": int(ds.stats.get("bad_images_skipped", 0)),
                               "bad_images": ds.skipped.files()}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        probs = torch.softmax(torch.from_numpy(score.scores), dim=1)
        k = min(5, len(names))
        top_p, top_i = probs.topk(k, dim=1)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["path", "true", "predicted", "correct", *[c for j in range(1, k + 1) for c in
                                                              (f"top{j}", f"prob{j}")]])
        for row, idx in enumerate(score.indices):
            pred = int(top_i[row, 0])
            true = int(score.targets[row])
            tops = [v for j in range(k) for v in (names[int(top_i[row, j])], f"{float(top_p[row, j]):.4f}")]
            w.writerow([ds.image_path(int(idx)), names[true], names[pred], int(pred == true), *tops])
        atomic_write_text(out / "predictions.csv", buf.getvalue())
        summary["plots"] = [str(score.plot)] if score.plot else []
        atomic_write_text(out / "summary.json", json.dumps(to_plain(summary, "summary"), indent=2) + "\n")
    print(score.text(names, args.split))
    if out is not None:
        print(f"summary     : {out / 'summary.json'}\npredictions : {out / 'predictions.csv'}\n"
              f"plot        : {out / 'confusion.png'}")
    return summary


if __name__ == "__main__":
    run_cli(main)
