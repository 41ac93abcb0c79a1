"""Faster R-CNN 300 / 600 on MobileNet (Section 4.6, Table 13), as the TF Object Detection API (ref [10])
splits a classification network between the two stages; torchvision's ``FasterRCNN`` runs them.

* First stage: the backbone up to conv11 (stride 16) on the whole image; the RPN is torchvision's
  ``RPNHead`` (a 3x3 conv keeping conv11's depth, 512 at alpha 1 like TF's predictor depth, then 1x1
  objectness and box convs) with 4 scales x 3 ratios = 12 anchors per location (see ``anchors.py``).
* 300 proposals per image (train and test, TF's ``first_stage_max_proposals``), RPN NMS at 0.7.
* RoIAlign to 14x14 on conv11; the second stage is the rest of the backbone (conv12, stride 2 -> 7x7,
  then conv13), a global average pool and ``FastRCNNPredictor`` (class scores + per-class boxes).
* 64 RoIs per image are sampled for the second-stage loss (TF's ``second_stage_batch_size``), 25% positive.
* The image transform pads to a multiple of 16 (the feature stride), so the anchor stride that torchvision
  infers (padded size // feature size) is exactly 16.
"""
from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from .common import SplitBackbone, check_images, check_targets

__all__ = ["MobileNetFasterRCNN", "RPNTrunk", "RoIBoxHead"]


class RPNTrunk(nn.Module):
    """The backbone up to its stride-16 layer; ``out_channels`` as torchvision's ``FasterRCNN`` requires."""

    def __init__(self, trunk: nn.Module, out_channels: int):
        super().__init__()
        self.body = trunk
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class RoIBoxHead(nn.Module):
    """Second stage: the remaining backbone layers on each RoI, then a global average pool."""

    def __init__(self, rest: nn.Module, out_channels: int):
        super().__init__()
        self.body = rest
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.body(x)).flatten(1)


class MobileNetFasterRCNN(FasterRCNN):
    """torchvision ``FasterRCNN`` on a split MobileNet, with input checks that raise ``ValueError``.

    Args:
        parts: the backbone cut at stride 16.
        num_classes: including background.
        min_size, max_size: shorter / longer side limits of the model's resize (a no-op when the dataset
            already resized with the same limits).
        anchor_sizes, anchor_ratios: RPN anchors in pixels / as height-to-width ratios.
        roi_size: RoIAlign output (14: the stride-2 conv12 halves it to 7).
        image_mean, image_std: normalisation done inside the model.
        **kwargs: any other ``torchvision.models.detection.FasterRCNN`` argument.
    """

    def __init__(
        self,
        parts: SplitBackbone,
        num_classes: int,
        *,
        min_size: int,
        max_size: int,
        anchor_sizes: tuple[int, ...],
        anchor_ratios: tuple[float, ...],
        roi_size: int,
        image_mean: list[float],
        image_std: list[float],
        **kwargs,
    ):
        trunk = RPNTrunk(parts.trunk, parts.c16)
        anchors = AnchorGenerator(sizes=(tuple(anchor_sizes),), aspect_ratios=(tuple(anchor_ratios),))
        roi_pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=roi_size, sampling_ratio=2)
        box_head = RoIBoxHead(parts.rest, parts.c32)
        super().__init__(
            trunk,
            num_classes=None,
            min_size=min_size,
            max_size=max_size,
            image_mean=image_mean,
            image_std=image_std,
            rpn_anchor_generator=anchors,
            box_roi_pool=roi_pool,
            box_head=box_head,
            box_predictor=FastRCNNPredictor(parts.c32, num_classes),
            size_divisible=16,
            **kwargs,
        )
        self.num_classes = num_classes

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        check_images(images)
        if self.training:
            check_targets(targets, len(images), self.num_classes)
        return super().forward(images, targets)
