"""Anchors for the detectors of Table 13 (Section 4.6), as the TF Object Detection API (ref [10]) lays them.

SSD (``ssd_mobilenet_v1``): one scale per feature map, spaced linearly from ``min_scale`` = 0.2 to
``max_scale`` = 0.95 (fractions of the image side), aspect ratios {1, 2, 1/2, 3, 1/3} plus one extra
square box of scale sqrt(s_k * s_k+1): 6 boxes per location. The lowest map (conv11, stride 16) gets only 3
boxes, TF's ``reduce_boxes_in_lowest_layer``: a square of scale 0.1 and the ratios 2 and 1/2 at ``min_scale``.
torchvision's ``DefaultBoxGenerator`` always emits "2 + 2 * len(ratios)" boxes, so it cannot express that
rule; ``TFSSDAnchorGenerator`` keeps its tiling and output format and swaps in TF's per-map (w, h) lists.
The grid comes from the actual feature maps at run time, so any input size works.

Faster R-CNN: TF's grid anchors are scales (0.25, 0.5, 1, 2) of a 256 px base on a 600 px image, with
ratios (0.5, 1, 2). Objects in a 300 px input are half as large, so the base follows the input:
``base = 256 * min_size / 600`` (32..256 px at 300, 64..512 px at 600).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator

__all__ = ["TFSSDAnchorGenerator", "ssd_scales", "rpn_anchor_sizes", "TF_SSD_RATIOS", "RPN_SCALES", "RPN_RATIOS"]

TF_SSD_RATIOS: tuple[float, ...] = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)
RPN_SCALES: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
RPN_RATIOS: tuple[float, ...] = (0.5, 1.0, 2.0)
RPN_BASE_SIZE, RPN_BASE_IMAGE = 256.0, 600.0


def ssd_scales(num_layers: int, min_scale: float, max_scale: float) -> list[float]:
    """Scales of the ``num_layers`` maps, linear from ``min_scale`` to ``max_scale``, plus a trailing 1.0
    (only used for the interpolated box of the last map), as TF's ``ssd_anchor_generator``."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if not 0.0 < min_scale <= max_scale <= 1.0:
        raise ValueError(f"need 0 < min_scale <= max_scale <= 1, got min_scale={min_scale}, max_scale={max_scale}")
    if num_layers == 1:
        return [min_scale, 1.0]
    step = (max_scale - min_scale) / (num_layers - 1)
    return [min_scale + step * k for k in range(num_layers)] + [1.0]


def rpn_anchor_sizes(min_size: int, scales: Sequence[float] = RPN_SCALES) -> tuple[int, ...]:
    """Anchor sizes in pixels for an image whose shorter side is ``min_size`` (see the module docstring)."""
    base = RPN_BASE_SIZE * min_size / RPN_BASE_IMAGE
    return tuple(max(1, int(round(base * s))) for s in scales)


class TFSSDAnchorGenerator(DefaultBoxGenerator):
    """torchvision's default-box tiling with TF's per-map box shapes (see the module docstring).

    Args:
        num_layers: number of feature maps (6 for SSD 300).
        min_scale, max_scale: box scale on the first and last map, as a fraction of the image side.
        aspect_ratios: width / height ratios used on every map but the lowest.
        reduce_boxes_in_lowest_layer: 3 boxes on the lowest map (TF's default for this model).
        lowest_scale: scale of the square box on the lowest map when reducing (TF: 0.1).
        interpolated_box: add the sqrt(s_k * s_k+1) square box on the other maps.
        clip: clip (w, h) to the image, as torchvision's SSD300 does; TF does not (default False).
    """

    def __init__(
        self,
        num_layers: int = 6,
        min_scale: float = 0.2,
        max_scale: float = 0.95,
        aspect_ratios: Sequence[float] = TF_SSD_RATIOS,
        *,
        reduce_boxes_in_lowest_layer: bool = True,
        lowest_scale: float = 0.1,
        interpolated_box: bool = True,
        clip: bool = False,
    ):
        ratios = tuple(float(r) for r in aspect_ratios)
        if not ratios or any(not math.isfinite(r) or r <= 0 for r in ratios):
            raise ValueError(f"aspect_ratios must be positive numbers, got {aspect_ratios!r}")
        scales = ssd_scales(num_layers, min_scale, max_scale)
        # The parent only needs ratio lists of the right length; its own (w, h) pairs are replaced below.
        super().__init__([[2]] * num_layers, scales=scales, clip=clip)
        self.tf_aspect_ratios = ratios
        self.reduce_boxes_in_lowest_layer = reduce_boxes_in_lowest_layer
        self.lowest_scale = float(lowest_scale)
        self.interpolated_box = interpolated_box
        self._wh_pairs = self._generate_wh_pairs(num_layers)

    def box_shapes(self, k: int) -> list[tuple[float, float]]:
        """(width, height) of each box of map ``k`` as fractions of the image width / height."""
        s = self.scales
        if k == 0 and self.reduce_boxes_in_lowest_layer:
            shapes = [(self.lowest_scale, 1.0), (s[0], 2.0), (s[0], 0.5)]
        else:
            shapes = [(s[k], r) for r in self.tf_aspect_ratios]
            if self.interpolated_box:
                shapes.append((math.sqrt(s[k] * s[k + 1]), 1.0))
        return [(scale * math.sqrt(r), scale / math.sqrt(r)) for scale, r in shapes]

    def _generate_wh_pairs(
        self, num_outputs: int, dtype: torch.dtype = torch.float32, device: torch.device | None = None
    ) -> list[Tensor]:
        if not hasattr(self, "tf_aspect_ratios"):  # the parent constructor's call; replaced in ours
            return super()._generate_wh_pairs(num_outputs, dtype=dtype)
        return [torch.tensor(self.box_shapes(k), dtype=dtype, device=device) for k in range(num_outputs)]

    def num_anchors_per_location(self) -> list[int]:
        return [len(p) for p in self._wh_pairs]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(scales={[round(x, 4) for x in self.scales]}, "
            f"aspect_ratios={[round(r, 4) for r in self.tf_aspect_ratios]}, "
            f"boxes_per_location={self.num_anchors_per_location()}, clip={self.clip})"
        )
