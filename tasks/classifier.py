"""The one classifier of the suite: a backbone with a linear head of D outputs.

It serves every task that maps an image to D numbers: face attributes (D independent logits,
Section 4.5), distillation students (classes, attributes or a D-d embedding, Sections 4.5 and 4.7),
fine-grained recognition (Section 4.3) and geolocation cells (Section 4.4). The network is
``backbone.mobilenet_v1(alpha, num_classes=D)`` (or any ``create_backbone`` name), so its state dict
is the backbone's own and loads into timm-style code unchanged.

Its build spec (what a checkpoint's ``meta["model"]["args"]`` holds) is :func:`classifier_spec`;
:func:`build_classifier` rebuilds the network from it, which is how ``tasks.checkpoint.load_model``
reads any classifier checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from backbone import create_backbone, load_pretrained, mobilenet_v1

__all__ = ["ClassifierModelConfig", "ImageDataConfig", "build_classifier", "classifier_spec", "predict_outputs"]

_OURS = ("mobilenet_v1", "mobilenetv1")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ClassifierModelConfig:
    """The ``model`` section of every classifier task (attributes, distillation, fine-grained, geolocation)."""

    backbone: str = "mobilenet_v1"
    alpha: float = 1.0
    resolution: int = 224
    dropout: float = 0.0
    pretrained_backbone: str | None = None

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise ValueError(f"model.alpha={self.alpha!r}: must be > 0")
        if self.resolution < 32:
            raise ValueError(f"model.resolution={self.resolution!r}: must be >= 32")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"model.dropout={self.dropout!r}: must be in [0, 1)")

    def build(self, num_outputs: int) -> nn.Module:
        return build_classifier(num_outputs=num_outputs, backbone=self.backbone, alpha=self.alpha,
                                dropout=self.dropout, pretrained_backbone=self.pretrained_backbone)

    def spec(self, num_outputs: int) -> dict[str, Any]:
        return classifier_spec(num_outputs=num_outputs, backbone=self.backbone, alpha=self.alpha,
                               dropout=self.dropout)


@dataclass
class ImageDataConfig:
    """The ``data`` fields every image-classifier task shares; a task's data section adds its own.

    ``workers`` None: 4 on CUDA, 0 on the CPU (where worker processes compete with the training threads).
    """

    root: str | None = None
    ann: str | None = None
    val_root: str | None = None
    val_ann: str | None = None
    val_fraction: float = 0.1  # held out of the training images when there is no validation split
    skip_bad_images: bool = False
    augment: bool = False
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    workers: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"data.val_fraction={self.val_fraction!r}: must be in (0, 1)")
        if any(not v > 0 for v in self.std):
            raise ValueError(f"data.std={list(self.std)!r}: must be > 0")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"data.workers={self.workers!r}: must be >= 0")


def classifier_spec(*, num_outputs: int, backbone: str = "mobilenet_v1", alpha: float = 1.0,
                    dropout: float = 0.0) -> dict[str, Any]:
    """The builder arguments of a classifier, as plain data."""
    return {"backbone": str(backbone), "alpha": float(alpha), "num_outputs": int(num_outputs),
            "dropout": float(dropout)}


def build_classifier(*, num_outputs: int, backbone: str = "mobilenet_v1", alpha: float = 1.0,
                     dropout: float = 0.0, pretrained_backbone: str | None = None) -> nn.Module:
    """Backbone + linear head of ``num_outputs``.

    Args:
        num_outputs: D, the head's width.
        backbone: ``"mobilenet_v1"`` or a timm model name.
        alpha: MobileNet v1 width multiplier (timm backbones carry their own width in the name).
        dropout: dropout before the head.
        pretrained_backbone: a state-dict path or ``"timm"``: loaded before training; a head of
            another size in the file is dropped (fine-tuning).
    """
    if isinstance(num_outputs, bool) or not isinstance(num_outputs, int) or num_outputs < 1:
        raise ValueError(f"num_outputs must be an integer >= 1, got {num_outputs!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"alpha must be a number > 0, got {alpha!r}")
    if not 0 <= float(dropout) < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if backbone in _OURS:
        model = mobilenet_v1(float(alpha), num_classes=num_outputs, dropout=float(dropout))
    else:
        model = create_backbone(backbone, num_classes=num_outputs, drop_rate=float(dropout))
    if pretrained_backbone:
        load_pretrained(model, pretrained_backbone)
    return model


@torch.no_grad()
def predict_outputs(model: nn.Module | Any, loader: DataLoader, device: torch.device, *,
                    amp: bool = False, progress: bool = False, desc: str = "predict",
                    mean: Any = None, std: Any = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Run ``model`` (an ``nn.Module``, or a ``distill.teachers.Teacher``) over ``loader``.

    Args:
        model: the network; a Teacher also receives the loader's ``mean``/``std``.
        loader: yields dicts with "image", "index" and optionally "target".
        device: where to run.
        amp: autocast (fp16 on CUDA, bf16 on CPU).
        progress: show a tqdm bar.
        mean, std: normalisation of the loader's images (needed for a Teacher).

    Returns:
        (outputs float32 [N, D], targets [N, ...] or None, dataset indices [N]).
    """
    is_module = isinstance(model, nn.Module)
    if is_module:
        was = model.training
        model.eval()
    outs, targets, indices = [], [], []
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    try:
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
            images = batch["image"].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype, enabled=amp):
                out = model(images) if is_module else model(images, mean=mean, std=std)
            outs.append(out.float().cpu())
            indices.append(torch.as_tensor(batch["index"]))
            if "target" in batch:
                targets.append(torch.as_tensor(batch["target"]))
    finally:
        if is_module:
            model.train(was)
    if not outs:
        raise ValueError("the loader produced no images")
    return (torch.cat(outs).numpy(), torch.cat(targets).numpy() if targets else None,
            torch.cat(indices).numpy())
