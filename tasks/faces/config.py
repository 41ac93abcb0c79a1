"""Face-embedding experiment configuration: one YAML per experiment (``configs/faces/``).

Sections::

    model:   FaceModelConfig (backbone, alpha, resolution, embedding_dim, dropout, center_crop) and
             pretrained_backbone
    data:    root (identity folders; null = the built-in synthetic identities), val_ann + val_root
             (an LFW-format pairs file scored after every epoch, and its image folder), synthetic
             (generator settings), augment, workers
    loss:    name ("semihard", "batchhard", "cosface", "arcface", "distill", or "+"-joined, e.g.
             "distill+semihard"), margin, soft, scale, weights, teacher (distillation teacher spec)
    sampler: images_per_identity (K), batches_per_epoch; a batch of train.batch_size images holds
             train.batch_size / K identities (P)
    train:   tasks.engine.EngineConfig fields

Command-line flags override the file; the resolved configuration is saved as ``config.yaml`` in the
output directory and in every checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from tasks.config import build_section, load_config as _load
from tasks.engine import EngineConfig
from tasks.faces.losses import LOSSES
from tasks.faces.model import FaceModelConfig

__all__ = ["CONFIG_DIR", "DEFAULT_CONFIG", "DataConfig", "FacesConfig", "LossConfig", "SamplerConfig", "load_config"]

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "faces"
DEFAULT_CONFIG = CONFIG_DIR / "synthetic.yaml"



@dataclass
class ModelConfig(FaceModelConfig):
    """The embedding network (what a checkpoint rebuilds) plus where its backbone weights start."""

    pretrained_backbone: str | None = None

    def network(self) -> FaceModelConfig:
        d = asdict(self)
        d.pop("pretrained_backbone")
        return FaceModelConfig(**d)


@dataclass
class DataConfig:
    root: str | None = None  # identity folders; None = synthetic identities
    ann: str | None = None  # not used: identities are the folder names
    val_ann: str | None = None  # LFW-format pairs.txt
    val_root: str | None = None
    synthetic: dict[str, Any] = field(default_factory=dict)  # ensure_synthetic_faces() arguments
    augment: bool = True
    min_images: int = 1
    skip_bad_images: bool = False  # scan the identity folders once and leave undecodable images out
    workers: int = 0
    eval_batch_size: int = 64


@dataclass
class LossConfig:
    name: str = "semihard"
    margin: float = 0.2  # triplet margin (FaceNet alpha) or margin-softmax m when margin_softmax is set
    soft: bool = False  # batch-hard soft margin
    squared: bool | None = None  # None: squared for semihard (FaceNet), plain for batchhard (Hermans)
    scale: float = 30.0  # margin softmax s
    softmax_margin: float | None = None  # margin softmax m (None: CosFace 0.35 / ArcFace 0.5)
    triplet_weight: float = 1.0
    softmax_weight: float = 1.0
    distill_weight: float = 1.0
    teacher: str | None = None  # distillation teacher spec (torchscript:/export:/onnx:/timm:/module:)
    # how to feed the teacher, when neither the teacher file's sidecar YAML nor the model says it
    # (see distill.teachers): input side, mean/std in 0..1 pixel units, or a teacher config YAML
    teacher_input_size: int | None = None
    teacher_mean: list[float] | None = None
    teacher_std: list[float] | None = None
    teacher_config: str | None = None

    def parts(self) -> list[str]:
        return [p.strip() for p in self.name.split("+") if p.strip()]


@dataclass
class SamplerConfig:
    images_per_identity: int = 4
    batches_per_epoch: int | None = None


@dataclass
class FacesConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    train: EngineConfig = field(default_factory=lambda: EngineConfig(batch_size=64))

    @property
    def identities_per_batch(self) -> int:
        return self.train.batch_size // self.sampler.images_per_identity

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config") -> FacesConfig:
        return build_section(cls, d, source)

    def validate(self) -> None:
        """Cross-section checks of the resolved config."""
        parts = self.loss.parts()
        if not parts:
            raise ValueError(f"loss.name is empty; choose from {LOSSES}")
        bad = [p for p in parts if p not in LOSSES]
        if bad:
            raise ValueError(f"unknown loss {bad}; choose from {LOSSES} (combine with '+')")
        if len(set(parts)) != len(parts):
            raise ValueError(f"loss.name {self.loss.name!r} repeats a term")
        if "semihard" in parts and "batchhard" in parts:
            raise ValueError(f"use either semihard or batchhard triplets, not both")
        if "cosface" in parts and "arcface" in parts:
            raise ValueError(f"use either cosface or arcface, not both")
        if "distill" in parts and not self.loss.teacher:
            raise ValueError(f"loss 'distill' needs a teacher (--teacher SPEC or loss.teacher)")
        if self.loss.teacher and "distill" not in parts:
            raise ValueError(f"a teacher is set but loss.name {self.loss.name!r} has no 'distill' term")
        if not self.loss.margin >= 0:
            raise ValueError(f"loss.margin must be >= 0, got {self.loss.margin}")
        for name in ("triplet_weight", "softmax_weight", "distill_weight", "scale"):
            if not getattr(self.loss, name) > 0:
                raise ValueError(f"loss.{name} must be > 0, got {getattr(self.loss, name)}")
        s = self.sampler
        if s.images_per_identity < 1 or self.train.batch_size % s.images_per_identity or self.identities_per_batch < 2:
            raise ValueError(f"train.batch_size={self.train.batch_size} must be a multiple of "
                             f"sampler.images_per_identity={s.images_per_identity} (K) holding at least 2 "
                             "identities (set K with --images-per-identity)")
        triplets = "semihard" in parts or "batchhard" in parts
        if triplets and s.images_per_identity < 2:
            raise ValueError(f"triplet losses need sampler.images_per_identity >= 2 for positives")
        if s.batches_per_epoch is not None and s.batches_per_epoch < 1:
            raise ValueError(f"sampler.batches_per_epoch must be >= 1, got {s.batches_per_epoch}")
        if bool(self.data.val_ann) != bool(self.data.val_root):
            raise ValueError(f"give both data.val_ann (pairs.txt) and data.val_root "
                             "(--val-ann/--val-data-root)")
        if self.data.ann:
            raise ValueError(f"data.ann={self.data.ann!r}: face training reads identities from the "
                             "folder names under --data-root and takes no annotation file")
        if self.data.workers < 0 or self.data.eval_batch_size < 1 or self.data.min_images < 1:
            raise ValueError(f"data.workers >= 0, eval_batch_size >= 1, min_images >= 1 required")



def load_config(path: str | os.PathLike | None, overrides: Mapping[str, Any] | None = None) -> FacesConfig:
    """YAML (None: the built-in synthetic default), then the flags' overrides, then validation."""
    return _load(FacesConfig, path, overrides=overrides, default=DEFAULT_CONFIG)
