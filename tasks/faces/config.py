"""Face-embedding experiment configuration: one YAML per experiment (``configs/faces/``).

Sections::

    model:   FaceModelConfig (backbone, alpha, resolution, embedding_dim, dropout, center_crop)
    data:    root (identity folders; null = the built-in synthetic identities), val_pairs + val_root
             (an LFW-format pairs file scored after every epoch), synthetic (generator settings),
             augment, num_workers
    loss:    name ("semihard", "batchhard", "cosface", "arcface", "distill", or "+"-joined, e.g.
             "distill+semihard"), margin, soft, scale, weights, teacher (distillation teacher spec)
    sampler: identities_per_batch (P), images_per_identity (K), batches_per_epoch
    train:   tasks.engine.EngineConfig fields

Command-line flags override the file; the resolved configuration is saved as ``config.yaml`` in the
output directory and in every checkpoint.
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from tasks.yaml_config import dataclass_from_mapping, read_yaml_mapping

from tasks.engine import EngineConfig
from tasks.faces.losses import LOSSES
from tasks.faces.model import FaceModelConfig

__all__ = ["CONFIG_DIR", "DEFAULT_CONFIG", "DataConfig", "FacesConfig", "LossConfig", "SamplerConfig", "load_config"]

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "faces"
DEFAULT_CONFIG = CONFIG_DIR / "synthetic.yaml"



@dataclass
class DataConfig:
    root: str | None = None  # identity folders; None = synthetic identities
    val_pairs: str | None = None
    val_root: str | None = None
    synthetic: dict[str, Any] = field(default_factory=dict)  # ensure_synthetic_faces() arguments
    augment: bool = True
    min_images: int = 1
    num_workers: int = 0
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
    identities_per_batch: int = 16
    images_per_identity: int = 4
    batches_per_epoch: int | None = None


@dataclass
class FacesConfig:
    model: FaceModelConfig = field(default_factory=FaceModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    train: EngineConfig = field(default_factory=EngineConfig)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config") -> FacesConfig:
        d = dict(d or {})
        known = {"model", "data", "loss", "sampler", "train"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source}: unknown section(s) {unknown}; known: {sorted(known)}")
        cfg = cls(
            model=FaceModelConfig.from_dict(d.get("model") or {}, source=f"{source}: model"),
            data=dataclass_from_mapping(DataConfig, d.get("data"), f"{source}: data"),
            loss=dataclass_from_mapping(LossConfig, d.get("loss"), f"{source}: loss"),
            sampler=dataclass_from_mapping(SamplerConfig, d.get("sampler"), f"{source}: sampler"),
            train=EngineConfig.from_dict(d.get("train") or {}, source=f"{source}: train"),
        )
        cfg.validate(source, complete=False)
        return cfg

    def validate(self, source: str = "config", *, complete: bool = True) -> None:
        """Check values; ``complete=False`` allows what a flag may still supply (the teacher)."""
        parts = self.loss.parts()
        if not parts:
            raise ValueError(f"{source}: loss.name is empty; choose from {LOSSES}")
        bad = [p for p in parts if p not in LOSSES]
        if bad:
            raise ValueError(f"{source}: unknown loss {bad}; choose from {LOSSES} (combine with '+')")
        if len(set(parts)) != len(parts):
            raise ValueError(f"{source}: loss.name {self.loss.name!r} repeats a term")
        if "semihard" in parts and "batchhard" in parts:
            raise ValueError(f"{source}: use either semihard or batchhard triplets, not both")
        if "cosface" in parts and "arcface" in parts:
            raise ValueError(f"{source}: use either cosface or arcface, not both")
        if "distill" in parts and not self.loss.teacher and complete:
            raise ValueError(f"{source}: loss 'distill' needs a teacher (--teacher SPEC or loss.teacher)")
        if self.loss.teacher and "distill" not in parts:
            raise ValueError(f"{source}: a teacher is set but loss.name {self.loss.name!r} has no 'distill' term")
        if not self.loss.margin >= 0:
            raise ValueError(f"{source}: loss.margin must be >= 0, got {self.loss.margin}")
        for name in ("triplet_weight", "softmax_weight", "distill_weight", "scale"):
            if not getattr(self.loss, name) > 0:
                raise ValueError(f"{source}: loss.{name} must be > 0, got {getattr(self.loss, name)}")
        s = self.sampler
        if s.identities_per_batch < 2 or s.images_per_identity < 1:
            raise ValueError(f"{source}: sampler needs identities_per_batch >= 2 and images_per_identity >= 1, "
                             f"got {s.identities_per_batch} x {s.images_per_identity}")
        triplets = "semihard" in parts or "batchhard" in parts
        if triplets and s.images_per_identity < 2:
            raise ValueError(f"{source}: triplet losses need sampler.images_per_identity >= 2 for positives")
        if s.batches_per_epoch is not None and s.batches_per_epoch < 1:
            raise ValueError(f"{source}: sampler.batches_per_epoch must be >= 1, got {s.batches_per_epoch}")
        if bool(self.data.val_pairs) != bool(self.data.val_root):
            raise ValueError(f"{source}: give both data.val_pairs and data.val_root (--val-pairs/--val-root)")
        if self.data.num_workers < 0 or self.data.eval_batch_size < 1 or self.data.min_images < 1:
            raise ValueError(f"{source}: data.num_workers >= 0, eval_batch_size >= 1, min_images >= 1 required")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "data": copy.deepcopy(asdict(self.data)),
            "loss": asdict(self.loss),
            "sampler": asdict(self.sampler),
            "train": self.train.to_dict(),
        }


def load_config(path: str | os.PathLike | None) -> FacesConfig:
    """Read a YAML config (None: the built-in synthetic default); errors name the file."""
    p = Path(path) if path is not None else DEFAULT_CONFIG
    return FacesConfig.from_dict(read_yaml_mapping(p), source=str(p))

