"""The MobileNet student and the checkpoints it is saved in (MobileNets paper, Sections 4.5 and 4.7).

The student is ``mobilenet_v1(alpha, num_classes=D)``: its last layer gives D logits (classes or
attributes) or a D-dimensional embedding (Section 4.7). Any ``backbone.create_backbone`` name works
for experiments; the paper's students are MobileNet v1 at Table 12's widths and resolutions.

A student checkpoint is a plain dict loadable with ``weights_only=True``: ``{"model": state_dict,
"meta": {...}}``. ``meta["model"]`` holds the builder arguments, plus ``resolution``, ``mean``,
``std``, ``task`` and (for attributes) ``attribute_names``. Training checkpoints of ``tasks.engine``
(``last.pt``/``best.pt``) have the same ``model``/``meta`` entries; distillation's wrap the student
in :class:`DistillModel`, whose keys start with ``student.`` (``meta["state_prefix"]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from backbone import create_backbone, mobilenet_v1
from tasks.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["DistillModel", "build_student", "load_student", "save_student", "student_spec"]


def student_spec(*, alpha: float, num_outputs: int, backbone: str = "mobilenet_v1", dropout: float = 0.0) -> dict:
    """The builder arguments stored in ``meta["model"]``."""
    return {"backbone": backbone, "alpha": float(alpha), "num_outputs": int(num_outputs), "dropout": float(dropout)}


def build_student(spec: Mapping[str, Any]) -> nn.Module:
    """Build a student from :func:`student_spec` arguments."""
    try:
        backbone, alpha = spec["backbone"], float(spec["alpha"])
        num_outputs, dropout = int(spec["num_outputs"]), float(spec.get("dropout", 0.0))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"student spec {dict(spec)!r} is incomplete or malformed: {e}") from e
    if num_outputs < 1:
        raise ValueError(f"student needs num_outputs >= 1, got {num_outputs}")
    if backbone in ("mobilenet_v1", "mobilenetv1"):
        return mobilenet_v1(alpha, num_classes=num_outputs, dropout=dropout)
    return create_backbone(backbone, num_classes=num_outputs, drop_rate=dropout)


class DistillModel(nn.Module):
    """The student plus what only training needs: 1x1 adapters of feature-hint losses.

    ``forward`` is the student's; checkpoints keep the adapters so a resumed run continues exactly.
    """

    def __init__(self, student: nn.Module, hint_adapters: Mapping[str, nn.Module] | None = None):
        super().__init__()
        self.student = student
        self.hint_adapters = nn.ModuleDict(dict(hint_adapters or {}))

    def forward(self, x: Tensor) -> Tensor:
        return self.student(x)


def save_student(path: str | Path, student: nn.Module, meta: Mapping[str, Any]) -> Path:
    """Write ``{"model": student.state_dict(), "meta": meta}`` atomically."""
    state = {k: v.detach().cpu() for k, v in student.state_dict().items()}
    return save_checkpoint(path, {"model": state, "meta": {**dict(meta), "state_prefix": ""}})


def load_student(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Load a student (or attribute model) saved by :func:`save_student` or by ``tasks.engine.fit``.

    Returns:
        (model in eval mode on ``device``, meta).

    Raises:
        ValueError: the checkpoint has no model description (not written by this suite).
    """
    ckpt = load_checkpoint(path, map_location="cpu")
    meta = ckpt.get("meta") or {}
    if "model" not in ckpt or not isinstance(meta.get("model"), Mapping):
        raise ValueError(f"{path}: not a student/attribute checkpoint of this suite (no meta['model'])")
    model = build_student(meta["model"])
    prefix = meta.get("state_prefix", "")
    state = {k[len(prefix):]: v for k, v in ckpt["model"].items() if k.startswith(prefix)}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit {meta['model']}: {e}") from e
    return model.to(device).eval(), dict(meta)
