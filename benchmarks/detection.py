"""SSD 300 (Section 4.6, Table 13) on the CPU: where a training step goes, and inference latency against
torchvision's ``ssdlite320_mobilenet_v3_large``.

``python benchmarks/detection.py`` (or ``python -m benchmarks.detection``) prints two markdown tables.

1. Training-step split. One step is ``model.zero_grad(); sum(model(images, targets).values()).backward()``
   (the optimizer update is left out: it is the same for any split). Its parts are timed by running each
   of them alone on the same inputs the step sees:

   * ``transform``: the model's own normalise + resize (``model.transform``), forward only (no grad flows
     into the images);
   * ``backbone``: the MobileNet body (conv0-conv13: ``backbone.trunk`` and ``backbone.rest``), forward and
     backward, with fixed random gradients arriving at conv11 and conv13;
   * ``extras+heads``: the four extra layers and the box / class predictors, forward and backward
     (including the gradient back into conv11 / conv13);
   * ``anchors``: default-box generation (``model.anchor_generator``);
   * ``matching``: per-image IoU of ground truth with anchors and the SSD matcher (as ``SSD.forward`` does);
   * ``loss``: ``model.compute_loss`` (box encoding, smooth-L1, cross-entropy, hard negative mining) and its
     backward down to the head outputs.

   ``other`` is the full step minus the sum of the parts (input checks, Python glue, allocator effects).
   The number the issue asks about is the overhead share ``(full step - backbone fwd+bwd) / full step``:
   everything a step costs on top of the backbone's own forward and backward. It must stay under 30 % for
   SSD 300 (alpha 1, 300 px, batch 8, COCO's 81 classes, 1-10 boxes per image). The embedded default
   experiment (``configs/detection/shapes_ssd.yaml``: its alpha, size, batch size, anchor options, 5 shapes +
   background, up to its objects per image) is reported beside it for information.

2. Inference latency, eval mode, random images, at batch 1 and 8: our SSD 300 and SSDLite 300 (MobileNet v1,
   alpha 1, 91 classes) against ``ssdlite320_mobilenet_v3_large(weights=None, num_classes=91)``, all fed the
   same 300x300 images (each model resizes to its own input size, as a user would see it). Post-processing of
   an untrained model depends on its scores, so two settings are measured: each model's own defaults (ours:
   score > 0.01, 400 per class, 100 per image; torchvision: > 0.001, 300 per class, 300 per image), and
   ``score_thresh = 1.0`` for all, where nothing passes the threshold and post-processing is only its fixed
   per-class loop: that row compares the networks. The table also lists how many boxes reach NMS.

Noise: the development machines have 2 cores shared with other jobs. Every measurement interleaves the
things compared round by round, rotating which goes first, and reports medians; ratios and shares are
medians of per-round values, which cancels slow drift. ``torch.set_num_threads(2)`` throughout (``--threads``).
This is a CPU benchmark by design: the project's CI and development machines have no GPU.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# On a shared machine OpenMP workers that spin-wait (the default, ACTIVE) stall every parallel op until a
# descheduled peer thread runs again: with 2 threads and load 8 on 2 cores one synthetic training step took
# 16.7 s instead of 1.3 s, and the small ops of matching / transform looked 40-100x slower. PASSIVE workers
# sleep instead. Must be set before torch loads OpenMP; an explicit OMP_WAIT_POLICY is respected.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList

from benchmarks._machine import cpu_model, load_text, timestamp
from torchvision.ops import box_iou
from tqdm import tqdm

from tasks.detection.build import build_detector
from tasks.detection.profile import profile_detector

OVERHEAD_BUDGET = 0.30  # issue requirement: (full step - backbone fwd+bwd) / full step < 30 %
PARTS = ("transform", "backbone", "extras+heads", "anchors", "matching", "loss")


@dataclass(frozen=True)
class TrainSetting:
    name: str
    alpha: float
    size: int
    batch: int
    num_classes: int  # including background
    max_boxes: int  # each image gets 1..max_boxes ground-truth boxes
    options: tuple[tuple[str, object], ...] = ()  # build_detector overrides (anchors, heads), as pairs


def synthetic_setting() -> TrainSetting:
    """The embedded default experiment (``configs/detection/shapes_ssd.yaml``): its alpha, input size, batch
    size, the shapes set's classes (+ background) and most objects per image."""
    from datasets.synthetic_shapes import CATEGORIES, DEFAULT_MAX_OBJECTS
    from tasks.detection.config import DEFAULT_CONFIG, load_config

    cfg = load_config(DEFAULT_CONFIG)
    if not cfg.model.arch.startswith("ssd"):
        raise ValueError(f"{DEFAULT_CONFIG}: expected an SSD arch for this benchmark, got {cfg.model.arch!r}")
    size = cfg.model.resolution or 300
    return TrainSetting(f"synthetic default ({DEFAULT_CONFIG.name})", cfg.model.alpha, size, cfg.train.batch_size,
                        len(CATEGORIES) + 1, int(cfg.data.shapes.get("max_objects", DEFAULT_MAX_OBJECTS)),
                        tuple(sorted(cfg.model.options.items())))


TRAIN_SETTINGS: dict[str, Callable[[], TrainSetting]] = {
    "ssd300": lambda: TrainSetting("SSD 300 (COCO-like)", 1.0, 300, 8, 81, 10),
    "synthetic": synthetic_setting,
}


# ------------------------------------------------------------------------------------------------ inputs


def make_batch(
    batch: int, size: int, num_classes: int, *, seed: int, max_boxes: int = 10
) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """``batch`` random ``size`` x ``size`` images with 1..``max_boxes`` boxes each (sides 5-60 % of the
    image, inside it) and random labels in 1..num_classes-1."""
    if batch < 1 or size < 8 or num_classes < 2 or max_boxes < 1:
        raise ValueError(
            f"need batch >= 1, size >= 8, num_classes >= 2, max_boxes >= 1; got {batch}, {size}, {num_classes}, "
            f"{max_boxes}"
        )
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, size, size, generator=g) for _ in range(batch)]
    targets = []
    for _ in range(batch):
        n = int(torch.randint(1, max_boxes + 1, (), generator=g))
        wh = (0.05 + 0.55 * torch.rand(n, 2, generator=g)) * size
        xy = torch.rand(n, 2, generator=g) * (size - wh)
        labels = torch.randint(1, num_classes, (n,), generator=g)
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": labels})
    return images, targets


# ------------------------------------------------------------------------------------------ timing core


def interleaved(
    fns: dict[str, Callable[[], object]],
    *,
    min_rounds: int,
    max_rounds: int,
    deadline: float,
    warmup: int = 1,
    min_call_s: float = 0.02,
) -> dict[str, list[float]]:
    """Seconds per call of each function, one value per round. Every round calls every function, in an
    order rotated from round to round. Functions faster than ``min_call_s`` (found during warm-up) are
    called several times per round and averaged. Rounds continue until ``max_rounds``, or until
    ``deadline`` (``time.perf_counter()``) once ``min_rounds`` are done."""
    if warmup < 1:
        raise ValueError(f"warmup must be >= 1, got {warmup}")
    names = list(fns)
    inner = {}
    for name in names:
        for _ in range(warmup):
            start = time.perf_counter()
            fns[name]()
            once = time.perf_counter() - start
        # The last warm-up call is no faster than a steady-state one, so this never over-repeats.
        inner[name] = int(min(20, max(1, round(min_call_s / max(once, 1e-6)))))
    times: dict[str, list[float]] = {n: [] for n in names}
    r = 0
    while r < max_rounds and (r < min_rounds or time.perf_counter() < deadline):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            fn = fns[name]
            start = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            times[name].append((time.perf_counter() - start) / inner[name])
        r += 1
    return times


def _iqr(values: Sequence[float]) -> tuple[float, float]:
    q = np.percentile(values, [25, 75])
    return float(q[0]), float(q[1])


# ------------------------------------------------------------------------------------ training-step split


def torchvision_matching(model: nn.Module, anchors: list[Tensor], targets: list[dict[str, Tensor]]) -> list[Tensor]:
    """The matching ``torchvision.models.detection.SSD.forward`` runs before ``compute_loss``."""
    matched = []
    for anchors_per_image, target in zip(anchors, targets):
        if target["boxes"].numel() == 0:
            n = anchors_per_image.size(0)
            matched.append(torch.full((n,), -1, dtype=torch.int64, device=anchors_per_image.device))
            continue
        matched.append(model.proposal_matcher(box_iou(target["boxes"], anchors_per_image)))
    return matched


def training_closures(
    model: nn.Module, images: list[Tensor], targets: list[dict[str, Tensor]]
) -> dict[str, Callable[[], object]]:
    """``{"full": step, part: fn}`` for ``PARTS``; every part gets the inputs the full step gives it."""
    model.train()
    feats = model.backbone
    if not all(hasattr(feats, a) for a in ("trunk", "rest", "extras")):
        raise TypeError("training_closures needs a MobileNetSSD (backbone with trunk / rest / extras)")
    match = getattr(model, "match_anchors", None)
    if match is None:
        def match(anchors, tgts):
            return torchvision_matching(model, anchors, tgts)

    with torch.no_grad():
        image_list, t_targets = model.transform(images, targets)
        x = image_list.tensors
        c16 = feats.trunk(x)
        c32 = feats.rest(c16)
        maps = list(feats(x).values())
        head = model.head(maps)
        anchors = model.anchor_generator(image_list, maps)
        matched = match(anchors, t_targets)
    g = torch.Generator().manual_seed(1)
    g16, g32 = (torch.randn(t.shape, generator=g) for t in (c16, c32))
    g_box, g_cls = (torch.randn(head[k].shape, generator=g) for k in ("bbox_regression", "cls_logits"))
    # The anchor generator only reads shapes, dtypes and devices of what it is given.
    shape_images = ImageList(torch.empty_like(x), image_list.image_sizes)

    def full() -> None:
        model.zero_grad(set_to_none=True)
        losses = model(images, targets)
        sum(losses.values()).backward()

    def transform() -> None:
        model.transform(images, targets)

    def backbone() -> None:
        model.zero_grad(set_to_none=True)
        a = feats.trunk(x)
        b = feats.rest(a)
        torch.autograd.backward([a, b], [g16, g32])

    def extras_heads() -> None:
        model.zero_grad(set_to_none=True)
        ms = [c16.detach().requires_grad_(), c32.detach().requires_grad_()]
        for layer in feats.extras:
            ms.append(layer(ms[-1]))
        out = model.head(ms)
        torch.autograd.backward([out["bbox_regression"], out["cls_logits"]], [g_box, g_cls])

    def anchor_gen() -> None:
        model.anchor_generator(shape_images, maps)

    def matching() -> None:
        match(anchors, t_targets)

    def loss() -> None:
        outs = {k: v.detach().requires_grad_() for k, v in head.items()}
        losses = model.compute_loss(t_targets, outs, anchors, matched)
        sum(losses.values()).backward()

    fns = {"full": full, "transform": transform, "backbone": backbone, "extras+heads": extras_heads,
           "anchors": anchor_gen, "matching": matching, "loss": loss}
    assert set(fns) == {"full", *PARTS}
    return fns


@dataclass
class TrainSplit:
    setting: TrainSetting
    full_ms: float
    parts_ms: dict[str, float]
    other_ms: float  # median over rounds of full - sum of parts
    overhead: float  # median over rounds of (full - backbone) / full
    overhead_iqr: tuple[float, float]
    rounds: int
    heads_mult_add_share: float  # extras+heads share of the forward Mult-Adds (the arithmetic floor)


def time_training(setting: TrainSetting, *, min_rounds: int, max_rounds: int, deadline: float) -> TrainSplit:
    torch.manual_seed(0)
    model = build_detector("ssd300", setting.num_classes, alpha=setting.alpha, size=setting.size, **dict(setting.options))
    prof = profile_detector(model, (setting.size, setting.size))
    heads = sum(ma for name, (ma, _) in prof.parts.items() if name in ("extra layers", "box + class heads"))
    images, targets = make_batch(setting.batch, setting.size, setting.num_classes, seed=0, max_boxes=setting.max_boxes)
    fns = training_closures(model, images, targets)
    times = interleaved(fns, min_rounds=min_rounds, max_rounds=max_rounds, deadline=deadline)
    shares = [(f - b) / f for f, b in zip(times["full"], times["backbone"])]
    other = [times["full"][r] - sum(times[p][r] for p in PARTS) for r in range(len(shares))]
    return TrainSplit(
        setting=setting,
        full_ms=1e3 * statistics.median(times["full"]),
        parts_ms={p: 1e3 * statistics.median(times[p]) for p in PARTS},
        other_ms=1e3 * statistics.median(other),
        overhead=statistics.median(shares),
        overhead_iqr=_iqr(shares),
        rounds=len(shares),
        heads_mult_add_share=heads / prof.mult_adds,
    )


def training_table(rows: Sequence[TrainSplit]) -> str:
    head = "| part | " + " | ".join(
        f"{r.setting.name}: alpha {r.setting.alpha}, {r.setting.size} px, batch {r.setting.batch}, "
        f"{r.setting.num_classes} classes, 1-{r.setting.max_boxes} boxes (ms, % of step)" for r in rows
    ) + " |"
    lines = [head, "|---|" + "---:|" * len(rows)]
    for part in PARTS:
        lines.append(f"| {part} | " + " | ".join(
            f"{r.parts_ms[part]:.1f} ({100 * r.parts_ms[part] / r.full_ms:.1f} %)" for r in rows) + " |")
    lines.append("| other (step - sum of parts) | " + " | ".join(
        f"{r.other_ms:.1f} ({100 * r.other_ms / r.full_ms:.1f} %)" for r in rows) + " |")
    lines.append("| **full step** | " + " | ".join(f"**{r.full_ms:.1f}**" for r in rows) + " |")
    lines.append("| **overhead: (step - backbone) / step**, median (IQR) | " + " | ".join(
        f"**{100 * r.overhead:.1f} %** ({100 * r.overhead_iqr[0]:.1f}-{100 * r.overhead_iqr[1]:.1f})"
        for r in rows) + " |")
    lines.append("| extras+heads share of forward Mult-Adds | " + " | ".join(
        f"{100 * r.heads_mult_add_share:.1f} %" for r in rows) + " |")
    lines.append("| rounds | " + " | ".join(str(r.rounds) for r in rows) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- inference


INFER_MODELS = ("ssd300", "ssdlite300", "torchvision")
POSTPROCESS = ("defaults", "empty")


def build_inference_models(num_classes: int = 91) -> dict[str, nn.Module]:
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    torch.manual_seed(0)
    return {
        "ssd300": build_detector("ssd300", num_classes).eval(),
        "ssdlite300": build_detector("ssdlite300", num_classes).eval(),
        "torchvision": ssdlite320_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=num_classes
        ).eval(),
    }


def boxes_into_nms(model: nn.Module, images: list[Tensor]) -> float:
    """Mean number of boxes per image that reach NMS in torchvision's SSD post-processing: per class, the
    anchors scoring above ``score_thresh``, at most ``topk_candidates`` of them."""
    with torch.inference_mode():
        image_list, _ = model.transform(images)
        maps = list(model.backbone(image_list.tensors).values())
        scores = model.head(maps)["cls_logits"].softmax(-1)[..., 1:]
        per_class = (scores > model.score_thresh).sum(1).clamp(max=model.topk_candidates)
    return float(per_class.sum(1).float().mean())


@dataclass
class Latency:
    postprocess: str
    batch: int
    ms: dict[str, float]
    ratio: dict[str, tuple[float, float, float]]  # ours / torchvision: median, p25, p75
    into_nms: dict[str, float]
    rounds: int


def time_inference(
    models: dict[str, nn.Module], postprocess: str, batch: int, *, min_rounds: int, max_rounds: int, deadline: float
) -> Latency:
    saved = {n: m.score_thresh for n, m in models.items()}
    if postprocess == "empty":
        for m in models.values():
            m.score_thresh = 1.0  # softmax scores never exceed 1: post-processing keeps nothing
    try:
        g = torch.Generator().manual_seed(batch)
        images = [torch.rand(3, 300, 300, generator=g) for _ in range(batch)]
        into_nms = {n: boxes_into_nms(m, images) for n, m in models.items()}

        def runner(m: nn.Module) -> Callable[[], object]:
            def run() -> object:
                with torch.inference_mode():
                    return m(images)
            return run

        times = interleaved({n: runner(m) for n, m in models.items()}, min_rounds=min_rounds,
                            max_rounds=max_rounds, deadline=deadline, warmup=2 if batch < 8 else 1, min_call_s=0.0)
    finally:
        for n, m in models.items():
            m.score_thresh = saved[n]
    ratio = {}
    for n in ("ssd300", "ssdlite300"):
        r = [a / b for a, b in zip(times[n], times["torchvision"])]
        ratio[n] = (statistics.median(r), *_iqr(r))
    return Latency(postprocess, batch, {n: 1e3 * statistics.median(t) for n, t in times.items()}, ratio, into_nms,
                   len(times["torchvision"]))


def inference_table(rows: Sequence[Latency]) -> str:
    lines = [
        "| post-processing | batch | SSD 300 (ms) | SSDLite 300 (ms) | torchvision SSDLite320 (ms) | "
        "SSD 300 / tv, median (IQR) | SSDLite 300 / tv, median (IQR) | "
        "boxes into NMS per image (ours / ours-lite / tv) | rounds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratios = " | ".join(
            f"**{r.ratio[n][0]:.2f}** ({r.ratio[n][1]:.2f}-{r.ratio[n][2]:.2f})" for n in ("ssd300", "ssdlite300")
        )
        nms = " / ".join(f"{r.into_nms[n]:.0f}" for n in INFER_MODELS)
        lines.append(
            f"| {r.postprocess} | {r.batch} | {r.ms['ssd300']:.1f} | {r.ms['ssdlite300']:.1f} | "
            f"{r.ms['torchvision']:.1f} | {ratios} | {nms} | {r.rounds} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- CLI


def machine_summary() -> str:
    import torchvision

    return (
        f"{timestamp()}; {cpu_model()}, {os.cpu_count()} logical CPUs, load average {load_text(', ', 1)}; "
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, python {platform.python_version()}, "
        f"torch threads {torch.get_num_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/detection.py", description=__doc__.split("\n")[0])
    p.add_argument("--parts", nargs="+", choices=("train", "infer"), default=["train", "infer"])
    p.add_argument("--train-settings", nargs="+", choices=list(TRAIN_SETTINGS), default=list(TRAIN_SETTINGS))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="inference batch sizes")
    p.add_argument("--postprocess", nargs="+", choices=POSTPROCESS, default=list(POSTPROCESS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-rounds", type=int, default=5, help="fewest rounds per row, whatever the time budget")
    p.add_argument("--max-rounds", type=int, default=40)
    p.add_argument("--budget-s", type=float, default=120.0, help="seconds of measuring, shared among the rows")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads < 1 or args.min_rounds < 2 or args.max_rounds < args.min_rounds or args.budget_s <= 0 or any(
        b < 1 for b in args.batches
    ):
        raise ValueError(
            f"need --threads >= 1, 2 <= --min-rounds <= --max-rounds, --budget-s > 0, batches >= 1; got {vars(args)}"
        )
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    # (kind, key, weight in the time budget): a training row costs about 2 steps per round, batch 8 more.
    plans: list[tuple[str, object, float]] = []
    if "train" in args.parts:
        plans += [("train", s, 3.0 if s == "ssd300" else 1.5) for s in args.train_settings]
    if "infer" in args.parts:
        plans += [("infer", (pp, b), 1.0 if b < 8 else 1.5) for pp in args.postprocess for b in args.batches]
    models = build_inference_models() if "infer" in args.parts else {}

    train_rows: list[TrainSplit] = []
    infer_rows: list[Latency] = []
    budget_end = time.perf_counter() + args.budget_s
    for i, (kind, key, weight) in enumerate(tqdm(plans, desc="benchmark rows", file=sys.stderr)):
        now = time.perf_counter()
        deadline = now + max(0.0, budget_end - now) * weight / sum(p[2] for p in plans[i:])
        if kind == "train":
            train_rows.append(time_training(TRAIN_SETTINGS[key](), min_rounds=args.min_rounds,
                                            max_rounds=args.max_rounds, deadline=deadline))
        else:
            pp, b = key
            infer_rows.append(time_inference(models, pp, b, min_rounds=args.min_rounds,
                                             max_rounds=args.max_rounds, deadline=deadline))

    print(machine_summary())
    if hasattr(os, "getloadavg") and os.getloadavg()[0] > (os.cpu_count() or 1):
        print(f"warning: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs: other jobs compete for the "
              "cores, so absolute times are inflated; the interleaved ratios and shares are the numbers to read")
    if train_rows:
        print("\nTraining step split (forward + backward, optimizer update excluded):\n")
        print(training_table(train_rows))
        for r in train_rows:
            if r.setting.name.startswith("SSD 300"):
                verdict = "PASS" if r.overhead < OVERHEAD_BUDGET else "FAIL"
                print(f"\noverhead requirement (< {100 * OVERHEAD_BUDGET:.0f} % at SSD 300): {verdict}, "
                      f"{100 * r.overhead:.1f} %")
    if infer_rows:
        print("\nInference latency, eval mode, 300x300 random images, "
              "ratio ours / torchvision ssdlite320_mobilenet_v3_large:\n")
        print(inference_table(infer_rows))
    print(f"\ntotal time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
