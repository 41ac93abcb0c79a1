"""The one life of a training run, the same for every task.

A training entry point parses its flags, loads its config (:mod:`tasks.config`) and hands two
functions to :func:`run_training`:

* ``prepare(cfg, dist) -> data``: reads (or, for the built-in synthetic sets, writes) the data. It
  runs on rank 0 first while the other ranks wait, so a dataset or cache is written once.
* ``build(cfg, data, dist) -> TrainJob``: the model, its loss, its validation and its metadata.

The scaffold does the rest, identically for all tasks: device and process group (``torchrun`` sets
them), ``tasks.engine.fit`` (which writes ``config.yaml``, ``metrics.jsonl``, ``last.pt``, ``best.pt``),
then on rank 0 only: reload ``best.pt`` through the one checkpoint loader, evaluate it on the
validation split with the task's report, write ``summary.json`` (final metrics of best.pt, checkpoint
paths, wall time) and the task's plots, and print a one-screen summary.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch.distributed as torch_dist
from torch import nn
from torch.utils.data import Dataset

from datasets.io import prepare_output_dir
from tasks.checkpoint import atomic_write_text, load_checkpoint, load_model, to_plain
from tasks.config import config_to_dict
from tasks.distributed import DistInfo, cleanup_distributed, init_distributed, pick_device, rank_zero_first
from tasks.engine import EvaluateFn, LossFn, fit, seed_everything

__all__ = ["Report", "TrainJob", "resolve_workers", "run_training"]


@dataclass
class Report:
    """What a task's final evaluation of ``best.pt`` gives back.

    Attributes:
        metrics: numbers for ``summary.json`` (JSON-able).
        text: the task's own block of the printed summary (a COCO table, an AP table, ...).
        plots: the PNGs it wrote.
        extra: more top-level entries of ``summary.json`` (e.g. a distillation's cost figures).
    """

    metrics: dict[str, Any]
    text: str = ""
    plots: list[Path] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainJob:
    """What a task supplies to :func:`run_training`.

    Attributes:
        model: the network to train (plain, not DDP-wrapped).
        train_set: the training dataset.
        loss_fn: ``loss_fn(model, batch, device)`` -> dict of losses.
        meta: checkpoint metadata (``tasks.checkpoint.checkpoint_meta``).
        evaluate_fn: validation metrics after each evaluation epoch (selects ``best.pt``); None: the
            training loss selects it.
        metric, metric_mode: the key of ``evaluate_fn``'s dict that selects best.pt, "max" or "min".
        report: ``report(best_model, meta, output_dir) -> Report``, the final evaluation of the
            reloaded best.pt on the validation split; None: ``evaluate_fn`` is used.
        collate_fn, batch_sampler: passed to ``fit`` (a batch sampler replaces ``cfg.train.batch_size``).
        val_set: the validation dataset, if any (its bad-image count goes into the summary).
        lines: what the task prints about its data and model before training.
    """

    model: nn.Module
    train_set: Dataset
    loss_fn: LossFn
    meta: dict[str, Any]
    evaluate_fn: EvaluateFn | None = None
    metric: str = "loss"
    metric_mode: str = "min"
    report: Callable[[nn.Module, dict[str, Any], Path], Report] | None = None
    collate_fn: Callable | None = None
    batch_sampler: Any = None
    val_set: Dataset | None = None
    lines: list[str] = field(default_factory=list)


def run_training(
    task: str,
    cfg: Any,
    *,
    output_dir: str | Path,
    prepare: Callable[[Any, DistInfo], Any],
    build: Callable[[Any, Any, DistInfo], TrainJob],
    device: str | None = None,
    resume: str | Path | None = None,
    resume_anyway: bool = False,
) -> dict[str, Any]:
    """Prepare data, build, train, reload best.pt, report, summarise (see the module docstring).

    Args:
        task: the task's name (in the summary).
        cfg: the task's config dataclass with ``data``, ``model`` and ``train`` sections.
        output_dir: the run's folder.
        prepare, build: the task's two functions.
        device: ``--device`` (None: CUDA when available).
        resume: ``--resume``; its saved config must match ``cfg`` except in :data:`RESUMABLE` keys.
        resume_anyway: ``--resume-anyway``: continue even when they differ (the differences are printed).

    Returns:
        The summary dict (rank 0 writes it as ``summary.json``; other ranks get the checkpoint paths).
    """
    t0 = time.perf_counter()
    out = prepare_output_dir(output_dir, "--output-dir")  # before any data is read
    created = not (torch_dist.is_available() and torch_dist.is_initialized())
    dist = init_distributed(pick_device(device))
    created = created and dist.distributed
    try:
        with rank_zero_first(dist):
            data = prepare(cfg, dist)
        seed_everything(cfg.train.seed)  # the initial weights depend on the seed alone
        job = build(cfg, data, dist)
        if dist.is_main:
            for line in job.lines:
                print(line)
        cfg.train.metric, cfg.train.metric_mode = job.metric, job.metric_mode
        if resume is not None:  # after build: the task has set what it derives (the metric, a teacher's width)
            _check_resume(resume, config_to_dict(cfg), resume_anyway)
        result = fit(
            job.model, job.train_set, cfg=cfg.train, output_dir=out,
            loss_fn=job.loss_fn, evaluate_fn=job.evaluate_fn, collate_fn=job.collate_fn,
            num_workers=resolve_workers(cfg.data.workers, dist), device=dist.device, resume=resume, meta=job.meta,
            config_dict=config_to_dict(cfg), batch_sampler=job.batch_sampler,
        )
        summary: dict[str, Any] = {
            "task": task,
            "output_dir": str(out),
            "best_checkpoint": str(result.best_path) if result.best_path else None,
            "last_checkpoint": str(result.last_path) if result.last_path else None,
            "epochs": result.epochs,
            "selected_by": {"metric": result.metric, "mode": result.metric_mode, "value": result.best_metric,
                            "epoch": result.best_epoch,
                            "split": "val" if job.evaluate_fn is not None else "train (loss; no val split)"},
        }
        if not dist.is_main:
            return summary
        chosen = result.best_path or result.last_path
        report = Report(metrics={})
        if chosen is not None:
            best, meta = load_model(chosen, dist.device)
            if job.report is not None:
                report = job.report(best, meta, out)
            elif job.evaluate_fn is not None:
                report = Report(metrics=dict(job.evaluate_fn(best)))
        summary.update(report.extra)
        summary["metrics"] = report.metrics
        summary["bad_images_skipped"], summary["bad_images"] = _bad_images(job.train_set, job.val_set)
        summary["plots"] = [str(p) for p in report.plots]
        summary["wall_time_s"] = round(time.perf_counter() - t0, 1)
        atomic_write_text(out / "summary.json", json.dumps(to_plain(summary, "summary"), indent=2) + "\n")
        print(_format(summary, report, chosen))
        return summary
    finally:
        if created:
            cleanup_distributed()


# Config keys a resumed run may change: more epochs (the schedule follows the new total), how data is loaded
# and how often it logs. Anything else would silently train another experiment from the checkpoint.
RESUMABLE = ("train.epochs", "train.log_every", "data.workers", "data.eval_batch_size")


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _check_resume(path: str | Path, config: dict[str, Any], anyway: bool) -> None:
    """Refuse ``--resume`` from a checkpoint whose config differs from this run's (the keys named)."""
    saved = load_checkpoint(path).get("config")
    if not isinstance(saved, dict):
        raise ValueError(f"--resume {path}: the checkpoint has no saved config; it was not written by this suite's "
                         "training commands")
    old, new = _flatten(saved), _flatten(to_plain(config, "config"))
    differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in RESUMABLE)
    if not differ:
        return
    listed = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differ[:6])
    more = f" and {len(differ) - 6} more" if len(differ) > 6 else ""
    if not anyway:
        raise ValueError(f"--resume {path}: this run's config differs from the checkpoint's in {listed}{more}; "
                         "resume with the same settings (--config the run's config.yaml), or give --resume-anyway")
    print(f"warning: resuming {path} with other settings: {listed}{more}")


BAD_IMAGES_LISTED = 1000  # summary.json names at most this many skipped files (the count is exact)


def _bad_images(*datasets: Dataset | None) -> tuple[int, list[str]]:
    """(count, names with reasons) of the images the datasets skipped, up front and during training.

    A dataset's ``skipped`` (``datasets.images.SkippedImages``) also holds the files that failed inside
    DataLoader workers; a file skipped by a dataset and its held-out part is named once.
    """
    named: list[str] = []
    unnamed = 0
    for ds in datasets:
        if ds is None:
            continue
        skipped = getattr(ds, "skipped", None)
        if skipped is not None:
            named += skipped.files()
        else:
            unnamed += int(getattr(ds, "stats", {}).get("bad_images_skipped", 0))
    named = list(dict.fromkeys(named))
    return len(named) + unnamed, named[:BAD_IMAGES_LISTED]


def resolve_workers(workers: int | None, dist: DistInfo) -> int:
    """``data.workers``; None: 4 on CUDA, 0 on the CPU (workers there compete with the training threads)."""
    if workers is not None:
        return workers
    return 4 if dist.device.type == "cuda" else 0


def _format(summary: dict[str, Any], report: Report, chosen: Path | None) -> str:
    sel = summary["selected_by"]
    value = "n/a" if sel["value"] is None else f"{sel['value']:.4g}"
    lines = ["", "=" * 72, f"{summary['task']} summary", "=" * 72,
             f"checkpoint evaluated: {chosen or '-'} (best {sel['metric']} {value} at epoch {sel['epoch']}, "
             f"chosen on {sel['split']})"]
    if report.text:
        lines += ["", report.text.rstrip(), ""]
    else:
        numbers = {k: v for k, v in report.metrics.items() if isinstance(v, float)}
        if numbers:
            lines.append("metrics of that checkpoint: " + ", ".join(f"{k} {v:.4g}" for k, v in numbers.items()))
    if summary["bad_images_skipped"]:
        first = f"; first: {summary['bad_images'][0]}" if summary["bad_images"] else ""
        lines.append(f"skipped {summary['bad_images_skipped']} bad image(s), named in summary.json "
                     f"(bad_images){first}")
    for p in report.plots:
        lines.append(f"plot           : {p}")
    lines += [f"summary        : {Path(summary['output_dir']) / 'summary.json'}",
              f"last checkpoint: {summary['last_checkpoint']}",
              f"wall time      : {summary['wall_time_s']:.1f} s"]
    return "\n".join(lines)
