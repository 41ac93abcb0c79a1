"""Box-aware augmentation for the detection models of Table 13 (MobileNets paper, Section 4.6).

The two detector families of Table 13 were trained with the augmentation of their own papers:

* SSD (Liu et al. 2016, Section 2.2 "Data augmentation"): photometric distortion, "zoom out" onto a
  canvas up to 4x the image side filled with the mean colour, a random crop whose IoU with the objects
  is at least one of {0.1, 0.3, 0.5, 0.7, 0.9} (or no crop), horizontal flip, and a resize to a fixed
  square (300 x 300 in Table 13).
* Faster R-CNN (Ren et al. 2015, Section 3.2): horizontal flip and a resize of the shorter side to
  600 px (300 px for the low-resolution row of Table 13) with the longer side capped.

Everything is built from ``torchvision.transforms.v2`` so boxes follow the pixels. A pipeline is called
as ``image, target = pipeline(image, target)`` with ``image`` a ``tv_tensors.Image`` (uint8 or float) and
``target["boxes"]`` a ``tv_tensors.BoundingBoxes`` in XYXY format; it returns a float32 image in [0, 1]
and boxes in absolute pixel XYXY of the transformed image. Mean/std normalisation is left to the model
(torchvision's ``GeneralizedRCNNTransform``) so images here stay in [0, 1].
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.ops import box_iou
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = ["detection_transforms", "rescale_boxes", "frcnn_max_size", "IMAGENET_MEAN_UINT8"]

# Zoom-out canvas colour: the ImageNet mean in 0..255, so after the model's normalisation the padding
# is close to zero, as in the SSD reference implementation.
IMAGENET_MEAN_UINT8 = (124, 116, 104)

# Faster R-CNN caps the longer side at 1000 when the shorter side is 600; keep that ratio for other sizes.
_FRCNN_MAX_TO_MIN = 1000 / 600

KINDS = ("ssd", "frcnn")


def frcnn_max_size(size: int) -> int:
    """Longer-side cap used with a Faster R-CNN shorter side of ``size`` (600 -> 1000, 300 -> 500)."""
    return int(round(size * _FRCNN_MAX_TO_MIN))


def _labels_and_crowd(sample: Any) -> tuple[Tensor, ...]:
    """Tensors that must be filtered together with the boxes by ``SanitizeBoundingBoxes``.

    A module-level function (not a lambda) so the pipeline pickles into DataLoader workers.
    """
    if not (isinstance(sample, (tuple, list)) and len(sample) == 2 and isinstance(sample[1], dict)):
        raise TypeError("detection transforms must be called as transforms(image, target) with a dict target")
    target = sample[1]
    if "labels" not in target:
        raise ValueError("target has no 'labels' entry")
    per_box = [target["labels"]]
    if "iscrowd" in target:
        per_box.append(target["iscrowd"])
    return tuple(per_box)


class _RandomIoUCropIfBoxes(v2.RandomIoUCrop):
    """SSD's IoU crop, leaving images without boxes untouched and testing all trials at once.

    torchvision's version keeps sampling crops until one contains a box centre, which never happens on
    a negative image, so it would loop forever on images without annotations. It also tries its
    ``trials`` crops one at a time with a handful of tiny tensor ops each, which costs ~10 ms per image
    on a CPU; here each sampled IoU threshold draws all trials in one batch and keeps the first valid one
    (same distribution, a fraction of the time).
    """

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        found = [x for x in flat_inputs if isinstance(x, tv_tensors.BoundingBoxes)]
        if not found or found[0].shape[0] == 0:
            return {}
        boxes = found[0]
        orig_h, orig_w = boxes.canvas_size
        xyxy = F.convert_bounding_box_format(boxes.as_subclass(Tensor), old_format=boxes.format,
                                             new_format=tv_tensors.BoundingBoxFormat.XYXY).float()
        cx = 0.5 * (xyxy[:, 0] + xyxy[:, 2])
        cy = 0.5 * (xyxy[:, 1] + xyxy[:, 3])
        while True:
            min_iou = self.options[int(torch.randint(len(self.options), (1,)))]
            if min_iou >= 1.0:  # the "keep the whole image" option
                return {}
            scale = self.min_scale + (self.max_scale - self.min_scale) * torch.rand(self.trials, 2)
            new_w = (orig_w * scale[:, 0]).long()
            new_h = (orig_h * scale[:, 1]).long()
            pos = torch.rand(self.trials, 2)
            left = ((orig_w - new_w) * pos[:, 0]).long()
            top = ((orig_h - new_h) * pos[:, 1]).long()
            right, bottom = left + new_w, top + new_h
            aspect = new_w / new_h.clamp(min=1)
            ok = (new_w > 0) & (new_h > 0) & (aspect >= self.min_aspect_ratio) & (aspect <= self.max_aspect_ratio)
            inside = ((left[:, None] < cx) & (cx < right[:, None])
                      & (top[:, None] < cy) & (cy < bottom[:, None]))  # [trials, boxes]
            crops = torch.stack([left, top, right, bottom], dim=1).float()
            # Only boxes whose centre stays in the crop count towards the IoU requirement.
            iou = box_iou(crops, xyxy).masked_fill(~inside, -1.0)
            ok &= inside.any(dim=1) & (iou.max(dim=1).values >= min_iou)
            if ok.any():
                t = int(ok.nonzero()[0])
                return dict(top=int(top[t]), left=int(left[t]), height=int(new_h[t]), width=int(new_w[t]),
                            is_within_crop_area=inside[t])


def detection_transforms(
    kind: str,
    train: bool,
    size: int,
    *,
    max_size: int | None = None,
    zoom_out_max: float = 4.0,
    hflip_prob: float = 0.5,
    fill: Sequence[int] = IMAGENET_MEAN_UINT8,
    iou_crop_prob: float = 1.0,
    photometric_prob: float = 0.5,
) -> v2.Compose:
    """Build the train or eval pipeline for one detector family.

    Args:
        kind: ``"ssd"`` (square output ``size x size``) or ``"frcnn"`` (shorter side ``size``).
        train: add the random augmentation of the detector's paper; eval pipelines only resize.
        size: SSD square side, or Faster R-CNN shorter side (Table 13 uses 300 and 600).
        max_size: Faster R-CNN cap on the longer side; default ``frcnn_max_size(size)``. Ignored for SSD.
        zoom_out_max: largest SSD zoom-out factor (1 disables zoom out). The SSD paper uses 4; small
            images with small objects may want less.
        hflip_prob: probability of a horizontal flip in training.
        iou_crop_prob: probability of SSD's IoU crop (1.0 as in the SSD paper, whose sampler already includes
            "keep the whole image"); short schedules on small data learn faster with less.
        photometric_prob: probability of SSD's photometric distortion.
        fill: uint8 RGB colour of the SSD zoom-out canvas.

    Returns:
        A ``v2.Compose`` called as ``image, target = t(image, target)``; the image comes back float32 in
        [0, 1], boxes as XYXY absolute pixels of the output image, and boxes that became smaller than
        one pixel (cropped away, squashed) are removed together with their labels and crowd flags.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise ValueError(f"size must be a positive int, got {size!r}")
    for name, prob in (("hflip_prob", hflip_prob), ("iou_crop_prob", iou_crop_prob), ("photometric_prob", photometric_prob)):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {prob}")
    if zoom_out_max < 1.0:
        raise ValueError(f"zoom_out_max must be >= 1, got {zoom_out_max}")
    if max_size is not None and max_size <= size:
        raise ValueError(f"max_size must be larger than size ({size}), got {max_size}")

    steps: list[Any] = []
    if kind == "ssd":
        if train:
            if photometric_prob > 0:
                steps += [v2.RandomPhotometricDistort(p=photometric_prob)]
            if zoom_out_max > 1.0:
                # Fill only the image; boxes and other tensors are not padded with colour.
                steps += [v2.RandomZoomOut(fill={tv_tensors.Image: tuple(fill), "others": 0},
                                           side_range=(1.0, zoom_out_max), p=0.5)]
            if iou_crop_prob >= 1.0:
                steps += [_RandomIoUCropIfBoxes()]
            elif iou_crop_prob > 0:
                steps += [v2.RandomApply([_RandomIoUCropIfBoxes()], p=iou_crop_prob)]
            if hflip_prob > 0:
                steps += [v2.RandomHorizontalFlip(p=hflip_prob)]
        steps += [v2.Resize((size, size), antialias=True)]
    else:
        if train and hflip_prob > 0:
            steps += [v2.RandomHorizontalFlip(p=hflip_prob)]
        cap = max_size if max_size is not None else frcnn_max_size(size)
        steps += [v2.Resize(size, max_size=cap, antialias=True)]

    steps += [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(labels_getter=_labels_and_crowd),
    ]
    return v2.Compose(steps)


def rescale_boxes(boxes: Tensor, from_size: Sequence[int] | Tensor, to_size: Sequence[int] | Tensor) -> Tensor:
    """Map XYXY boxes from an image of ``from_size`` (h, w) to the same image at ``to_size`` (h, w).

    Used to bring predictions made on the resized network input back to the original image
    (``rescale_boxes(pred, target["size"], target["orig_size"])``); valid for the eval pipelines,
    which only resize.

    Args:
        boxes: ``[N, 4]`` XYXY, any float dtype.
        from_size: (height, width) the boxes are expressed in.
        to_size: (height, width) to express them in.

    Returns:
        A new ``[N, 4]`` tensor of the same dtype and device.
    """
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {tuple(boxes.shape)}")
    fh, fw = (float(v) for v in from_size)
    th, tw = (float(v) for v in to_size)
    if min(fh, fw, th, tw) <= 0:
        raise ValueError(f"sizes must be positive, got from_size={tuple(from_size)} to_size={tuple(to_size)}")
    dtype = boxes.dtype if boxes.is_floating_point() else torch.float32
    scale = torch.tensor([tw / fw, th / fh, tw / fw, th / fh], dtype=dtype, device=boxes.device)
    return boxes.to(dtype) * scale
