"""Detection experiment configuration: one YAML per experiment (``configs/detection/``).

A YAML has three sections and two top-level numbers::

    model:  build_detector arguments (arch, backbone, alpha, size, pretrained_backbone, options: {...})
    data:   dataset: shapes | coco, paths, loader settings
    train:  tasks.engine.EngineConfig fields (optimizer, lr, schedule, epochs, ...)
    batch_size: 16
    eval_batch_size: 16

Command-line flags override the file; the resolved configuration is what the engine saves as
``config.yaml`` in the output directory, so a run can be repeated from that file alone.
"""
from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from tasks.engine import EngineConfig
from tasks.yaml_config import dataclass_from_mapping, read_yaml_mapping

__all__ = ["ModelConfig", "DataConfig", "DetectionConfig", "CONFIG_DIR", "DEFAULT_CONFIG", "load_config"]

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "detection"
DEFAULT_CONFIG = CONFIG_DIR / "shapes_ssd.yaml"



@dataclass
class ModelConfig:
    arch: str = "ssd300"
    backbone: str = "mobilenet_v1"
    alpha: float = 1.0
    size: int | None = None
    pretrained_backbone: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # SSDOptions / FasterRCNNOptions overrides

    @property
    def family(self) -> str:
        return "ssd" if self.arch.startswith("ssd") else "frcnn"


@dataclass
class DataConfig:
    dataset: str = "shapes"  # "shapes" (built-in synthetic, COCO format) or "coco" (paths below)
    train_root: str | None = None
    train_ann: str | None = None
    val_root: str | None = None
    val_ann: str | None = None
    shapes: dict[str, Any] = field(default_factory=dict)  # ensure_shapes_dataset() arguments
    categories: dict[int, str] | None = None  # if set, the annotation files must have exactly these {id: name}
    skip_bad_images: bool = False
    drop_empty: bool = False
    zoom_out_max: float = 4.0  # SSD zoom-out augmentation (the SSD paper's 4x)
    iou_crop_prob: float = 1.0  # SSD IoU crop (the SSD paper: always, its sampler can keep the whole image)
    photometric_prob: float = 0.5
    num_workers: int = 2


@dataclass
class DetectionConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: EngineConfig = field(default_factory=EngineConfig)
    batch_size: int = 16
    eval_batch_size: int = 16

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config") -> "DetectionConfig":
        d = dict(d or {})
        known = {"model", "data", "train", "batch_size", "eval_batch_size"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source}: unknown section(s) {unknown}; known: {sorted(known)}")
        cfg = cls(
            model=dataclass_from_mapping(ModelConfig, d.get("model"), f"{source}: model"),
            data=dataclass_from_mapping(DataConfig, d.get("data"), f"{source}: data"),
            train=EngineConfig.from_dict(d.get("train") or {}, source=f"{source}: train"),
            batch_size=int(d.get("batch_size", 16)),
            eval_batch_size=int(d.get("eval_batch_size", d.get("batch_size", 16))),
        )
        cfg.validate(source, paths=False)
        return cfg

    def validate(self, source: str = "config", *, paths: bool = True) -> None:
        """Check values; ``paths=False`` skips the data paths (a paper config leaves them to the flags)."""
        if self.data.dataset not in ("shapes", "coco"):
            raise ValueError(f"{source}: data.dataset must be 'shapes' or 'coco', got {self.data.dataset!r}")
        if self.data.dataset == "coco" and paths:
            for key in ("train_root", "train_ann"):
                if not getattr(self.data, key):
                    raise ValueError(f"{source}: data.dataset is 'coco' but data.{key} is not set (--data-root/--ann)")
            if bool(self.data.val_root) != bool(self.data.val_ann):
                raise ValueError(f"{source}: give both data.val_root and data.val_ann (--val-data-root/--val-ann)")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError(f"{source}: batch sizes must be >= 1, got {self.batch_size}, {self.eval_batch_size}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": copy.deepcopy(asdict(self.model)),
            "data": copy.deepcopy(asdict(self.data)),
            "train": self.train.to_dict(),
            "batch_size": self.batch_size,
            "eval_batch_size": self.eval_batch_size,
        }


def load_config(path: str | os.PathLike | None) -> DetectionConfig:
    """Read a YAML config (None: the built-in default); errors name the file."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    return DetectionConfig.from_dict(read_yaml_mapping(path), source=str(path))
