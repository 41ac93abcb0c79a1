"""Pieces both detectors share: the backbone cut at stride 16, normalisation constants, input checks."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

import backbone as bb

__all__ = [
    "SplitBackbone", "split_backbone", "resolve_norm", "check_images", "check_targets", "IMAGENET_MEAN", "IMAGENET_STD"
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class SplitBackbone:
    """A backbone cut after its deepest stride-16 layer.

    ``trunk`` maps the image to the stride-16 map (conv11 for MobileNet v1), ``rest`` maps that to the
    deepest stride-32 map (conv12, conv13). Both share modules with the backbone they came from.
    """

    trunk: nn.Module
    rest: nn.Module
    c16: int
    c32: int
    name16: str
    name32: str


def split_backbone(
    name: str,
    *,
    alpha: float = 1.0,
    pretrained: str | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
) -> SplitBackbone:
    """Build a backbone with ``backbone.create_backbone``, optionally load weights, and cut it.

    The classifier and any layers after the stride-32 map (timm's ``conv_head``) are left out, so every
    parameter of the detector takes part in the loss (DDP needs no ``find_unused_parameters``).
    """
    kwargs = dict(backbone_kwargs or {})
    for key in ("num_classes", "alpha"):
        if key in kwargs:
            raise ValueError(f"backbone_kwargs may not set {key!r}; it is fixed by the detector builder")
    if name in ("mobilenet_v1", "mobilenetv1"):
        kwargs["alpha"] = alpha
    elif alpha != 1.0:
        raise ValueError(f"alpha={alpha} applies to mobilenet_v1 only; timm model {name!r} encodes width in its name")
    model = bb.create_backbone(name, num_classes=0, **kwargs)
    if pretrained is not None:
        with warnings.catch_warnings():
            # The detector has no classifier by design: an ImageNet file's FC is dropped on purpose.
            warnings.filterwarnings("ignore", message="dropping classifier weights")
            bb.load_pretrained(model, pretrained)
    info = model.feature_info
    i16, i32 = bb.select_features(info, (16, 32))
    if i32 != len(info) - 1:
        raise ValueError(
            f"backbone {name!r}: its deepest stride-32 layer {info[i32]['name']!r} is not its last stage, "
            "so split() cannot deliver it"
        )
    trunk, rest = model.split(info[i16]["name"])
    return SplitBackbone(trunk, rest, info[i16]["num_chs"], info[i32]["num_chs"], info[i16]["name"], info[i32]["name"])


def resolve_norm(
    name: str, image_mean: Sequence[float] | None, image_std: Sequence[float] | None
) -> tuple[list[float], list[float]]:
    """Normalisation done inside the model: given values, else timm's pretrained config for timm
    backbones (0.5 for inception-style weights), else ImageNet's."""
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if name not in ("mobilenet_v1", "mobilenetv1") and (image_mean is None or image_std is None):
        import timm

        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is not None:
            mean, std = tuple(cfg.mean), tuple(cfg.std)
    mean = tuple(image_mean) if image_mean is not None else mean
    std = tuple(image_std) if image_std is not None else std
    for field, vals in (("image_mean", mean), ("image_std", std)):
        if len(vals) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals):
            raise ValueError(f"{field} must be 3 finite numbers, got {vals!r}")
    if any(v <= 0 for v in std):
        raise ValueError(f"image_std must be positive, got {std!r}")
    return [float(v) for v in mean], [float(v) for v in std]


def check_images(images: Sequence[Tensor]) -> None:
    """Raise TypeError/ValueError for anything but a list of [3, H, W] float tensors."""
    if isinstance(images, Tensor) and images.dim() == 4:
        return
    if not isinstance(images, (list, tuple)) or not images:
        raise TypeError(f"images must be a non-empty list of [C, H, W] tensors, got {type(images).__name__}")
    for i, img in enumerate(images):
        if not isinstance(img, Tensor) or img.dim() != 3:
            shape = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
            raise ValueError(f"images[{i}] must be a [C, H, W] tensor, got {shape}")
        if not img.is_floating_point():
            raise TypeError(f"images[{i}] must be float in [0, 1], got dtype {img.dtype}")


def check_targets(targets: Sequence[dict[str, Tensor]] | None, num_images: int, num_classes: int) -> None:
    """Validate training targets: ``boxes`` [N, 4] xyxy with x2 > x1, y2 > y1, finite; ``labels`` int64 [N]
    in 1..num_classes-1 (0 is background). N = 0 (an image without objects) is valid."""
    if targets is None:
        raise ValueError("targets are required in training mode (call model.eval() for inference)")
    if len(targets) != num_images:
        raise ValueError(f"got {num_images} images but {len(targets)} targets")
    for i, t in enumerate(targets):
        if not isinstance(t, dict) or "boxes" not in t or "labels" not in t:
            raise ValueError(f"targets[{i}] must be a dict with 'boxes' and 'labels'")
        boxes, labels = t["boxes"], t["labels"]
        if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"targets[{i}]['boxes'] must be a [N, 4] tensor, got {getattr(boxes, 'shape', boxes)}")
        if not boxes.is_floating_point():
            raise TypeError(f"targets[{i}]['boxes'] must be float, got {boxes.dtype}")
        if not isinstance(labels, Tensor) or labels.dtype != torch.int64 or labels.shape != boxes.shape[:1]:
            raise ValueError(
                f"targets[{i}]['labels'] must be int64 of shape [{boxes.shape[0]}], "
                f"got {getattr(labels, 'dtype', type(labels).__name__)} {tuple(getattr(labels, 'shape', ()))}"
            )
        if boxes.numel() == 0:
            continue
        if not torch.isfinite(boxes).all():
            raise ValueError(f"targets[{i}]['boxes'] holds NaN or inf")
        bad = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
        if bad.any():
            j = int(bad.nonzero()[0])
            raise ValueError(f"targets[{i}]['boxes'][{j}] = {boxes[j].tolist()} is not xyxy with x2 > x1 and y2 > y1")
        if labels.min() < 1 or labels.max() >= num_classes:
            raise ValueError(
                f"targets[{i}]['labels'] must be in 1..{num_classes - 1} (0 is background), "
                f"got {labels.min().item()}..{labels.max().item()}"
            )
