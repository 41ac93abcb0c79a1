"""``build_detector``: the detectors of Table 13 (Section 4.6) by name, from plain-data arguments.

Every argument is plain data (str, int, float, bool, lists/tuples of numbers, dicts of those), so a trainer
can store ``model.build_args`` in a checkpoint and rebuild the same model with ``build_detector(**args)``.

Defaults (documented choices):

* ``ssd300``: 300x300 input, 1x1 heads; ``ssdlite300``: same with separable extras and heads.
* ``faster_rcnn300``: shorter side 300, longer side at most 500; ``faster_rcnn600``: 600 / 1000
  (torchvision's 800/1333 ratio). The dataset should resize with the same limits (``model.input_spec``);
  the model's own resize is then the identity.
* Anchors, proposals and thresholds: see ``anchors.py``, ``ssd.py``, ``faster_rcnn.py``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from tasks.config import check_keys

from .anchors import RPN_RATIOS, RPN_SCALES, TF_SSD_RATIOS, TFSSDAnchorGenerator, rpn_anchor_sizes
from .common import resolve_norm, split_backbone
from .faster_rcnn import MobileNetFasterRCNN
from .ssd import EXTRA_DEPTHS, MobileNetSSD, SSDFeatures, extra_depths_for

__all__ = ["ARCHS", "SSDOptions", "FasterRCNNOptions", "build_detector", "MIN_SIZE"]

MIN_SIZE = 32  # five stride-2 layers before conv13


@dataclass
class SSDOptions:
    """Overrides accepted by the SSD archs (``build_detector(..., **overrides)``)."""

    extra_depths: tuple[int, ...] | None = None  # None: (512, 256, 256, 128) scaled by alpha, floor 16
    head: str | None = None  # "conv1x1" | "conv3x3" | "separable"; None: the arch's
    min_scale: float = 0.2
    max_scale: float = 0.95
    aspect_ratios: tuple[float, ...] = TF_SSD_RATIOS
    reduce_boxes_in_lowest_layer: bool = True
    clip_anchors: bool = False
    iou_thresh: float = 0.5
    neg_pos_ratio: float = 3.0
    min_negatives_per_image: int = 0
    score_thresh: float = 0.01
    nms_thresh: float = 0.6
    detections_per_img: int = 100
    topk_candidates: int = 400
    image_mean: tuple[float, ...] | None = None
    image_std: tuple[float, ...] | None = None
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class FasterRCNNOptions:
    """Overrides accepted by the Faster R-CNN archs."""

    max_size: int | None = None  # None: the arch's (5/3 of the shorter side)
    anchor_scales: tuple[float, ...] = RPN_SCALES  # of a base of 256 * size / 600 px
    anchor_sizes: tuple[int, ...] | None = None  # explicit pixel sizes; replaces anchor_scales
    anchor_ratios: tuple[float, ...] = RPN_RATIOS
    roi_size: int = 14
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 300
    rpn_post_nms_top_n_test: int = 300
    rpn_nms_thresh: float = 0.7
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 64
    score_thresh: float = 0.01
    nms_thresh: float = 0.6
    detections_per_img: int = 100
    image_mean: tuple[float, ...] | None = None
    image_std: tuple[float, ...] | None = None
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)


ARCHS: dict[str, dict[str, Any]] = {
    "ssd300": {"family": "ssd", "size": 300, "head": "conv1x1", "separable_extras": False},
    "ssdlite300": {"family": "ssd", "size": 300, "head": "separable", "separable_extras": True},
    "faster_rcnn300": {"family": "faster_rcnn", "size": 300, "max_size": 500},
    "faster_rcnn600": {"family": "faster_rcnn", "size": 600, "max_size": 1000},
}
SSD_HEADS = ("conv1x1", "conv3x3", "separable")


def _options(cls: type, arch: str, overrides: dict[str, Any]):
    check_keys(overrides, {f.name for f in dataclasses.fields(cls)}, f"model.options of arch {arch!r}")
    opts = cls(**overrides)
    for f in dataclasses.fields(cls):
        value = getattr(opts, f.name)
        if isinstance(value, list):  # lists from YAML / JSON
            setattr(opts, f.name, tuple(value))
        elif f.name == "backbone_kwargs" and value is None:
            opts.backbone_kwargs = {}
    for name in ("score_thresh", "nms_thresh", "iou_thresh", "rpn_nms_thresh"):
        if hasattr(opts, name) and not 0.0 <= getattr(opts, name) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {getattr(opts, name)}")
    for name in ("aspect_ratios", "anchor_ratios", "anchor_scales"):
        vals = getattr(opts, name, None)
        if vals is not None and (not vals or any(not isinstance(v, (int, float)) or not v > 0 for v in vals)):
            raise ValueError(f"{name} must be a non-empty list of positive numbers, got {vals!r}")
    if not isinstance(opts.backbone_kwargs, dict):
        raise TypeError(f"backbone_kwargs must be a dict, got {type(opts.backbone_kwargs).__name__}")
    for f in dataclasses.fields(cls):
        value = getattr(opts, f.name)
        if isinstance(f.default, int) and not isinstance(f.default, bool):
            lowest = 0 if f.name == "min_negatives_per_image" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
                raise ValueError(f"{f.name} must be an int >= {lowest}, got {value!r}")
    return opts


def _build_ssd(spec, opts: SSDOptions, num_classes, backbone, alpha, size, pretrained) -> MobileNetSSD:
    head = opts.head or spec["head"]
    if head not in SSD_HEADS:
        raise ValueError(f"head must be one of {SSD_HEADS}, got {head!r}")
    if opts.neg_pos_ratio <= 0 or opts.min_negatives_per_image < 0:
        raise ValueError(
            f"neg_pos_ratio must be > 0 and min_negatives_per_image >= 0, got {opts.neg_pos_ratio}, "
            f"{opts.min_negatives_per_image}"
        )
    if opts.extra_depths is not None:
        depths = tuple(int(d) for d in opts.extra_depths)
        if any(d < 1 for d in depths):
            raise ValueError(f"extra_depths must be positive, got {opts.extra_depths!r}")
    else:
        depths = extra_depths_for(alpha) if backbone in ("mobilenet_v1", "mobilenetv1") else EXTRA_DEPTHS
    parts = split_backbone(backbone, alpha=alpha, pretrained=pretrained, backbone_kwargs=opts.backbone_kwargs)
    features = SSDFeatures(parts, depths, separable=spec["separable_extras"])
    anchors = TFSSDAnchorGenerator(
        num_layers=len(features.out_channels),
        min_scale=opts.min_scale,
        max_scale=opts.max_scale,
        aspect_ratios=opts.aspect_ratios,
        reduce_boxes_in_lowest_layer=opts.reduce_boxes_in_lowest_layer,
        clip=opts.clip_anchors,
    )
    mean, std = resolve_norm(backbone, opts.image_mean, opts.image_std)
    model = MobileNetSSD(
        features,
        anchors,
        size,
        num_classes,
        head_kind=head,
        image_mean=mean,
        image_std=std,
        min_negatives_per_image=opts.min_negatives_per_image,
        score_thresh=opts.score_thresh,
        nms_thresh=opts.nms_thresh,
        detections_per_img=opts.detections_per_img,
        iou_thresh=opts.iou_thresh,
        topk_candidates=opts.topk_candidates,
        positive_fraction=1.0 / (1.0 + opts.neg_pos_ratio),
    )
    model.input_spec = {"mode": "square", "size": size}
    return model


def _build_faster_rcnn(spec, opts: FasterRCNNOptions, num_classes, backbone, alpha, size, pretrained):
    if opts.max_size is not None:
        max_size = int(opts.max_size)
    elif size == spec["size"]:
        max_size = spec["max_size"]
    else:
        max_size = int(math.ceil(size * spec["max_size"] / spec["size"]))
    if max_size < size:
        raise ValueError(f"max_size ({max_size}) must be >= the shorter side ({size})")
    if opts.anchor_sizes:
        sizes = tuple(int(s) for s in opts.anchor_sizes)
    else:
        sizes = rpn_anchor_sizes(size, opts.anchor_scales)
    if any(s < 1 for s in sizes):
        raise ValueError(f"anchor_sizes must be positive, got {sizes!r}")
    if opts.roi_size < 2:
        raise ValueError(f"roi_size must be >= 2, got {opts.roi_size}")
    parts = split_backbone(backbone, alpha=alpha, pretrained=pretrained, backbone_kwargs=opts.backbone_kwargs)
    mean, std = resolve_norm(backbone, opts.image_mean, opts.image_std)
    model = MobileNetFasterRCNN(
        parts,
        num_classes,
        min_size=size,
        max_size=max_size,
        anchor_sizes=sizes,
        anchor_ratios=tuple(float(r) for r in opts.anchor_ratios),
        roi_size=opts.roi_size,
        image_mean=mean,
        image_std=std,
        rpn_pre_nms_top_n_train=opts.rpn_pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=opts.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=opts.rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=opts.rpn_post_nms_top_n_test,
        rpn_nms_thresh=opts.rpn_nms_thresh,
        rpn_batch_size_per_image=opts.rpn_batch_size_per_image,
        box_batch_size_per_image=opts.box_batch_size_per_image,
        box_score_thresh=opts.score_thresh,
        box_nms_thresh=opts.nms_thresh,
        box_detections_per_img=opts.detections_per_img,
    )
    model.input_spec = {"mode": "shorter_side", "min_size": size, "max_size": max_size}
    return model


def build_detector(
    arch: str,
    num_classes: int,
    *,
    backbone: str = "mobilenet_v1",
    alpha: float = 1.0,
    size: int | None = None,
    pretrained_backbone: str | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a Table 13 detector.

    Args:
        arch: ``"ssd300"``, ``"ssdlite300"``, ``"faster_rcnn300"`` or ``"faster_rcnn600"``.
        num_classes: including background (COCO: 91 as torchvision and TF count them, or 81).
        backbone: ``"mobilenet_v1"`` or a timm model name (``mobilenetv2_100``, ``mobilenetv3_large_100``).
        alpha: MobileNet v1 width multiplier.
        size: input size (SSD: square side; Faster R-CNN: shorter side); None: the arch's (300 / 600).
        pretrained_backbone: a state-dict path or ``"timm"``, loaded into the backbone before it is cut.
        **overrides: fields of ``SSDOptions`` or ``FasterRCNNOptions``.
    Returns:
        A torchvision-style detector with ``build_args`` (plain data to rebuild it, without
        ``pretrained_backbone``) and ``input_spec`` (how the dataset should resize images).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {sorted(ARCHS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2 (background + at least one class), got {num_classes!r}")
    if not isinstance(backbone, str):
        raise TypeError(f"backbone must be a name (str), got {type(backbone).__name__}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a number, got {alpha!r}")
    spec = ARCHS[arch]
    resolved = spec["size"] if size is None else size
    if isinstance(resolved, bool) or not isinstance(resolved, int) or resolved < MIN_SIZE:
        raise ValueError(f"size must be an int >= {MIN_SIZE}, got {size!r}")
    if spec["family"] == "ssd":
        opts = _options(SSDOptions, arch, overrides)
        model = _build_ssd(spec, opts, num_classes, backbone, alpha, resolved, pretrained_backbone)
    else:
        opts = _options(FasterRCNNOptions, arch, overrides)
        model = _build_faster_rcnn(spec, opts, num_classes, backbone, alpha, resolved, pretrained_backbone)
    model.arch = arch
    model.build_args = {
        "arch": arch,
        "num_classes": num_classes,
        "backbone": backbone,
        "alpha": float(alpha),
        "size": resolved,
        **overrides,
    }
    return model
