"""The distillation student while it trains (MobileNets paper, Sections 4.5 and 4.7).

The student itself is the suite's one classifier (``tasks.classifier.build_classifier``): its last
layer gives D logits (classes or attributes) or a D-dimensional embedding (Section 4.7).
:class:`DistillModel` adds what only training needs, the 1x1 adapters of feature-hint losses; its
checkpoints (``last.pt``/``best.pt``) keep the student's tensors under ``student.``, which their
metadata says (``meta["model"]["state_prefix"]``), so ``tasks.checkpoint.load_model`` reads the
student back alone.
"""

from __future__ import annotations

from typing import Mapping

from torch import Tensor, nn

__all__ = ["DistillModel"]


class DistillModel(nn.Module):
    """The student plus the 1x1 adapters of feature-hint losses.

    ``forward`` is the student's; checkpoints keep the adapters so a resumed run continues exactly.
    """

    def __init__(self, student: nn.Module, hint_adapters: Mapping[str, nn.Module] | None = None):
        super().__init__()
        self.student = student
        self.hint_adapters = nn.ModuleDict(dict(hint_adapters or {}))

    def forward(self, x: Tensor) -> Tensor:
        return self.student(x)
