"""The configuration of ``benchmarks/deploy.py`` that ``tasks.export.bench`` has no factory for: timm.

Built inside the worker processes (``tasks.export.bench.Config.factory``); this module does not import
torch at the top.
"""
from __future__ import annotations

from typing import Any, Callable

from tasks.export.bench import random_batch, torch_module_step

__all__ = ["timm_step"]


def timm_step(*, weights: str, batch: int, resolution: int, threads: int) -> Callable[[], Any]:
    """timm's ``mobilenetv1_100`` in eager PyTorch, with the weights saved at ``weights``."""
    import timm
    import torch

    model = timm.create_model("mobilenetv1_100", pretrained=False)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return torch_module_step(model, batch, resolution, threads, "eager")
