"""One entry point for every backbone a task head can sit on.

``create_backbone("mobilenet_v1", alpha=0.5)`` builds ours; any other name goes to timm
(``mobilenetv2_100``, ``mobilenetv3_large_100``: the v2/v3 of the seed talks) and comes back behind the
same contract as ours: ``feature_info`` (list of dicts with ``name``, ``module``, ``num_chs``,
``reduction``), ``forward_intermediates(x, indices)`` returning a list of maps, ``forward_features``,
``forward_head``, ``reset_classifier`` and ``num_features``. Heads read channel counts from
``feature_info`` only, so they work on every backbone.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .mobilenet_v1 import MobileNetV1, mobilenet_v1, resolve_feature_indices

__all__ = ["create_backbone", "TimmBackbone", "select_features"]


class TimmBackbone(nn.Module):
    """A timm model behind MobileNetV1's feature contract (no pretrained download happens here)."""

    def __init__(self, name: str, **kwargs: Any):
        super().__init__()
        import timm

        if "pretrained" in kwargs:
            raise ValueError(
                "create_backbone never downloads; build the model, then call "
                "backbone.load_pretrained(model, 'timm' or PATH)"
            )
        if not timm.is_model(name):
            raise ValueError(f"unknown backbone {name!r}: neither 'mobilenet_v1' nor a timm model name")
        self.name = name
        self.model = timm.create_model(name, pretrained=False, **kwargs)
        if not hasattr(self.model, "forward_intermediates"):
            raise ValueError(f"timm model {name!r} has no forward_intermediates(); pick another backbone")
        info = self.model.feature_info
        dicts = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
        self.feature_info = [
            {"name": d["module"], "module": f"model.{d['module']}", "num_chs": d["num_chs"], "reduction": d["reduction"]}
            for d in dicts
        ]
        self.num_features = self.model.num_features
        # timm's name for the width of pooled features (differs from num_features when a head conv exists)
        self.head_hidden_size = getattr(self.model, "head_hidden_size", None) or self.num_features
        self.in_chans = kwargs.get("in_chans", 3)

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    def forward_intermediates(self, x: Tensor, indices: int | str | Sequence[int | str] | None = None) -> list[Tensor]:
        wanted = resolve_feature_indices(self.feature_info, indices)
        order = sorted(set(wanted))
        maps = self.model.forward_intermediates(x, indices=order, intermediates_only=True, stop_early=True)
        by_index = dict(zip(order, maps))
        return [by_index[i] for i in wanted]

    def forward_features(self, x: Tensor) -> Tensor:
        return self.model.forward_features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.model.forward_head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def get_classifier(self) -> nn.Module:
        return self.model.get_classifier()

    def reset_classifier(self, num_classes: int) -> None:
        self.model.reset_classifier(num_classes)

    def split(self, name: str) -> tuple[nn.Sequential, nn.Sequential]:
        """(trunk up to stage ``name``, remaining stages) for timm's EfficientNet-family models."""
        m = self.model
        if not all(hasattr(m, a) for a in ("conv_stem", "bn1", "blocks")):
            raise NotImplementedError(f"split() supports timm's EfficientNet/MobileNet family, not {self.name!r}")
        names = [f["name"] for f in self.feature_info]
        if name not in names:
            raise ValueError(f"unknown stage {name!r}; this backbone has {names}")
        cut = int(name.split(".")[1]) + 1
        blocks = list(m.blocks.children())
        trunk = nn.Sequential(OrderedDict(conv_stem=m.conv_stem, bn1=m.bn1, blocks=nn.Sequential(*blocks[:cut])))
        return trunk, nn.Sequential(*blocks[cut:])


def create_backbone(name: str = "mobilenet_v1", **kwargs: Any) -> MobileNetV1 | TimmBackbone:
    """Build a backbone by name.

    Args:
        name: ``"mobilenet_v1"`` (ours; kwargs as ``mobilenet_v1``) or a timm model name (kwargs go to
            ``timm.create_model``; ``alpha`` is ours only).
    Returns:
        A module with ``feature_info`` and ``forward_intermediates``.
    """
    if name in ("mobilenet_v1", "mobilenetv1"):
        return mobilenet_v1(**kwargs)
    if "alpha" in kwargs:
        raise ValueError(f"alpha is MobileNet v1's width multiplier; timm model {name!r} encodes width in its name")
    return TimmBackbone(name, **kwargs)


def select_features(feature_info: list[dict], reductions: Sequence[int]) -> list[int]:
    """Index of the deepest layer at each requested reduction (e.g. 16, 32 for SSD: conv11, conv13)."""
    out = []
    for r in reductions:
        hits = [i for i, f in enumerate(feature_info) if f["reduction"] == r]
        if not hits:
            have = sorted({f["reduction"] for f in feature_info})
            raise ValueError(f"backbone has no feature map at reduction {r}; available: {have}")
        out.append(hits[-1])
    return out


@torch.no_grad()
def _probe_shapes(model: nn.Module, size: int = 64) -> list[tuple[int, ...]]:
    """Shapes of every feature map for a dummy input (used by tests and profilers)."""
    was_training = model.training
    model.eval()
    maps = model.forward_intermediates(torch.zeros(1, getattr(model, "in_chans", 3), size, size))
    model.train(was_training)
    return [tuple(m.shape) for m in maps]
