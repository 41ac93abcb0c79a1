"""Face embedding model: any backbone + an L2-normalised embedding head (MobileNets Section 4.7).

Section 4.7 builds a "mobile FaceNet": MobileNet trained to reproduce FaceNet's 128-d, L2-normalised
embedding (Table 14: 1.0 MobileNet-160, 1.0/0.75 MobileNet-128). The head here is the usual one for
face embeddings: global average pool (the backbone's own) -> dropout -> linear (no bias) -> BatchNorm
-> L2 normalisation. The BatchNorm keeps the pre-normalisation features centred and spread, which is
what stops a triplet-trained network from starting (or ending) with every embedding on one point.

The model takes RGB images in [0, 1] and normalises them itself (ImageNet mean/std), so everything
that embeds faces (evaluation, the search CLI, services) only resizes and converts to tensors.

A checkpoint's *fingerprint* (sha256 of the embedding network's tensors in key order plus its
config) identifies the embedding space; a face gallery refuses queries from another fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbone import create_backbone
from tasks.checkpoint import load_model
from tasks.config import build_section
from tasks.faces.losses import MarginSoftmax

__all__ = [
    "FaceEmbedder",
    "FaceModelConfig",
    "build_face_model",
    "embedding_state_dict",
    "face_embedder",
    "fingerprint",
    "load_face_model",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MARGIN_PREFIX = "margin."


@dataclass
class FaceModelConfig:
    """What defines the embedding network (stored in checkpoints and galleries).

    Attributes:
        backbone: ``"mobilenet_v1"`` or a timm model name.
        alpha: MobileNet width multiplier (ignored for timm backbones).
        resolution: input side in pixels (the paper's rho: 160 or 128 in Table 14).
        embedding_dim: embedding size (FaceNet: 128).
        dropout: dropout before the embedding layer.
        center_crop: fraction of the image side kept by the centre crop before resizing (1 = none).
    """

    backbone: str = "mobilenet_v1"
    alpha: float = 1.0
    resolution: int = 160
    embedding_dim: int = 128
    dropout: float = 0.0
    center_crop: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ValueError(f"FaceModelConfig.backbone must be a model name, got {self.backbone!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 < self.alpha <= 2:
            raise ValueError(f"FaceModelConfig.alpha must be in (0, 2], got {self.alpha!r}")
        for name, low in (("resolution", 32), ("embedding_dim", 2)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"FaceModelConfig.{name} must be an integer >= {low}, got {v!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"FaceModelConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not 0 < self.center_crop <= 1:
            raise ValueError(f"FaceModelConfig.center_crop must be in (0, 1], got {self.center_crop!r}")
        self.alpha = float(self.alpha)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "face model config") -> FaceModelConfig:
        return build_section(cls, d, source)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FaceEmbedder(nn.Module):
    """Backbone + embedding head; ``forward(images)`` returns ``[B, embedding_dim]`` unit vectors.

    Args:
        cfg: the model configuration.
        num_classes: training identities for a CosFace/ArcFace head (0 = none); the head (``margin``)
            is used by the training loss only and is not part of the embedding network.
        margin_kind, margin_scale, margin_value: passed to :class:`~tasks.faces.losses.MarginSoftmax`.
    """

    def __init__(self, cfg: FaceModelConfig, *, num_classes: int = 0, margin_kind: str = "cosface",
                 margin_scale: float = 30.0, margin_value: float | None = None):
        super().__init__()
        self.cfg = cfg
        kw: dict[str, Any] = {"num_classes": 0}
        if cfg.backbone in ("mobilenet_v1", "mobilenetv1"):
            kw["alpha"] = cfg.alpha
        self.backbone = create_backbone(cfg.backbone, **kw)
        width = int(getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features)
        self.embed = nn.Linear(width, cfg.embedding_dim, bias=False)
        self.bn = nn.BatchNorm1d(cfg.embedding_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        nn.init.normal_(self.embed.weight, std=1.0 / width ** 0.5)
        self.margin = (MarginSoftmax(cfg.embedding_dim, num_classes, margin_kind, margin_scale, margin_value)
                       if num_classes > 0 else None)

    def features(self, images: Tensor) -> Tensor:
        """Un-normalised embedding (before the L2 normalisation)."""
        x = (images - self.mean) / self.std
        x = self.backbone(x)  # num_classes=0: pooled features [B, C]
        return self.bn(self.embed(self.dropout(x)))

    def forward(self, images: Tensor, labels: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """Embeddings; with ``labels`` (training with a margin head) also the margin-softmax loss."""
        emb = F.normalize(self.features(images), dim=1)
        if labels is None:
            return emb
        if self.margin is None:
            raise ValueError("labels were given but this model has no margin-softmax head")
        return emb, self.margin(emb, labels)


def build_face_model(cfg: FaceModelConfig | Mapping[str, Any], **kwargs: Any) -> FaceEmbedder:
    """Build a :class:`FaceEmbedder` from a config (dataclass or dict); ``kwargs`` as its constructor."""
    if not isinstance(cfg, FaceModelConfig):
        cfg = FaceModelConfig.from_dict(cfg)
    return FaceEmbedder(cfg, **kwargs)


def face_embedder(**fields: Any) -> FaceEmbedder:
    """The embedding network from its config's fields (the builder ``tasks.checkpoint.load_model`` calls)."""
    return FaceEmbedder(FaceModelConfig.from_dict(fields, source="face model"))


def embedding_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The embedding network's tensors of a (training) state dict: the margin head left out."""
    return {k: v for k, v in state.items() if not k.startswith(MARGIN_PREFIX)}


def fingerprint(state: Mapping[str, Tensor], cfg: FaceModelConfig) -> str:
    """sha256 over the embedding network's tensors (names, dtypes, shapes, bytes, key order) + config."""
    h = hashlib.sha256()
    h.update(json.dumps(cfg.to_dict(), sort_keys=True).encode())
    for k, v in embedding_state_dict(state).items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        # view as bytes: works for every dtype, including bfloat16 that NumPy lacks
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_face_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[FaceEmbedder, str]:
    """A face-embedding checkpoint through the one loader (``tasks.checkpoint.load_model``).

    Returns:
        ``(model in eval mode on device, fingerprint)``.

    Raises:
        FileNotFoundError / CheckpointError: missing, unsafe or not a face-embedding checkpoint.
    """
    model, _ = load_model(path, device, task="faces")
    return model, fingerprint(model.state_dict(), model.cfg)
