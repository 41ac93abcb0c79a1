"""The embedded default of ``python -m distill.train``: Section 4.5's story on drawn faces.

The paper distills "a large face attribute classifier ... trained by an unknown procedure" into
MobileNets using unlabeled images. Out of the box we play that out on ``datasets.synthetic_faces``:

1. a synthetic face-attribute set with a labeled split (CelebA layout), an unlabeled split (images
   only) and a labeled validation split (CSV) is written to the cache;
2. a large teacher, timm's ResNet-18 at 80 px with its own normalisation (11 M parameters), is
   trained briefly on the labeled split and frozen as TorchScript with a ``teacher.yaml`` next to
   it: from here on it is an opaque artefact, as the paper's in-house model is;
3. ``distill.train`` then distills it into a 0.5 MobileNet-128 from the unlabeled split
   (settings in ``configs/distill/default.yaml``) and compares both models' mean AP on the
   validation split.

Steps 1 and 2 are cached in ``$MOBILENET_SUITE_CACHE`` (default ``~/.cache/mobilenet_suite``) by
``datasets.cache.ensure_cached``, each built in a temp folder and renamed into place when complete, so
later runs only distill.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

from datasets.attributes import AttributeDataset
from datasets.cache import ensure_cached
from datasets.synthetic_faces import ensure_face_attributes
from datasets.images import build_image_transform

__all__ = ["DEFAULT_DATA", "DEFAULT_TEACHER", "ensure_default_teacher", "prepare_default"]

# Split sizes of the synthetic face set (images of 128 px).
DEFAULT_DATA = {"num_labeled": 800, "num_unlabeled": 1600, "num_val": 400, "image_size": 128, "seed": 0,
                "nuisance_strength": 0.5}
# The teacher: architecture, its input (different from the student's on purpose: the wrapper must
# resize and re-normalise), and a short training run.
DEFAULT_TEACHER = {
    "arch": "resnet18",
    "input_size": 80,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "epochs": 6,
    "batch_size": 32,
    "lr": 0.003,
    "weight_decay": 0.0,
    "seed": 0,
}
TEACHER_VERSION = 1


def ensure_default_teacher(paths: dict[str, str], *, cache_dir: str | None = None,
                           device: torch.device | str = "cpu", progress: bool = True) -> Path:
    """Train (once) and freeze the default teacher; returns the path of ``teacher.pt``.

    The folder (``<cache>/distill-teacher-v<version>-<hash of the settings and the data set>``, built
    by ``datasets.cache.ensure_cached``) holds ``teacher.pt`` (TorchScript), ``teacher.yaml`` (input
    size, mean, std, outputs), ``info.json`` (its validation mean AP, training time) and the training
    run's ``metrics.jsonl``.
    """
    # The data folder's name is itself a hash of the data parameters, so it keys the teacher's data.
    params = {**DEFAULT_TEACHER, "data": os.path.basename(os.path.normpath(paths["root"]))}
    folder = ensure_cached("distill-teacher", params, lambda tmp: _train_teacher(paths, tmp, torch.device(device)),
                           version=TEACHER_VERSION, cache_dir=cache_dir)
    return folder / "teacher.pt"


def _train_teacher(paths: dict[str, str], out: Path, device: torch.device) -> None:
    """Train the default teacher on the labeled split and freeze it into ``out``."""
    from distill.losses import masked_bce_with_logits
    from eval.attributes import mean_average_precision
    from tasks.classifier import build_classifier, predict_outputs
    from tasks.engine import EngineConfig, fit

    t = DEFAULT_TEACHER
    t0 = time.perf_counter()
    train_tf = build_image_transform(t["input_size"], mean=t["mean"], std=t["std"], augment=True, crop_scale=None)
    eval_tf = build_image_transform(t["input_size"], mean=t["mean"], std=t["std"])
    train = AttributeDataset(paths["labeled_images"], paths["labeled_labels"], train_tf)
    val = AttributeDataset(paths["val_images"], paths["val_labels"], eval_tf)
    names = train.attribute_names
    model = build_classifier(num_outputs=len(names), backbone=t["arch"])
    loader = torch.utils.data.DataLoader(val, batch_size=64, shuffle=False)

    def loss_fn(net: torch.nn.Module, batch: dict[str, Any], dev: torch.device) -> dict[str, torch.Tensor]:
        logits = net(batch["image"].to(dev, non_blocking=True))
        return {"bce": masked_bce_with_logits(logits, batch["target"].to(dev, non_blocking=True).float())}

    def val_ap(net: torch.nn.Module) -> Any:
        scores, targets, _ = predict_outputs(net, loader, device)
        return mean_average_precision(scores, targets, names)

    cfg = EngineConfig(epochs=t["epochs"], optimizer="adamw", lr=t["lr"], weight_decay=t["weight_decay"],
                       warmup_iters=20, eval_every=t["epochs"], metric="mean_ap", metric_mode="max",
                       seed=t["seed"], log_every=5)
    print(f"default teacher: training timm {t['arch']} at {t['input_size']} px on {len(train)} labeled "
          f"faces for {t['epochs']} epochs (once; cached)", flush=True)
    fit(model, train, cfg=cfg, batch_size=t["batch_size"], output_dir=out / "run", loss_fn=loss_fn,
        evaluate_fn=lambda net: {"mean_ap": val_ap(net).mean_ap}, device=device, meta={"labels": names})
    ap = val_ap(model)
    model.eval().cpu()
    with warnings.catch_warnings():
        # TorchScript is deprecated in recent PyTorch, yet it is how frozen in-house models arrive.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.trace(model, torch.zeros(1, 3, t["input_size"], t["input_size"]))
        torch.jit.save(scripted, str(out / "teacher.pt"))
    (out / "teacher.yaml").write_text(yaml.safe_dump({
        "input_size": t["input_size"], "mean": t["mean"], "std": t["std"], "num_outputs": len(names),
        "output": "logits", "channel_order": "RGB"}, sort_keys=False))
    info: dict[str, Any] = {"arch": t["arch"], "val_mean_ap": ap.mean_ap,
                            "params": sum(p.numel() for p in model.parameters()), "attribute_names": names,
                            "train_time_s": time.perf_counter() - t0, "settings": t, "data": paths["root"]}
    shutil.move(out / "run" / "metrics.jsonl", out / "metrics.jsonl")
    shutil.rmtree(out / "run")
    (out / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"default teacher: validation mean AP {100 * ap.mean_ap:.2f}% after {info['train_time_s']:.0f} s", flush=True)


def prepare_default(*, cache_dir: str | None = None, device: torch.device | str = "cpu",
                    progress: bool = True) -> dict[str, str]:
    """Make sure the synthetic faces and the frozen teacher exist; return what ``distill.train`` needs:
    ``{"teacher": "torchscript:PATH", "images", "val_images", "val_labels", ...}``."""
    t0 = time.perf_counter()
    paths = ensure_face_attributes(cache_dir, progress=progress, **DEFAULT_DATA)
    if time.perf_counter() - t0 > 1:
        print(f"default data: synthetic faces written to {paths['root']} ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    teacher = ensure_default_teacher(paths, cache_dir=cache_dir, device=device, progress=progress)
    return {
        **paths,
        "teacher": f"torchscript:{teacher}",
        "images": paths["unlabeled_images"],
        "val_images": paths["val_images"],
        "val_labels": paths["val_labels"],
    }
