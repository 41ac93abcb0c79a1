"""Fine-grained recognition (MobileNets paper, Section 4.3, Table 10: Stanford Dogs) on the task scaffold.

    python -m tasks.finegrained.train                              # built-in synthetic dogs, a few CPU minutes
    python -m tasks.finegrained.train --data-root DOGS [--crop none|box] [--pretrained-backbone timm|PATH]
        [--val-fraction 0.1] [--label-smoothing 0.1] [common flags]

``--data-root``: the Stanford Dogs layout (``Images/``, ``Annotation/``, ``lists/``), class folders or a
``path,label`` CSV (``--ann``); see ``datasets.stanford_dogs``. Validation is a stratified held-out part of
the training list (``--val-fraction``), or ``--val-data-root``/``--val-ann`` when given; never the test list.
best.pt is chosen by validation top-1. The final report reloads best.pt and scores it once on the test
list (Stanford Dogs' ``test_list.mat``, or ``--test-data-root``/``--test-ann`` for other sources):
``summary.json`` holds test ``top1``, ``top5``, ``mean_class_accuracy``, ``acc/<breed>`` and ``val_top1``,
plus the ten most-confused breed pairs; ``confusion.png`` is the test confusion matrix.
``--crop box`` makes every annotated box a sample (training, validation and test alike).

The paper pretrains on a noisy web set and fine-tunes on the train list; the real-world start is
ImageNet weights (``--pretrained-backbone timm``), which have seen all 120 breeds (they are ImageNet-1k
classes). The built-in default trains from scratch on drawn dogs instead (no download).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from datasets.images import build_image_transform
from datasets.stanford_dogs import CROP_MODES, ClassList, FineGrainedDataset, ImageRecord, open_finegrained, \
    standard_splits
from tasks.checkpoint import checkpoint_meta
from tasks.classifier import ClassifierModelConfig, ImageDataConfig
from tasks.cli import run_cli
from tasks.config import load_config
from tasks.distributed import DistInfo
from tasks.engine import EngineConfig
from tasks.flags import flag_overrides, train_parser
from tasks.lifecycle import Report, TrainJob, resolve_workers, run_training

from .scoring import evaluate_classifier, score_split

__all__ = ["FineGrainedConfig", "build_parser", "classification_loss", "main", "resolve_config"]

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "finegrained"
DEFAULT_CONFIG = CONFIG_DIR / "synthetic.yaml"


@dataclass
class FineGrainedData(ImageDataConfig):
    """``root`` None: the built-in synthetic dogs (``synthetic`` holds the generator's arguments)."""

    crop: str = "none"
    test_root: str | None = None  # test data for a source without a test list (class folders, CSV)
    test_ann: str | None = None
    augment: bool = True
    crop_scale: tuple[float, float] = (0.6, 1.0)
    jitter: float = 0.2
    eval_batch_size: int = 64
    synthetic: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.crop not in CROP_MODES:
            raise ValueError(f"data.crop={self.crop!r}: must be one of {list(CROP_MODES)}")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"data.crop_scale={list(self.crop_scale)!r}: need 0 < min <= max <= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"data.jitter={self.jitter!r}: must be in [0, 1)")
        if self.eval_batch_size < 1:
            raise ValueError(f"data.eval_batch_size={self.eval_batch_size!r}: must be >= 1")


@dataclass
class FineGrainedLoss:
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"loss.label_smoothing={self.label_smoothing!r}: must be in [0, 1)")


@dataclass
class FineGrainedConfig:
    model: ClassifierModelConfig = field(default_factory=ClassifierModelConfig)
    data: FineGrainedData = field(default_factory=FineGrainedData)
    loss: FineGrainedLoss = field(default_factory=FineGrainedLoss)
    train: EngineConfig = field(default_factory=lambda: EngineConfig(
        epochs=20, batch_size=32, optimizer="adamw", lr=0.01, weight_decay=1e-4, warmup_iters=20))

    def validate(self) -> None:
        if (self.data.val_root or self.data.val_ann) and self.data.root is None:
            raise ValueError("data.val_root/data.val_ann need data.root (--data-root): the built-in set has its "
                             "own validation part")
        if self.data.test_ann and not self.data.test_root:
            raise ValueError("data.test_ann needs data.test_root (--test-data-root)")
        if self.data.root is None and not self.data.synthetic:
            raise ValueError("data.root is required (--data-root DOGS), or data.synthetic for the built-in set")


@dataclass
class _Data:
    classes: ClassList
    train: FineGrainedDataset
    val: FineGrainedDataset
    test: FineGrainedDataset | None
    source: str


def classification_loss(label_smoothing: float):
    """``loss_fn(model, batch, device)`` for the engine: cross entropy with label smoothing."""

    def loss_fn(model: torch.nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        images = batch["image"].to(device, non_blocking=True)
        targets = batch["target"].to(device, non_blocking=True)
        return {"ce": F.cross_entropy(model(images), targets, label_smoothing=label_smoothing)}

    return loss_fn


def build_parser() -> argparse.ArgumentParser:
    p = train_parser("python -m tasks.finegrained.train", __doc__.split("\n\n")[0],
                     default_config=str(DEFAULT_CONFIG.relative_to(CONFIG_DIR.parents[1])))
    g = p.add_argument_group("fine-grained")
    g.add_argument("--crop", choices=list(CROP_MODES), help="none: whole images; box: every annotated box is a "
                                                           "sample [data.crop]")
    g.add_argument("--val-fraction", type=float, help="share of each class of the train list held out for "
                                                      "validation [data.val_fraction]")
    g.add_argument("--test-data-root", help="test images for a source without a test list [data.test_root]")
    g.add_argument("--test-ann", help="test 'path,label' CSV [data.test_ann]")
    g.add_argument("--label-smoothing", type=float, help="cross-entropy label smoothing [loss.label_smoothing]")
    g.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                   help="no random crop / flip / jitter [data.augment]")
    g.add_argument("--skip-bad-images", action="store_true", default=None,
                   help="skip and count missing/corrupt images [data.skip_bad_images]")
    return p


_TASK_FLAGS = {"crop": "data.crop", "val_fraction": "data.val_fraction", "test_data_root": "data.test_root",
               "test_ann": "data.test_ann", "label_smoothing": "loss.label_smoothing", "augment": "data.augment",
               "skip_bad_images": "data.skip_bad_images"}


def resolve_config(args: argparse.Namespace) -> FineGrainedConfig:
    """The YAML (default: the built-in synthetic run), the flags on top, validated once."""
    overrides = flag_overrides(args, _TASK_FLAGS)
    if args.data_root:
        overrides["data"]["synthetic"] = {}  # the user's data replaces the built-in set
    return load_config(FineGrainedConfig, args.config, overrides=overrides, default=DEFAULT_CONFIG)


def _prepare(cfg: FineGrainedConfig, dist: DistInfo) -> _Data:
    d, res = cfg.data, cfg.model.resolution
    if d.root is None:
        from datasets.synthetic_finegrained import ensure_synthetic_dogs

        root = ensure_synthetic_dogs(progress=dist.is_main, **d.synthetic)
    else:
        root = d.root
    index = open_finegrained(root, d.ann)
    train_tf = build_image_transform(res, mean=d.mean, std=d.std, augment=d.augment, crop_scale=d.crop_scale,
                                     jitter=d.jitter)
    eval_tf = build_image_transform(res, mean=d.mean, std=d.std)
    splits = standard_splits(index, val_fraction=d.val_fraction, seed=cfg.train.seed)
    train_recs: list[ImageRecord] = splits["train"]
    val_recs = splits["val"]
    if d.val_root or d.val_ann:
        val_index = open_finegrained(d.val_root or root, d.val_ann, classes=index.classes)
        train_recs = index.split("train" if "train" in index.splits else "all")
        val_recs = val_index.split("train" if "train" in val_index.splits else "all")
    test_recs = splits.get("test")
    if d.test_root:
        test_index = open_finegrained(d.test_root, d.test_ann, classes=index.classes)
        test_recs = test_index.split("test" if "test" in test_index.splits else "all")

    def dataset(recs: list[ImageRecord], tf: Any) -> FineGrainedDataset:
        return FineGrainedDataset(recs, index.classes, tf, crop=d.crop, skip_bad_images=d.skip_bad_images)

    data = _Data(index.classes, dataset(train_recs, train_tf), dataset(val_recs, eval_tf),
                 dataset(test_recs, eval_tf) if test_recs else None, str(root))
    if d.skip_bad_images:
        for ds in (data.train, data.val, data.test):
            if ds is not None:
                ds.scan_images(progress=dist.is_main)
    return data


def _build(cfg: FineGrainedConfig, data: _Data, dist: DistInfo) -> TrainJob:
    names = list(data.classes.names)
    n = len(names)
    model = cfg.model.build(n)
    meta = checkpoint_meta("finegrained", "classifier", cfg.model.spec(n), resolution=cfg.model.resolution,
                           mean=cfg.data.mean, std=cfg.data.std, labels=names, output="classes",
                           wnids=list(data.classes.wnids), classes=data.classes.as_dict(), crop=cfg.data.crop,
                           holdout=None if (cfg.data.val_root or cfg.data.val_ann) else
                           {"val_fraction": cfg.data.val_fraction, "seed": cfg.train.seed})
    workers = resolve_workers(cfg.data.workers, dist)

    def loader(ds: FineGrainedDataset) -> DataLoader:
        return DataLoader(ds, batch_size=cfg.data.eval_batch_size, shuffle=False, num_workers=workers)

    val_loader = loader(data.val)

    def evaluate_fn(net: torch.nn.Module) -> dict[str, float]:
        res, _, _ = evaluate_classifier(net, val_loader, dist.device, amp=cfg.train.amp)
        return {"top1": res.top1, "top5": res.top5, "mean_class_accuracy": res.mean_class_accuracy}

    def report(best: torch.nn.Module, meta: Mapping[str, Any], out: Path) -> Report:
        val_res, _, _ = evaluate_classifier(best, val_loader, dist.device, amp=cfg.train.amp)
        chance = 1.0 / n
        if data.test is None:
            text = (f"validation ({len(data.val)} samples): top-1 {100 * val_res.top1:.1f}% top-5 "
                    f"{100 * val_res.top5:.1f}% (chance {100 * chance:.1f}%); no test data (give --test-data-root)")
            metrics = {f"val_{k}": v for k, v in val_res.as_metrics(names).items()}
            return Report(metrics=metrics, text=text, extra={"evaluated_on": "val"})
        test = score_split(best, loader(data.test), names, dist.device, amp=cfg.train.amp, progress=dist.is_main,
                           plot_path=out / "confusion.png", title="test confusion, best.pt")
        metrics = dict(test.metrics, val_top1=val_res.top1, val_top5=val_res.top5, chance_top1=chance)
        text = "\n".join([test.text(names, "test"),
                          f"validation ({len(data.val)} samples, chose best.pt): top-1 {100 * val_res.top1:.1f}%"])
        return Report(metrics=metrics, text=text, plots=[test.plot] if test.plot else [],
                      extra={"evaluated_on": "test", "most_confused": test.pairs,
                             "test_bad_images_skipped": int(data.test.stats.get("bad_images_skipped", 0)),
                             "samples": {"train": len(data.train), "val": len(data.val), "test": len(data.test)}})

    lines = [f"fine-grained: {n} classes from {data.source}; train {len(data.train)}, val {len(data.val)} "
             f"(held out of the train list), test {len(data.test) if data.test is not None else 0} samples "
             f"(crop {cfg.data.crop}); {cfg.model.backbone} alpha {cfg.model.alpha} @ {cfg.model.resolution}"
             + (f", start {cfg.model.pretrained_backbone}" if cfg.model.pretrained_backbone else ", from scratch")]
    return TrainJob(model=model, train_set=data.train, loss_fn=classification_loss(cfg.loss.label_smoothing),
                    meta=meta, evaluate_fn=evaluate_fn, metric="top1", metric_mode="max", report=report,
                    val_set=data.val, lines=lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    cfg = resolve_config(args)
    output_dir = Path(args.output_dir or "runs/finegrained")
    summary = run_training("finegrained", cfg, output_dir=output_dir, prepare=_prepare, build=_build,
                           device=args.device, resume=args.resume, resume_anyway=args.resume_anyway)
    metrics = summary.get("metrics", {})
    summary["top1"] = metrics.get("top1", metrics.get("val_top1"))
    return summary


if __name__ == "__main__":
    run_cli(main)
