"""The multi-label MobileNet head of Section 4.5 (Table 12) and batched prediction.

An attribute model is ``mobilenet_v1(alpha, num_classes=A)`` read as A independent logits, one per
binary attribute (probability = sigmoid). It is the same network as the distillation student
(``distill.student``), so supervised and distilled models share checkpoints and evaluation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from distill.student import build_student, student_spec

__all__ = ["attribute_loss", "build_attribute_model", "predict_outputs"]


def build_attribute_model(num_attributes: int, *, alpha: float = 1.0, backbone: str = "mobilenet_v1",
                          dropout: float = 0.0) -> nn.Module:
    """A MobileNet (or any ``create_backbone`` name) with one logit per attribute."""
    if isinstance(num_attributes, bool) or not isinstance(num_attributes, int) or num_attributes < 1:
        raise ValueError(f"num_attributes must be an int >= 1, got {num_attributes!r}")
    return build_student(student_spec(alpha=alpha, num_outputs=num_attributes, backbone=backbone, dropout=dropout))


def attribute_loss(model: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """Supervised multi-label loss: binary cross-entropy over the known labels (NaN = unknown)."""
    from distill.losses import masked_bce_with_logits

    images = batch["image"].to(device, non_blocking=True)
    targets = batch["target"].to(device, non_blocking=True).float()
    return {"bce": masked_bce_with_logits(model(images), targets)}


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
                if is_module:
                    out = model(images)
                else:
                    out = model(images, mean=mean, std=std)
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
