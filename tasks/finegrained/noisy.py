"""Noisy web pretraining for fine-grained recognition (MobileNets paper, Section 4.3, after Krause et al. 2016).

The paper pretrains on a large, noisy, web-collected set of dog photos and fine-tunes on the Stanford Dogs
train split. Web labels are wrong in a good share of cases (a look-alike breed, no dog at all), and a
crawl also finds copies of the benchmark's own test photos. So, before stage 1:

* the web set is read with the clean set's classes (class folders named by folder name, breed name or
  wnid, or a ``path,label`` CSV; ``datasets.stanford_dogs.open_finegrained``);
* exact and near copies of the validation and test images are removed and counted
  (``datasets.dedupe.find_duplicates``; the list goes to ``web_dedupe.json``);

and stage 1 trains with a loss that tolerates wrong labels (:func:`noisy_loss`), all of them with label
smoothing on top:

* ``gce``: generalized cross entropy (Zhang & Sabuncu 2018), ``(1 - p_y^q) / q`` for smoothed targets:
  between cross entropy (q -> 0) and mean absolute error (q = 1), which does not chase the wrong labels;
* ``bootstrap``: hard bootstrapping (Reed et al. 2015): the target is ``beta`` times the label plus
  ``1 - beta`` times the model's own top-1 prediction;
* ``small_loss``: small-loss selection (as in Co-teaching, Han et al. 2018): each batch trains on the
  ``1 - forget_rate`` share of its samples with the smallest loss (the rate ramps up over the first epoch);
* ``ce``: plain cross entropy, for comparison.

``benchmarks/finegrained.py`` measures them against each other; the default is the one that won there.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from datasets.dedupe import DEFAULT_MAX_DISTANCE, HASH_BITS, find_duplicates
from datasets.io import atomic_write_json
from datasets.stanford_dogs import ClassList, ImageRecord, open_finegrained

logger = logging.getLogger(__name__)

__all__ = ["NOISY_LOSSES", "NoisyWebConfig", "WebSet", "noisy_loss", "read_web_set"]

NOISY_LOSSES = ("gce", "bootstrap", "small_loss", "ce")


@dataclass
class NoisyWebConfig:
    """Stage 1 of the paper's recipe: the noisy web set and how to train on it.

    Attributes:
        root: the web set (``--noisy-data-root``): class folders or a ``path,label`` CSV; None: none
            (the built-in set brings its own when ``data.synthetic.web_per_breed`` > 0).
        ann: a ``path,label`` CSV whose paths are relative to ``root`` (``--noisy-ann``).
        epochs: stage-1 epochs (``--noisy-epochs``); stage 2 runs ``train.epochs`` on the clean train list.
        lr: stage-1 peak learning rate; None: ``train.lr``.
        finetune_lr: stage-2 peak learning rate (fine-tuning from stage 1); None: ``train.lr``. The
            clean-only twin keeps ``train.lr``, the rate for training from the configured start.
        loss: one of :data:`NOISY_LOSSES` (``--noisy-loss``).
        gce_q: the exponent of ``gce``.
        bootstrap_beta: the label's weight in ``bootstrap``.
        forget_rate: the share of each batch ``small_loss`` leaves out (about the expected label noise).
        dedupe_distance: largest perceptual-hash distance (bits of 256) of a near copy; -1: exact copies only.
        compare_clean_only: also train the clean-only model with stage 2's budget and report the gain
            (``--compare-clean-only``).
    """

    root: str | None = None
    ann: str | None = None
    epochs: int = 10
    lr: float | None = None
    finetune_lr: float | None = None
    loss: str = "gce"
    gce_q: float = 0.7
    bootstrap_beta: float = 0.8
    forget_rate: float = 0.3
    dedupe_distance: int = DEFAULT_MAX_DISTANCE
    compare_clean_only: bool = False

    def __post_init__(self) -> None:
        if self.loss not in NOISY_LOSSES:
            raise ValueError(f"noisy.loss={self.loss!r}: must be one of {list(NOISY_LOSSES)}")
        if self.epochs < 0:
            raise ValueError(f"noisy.epochs={self.epochs!r}: must be >= 0")
        for name in ("lr", "finetune_lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"noisy.{name}={value!r}: must be > 0")
        if not 0 < self.gce_q <= 1:
            raise ValueError(f"noisy.gce_q={self.gce_q!r}: must be in (0, 1]")
        if not 0 < self.bootstrap_beta <= 1:
            raise ValueError(f"noisy.bootstrap_beta={self.bootstrap_beta!r}: must be in (0, 1]")
        if not 0 <= self.forget_rate < 1:
            raise ValueError(f"noisy.forget_rate={self.forget_rate!r}: must be in [0, 1)")
        if not -1 <= self.dedupe_distance < HASH_BITS:
            raise ValueError(f"noisy.dedupe_distance={self.dedupe_distance!r}: must be in -1..{HASH_BITS - 1}")
        if self.ann and not self.root:
            raise ValueError("noisy.ann (--noisy-ann) needs noisy.root (--noisy-data-root), the folder its paths "
                             "are relative to")


def _smoothed(targets: torch.Tensor, n: int, eps: float) -> torch.Tensor:
    return F.one_hot(targets, n).float() * (1.0 - eps) + eps / n


def noisy_loss(kind: str, *, label_smoothing: float, gce_q: float = 0.7, bootstrap_beta: float = 0.8,
               forget_rate: float = 0.3, ramp_steps: int = 0) -> Callable[..., dict[str, torch.Tensor]]:
    """``loss_fn(model, batch, device)`` for the engine: one of :data:`NOISY_LOSSES` (module docstring).

    Args:
        kind: the loss.
        label_smoothing: smoothing of the one-hot targets (all kinds).
        gce_q, bootstrap_beta, forget_rate: each kind's parameter.
        ramp_steps: ``small_loss`` leaves out nothing at first and ``forget_rate`` after this many calls.
    """
    if kind not in NOISY_LOSSES:
        raise ValueError(f"unknown noisy loss {kind!r}; use one of {list(NOISY_LOSSES)}")
    calls = [0]

    def loss_fn(model: torch.nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        images = batch["image"].to(device, non_blocking=True)
        targets = batch["target"].to(device, non_blocking=True)
        logits = model(images).float()
        n = logits.shape[1]
        if kind == "ce":
            return {"ce": F.cross_entropy(logits, targets, label_smoothing=label_smoothing)}
        if kind == "gce":
            p = logits.softmax(dim=1).clamp_min(1e-7)
            soft = _smoothed(targets, n, label_smoothing)
            return {"gce": (soft * (1.0 - p.pow(gce_q)) / gce_q).sum(dim=1).mean()}
        if kind == "bootstrap":
            own = logits.detach().argmax(dim=1)
            soft = bootstrap_beta * _smoothed(targets, n, label_smoothing) + \
                (1.0 - bootstrap_beta) * _smoothed(own, n, label_smoothing)
            return {"bootstrap": -(soft * logits.log_softmax(dim=1)).sum(dim=1).mean()}
        per = F.cross_entropy(logits, targets, label_smoothing=label_smoothing, reduction="none")
        calls[0] += 1
        rate = forget_rate * min(1.0, calls[0] / ramp_steps) if ramp_steps > 0 else forget_rate
        keep = max(1, int(math.ceil((1.0 - rate) * len(per))))
        return {"small_loss": per.topk(keep, largest=False).values.mean()}

    return loss_fn


@dataclass
class WebSet:
    """The web set after deduplication.

    Attributes:
        records: the images kept, labelled in the clean set's classes.
        listed: images the source lists.
        removed_exact, removed_near: copies of validation/test images taken out, by kind.
        removed_by_split: the same, by the split of the image they copy (``val``, ``test``).
        unreadable: files the hashing could not read (the loader counts or stops on them later).
        source: what was read.
    """

    records: list[ImageRecord]
    listed: int
    removed_exact: int
    removed_near: int
    removed_by_split: dict[str, int]
    unreadable: int
    source: str

    def counts(self) -> dict[str, Any]:
        return {"source": self.source, "listed": self.listed, "kept": len(self.records),
                "removed_exact_duplicates": self.removed_exact, "removed_near_duplicates": self.removed_near,
                "removed_by_split": dict(self.removed_by_split), "unreadable_at_dedupe": self.unreadable}


def read_web_set(root: str, ann: str | None, classes: ClassList, protect: dict[str, Sequence[ImageRecord]], *,
                 max_distance: int, out_json: Path | None = None, progress: bool = False) -> WebSet:
    """Read the web set in ``classes`` and drop the copies of the ``protect`` splits' images.

    Args:
        root, ann: the web set (:class:`NoisyWebConfig`).
        classes: the clean set's classes (an unknown web class is an error naming it).
        protect: ``{"val": records, "test": records}``: the images nothing may copy.
        max_distance: near-copy threshold (:func:`datasets.dedupe.find_duplicates`).
        out_json: where to write the removed files and what each copies.
        progress: tqdm bars.
    """
    index = open_finegrained(root, ann, classes=classes)
    records = [r for split in index.splits.values() for r in split]
    if not records:
        raise ValueError(f"noisy web set {root}: no images")
    refs: list[ImageRecord] = []
    ref_split: list[str] = []
    for split, recs in protect.items():
        refs += list(recs)
        ref_split += [split] * len(recs)
    dups, unreadable = find_duplicates([r.path for r in records], [r.path for r in refs],
                                       max_distance=max_distance, progress=progress)
    drop = {d.candidate for d in dups}
    by_split: dict[str, int] = {s: 0 for s in protect}
    for d in dups:
        by_split[ref_split[d.reference]] += 1
    web = WebSet([r for i, r in enumerate(records) if i not in drop], len(records),
                 sum(d.kind == "exact" for d in dups), sum(d.kind == "near" for d in dups), by_split,
                 len(unreadable), str(ann or root))
    if out_json is not None:
        atomic_write_json(out_json, {**web.counts(), "max_distance": max_distance, "removed": [
            {"web": records[d.candidate].path, "copies": refs[d.reference].path, "split": ref_split[d.reference],
             "kind": d.kind, "distance": d.distance} for d in dups]})
    if dups:
        logger.info("web set: removed %d copies of validation/test images (%d exact, %d near)", len(dups),
                    web.removed_exact, web.removed_near)
    return web
