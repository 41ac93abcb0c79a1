"""The multi-label head of Section 4.5 (Table 12): one logit per binary attribute.

An attribute model is the suite's one classifier (``tasks.classifier``) read as A independent
logits (probability = sigmoid), so supervised and distilled attribute models share checkpoints and
evaluation.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distill.losses import masked_bce_with_logits
from tasks.classifier import build_classifier

__all__ = ["attribute_loss", "build_attribute_model"]


def build_attribute_model(num_attributes: int, *, alpha: float = 1.0, backbone: str = "mobilenet_v1",
                          dropout: float = 0.0) -> nn.Module:
    """A MobileNet (or any ``create_backbone`` name) with one logit per attribute."""
    if isinstance(num_attributes, bool) or not isinstance(num_attributes, int) or num_attributes < 1:
        raise ValueError(f"num_attributes must be an int >= 1, got {num_attributes!r}")
    return build_classifier(num_outputs=num_attributes, alpha=alpha, backbone=backbone, dropout=dropout)


def attribute_loss(model: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """Supervised multi-label loss: binary cross-entropy over the known labels (NaN = unknown)."""
    images = batch["image"].to(device, non_blocking=True)
    targets = batch["target"].to(device, non_blocking=True).float()
    return {"bce": masked_bce_with_logits(model(images), targets)}
