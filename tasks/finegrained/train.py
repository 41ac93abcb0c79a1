"""Fine-grained recognition (MobileNets paper, Section 4.3, Table 10: Stanford Dogs) on the task scaffold.

    python -m tasks.finegrained.train                              # built-in synthetic dogs, a few CPU minutes
    python -m tasks.finegrained.train --data-root DOGS [--crop none|box] [--pretrained-backbone timm|PATH]
        [--val-fraction 0.1] [--label-smoothing 0.1] [common flags]
    python -m tasks.finegrained.train --data-root DOGS --noisy-data-root WEB [--noisy-epochs N]
        [--noisy-loss gce|bootstrap|small_loss|ce] [--compare-clean-only]     # the paper's two stages

``--data-root``: the Stanford Dogs layout (``Images/``, ``Annotation/``, ``lists/``), class folders or a
``path,label`` CSV (``--ann``); see ``datasets.stanford_dogs``. Validation is a stratified held-out part of
the training list (``--val-fraction``), or ``--val-data-root``/``--val-ann`` when given; never the test list.
best.pt is chosen by validation top-1. The final report reloads best.pt and scores it once on the test
list (Stanford Dogs' ``test_list.mat``, or ``--test-data-root``/``--test-ann`` for other sources):
``summary.json`` holds test ``top1``, ``top5``, ``mean_class_accuracy``, ``acc/<breed>`` and ``val_top1``,
plus the ten most-confused breed pairs; ``confusion.png`` is the test confusion matrix.
``--crop box`` makes every annotated box a sample (training, validation and test alike).

The paper pretrains on a noisy web set and fine-tunes on the train list (``tasks.finegrained.noisy``):
with ``--noisy-data-root`` (or the built-in set's web folder), stage 1 trains on the web set, minus its
copies of validation and test images, with a loss that tolerates wrong labels, into
``OUT/web_pretrain/``; stage 2 starts from its best.pt and fine-tunes on the train list into ``OUT/``;
``--compare-clean-only`` also trains the same stage 2 from stage 1's start into ``OUT/clean_only/``.
``OUT/summary.json`` then holds the final model's metrics plus ``stages`` (test top-1 of each stage),
``web`` (the deduplication counts) and ``gain_top1``. ``--resume`` continues the unfinished stage.
The real-world start is ImageNet weights (``--pretrained-backbone timm``), which have seen all 120 breeds
(they are ImageNet-1k classes). The built-in default trains from scratch on drawn dogs (no download).
"""
from __future__ import annotations

import argparse
import copy
import json
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
from tasks.checkpoint import atomic_write_text, checkpoint_meta, load_model, to_plain
from tasks.classifier import ClassifierModelConfig, ImageDataConfig
from tasks.cli import run_cli
from tasks.config import load_config
from tasks.distributed import DistInfo
from tasks.engine import EngineConfig
from tasks.flags import flag_overrides, train_parser
from tasks.lifecycle import Report, TrainJob, resolve_workers, run_training

from .noisy import NOISY_LOSSES, NoisyWebConfig, WebSet, noisy_loss, read_web_set
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
    noisy: NoisyWebConfig = field(default_factory=NoisyWebConfig)
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
        if self.has_web() and self.noisy.epochs == 0:
            raise ValueError("noisy.epochs=0 (--noisy-epochs) with a web set: give the stage-1 epochs, or leave out "
                             "the web set (--noisy-data-root)")
        if self.noisy.compare_clean_only and not self.has_web():
            raise ValueError("noisy.compare_clean_only (--compare-clean-only) needs a web set (--noisy-data-root)")

    def has_web(self) -> bool:
        """A web set for stage 1: the user's, or the built-in set's own web folder."""
        return bool(self.noisy.root) or (self.data.root is None and
                                         int(self.data.synthetic.get("web_per_breed", 0) or 0) > 0)


@dataclass
class _Data:
    classes: ClassList
    train: FineGrainedDataset
    val: FineGrainedDataset
    test: FineGrainedDataset | None
    source: str
    train_transform: Any = None
    web: WebSet | None = None


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
    w = p.add_argument_group("noisy web pretraining (stage 1)")
    w.add_argument("--noisy-data-root", help="the web set: class folders or a 'path,label' CSV [noisy.root]")
    w.add_argument("--noisy-ann", help="a 'path,label' CSV relative to --noisy-data-root [noisy.ann]")
    w.add_argument("--noisy-epochs", type=int, help="stage-1 epochs on the web set [noisy.epochs]")
    w.add_argument("--noisy-lr", type=float, help="stage-1 peak learning rate (default: --lr) [noisy.lr]")
    w.add_argument("--finetune-lr", type=float, help="stage-2 peak learning rate (default: --lr) "
                                                     "[noisy.finetune_lr]")
    w.add_argument("--noisy-loss", choices=list(NOISY_LOSSES), help="stage-1 loss for wrong labels [noisy.loss]")
    w.add_argument("--dedupe-distance", type=int, help="near-copy threshold, bits of 256 of the perceptual hash; "
                                                       "-1: exact copies only [noisy.dedupe_distance]")
    w.add_argument("--compare-clean-only", action="store_true", default=None,
                   help="also train clean-only with stage 2's budget and print the gain [noisy.compare_clean_only]")
    return p


_TASK_FLAGS = {"crop": "data.crop", "val_fraction": "data.val_fraction", "test_data_root": "data.test_root",
               "test_ann": "data.test_ann", "label_smoothing": "loss.label_smoothing", "augment": "data.augment",
               "skip_bad_images": "data.skip_bad_images", "noisy_data_root": "noisy.root",
               "noisy_ann": "noisy.ann", "noisy_epochs": "noisy.epochs", "noisy_lr": "noisy.lr",
               "finetune_lr": "noisy.finetune_lr",
               "noisy_loss": "noisy.loss", "dedupe_distance": "noisy.dedupe_distance",
               "compare_clean_only": "noisy.compare_clean_only"}


def resolve_config(args: argparse.Namespace) -> FineGrainedConfig:
    """The YAML (default: the built-in synthetic run), the flags on top, validated once."""
    overrides = flag_overrides(args, _TASK_FLAGS)
    if args.data_root:
        overrides["data"]["synthetic"] = {}  # the user's data replaces the built-in set
        if args.config is None and not args.noisy_data_root:
            # the built-in run compares against clean-only; the user's data has no web set unless given
            overrides.setdefault("noisy", {}).setdefault("compare_clean_only", False)
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
                 dataset(test_recs, eval_tf) if test_recs else None, str(root), train_tf)
    if d.skip_bad_images:
        for ds in (data.train, data.val, data.test):
            if ds is not None:
                ds.scan_images(progress=dist.is_main)
    return data


def _prepare_web(cfg: FineGrainedConfig, dist: DistInfo, out: Path) -> _Data:
    """Stage 1's data: the web set (minus its copies of val/test images) to train on, the clean val and test."""
    data = _prepare(cfg, dist)
    n = cfg.noisy
    root = n.root or str(Path(data.source) / "web")
    protect = {"val": list(data.val.records)}
    if data.test is not None:
        protect["test"] = list(data.test.records)
    web = read_web_set(root, n.ann, data.classes, protect, max_distance=n.dedupe_distance,
                       out_json=out / "web_dedupe.json" if dist.is_main else None, progress=dist.is_main)
    # web photos have no boxes: whole images even with --crop box
    data.train = FineGrainedDataset(web.records, data.classes, data.train_transform, crop="none",
                                    skip_bad_images=cfg.data.skip_bad_images)
    if cfg.data.skip_bad_images:
        data.train.scan_images(progress=dist.is_main)
    data.web = web
    data.source = root
    return data


def _build(cfg: FineGrainedConfig, data: _Data, dist: DistInfo, *, stage: str = "clean",
           init: Path | None = None) -> TrainJob:
    """The job of one stage: ``web_pretrain`` (the web set, a noise-tolerant loss), ``finetune`` (the train
    list, starting from ``init``, stage 1's best.pt) or ``clean`` (the train list from the configured start)."""
    names = list(data.classes.names)
    n = len(names)
    model = cfg.model.build(n)
    if init is not None:
        start, _ = load_model(init, "cpu", task="finegrained")
        model.load_state_dict(start.state_dict())
    meta = checkpoint_meta("finegrained", "classifier", cfg.model.spec(n), resolution=cfg.model.resolution,
                           mean=cfg.data.mean, std=cfg.data.std, labels=names, output="classes",
                           wnids=list(data.classes.wnids), classes=data.classes.as_dict(), crop=cfg.data.crop,
                           holdout=None if (cfg.data.val_root or cfg.data.val_ann) else
                           {"val_fraction": cfg.data.val_fraction, "seed": cfg.train.seed}, stage=stage)
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

    what = {"web_pretrain": "stage 1: noisy web set", "finetune": f"stage 2: fine-tune from {init}",
            "clean": "train list"}[stage]
    lines = [f"fine-grained ({what}): {n} classes from {data.source}; train {len(data.train)}, val "
             f"{len(data.val)} (held out of the train list), test {len(data.test) if data.test is not None else 0} "
             f"samples (crop {cfg.data.crop}); {cfg.model.backbone} alpha {cfg.model.alpha} @ {cfg.model.resolution}"
             + (f", start {cfg.model.pretrained_backbone}" if cfg.model.pretrained_backbone and init is None else
                ", from scratch" if init is None else "")]
    if data.web is not None:
        c = data.web
        lines.append(f"web set {c.source}: {c.listed} images, {c.removed_exact} exact and {c.removed_near} near "
                     f"copies of val/test images removed ({c.removed_by_split}), {len(c.records)} kept; "
                     f"loss {cfg.noisy.loss} + label smoothing {cfg.loss.label_smoothing}")
        steps = max(1, len(data.train) // max(1, cfg.train.batch_size))
        loss_fn = noisy_loss(cfg.noisy.loss, label_smoothing=cfg.loss.label_smoothing, gce_q=cfg.noisy.gce_q,
                             bootstrap_beta=cfg.noisy.bootstrap_beta, forget_rate=cfg.noisy.forget_rate,
                             ramp_steps=steps)
    else:
        loss_fn = classification_loss(cfg.loss.label_smoothing)
    inner_report = report

    def stage_report(best: torch.nn.Module, meta: Mapping[str, Any], out: Path) -> Report:
        rep = inner_report(best, meta, out)
        rep.extra["stage"] = stage
        if data.web is not None:
            rep.extra["web"] = data.web.counts()
        return rep

    return TrainJob(model=model, train_set=data.train, loss_fn=loss_fn, meta=meta, evaluate_fn=evaluate_fn,
                    metric="top1", metric_mode="max", report=stage_report, val_set=data.val, lines=lines)


STAGE_DIRS = {"web_pretrain": "web_pretrain", "finetune": ".", "clean_only": "clean_only"}


def _stage_configs(cfg: FineGrainedConfig) -> dict[str, FineGrainedConfig]:
    web = copy.deepcopy(cfg)
    web.train.epochs = cfg.noisy.epochs
    web.train.lr = cfg.noisy.lr or cfg.train.lr
    tune = copy.deepcopy(cfg)
    tune.train.lr = cfg.noisy.finetune_lr or cfg.train.lr
    return {"web_pretrain": web, "finetune": tune, "clean_only": cfg}


def _stage_resume(stage_dir: Path) -> tuple[dict[str, Any] | None, Path | None]:
    """A finished stage's summary, or the last.pt of an unfinished one (``--resume`` of a staged run)."""
    summary = stage_dir / "summary.json"
    if summary.is_file() and (stage_dir / "best.pt").is_file():
        done = json.loads(summary.read_text())
        for key in ("stages", "web", "gain_top1", "total_wall_time_s"):  # stage 2's folder holds the combined summary: its own + these
            done.pop(key, None)
        return done, None
    last = stage_dir / "last.pt"
    return None, last if last.is_file() else None


def _run_stages(cfg: FineGrainedConfig, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Stage 1 on the web set, stage 2 on the train list from stage 1, optionally the clean-only twin."""
    configs = _stage_configs(cfg)
    order = ["web_pretrain", "finetune"] + (["clean_only"] if cfg.noisy.compare_clean_only else [])
    if args.resume is not None:
        inside = Path(args.resume).resolve()
        dirs = {(out / STAGE_DIRS[s]).resolve() for s in order}
        if inside.parent not in dirs:
            raise ValueError(f"--resume {args.resume}: a staged run resumes from the last.pt of one of its stage "
                             f"folders ({', '.join(str(out / STAGE_DIRS[s]) for s in order)})")
    summaries: dict[str, dict[str, Any]] = {}
    for stage in order:
        stage_dir = out / STAGE_DIRS[stage]
        done, last = _stage_resume(stage_dir) if args.resume is not None else (None, None)
        if done is not None:
            print(f"{stage}: finished before, {stage_dir / 'best.pt'} reused")
            summaries[stage] = done
            continue
        if stage == "web_pretrain":
            prepare = lambda c, d, _dir=stage_dir: _prepare_web(c, d, _dir)  # noqa: E731
            build = lambda c, data, d: _build(c, data, d, stage="web_pretrain")  # noqa: E731
        else:
            init = Path(summaries["web_pretrain"]["best_checkpoint"]) if stage == "finetune" else None
            prepare = _prepare
            build = lambda c, data, d, _s=stage, _i=init: _build(  # noqa: E731
                c, data, d, stage="finetune" if _s == "finetune" else "clean", init=_i)
        summaries[stage] = run_training("finegrained", configs[stage], output_dir=stage_dir, prepare=prepare,
                                        build=build, device=args.device, resume=last,
                                        resume_anyway=args.resume_anyway)
        if "metrics" not in summaries[stage]:  # not rank 0
            return summaries[stage]
    return _combine(out, summaries)


def _combine(out: Path, summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The run's summary.json: stage 2's, plus every stage's test top-1, the web set's counts and the gain."""
    final = dict(summaries["finetune"])
    stages = {}
    for stage, s in summaries.items():
        m = s.get("metrics", {})
        stages[stage] = {"top1": m.get("top1"), "top5": m.get("top5"), "val_top1": m.get("val_top1", m.get("top1")),
                         "epochs": s.get("epochs"), "best_checkpoint": s.get("best_checkpoint"),
                         "train_samples": s.get("samples", {}).get("train"), "wall_time_s": s.get("wall_time_s")}
    final["stages"] = stages
    final["web"] = summaries["web_pretrain"].get("web", {})
    split = "top1" if stages["finetune"]["top1"] is not None else "val_top1"
    lines = ["", f"noisy web pretraining, then fine-tuning ({'test' if split == 'top1' else 'val'} top-1 of each "
                 "stage's best.pt, chosen on validation):"]
    w = final["web"]
    lines.append(f"  stage 1  web set, {w.get('kept')} of {w.get('listed')} images kept "
                 f"({w.get('removed_exact_duplicates')} exact + {w.get('removed_near_duplicates')} near copies of "
                 f"val/test removed): {100 * (stages['web_pretrain'][split] or 0):.1f}%")
    lines.append(f"  stage 2  fine-tuned on the train list:          {100 * (stages['finetune'][split] or 0):.1f}%")
    if "clean_only" in stages:
        gain = (stages["finetune"][split] or 0) - (stages["clean_only"][split] or 0)
        final["gain_top1"] = gain
        lines.append(f"  clean-only, the same stage-2 budget:           "
                     f"{100 * (stages['clean_only'][split] or 0):.1f}%   gain {100 * gain:+.1f} points")
    final["total_wall_time_s"] = round(sum(s.get("wall_time_s", 0) or 0 for s in summaries.values()), 1)
    lines.append(f"  the run's model (summary.json): stage 2, {final.get('best_checkpoint')}; "
                 f"{final['total_wall_time_s']:.0f} s in all")
    atomic_write_text(out / "summary.json", json.dumps(to_plain(final, "summary"), indent=2) + "\n")
    print("\n".join(lines))
    return final


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    cfg = resolve_config(args)
    output_dir = Path(args.output_dir or "runs/finegrained")
    if cfg.has_web():
        summary = _run_stages(cfg, output_dir, args)
    else:
        summary = run_training("finegrained", cfg, output_dir=output_dir, prepare=_prepare, build=_build,
                               device=args.device, resume=args.resume, resume_anyway=args.resume_anyway)
    metrics = summary.get("metrics", {})
    summary["top1"] = metrics.get("top1", metrics.get("val_top1"))
    return summary


if __name__ == "__main__":
    run_cli(main)
