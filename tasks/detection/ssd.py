"""SSD 300 on MobileNet (Section 4.6, Table 13), laid out as the TF Object Detection API's ``ssd_mobilenet_v1``
(ref [10]); torchvision's ``SSD`` does the matching, box coding, resizing/normalisation and post-processing.

* Feature maps: conv11 (stride 16) and conv13 (stride 32) of the backbone, then four extra layers, each a
  1x1 conv to half depth and a 3x3 stride-2 conv (BN + ReLU6 after both), depths 512, 256, 256, 128.
  Like TF (``depth_multiplier`` with ``min_depth`` 16), the extra depths follow alpha:
  ``max(16, int(depth * alpha))``; timm backbones (no alpha) keep the alpha-1 depths.
* Heads: TF's config uses 1x1 class / box convolutions on each map (``kernel_size: 1``); Table 13's
  1.2 B Mult-Adds and 6.8 M parameters are only reached with 1x1 heads (3x3 heads add ~1 B Mult-Adds).
* Anchors: see ``anchors.py`` (1917 boxes at 300 px).
* Loss: IoU-0.5 matching (each ground truth also keeps its best anchor), smooth-L1 on the box codes
  (weights 10, 10, 5, 5), softmax cross-entropy with 3:1 hard negative mining, normalised by the number of
  matches. TF uses per-class sigmoids; softmax is torchvision's choice and keeps one background class.
* ``ssdlite``: the extra layers and heads become depthwise separable (3x3 depthwise + 1x1), as in TF's
  ``ssdlite_mobilenet_v1``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.ssd import SSD, SSDScoringHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from .anchors import TFSSDAnchorGenerator
from .common import SplitBackbone, check_images, check_targets

__all__ = ["MobileNetSSD", "SquareInputTransform", "SSDFeatures", "SSDHead", "extra_depths_for", "EXTRA_DEPTHS", "MIN_DEPTH"]

EXTRA_DEPTHS: tuple[int, ...] = (512, 256, 256, 128)
MIN_DEPTH = 16


def extra_depths_for(alpha: float, depths: Sequence[int] = EXTRA_DEPTHS) -> tuple[int, ...]:
    """TF's depth rule for the extra layers: ``max(MIN_DEPTH, int(d * alpha))``."""
    return tuple(max(MIN_DEPTH, int(d * alpha)) for d in depths)


def _conv_bn(in_chs: int, out_chs: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.ReLU6(inplace=True),
    )


def _extra_layer(in_chs: int, depth: int, separable: bool) -> nn.Sequential:
    """1x1 to depth/2, then a stride-2 3x3 to ``depth`` (full, or depthwise + 1x1 for SSDLite).
    3x3 / stride 2 / padding 1 gives ceil(n / 2), TF's SAME padding: 10 -> 5 -> 3 -> 2 -> 1 at 300 px."""
    mid = max(1, depth // 2)
    if separable:
        return nn.Sequential(_conv_bn(in_chs, mid, 1), _conv_bn(mid, mid, 3, 2, groups=mid), _conv_bn(mid, depth, 1))
    return nn.Sequential(_conv_bn(in_chs, mid, 1), _conv_bn(mid, depth, 3, 2))


class SSDFeatures(nn.Module):
    """Backbone trunk (-> stride 16) and rest (-> stride 32) plus the extra layers; returns the 6 maps."""

    def __init__(self, parts: SplitBackbone, extra_depths: Sequence[int], separable: bool):
        super().__init__()
        self.trunk = parts.trunk
        self.rest = parts.rest
        self.extras = nn.ModuleList()
        in_chs = parts.c32
        for depth in extra_depths:
            self.extras.append(_extra_layer(in_chs, depth, separable))
            in_chs = depth
        self.out_channels = [parts.c16, parts.c32, *extra_depths]

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        maps = [self.trunk(x)]
        maps.append(self.rest(maps[-1]))
        for layer in self.extras:
            maps.append(layer(maps[-1]))
        return OrderedDict((str(i), m) for i, m in enumerate(maps))


def _predictor(in_chs: int, out_chs: int, kind: str) -> nn.Module:
    if kind == "separable":  # SSDLite: 3x3 depthwise (BN, ReLU6) then a 1x1 conv
        return nn.Sequential(_conv_bn(in_chs, in_chs, 3, groups=in_chs), nn.Conv2d(in_chs, out_chs, 1))
    kernel = {"conv1x1": 1, "conv3x3": 3}[kind]
    return nn.Conv2d(in_chs, out_chs, kernel, padding=kernel // 2)


class SSDHead(nn.Module):
    """Class and box predictors on every map, in the output format torchvision's ``SSD`` expects.

    Args:
        in_channels: channels of each map.
        num_anchors: boxes per location of each map.
        num_classes: including background.
        kind: ``"conv1x1"`` (TF ssd_mobilenet_v1), ``"conv3x3"`` (original SSD) or ``"separable"`` (SSDLite).
    """

    def __init__(self, in_channels: Sequence[int], num_anchors: Sequence[int], num_classes: int, kind: str):
        super().__init__()
        if len(in_channels) != len(num_anchors):
            raise ValueError(f"{len(in_channels)} feature maps but anchors for {len(num_anchors)}")
        cls = nn.ModuleList(_predictor(c, a * num_classes, kind) for c, a in zip(in_channels, num_anchors))
        reg = nn.ModuleList(_predictor(c, a * 4, kind) for c, a in zip(in_channels, num_anchors))
        for m in [*cls.modules(), *reg.modules()]:
            if isinstance(m, nn.Conv2d) and m.bias is not None:  # the predictor convs, not the depthwise ones
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.classification_head = SSDScoringHead(cls, num_classes)
        self.regression_head = SSDScoringHead(reg, 4)

    def forward(self, x: list[Tensor]) -> dict[str, Tensor]:
        return {"bbox_regression": self.regression_head(x), "cls_logits": self.classification_head(x)}


class SquareInputTransform(GeneralizedRCNNTransform):
    """torchvision's SSD transform, minus the resize of an image that already has the fixed input size.

    torchvision always interpolates to ``fixed_size``; bilinear resampling to the same size is the identity,
    so skipping it changes no value. Our dataset pipeline already resizes to the model's size, and the
    redundant resize was 5.7% of a training step of the default 0.25 MobileNet SSD (docs/benchmarks.md).
    In training, torchvision's resize also draws one number from the global RNG (to pick among its min
    sizes, of which SSD has one); skipping it shifts later random draws, not their distribution.
    """

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        if self.fixed_size is not None and tuple(image.shape[-2:]) == (self.fixed_size[1], self.fixed_size[0]):
            return image, target
        return super().resize(image, target)


class MobileNetSSD(SSD):
    """torchvision ``SSD`` with input checks that raise ``ValueError``, TF's anchors and a hard negative
    miner that can keep ``min_negatives_per_image`` negatives in images without objects (TF's option;
    0 by default as in ssd_mobilenet_v1, where such images add no loss)."""

    def __init__(
        self,
        features: SSDFeatures,
        anchor_generator: TFSSDAnchorGenerator,
        size: int,
        num_classes: int,
        *,
        head_kind: str,
        image_mean: list[float],
        image_std: list[float],
        min_negatives_per_image: int = 0,
        **kwargs,
    ):
        head = SSDHead(features.out_channels, anchor_generator.num_anchors_per_location(), num_classes, head_kind)
        super().__init__(
            features, anchor_generator, (size, size), num_classes, image_mean, image_std, head=head, **kwargs
        )
        self.transform = SquareInputTransform(
            size, size, image_mean, image_std, size_divisible=1, fixed_size=(size, size)
        )
        self.num_classes = num_classes
        self.min_negatives_per_image = min_negatives_per_image

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        check_images(images)
        if self.training:
            check_targets(targets, len(images), self.num_classes)
        return super().forward(images, targets)

    def compute_loss(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        matched_idxs: list[Tensor],
    ) -> dict[str, Tensor]:
        box_pred, logits = head_outputs["bbox_regression"], head_outputs["cls_logits"]
        box_losses, cls_targets = [], []
        for target, pred, anchor, matched in zip(targets, box_pred, anchors, matched_idxs):
            fg = matched >= 0
            gt_idx = matched[fg]
            codes = self.box_coder.encode_single(target["boxes"][gt_idx], anchor[fg])
            box_losses.append(F.smooth_l1_loss(pred[fg], codes, reduction="sum"))
            labels = torch.zeros_like(matched)
            labels[fg] = target["labels"][gt_idx]
            cls_targets.append(labels)
        cls_target = torch.stack(cls_targets)
        num_classes = logits.shape[-1]
        ce = F.cross_entropy(logits.reshape(-1, num_classes), cls_target.reshape(-1), reduction="none")
        ce = ce.view_as(cls_target)

        # Hard negative mining: per image, the negatives with the highest loss, neg_to_pos_ratio per positive.
        positive = cls_target > 0
        num_neg = (positive.sum(1) * self.neg_to_pos_ratio).clamp(min=self.min_negatives_per_image)
        neg_loss = ce.detach().masked_fill(positive, float("-inf"))
        rank = neg_loss.argsort(dim=1, descending=True).argsort(dim=1)
        negative = (rank < num_neg[:, None]) & ~positive

        matches = max(1, int(positive.sum()))
        return {
            "bbox_regression": torch.stack(box_losses).sum() / matches,
            "classification": (ce[positive].sum() + ce[negative].sum()) / matches,
        }
