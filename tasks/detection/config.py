"""Detection experiment configuration: one YAML per experiment (``configs/detection/``).

Sections (the suite's one config scheme, ``tasks.config``)::

    model:  arch, backbone, alpha, resolution, pretrained_backbone, options (SSDOptions / FasterRCNNOptions)
    data:   dataset (shapes | coco), root, ann, val_root, val_ann, loader and augmentation settings
    train:  tasks.engine.EngineConfig (optimizer, lr, schedule, epochs, batch_size, ...)

Flags override the file (``tasks.flags``); the resolved configuration is what the run saves as
``config.yaml`` in its output folder, and ``--config that/config.yaml`` repeats the run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from tasks.config import build_section, load_config as _load
from tasks.engine import EngineConfig

__all__ = ["ModelConfig", "DataConfig", "DetectionConfig", "CONFIG_DIR", "DEFAULT_CONFIG", "load_config"]

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "detection"
DEFAULT_CONFIG = CONFIG_DIR / "shapes_ssd.yaml"
ARCHS = ("ssd300", "ssdlite300", "faster_rcnn300", "faster_rcnn600")


@dataclass
class ModelConfig:
    arch: str = "ssd300"
    backbone: str = "mobilenet_v1"
    alpha: float = 1.0
    resolution: int | None = None  # SSD: square side; Faster R-CNN: shorter side; None: the arch's 300 / 600
    pretrained_backbone: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # SSDOptions / FasterRCNNOptions overrides

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"model.arch={self.arch!r}: choose from {list(ARCHS)}")
        if not self.alpha > 0:
            raise ValueError(f"model.alpha={self.alpha!r}: must be > 0")
        if self.resolution is not None and self.resolution < 32:
            raise ValueError(f"model.resolution={self.resolution!r}: must be >= 32")

    @property
    def family(self) -> str:
        return "ssd" if self.arch.startswith("ssd") else "frcnn"


@dataclass
class DataConfig:
    dataset: str = "shapes"  # "shapes" (built-in synthetic, COCO format) or "coco" (the paths below)
    root: str | None = None
    ann: str | None = None
    val_root: str | None = None
    val_ann: str | None = None
    shapes: dict[str, Any] = field(default_factory=dict)  # ensure_shapes_dataset() arguments
    categories: dict[int, str] | None = None  # if set, the annotation files must have exactly these {id: name}
    skip_bad_images: bool = False
    drop_empty: bool = False
    zoom_out_max: float = 4.0  # SSD zoom-out augmentation (the SSD paper's 4x)
    iou_crop_prob: float = 1.0  # SSD IoU crop (the SSD paper: always, its sampler can keep the whole image)
    photometric_prob: float = 0.5
    workers: int = 2
    eval_batch_size: int = 16

    def __post_init__(self) -> None:
        if self.dataset not in ("shapes", "coco"):
            raise ValueError(f"data.dataset={self.dataset!r}: must be 'shapes' or 'coco'")
        if self.workers < 0 or self.eval_batch_size < 1:
            raise ValueError(f"data.workers={self.workers} must be >= 0 and data.eval_batch_size="
                             f"{self.eval_batch_size} >= 1")
        for name in ("iou_crop_prob", "photometric_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"data.{name}={getattr(self, name)!r}: must be in [0, 1]")
        if not self.zoom_out_max >= 1:
            raise ValueError(f"data.zoom_out_max={self.zoom_out_max!r}: must be >= 1")


@dataclass
class DetectionConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: EngineConfig = field(default_factory=EngineConfig)

    def validate(self, *, paths: bool = True) -> None:
        """Cross-section checks; ``paths=False`` skips the data paths (a paper config leaves them to flags)."""
        d = self.data
        if d.dataset == "coco" and paths:
            for key, flag in (("root", "--data-root"), ("ann", "--ann")):
                if not getattr(d, key):
                    raise ValueError(f"data.dataset is 'coco' but data.{key} is not set ({flag})")
        if bool(d.val_root) != bool(d.val_ann):
            raise ValueError("give both data.val_root and data.val_ann (--val-data-root/--val-ann)")
        if d.dataset == "shapes" and (d.root or d.ann or d.val_root):
            raise ValueError("data.dataset is 'shapes' (built-in) but data paths are set; use dataset: coco")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config") -> "DetectionConfig":
        """A config from a mapping (e.g. the ``config`` entry of a checkpoint), data paths unchecked."""
        cfg = build_section(cls, d, source)
        cfg.validate(paths=False)
        return cfg


def load_config(path: str | os.PathLike | None, overrides: Mapping[str, Any] | None = None) -> DetectionConfig:
    """YAML (None: the built-in default), then the flags' overrides, then validation; errors name the file."""
    return _load(DetectionConfig, path, overrides=overrides, default=DEFAULT_CONFIG)
