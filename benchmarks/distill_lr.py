"""Does ``distill.train``'s default learning rate fit a user's own teacher? A sweep against the default.

``python -m benchmarks.distill_lr`` plays out the issue's setting: a user brings a small TorchScript
teacher with 6 attribute outputs and a folder of 600 unlabeled 64 px images, and runs
``python -m distill.train --teacher torchscript:T.pt --task attributes --images DIR --alpha 0.25
--resolution 64 --epochs 30`` with no optimisation flags. For three teachers of different kinds

* ``colour``: 6 attributes that are deterministic functions of colour statistics of the image
  (warmth, brightness, contrast, saturation, centre vs border, top vs bottom), as sigmoids;
* ``random``: a frozen randomly initialised small CNN with 6 sigmoid outputs, its last layer
  rescaled on the unlabeled images so that outputs are neither all near 0.5 nor saturated;
* ``trained``: a small CNN trained briefly on the labels of the drawn faces (``datasets.synthetic_faces``)
  for 6 of their attributes, output as logits,

it runs ``distill.train`` once per learning rate of a sweep (``--lrs``, default 1e-3 3e-3 1e-2) and
once with no ``--lr`` at all, each in a fresh Python process (``distill.train.main([...])``), with
the same epochs, and prints teacher agreement on a held-out folder of validation faces: the
majority baseline (always answering each attribute's majority), each lr, the default, and the
default's gap to the best sweep run.

Images (drawn faces, 64 px) and teachers are written once to ``--cache-dir`` (default
``$MOBILENET_SUITE_CACHE/distill-lr-bench``), never into the repository. Runs are sequential.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from benchmarks._machine import cpu_count, cpu_model, load_text, timestamp
from datasets.cache import default_cache_dir
from datasets.images import IMAGENET_MEAN, IMAGENET_STD, ImageFiles, build_image_transform

__all__ = ["TEACHER_KINDS", "build_data", "build_teacher", "main", "majority_agreement", "run_distill"]

REPO = Path(__file__).resolve().parents[1]
TEACHER_KINDS = ("colour", "random", "trained")
BENCH_VERSION = 1
NUM_ATTRS = 6
# Share of "yes" per attribute that the colour and random teachers are calibrated to on the
# unlabeled images: unequal, so the majority baseline is not 0.5 everywhere.
POSITIVE_RATES = (0.5, 0.35, 0.25, 0.6, 0.45, 0.3)
# Attributes of the drawn faces that the trained teacher learns (a small CNN gets these in a few epochs).
TRAINED_ATTRS = ("Eyeglasses", "Smiling", "Wearing_Hat", "Beard", "Bangs", "Rosy_Cheeks")


# --------------------------------------------------------------------------------------------------
# data


def build_data(cache: Path, *, num_images: int, num_val: int, size: int) -> dict[str, str]:
    """The drawn-face set: ``labeled`` (trains the ``trained`` teacher), ``unlabeled`` (the student's
    ``--images``), ``val`` (held-out validation folder); see ``datasets.synthetic_faces``."""
    from datasets.synthetic_faces import ensure_face_attributes

    return ensure_face_attributes(str(cache), num_labeled=800, num_unlabeled=num_images, num_val=num_val,
                                  image_size=size, seed=11, nuisance_strength=0.5, progress=True)


def _load_images(folder: str, size: int, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    ds = ImageFiles.from_folder(folder, build_image_transform(size, mean=mean, std=std))
    return torch.stack([ds[i]["image"] for i in range(len(ds))])


# --------------------------------------------------------------------------------------------------
# teachers


class ColourRules(nn.Module):
    """Six attributes that are fixed functions of colour statistics of a 0..1 RGB image.

    ``sigmoid((stat - threshold) / scale)``; thresholds and scales are set from the unlabeled images
    (:func:`_calibrate`), so the rules are deterministic but not trivially balanced.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("threshold", torch.zeros(NUM_ATTRS))
        self.register_buffer("scale", torch.ones(NUM_ATTRS))

    def stats(self, x: Tensor) -> Tensor:
        r, g, b = x[:, 0], x[:, 1], x[:, 2]
        lum = 0.299 * r + 0.587 * g + 0.114 * b
        h, w = lum.shape[1], lum.shape[2]
        centre = lum[:, h // 4: 3 * h // 4, w // 4: 3 * w // 4].mean((1, 2))
        top, bottom = lum[:, : h // 2].mean((1, 2)), lum[:, h // 2:].mean((1, 2))
        sat = (x.amax(1) - x.amin(1)).mean((1, 2))
        return torch.stack([
            (r - b).mean((1, 2)),                 # warm
            lum.mean((1, 2)),                     # bright
            lum.flatten(1).std(1),                # contrasty
            sat,                                  # saturated
            centre - lum.mean((1, 2)),            # centre brighter than the whole
            (g - 0.5 * (r + b)).mean((1, 2)) + top - bottom,  # greenish, lighter on top
        ], 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid((self.stats(x) - self.threshold) / self.scale)


class RandomCNN(nn.Module):
    """A frozen, randomly initialised small CNN; ``head`` is rescaled by :func:`_calibrate`."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 5, 2, 2), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(), nn.Conv2d(64, 64, 3, 2, 1), nn.ReLU())
        self.head = nn.Linear(64, NUM_ATTRS)
        self.register_buffer("threshold", torch.zeros(NUM_ATTRS))
        self.register_buffer("scale", torch.ones(NUM_ATTRS))

    def stats(self, x: Tensor) -> Tensor:
        return self.head(self.body(x).mean((2, 3)))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid((self.stats(x) - self.threshold) / self.scale)


class SmallCNN(nn.Module):
    """Plain conv-BN-ReLU stack at stride 2 with a linear head: trains on 800 drawn faces in seconds."""

    def __init__(self, outputs: int) -> None:
        super().__init__()
        chans = (3, 24, 48, 96, 160)
        self.body = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(i, o, 3, 2, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())
            for i, o in zip(chans[:-1], chans[1:])])
        self.head = nn.Linear(chans[-1], outputs)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x).mean((2, 3)))


def _calibrate(model: ColourRules | RandomCNN, images: Tensor, sharpness: float) -> None:
    """Set thresholds at the ``POSITIVE_RATES`` quantiles of each statistic on ``images`` and scales
    to ``std / sharpness``: larger sharpness, more confident outputs."""
    with torch.no_grad():
        s = model.stats(images)
        q = torch.tensor([1.0 - r for r in POSITIVE_RATES])
        model.threshold.copy_(torch.stack([torch.quantile(s[:, j], q[j]) for j in range(NUM_ATTRS)]))
        model.scale.copy_(s.std(0).clamp_min(1e-6) / sharpness)


def _save_torchscript(model: nn.Module, folder: Path, size: int, sidecar: dict[str, Any]) -> None:
    model.eval()
    with warnings.catch_warnings():
        # TorchScript is deprecated in recent PyTorch, yet it is the format the user has.
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, torch.zeros(1, 3, size, size)), str(folder / "teacher.pt"))
    (folder / "teacher.yaml").write_text(yaml.safe_dump({"input_size": size, "num_outputs": NUM_ATTRS, **sidecar},
                                                        sort_keys=False))


def _train_small_cnn(data: dict[str, str], folder: Path, size: int, mean: list[float], std: list[float]
                     ) -> tuple[nn.Module, dict[str, Any]]:
    from datasets.attributes import AttributeDataset, read_attribute_file, write_attribute_file
    from tasks.attributes.model import attribute_loss
    from tasks.attributes.train import evaluate_attributes
    from tasks.engine import EngineConfig, fit

    def keep(path: str, out: Path, fmt: str) -> str:
        table = read_attribute_file(path)
        cols = [table.attribute_names.index(a) for a in TRAINED_ATTRS]
        return write_attribute_file(str(out), table.image_names, list(TRAINED_ATTRS), table.labels[:, cols], fmt=fmt)

    labeled = keep(data["labeled_labels"], folder / "labeled.txt", "celeba")
    val_labels = keep(data["val_labels"], folder / "val.csv", "csv")
    train = AttributeDataset(data["labeled_images"], labeled,
                             build_image_transform(size, mean=mean, std=std, augment=True, crop_scale=None))
    val = AttributeDataset(data["val_images"], val_labels, build_image_transform(size, mean=mean, std=std))
    torch.manual_seed(0)
    model = SmallCNN(NUM_ATTRS)
    cfg = EngineConfig(epochs=8, batch_size=32, optimizer="adamw", lr=3e-3, weight_decay=0.0, warmup_iters=10,
                       eval_every=8, seed=0)
    fit(model, train, cfg=cfg, output_dir=folder / "run", loss_fn=attribute_loss, device="cpu")
    ap = evaluate_attributes(model, torch.utils.data.DataLoader(val, batch_size=64), list(TRAINED_ATTRS),
                             torch.device("cpu"))
    return model, {"val_mean_ap": ap.mean_ap, "attributes": list(TRAINED_ATTRS)}


def build_teacher(kind: str, cache: Path, data: dict[str, str], *, size: int) -> str:
    """Build (once, cached) the ``kind`` teacher as ``teacher.pt`` + ``teacher.yaml``; returns its spec."""
    folder = cache / f"teacher-v{BENCH_VERSION}-{kind}-s{size}-{Path(data['root']).name}"
    if (folder / "info.json").is_file():
        return f"torchscript:{folder / 'teacher.pt'}"
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    torch.manual_seed({"colour": 1, "random": 2, "trained": 3}[kind])
    if kind == "colour":
        model: nn.Module = ColourRules()
        _calibrate(model, _load_images(data["unlabeled_images"], size, [0.0] * 3, [1.0] * 3), sharpness=4.0)
        _save_torchscript(model, folder, size, {"mean": [0.0] * 3, "std": [1.0] * 3, "output": "probabilities"})
        info: dict[str, Any] = {}
    elif kind == "random":
        model = RandomCNN()
        mean, std = [0.5] * 3, [0.25] * 3
        _calibrate(model, _load_images(data["unlabeled_images"], size, mean, std), sharpness=3.0)
        _save_torchscript(model, folder, size, {"mean": mean, "std": std, "output": "probabilities"})
        info = {}
    elif kind == "trained":
        mean, std = [0.5] * 3, [0.5] * 3
        model, info = _train_small_cnn(data, folder, size, mean, std)
        _save_torchscript(model, folder, size, {"mean": mean, "std": std, "output": "logits"})
    else:
        raise ValueError(f"unknown teacher kind {kind!r}; known: {TEACHER_KINDS}")
    info.update({"kind": kind, "build_s": time.perf_counter() - t0})
    (folder / "info.json").write_text(json.dumps(info, indent=2) + "\n")  # last: marks the folder complete
    return f"torchscript:{folder / 'teacher.pt'}"


def teacher_decisions(spec: str, folder: str, size: int) -> np.ndarray:
    """The teacher's yes/no decisions [N, 6] on ``folder``, fed as ``distill.train`` feeds it."""
    from distill.teachers import load_teacher

    teacher = load_teacher(spec, task="attributes")
    out = teacher(_load_images(folder, size, IMAGENET_MEAN, IMAGENET_STD), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return (out >= (0.5 if teacher.output == "probabilities" else 0.0)).numpy()


def majority_agreement(decisions: np.ndarray) -> float:
    """Agreement of a student that always answers each attribute's majority decision."""
    p = decisions.mean(0)
    return float(np.maximum(p, 1 - p).mean())


# --------------------------------------------------------------------------------------------------
# runs


def run_distill(argv: list[str], *, threads: int | None) -> dict[str, Any]:
    """``distill.train.main(argv)`` in a fresh Python process; returns its summary.json and wall time."""
    out = argv[argv.index("--output-dir") + 1]
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    code = "import sys, json; from distill.train import main; main(json.loads(sys.argv[1]))"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(argv)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"distill.train {' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads((Path(out) / "summary.json").read_text())
    cfg = yaml.safe_load((Path(out) / "config.yaml").read_text())  # the lr and warmup the run really used
    return {"agreement": summary["teacher_agreement"], "wall_s": wall, "peak_lr": cfg["train"]["lr"],
            "warmup_iters": cfg["train"]["warmup_iters"]}


def _fmt_lr(lr: float | None) -> str:
    return "default" if lr is None else f"{lr:g}"


def format_table(rows: list[dict[str, Any]], lrs: Sequence[float]) -> str:
    """Markdown table: mean agreement over seeds, with the seeds' range when there are several."""
    def cell(run: dict[str, Any]) -> str:
        a = run["agreements"]
        return f"{run['agreement']:.3f}" + (f" ({min(a):.3f}-{max(a):.3f})" if len(a) > 1 else "")

    head = ["teacher", "majority", *[f"lr {lr:g}" for lr in lrs], "default", "default's peak lr", "gap to best"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        sweep = [r["runs"][_fmt_lr(lr)] for lr in lrs]
        d = r["runs"]["default"]
        best = max(s["agreement"] for s in sweep)
        lines.append("| " + " | ".join([
            r["teacher"], f"{r['majority']:.3f}", *[cell(s) for s in sweep], cell(d), f"{d['peak_lr']:.3g}",
            f"{d['agreement'] - best:+.3f}"]) + " |")
    return "\n".join(lines)


def _machine() -> str:
    return (f"{timestamp()}, {cpu_model()}, nproc {cpu_count()}, load {load_text()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teachers", nargs="+", choices=TEACHER_KINDS, default=list(TEACHER_KINDS))
    p.add_argument("--lrs", type=float, nargs="*", default=[1e-3, 3e-3, 1e-2], help="sweep learning rates")
    p.add_argument("--no-default", action="store_true", help="skip the run without --lr")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--images", type=int, default=600, help="unlabeled training images")
    p.add_argument("--val-images", type=int, default=300, help="held-out validation images")
    p.add_argument("--resolution", type=int, default=64, help="image size and student resolution")
    p.add_argument("--alpha", type=float, default=0.25)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="--seed of the runs; the table shows the mean")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more distill.train flags for every run (give this option last)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run (0: leave it)")
    p.add_argument("--cache-dir", default=None, help="default $MOBILENET_SUITE_CACHE/distill-lr-bench")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)

    cache = Path(args.cache_dir or os.path.join(default_cache_dir(), "distill-lr-bench"))
    data = build_data(cache, num_images=args.images, num_val=args.val_images, size=args.resolution)
    rows: list[dict[str, Any]] = []
    print(f"machine: {_machine()}", flush=True)
    for kind in args.teachers:
        spec = build_teacher(kind, cache, data, size=args.resolution)
        dec = teacher_decisions(spec, data["val_images"], args.resolution)
        row: dict[str, Any] = {"teacher": kind, "spec": spec, "majority": majority_agreement(dec),
                               "positive_rates": [round(float(v), 3) for v in dec.mean(0)], "runs": {}}
        print(f"{kind}: {spec}; validation yes-rates {row['positive_rates']}, majority {row['majority']:.3f}",
              flush=True)
        for lr in [*args.lrs, *([] if args.no_default else [None])]:
            per_seed = []
            for seed in args.seeds:
                with tempfile.TemporaryDirectory(prefix="distill-lr-") as tmp:
                    run_argv = ["--teacher", spec, "--task", "attributes", "--data-root", data["unlabeled_images"],
                                "--val-data-root", data["val_images"], "--alpha", str(args.alpha),
                                "--resolution", str(args.resolution), "--epochs", str(args.epochs),
                                "--output-dir", tmp, "--seed", str(seed),
                                *(["--lr", str(lr)] if lr is not None else []), *args.extra]
                    res = run_distill(run_argv, threads=args.threads)
                per_seed.append(res)
                print(f"  lr {_fmt_lr(lr):>7} seed {seed}: agreement {res['agreement']:.4f} (peak lr "
                      f"{res['peak_lr']:.3g}, warmup {res['warmup_iters']}) in {res['wall_s']:.0f} s", flush=True)
            row["runs"][_fmt_lr(lr)] = {**per_seed[0], "agreement": float(np.mean([r["agreement"] for r in per_seed])),
                                        "agreements": [r["agreement"] for r in per_seed],
                                        "wall_s": float(np.mean([r["wall_s"] for r in per_seed]))}
        rows.append(row)
    if not args.no_default and args.lrs:
        print()
        print(format_table(rows, args.lrs))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": _machine(), "args": vars(args), "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
