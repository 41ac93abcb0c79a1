"""How well an SSD's anchors cover a dataset's boxes: the check to run before training on new data.

SSD learns only from the anchors matched to a ground-truth box (IoU >= the matcher's threshold, 0.5; each
box also keeps its single best anchor, whatever its IoU). The anchor grid follows the feature maps, so
the input size decides how many anchors a box of a given size can match. On the built-in shapes set
(boxes 13-54% of the image side), at 128 px with TF's anchors 42% of the boxes match no anchor (1.2
matches per box); at 256 px with the default config's anchors none do (5.5 per box). Too few matches is
what makes a detector learn slowly and localise badly.

    python -m tasks.detection.coverage                          # default config, shapes train split
    python -m tasks.detection.coverage --sizes 128 192 256 300  # compare input sizes
    python -m tasks.detection.coverage --config configs/detection/ssd300_mobilenet_v1_coco.yaml \
        --ann coco/annotations/instances_train2017.json

The model resizes every image to a square (``input_spec`` mode ``square``), so a box is compared with the
anchors in coordinates relative to its image's width and height.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from datasets.coco import CocoDetection
from tasks.cli import run_cli

from .build import build_detector
from tasks.config import read_yaml_mapping

from .config import DEFAULT_CONFIG, DetectionConfig
from .train import build_datasets

__all__ = ["AnchorCoverage", "anchor_coverage", "ssd_anchors", "relative_boxes", "main"]


@dataclass
class AnchorCoverage:
    """Coverage of ``num_boxes`` boxes by ``num_anchors`` anchors at ``iou_thresh``."""

    size: int
    num_anchors: int
    num_boxes: int
    iou_thresh: float
    matches_per_box: float  # mean number of anchors with IoU >= iou_thresh
    unmatched_fraction: float  # boxes with no such anchor (left to the best-anchor fallback)
    best_iou_median: float
    best_iou_p10: float

    def row(self) -> str:
        return (
            f"{self.size:>5} {self.num_anchors:>8} {self.matches_per_box:>9.2f} "
            f"{100 * self.unmatched_fraction:>9.1f}% {self.best_iou_median:>10.2f} {self.best_iou_p10:>9.2f}"
        )


HEADER = f"{'size':>5} {'anchors':>8} {'matches':>9} {'unmatched':>10} {'IoU median':>10} {'IoU p10':>9}"


def relative_boxes(dataset: CocoDetection) -> Tensor:
    """The non-crowd boxes of a ``CocoDetection`` as XYXY fractions of their image's width and height."""
    coco = dataset.coco
    out = []
    for ann in coco.dataset["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        img = coco.imgs[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        out.append([x / img["width"], y / img["height"], (x + w) / img["width"], (y + h) / img["height"]])
    return torch.tensor(out, dtype=torch.float32).reshape(-1, 4)


@torch.no_grad()
def ssd_anchors(model: nn.Module) -> Tensor:
    """An SSD's anchors (XYXY, [A, 4], CPU) as fractions of its square input, from its real feature maps."""
    size = int(model.input_spec["size"])
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, 3, size, size, device=next(model.parameters()).device)
        feats = list(model.backbone(x).values())
        return model.anchor_generator(ImageList(x, [(size, size)]), feats)[0].cpu() / size
    finally:
        model.train(was_training)


@torch.no_grad()
def anchor_coverage(model: nn.Module, boxes: Tensor) -> AnchorCoverage:
    """Match ``boxes`` (XYXY, relative to the image, [N, 4]) against an SSD's anchors.

    Args:
        model: an SSD from ``build_detector`` (square input; the anchors come from its real feature maps).
        boxes: ground-truth boxes as fractions of the image width / height.
    """
    spec = getattr(model, "input_spec", {})
    if spec.get("mode") != "square" or not hasattr(model, "anchor_generator"):
        raise ValueError("anchor coverage is defined for the SSD archs (square input, one anchor grid)")
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [N, 4], got {tuple(boxes.shape)}")
    if len(boxes) == 0:
        raise ValueError("no boxes to match: the annotation file has no non-crowd box")
    size = int(spec["size"])
    anchors = ssd_anchors(model)
    thresh = float(model.proposal_matcher.high_threshold)
    iou = box_iou(boxes.float(), anchors)
    matches = (iou >= thresh).sum(1).float()
    best = iou.max(1).values
    return AnchorCoverage(
        size=size,
        num_anchors=len(anchors),
        num_boxes=len(boxes),
        iou_thresh=thresh,
        matches_per_box=float(matches.mean()),
        unmatched_fraction=float((matches == 0).float().mean()),
        best_iou_median=float(best.median()),
        best_iou_p10=float(best.quantile(0.1)),
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tasks.detection.coverage", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="experiment YAML (default: configs/detection/shapes_ssd.yaml)")
    p.add_argument("--data-root", help="image folder of --ann (default: the config's training set)")
    p.add_argument("--ann", help="instances JSON whose boxes to match (default: the config's training set)")
    p.add_argument("--sizes", type=int, nargs="+", help="input sizes to compare (default: the config's)")
    return p


def main(argv: Sequence[str] | None = None) -> list[AnchorCoverage]:
    args = build_parser().parse_args(argv)
    path = args.config or DEFAULT_CONFIG
    cfg = DetectionConfig.from_dict(read_yaml_mapping(path), source=str(path))
    if not cfg.model.arch.startswith("ssd"):
        raise ValueError(f"anchor coverage is defined for the SSD archs, the config has {cfg.model.arch!r}")
    if args.ann:
        dataset = CocoDetection(args.data_root or ".", args.ann, train=True)
    elif args.data_root:
        raise ValueError("--data-root goes with --ann")
    elif cfg.data.dataset == "coco":
        raise ValueError(f"{path} reads COCO data it does not name; give --data-root and --ann")
    else:
        dataset, _ = build_datasets(cfg)
    boxes = relative_boxes(dataset)
    sizes = args.sizes or [cfg.model.resolution]
    results = []
    print(f"{len(boxes)} boxes of {dataset.ann_file} against the anchors of {cfg.model.arch} "
          f"({cfg.model.backbone}, alpha {cfg.model.alpha}, options {cfg.model.options or {}})")
    print(HEADER)
    for size in sizes:
        model = build_detector(
            cfg.model.arch, dataset.num_classes, backbone=cfg.model.backbone, alpha=cfg.model.alpha,
            size=size, **cfg.model.options,
        )
        cov = anchor_coverage(model, boxes)
        print(cov.row())
        results.append(cov)
    print(f"matches: anchors with IoU >= {results[0].iou_thresh} per box (mean); unmatched: boxes with none, "
          f"left to the best-anchor fallback; IoU: each box's best anchor")
    return results


if __name__ == "__main__":
    run_cli(main)
