"""Supervised face-attribute training (MobileNets paper, Section 4.5, Table 12) with the shared engine.

    python -m tasks.attributes.train --images DIR --labels FILE [--val-images DIR --val-labels FILE]
        [--partition list_eval_partition.txt] --alpha 0.5 --resolution 128 --epochs N --output-dir OUT

Labels are CelebA's ``list_attr_celeba.txt`` (1/-1) or a CSV (1/0/empty); unknown labels are left out
of the loss and of each attribute's AP. Validation: ``--val-labels`` (images under ``--val-images``,
default ``--images``), else CelebA's partition file (train = 0, val = 1), else a held-out tenth.
The paper distills Table 12 from a teacher (``python -m distill.train``); this trains the same
multi-label MobileNet on labels, e.g. as a baseline or to make a teacher.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from datasets.attributes import AttributeDataset
from datasets.images import IMAGENET_MEAN, IMAGENET_STD, build_image_transform, split_holdout
from distill.cli import add_engine_flags, build_engine_config, parse_with_config, pick_device
from distill.student import student_spec
from eval.attributes import AttributeAP, format_ap_table, mean_average_precision
from tasks.attributes.model import attribute_loss, build_attribute_model, predict_outputs
from tasks.engine import EngineConfig, FitResult, fit, seed_everything

__all__ = ["build_parser", "evaluate_attributes", "main", "train_attribute_model"]


def evaluate_attributes(model: torch.nn.Module, loader: DataLoader, names: Sequence[str], device: torch.device,
                        *, amp: bool = False, progress: bool = False) -> AttributeAP:
    """Mean AP and per-attribute AP of ``model`` on a labeled loader."""
    scores, targets, _ = predict_outputs(model, loader, device, amp=amp, progress=progress, desc="evaluate")
    if targets is None:
        raise ValueError("evaluation needs labeled images")
    return mean_average_precision(scores, targets, names)


def _ap_metrics(res: AttributeAP) -> dict[str, float]:
    # NaN (no known positive) is left out: metrics.jsonl stays strict JSON.
    return {k: v for k, v in res.as_dict().items() if not math.isnan(v)}


def train_attribute_model(
    model: torch.nn.Module,
    train_set: Dataset,
    val_set: Dataset,
    *,
    attribute_names: Sequence[str],
    cfg: EngineConfig,
    batch_size: int,
    output_dir: str | Path,
    device: torch.device,
    meta: dict[str, Any],
    num_workers: int = 0,
    resume: str | Path | None = None,
    config_dict: dict[str, Any] | None = None,
) -> FitResult:
    """Train a multi-label model with ``tasks.engine.fit``; evaluation = mean AP on ``val_set``.

    ``cfg.metric`` should be "mean_ap" (mode "max") or "loss".
    """
    val_loader = DataLoader(val_set, batch_size=batch_size, shuffle=False, num_workers=num_workers)

    def evaluate_fn(net: torch.nn.Module) -> dict[str, float]:
        return _ap_metrics(evaluate_attributes(net, val_loader, attribute_names, device, amp=cfg.amp))

    return fit(model, train_set, cfg=cfg, batch_size=batch_size, output_dir=output_dir, loss_fn=attribute_loss,
               evaluate_fn=evaluate_fn, num_workers=num_workers, device=device, resume=resume, meta=meta,
               config_dict=config_dict)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tasks.attributes.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default=None, help="YAML with any of these flags (and an 'engine' mapping)")
    d = p.add_argument_group("data")
    d.add_argument("--images", default=None, help="image folder the label file's names are relative to")
    d.add_argument("--labels", default=None, help="list_attr_celeba.txt (1/-1) or CSV (1/0/empty)")
    d.add_argument("--partition", default=None, help="CelebA list_eval_partition.txt: train on 0, validate on 1")
    d.add_argument("--val-images", default=None)
    d.add_argument("--val-labels", default=None)
    d.add_argument("--val-fraction", type=float, default=0.1, help="held out when there is no other validation")
    d.add_argument("--skip-bad-images", action="store_true", help="skip and count missing/corrupt images")
    d.add_argument("--augment", action="store_true", help="random resized crop + horizontal flip")
    d.add_argument("--mean", type=float, nargs=3, default=list(IMAGENET_MEAN))
    d.add_argument("--std", type=float, nargs=3, default=list(IMAGENET_STD))
    d.add_argument("--workers", type=int, default=None, help="DataLoader workers (default 0 on CPU, 4 on CUDA)")
    m = p.add_argument_group("model")
    m.add_argument("--backbone", default="mobilenet_v1", help="mobilenet_v1 or a timm model name")
    m.add_argument("--alpha", type=float, default=1.0, help="width multiplier (Table 12: 1, 0.5, 0.25)")
    m.add_argument("--resolution", type=int, default=224, help="input size (Table 12: 224, 128)")
    m.add_argument("--dropout", type=float, default=0.0)
    r = p.add_argument_group("run")
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--output-dir", default="runs/attributes")
    r.add_argument("--resume", default=None, help="last.pt to continue from")
    r.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    add_engine_flags(p, epochs=20, lr=0.01, optimizer="rmsprop", weight_decay=4e-5)
    return p


def _datasets(args: argparse.Namespace) -> tuple[AttributeDataset, AttributeDataset]:
    train_tf = build_image_transform(args.resolution, mean=args.mean, std=args.std, augment=args.augment)
    eval_tf = build_image_transform(args.resolution, mean=args.mean, std=args.std)
    part_train = (args.partition, "train") if args.partition else None
    train = AttributeDataset(args.images, args.labels, train_tf, partition=part_train,
                             skip_bad_images=args.skip_bad_images)
    if args.val_labels:
        val = AttributeDataset(args.val_images or args.images, args.val_labels, eval_tf,
                               skip_bad_images=args.skip_bad_images)
    elif args.partition:
        val = AttributeDataset(args.images, args.labels, eval_tf, partition=(args.partition, "val"),
                               skip_bad_images=args.skip_bad_images)
    else:
        tr, va = split_holdout(len(train), args.val_fraction, args.seed)
        full = train
        train, val = full.subset(tr), full.subset(va)
        val.transform = eval_tf
    if val.attribute_names != train.attribute_names:
        raise ValueError(f"validation labels {val.table.path} have attributes {val.attribute_names}, training labels "
                         f"{train.table.path} have {train.attribute_names}")
    if args.skip_bad_images:
        for ds in (train, val):
            ds.scan_images(progress=True)
    return train, val


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    args, engine, explicit = parse_with_config(parser, argv)
    if not args.images or not args.labels:
        parser.error("--images and --labels are required (or set them in --config)")
    try:
        device = pick_device(args.device)
        cfg = build_engine_config(args, engine, explicit, metric="mean_ap", metric_mode="max",
                                  source=args.config or "flags")
        train, val = _datasets(args)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    workers = args.workers if args.workers is not None else (4 if device.type == "cuda" else 0)
    names = train.attribute_names
    seed_everything(cfg.seed)  # the initial weights depend on the seed only
    model = build_attribute_model(len(names), alpha=args.alpha, backbone=args.backbone, dropout=args.dropout)
    meta = {
        "task": "attributes",
        "model": student_spec(alpha=args.alpha, num_outputs=len(names), backbone=args.backbone, dropout=args.dropout),
        "resolution": args.resolution,
        "mean": list(args.mean),
        "std": list(args.std),
        "attribute_names": names,
        "state_prefix": "",
    }
    config = {k: v for k, v in vars(args).items()}
    config["engine"] = cfg.to_dict()
    print(f"attributes: {len(names)} ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''}); "
          f"train {len(train)} images, val {len(val)} images; {args.backbone} alpha {args.alpha} @ {args.resolution}")
    result = train_attribute_model(model, train, val, attribute_names=names, cfg=cfg, batch_size=args.batch_size,
                                   output_dir=args.output_dir, device=device, meta=meta, num_workers=workers,
                                   resume=args.resume, config_dict=config)
    loader = DataLoader(val, batch_size=args.batch_size, shuffle=False, num_workers=workers)
    final = evaluate_attributes(model, loader, names, device, amp=cfg.amp)
    print(format_ap_table({"final": final}))
    skipped = train.stats["bad_images_skipped"] + val.stats["bad_images_skipped"]
    if skipped:
        print(f"bad images skipped: {skipped}")
    print(f"mean AP (final model): {100 * final.mean_ap:.2f}%   checkpoints in {os.path.abspath(args.output_dir)}")
    return {"mean_ap": final.mean_ap, "result": result}


if __name__ == "__main__":
    main(sys.argv[1:])
