"""Train face embeddings: triplets / margin softmax on identity folders, or distillation (Section 4.7).

MobileNets Section 4.7 / Table 14 trains a MobileNet to reproduce FaceNet's embeddings "by minimizing
the squared differences of the output of FaceNet and MobileNet on the training data" (``--teacher``).
Without a teacher the model learns from identity labels with FaceNet's triplet loss and online
semi-hard mining (default), batch-hard triplets, or CosFace/ArcFace.

Usage:
    python -m tasks.faces.train                      # built-in synthetic identities, a few CPU minutes
    python -m tasks.faces.train --data-root CASIA/ --val-pairs lfw/pairs.txt --val-root lfw/ \
        --alpha 1.0 --resolution 160 --epochs 40 --batch-size 180 --loss semihard --output-dir runs/f
    python -m tasks.faces.train --data-root CASIA/ --teacher torchscript:facenet.pt [--loss distill+semihard]

Each epoch writes ``last.pt`` (and ``best.pt`` when the validation accuracy improves) through the
shared engine; at the end ``best.pt`` is scored on the validation pairs through the same code as
``python -m tasks.faces.evaluate`` and the ROC is saved as ``roc.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from datasets.faces import IdentityFolder, PairList, read_pairs
from eval.verification import plot_roc
from tasks.cli import run_cli
from tasks.checkpoint import atomic_write_text
from tasks.distributed import barrier, init_distributed
from tasks.engine import fit, seed_everything
from tasks.faces.config import FacesConfig, load_config
from tasks.faces.data import PKSampler
from tasks.faces.evaluate import evaluate_pairs
from tasks.faces.losses import (
    collapse_score,
    embedding_distill_loss,
    triplet_batch_hard_loss,
    triplet_semihard_loss,
)
from tasks.faces.model import FaceEmbedder, load_face_model

__all__ = ["FaceLoss", "build_parser", "main", "resolve_config"]

COLLAPSE_SPREAD = 0.05  # embedding spread below this (see collapse_score) counts as collapsed
COLLAPSE_PATIENCE = 20  # consecutive collapsed batches before warning


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tasks.faces.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="experiment YAML (default: configs/faces/synthetic.yaml)")
    p.add_argument("--data-root", help="identity folders root/<identity>/<image>; omit for synthetic identities")
    p.add_argument("--val-pairs", help="LFW-format pairs.txt scored after every epoch")
    p.add_argument("--val-root", help="image folder of --val-pairs")
    p.add_argument("--output-dir", help="default: runs/faces/<config name>")
    p.add_argument("--teacher", help="distillation teacher spec (torchscript:/export:/onnx:/timm:/module:)")
    p.add_argument("--teacher-input-size", type=int, help="teacher input side (if its files do not say)")
    p.add_argument("--teacher-mean", type=float, nargs=3, metavar=("R", "G", "B"), help="teacher input mean (0..1)")
    p.add_argument("--teacher-std", type=float, nargs=3, metavar=("R", "G", "B"), help="teacher input std (0..1)")
    p.add_argument("--teacher-config", help="teacher YAML (input_size, mean, std, output_index, ...)")
    p.add_argument("--loss", help="semihard | batchhard | cosface | arcface | distill, or '+'-joined "
                                  "(e.g. distill+semihard)")
    p.add_argument("--margin", type=float, help="triplet margin (FaceNet alpha)")
    p.add_argument("--backbone", help="mobilenet_v1 or a timm model name")
    p.add_argument("--alpha", type=float, help="MobileNet width multiplier")
    p.add_argument("--resolution", type=int, help="input side in pixels")
    p.add_argument("--embedding-dim", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="P x K: identities per batch times images per identity")
    p.add_argument("--images-per-identity", type=int, help="K")
    p.add_argument("--lr", type=float)
    p.add_argument("--workers", type=int, help="data loader workers")
    p.add_argument("--resume", help="checkpoint (last.pt) to continue from")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--amp", action="store_true", help="mixed precision (fp16 on CUDA, bf16 on CPU)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice; 1 is faster on a "
                                               "busy shared machine)")
    p.add_argument("--seed", type=int)
    return p


def resolve_config(args: argparse.Namespace) -> FacesConfig:
    """The YAML config with the command-line flags applied on top."""
    cfg = load_config(args.config)
    if args.data_root:
        cfg.data.root = args.data_root
        if not (args.val_pairs or args.val_root):  # the synthetic validation set does not fit real data
            cfg.data.val_pairs = cfg.data.val_root = None
    if args.val_pairs or args.val_root:
        cfg.data.val_pairs, cfg.data.val_root = args.val_pairs, args.val_root
    for flag, section, key in (
        ("backbone", cfg.model, "backbone"), ("alpha", cfg.model, "alpha"), ("resolution", cfg.model, "resolution"),
        ("embedding_dim", cfg.model, "embedding_dim"), ("epochs", cfg.train, "epochs"), ("lr", cfg.train, "lr"),
        ("seed", cfg.train, "seed"), ("workers", cfg.data, "num_workers"), ("margin", cfg.loss, "margin"),
        ("images_per_identity", cfg.sampler, "images_per_identity"),
    ):
        value = getattr(args, flag)
        if value is not None:
            setattr(section, key, value)
    for flag in ("teacher_input_size", "teacher_mean", "teacher_std", "teacher_config"):
        if getattr(args, flag) is not None:
            setattr(cfg.loss, flag, getattr(args, flag))
    if args.teacher:
        cfg.loss.teacher = args.teacher
        if args.loss is None and "distill" not in cfg.loss.parts():
            cfg.loss.name = "distill"
    if args.loss is not None:
        cfg.loss.name = args.loss
    if args.batch_size is not None:
        k = cfg.sampler.images_per_identity
        if args.batch_size % k or args.batch_size // k < 2:
            raise ValueError(f"--batch-size {args.batch_size} must be a multiple of images per identity K={k} "
                             "holding at least 2 identities (set K with --images-per-identity)")
        cfg.sampler.identities_per_batch = args.batch_size // k
    cfg.train.amp = cfg.train.amp or args.amp
    cfg.model = type(cfg.model).from_dict(cfg.model.to_dict(), source="command line")  # re-validate
    cfg.train = type(cfg.train).from_dict(cfg.train.to_dict(), source="command line")
    cfg.validate("command line")
    return cfg


# --------------------------------------------------------------------------------------------------
# loss


class FaceLoss:
    """``loss_fn(model, batch, device)`` for the engine: the configured sum of loss terms.

    Also watches for collapse (every embedding on one point, the failure mode of batch-hard triplets
    from a random start: the hinge then sits exactly at the margin) and warns once.
    """

    def __init__(self, cfg: FacesConfig, teacher: nn.Module | None = None, *, verbose: bool = True):
        self.cfg = cfg
        self.parts = cfg.loss.parts()
        self.teacher = teacher
        self.verbose = verbose
        self.collapsed_steps = 0
        self.warned = False
        self.last_spread = float("nan")

    def __call__(self, model: nn.Module, batch: Any, device: torch.device) -> dict[str, Tensor]:
        images, labels = batch
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        lc = self.cfg.loss
        out: dict[str, Tensor] = {}
        if "cosface" in self.parts or "arcface" in self.parts:
            emb, ce = model(images, labels)
            out["softmax"] = lc.softmax_weight * ce
        else:
            emb = model(images)
        if "semihard" in self.parts:
            sq = True if lc.squared is None else lc.squared
            out["triplet"] = lc.triplet_weight * triplet_semihard_loss(emb, labels, lc.margin, squared=sq)
        elif "batchhard" in self.parts:
            sq = False if lc.squared is None else lc.squared
            out["triplet"] = lc.triplet_weight * triplet_batch_hard_loss(emb, labels, lc.margin, soft=lc.soft,
                                                                         squared=sq)
        if "distill" in self.parts:
            assert self.teacher is not None
            out["distill"] = lc.distill_weight * embedding_distill_loss(emb, self._teacher_embeddings(images))
        self._watch(emb)
        return out

    @torch.no_grad()
    def _teacher_embeddings(self, images: Tensor) -> Tensor:
        # the Teacher resizes/renormalises the student's [0, 1] batch for its own input
        t = self.teacher(images).float().to(images.device)
        # FaceNet's embedding is L2-normalised; normalising any teacher puts both on the unit sphere
        return F.normalize(t, dim=1)

    def _watch(self, emb: Tensor) -> None:
        self.last_spread = collapse_score(emb.detach())
        self.collapsed_steps = self.collapsed_steps + 1 if self.last_spread < COLLAPSE_SPREAD else 0
        if self.collapsed_steps >= COLLAPSE_PATIENCE and not self.warned:
            self.warned = True
            if self.verbose:
                tqdm.write(
                    f"warning: embeddings have collapsed (spread {self.last_spread:.3f} for {self.collapsed_steps} "
                    f"batches; a triplet loss stuck at the margin {self.cfg.loss.margin} means the same). "
                    "Use --loss semihard or cosface, a lower --lr, or more identities per batch."
                )


def load_embedding_teacher(cfg: FacesConfig, device: torch.device, *, dim_given: bool) -> Any:
    """Load the distillation teacher (``distill.teachers``) and match the student's embedding size to it.

    The student reproduces the teacher's embedding (Section 4.7), so it needs the teacher's width: when
    the embedding size was not set explicitly it is taken from the teacher, otherwise they must agree.
    """
    from distill.teachers import load_teacher

    lc = cfg.loss
    teacher = load_teacher(lc.teacher, input_size=lc.teacher_input_size, mean=lc.teacher_mean, std=lc.teacher_std,
                           config=lc.teacher_config, task="embedding", device=device)
    probe = torch.rand(2, 3, cfg.model.resolution, cfg.model.resolution)
    width = int(teacher(probe).shape[1])
    if width != cfg.model.embedding_dim:
        if dim_given:
            raise ValueError(f"teacher {lc.teacher} outputs {width}-d embeddings but the student's embedding_dim is "
                             f"{cfg.model.embedding_dim}; distillation needs equal sizes (drop --embedding-dim or "
                             f"set it to {width})")
        cfg.model.embedding_dim = width
    return teacher


# --------------------------------------------------------------------------------------------------
# main


def _model_keys(config_path: str) -> set[str]:
    import yaml

    data = yaml.safe_load(Path(config_path).read_text()) or {}
    return set((data.get("model") or {}).keys())


def _data(cfg: FacesConfig, is_main: bool) -> tuple[IdentityFolder, PairList | None]:
    if cfg.data.root is None:
        from datasets.synthetic_identities import ensure_synthetic_faces

        paths = ensure_synthetic_faces(**cfg.data.synthetic, progress=is_main)
        cfg.data.root = paths["train"]
        if cfg.data.val_pairs is None:
            cfg.data.val_pairs, cfg.data.val_root = paths["pairs"], paths["test"]
    train = IdentityFolder(cfg.data.root, resolution=cfg.model.resolution, center_crop=cfg.model.center_crop,
                           min_images=cfg.data.min_images)
    pairs = read_pairs(cfg.data.val_pairs, cfg.data.val_root) if cfg.data.val_pairs else None
    if pairs is not None:
        overlap = {s.path for s in train.samples} & set(pairs.unique_paths())
        if overlap:
            raise ValueError(f"{len(overlap)} validation image(s) are also training images, e.g. "
                             f"{sorted(overlap)[0]}; validation must use held-out data")
    return train, pairs


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    args = build_parser().parse_args(argv)
    cfg = resolve_config(args)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    config_name = Path(args.config).stem if args.config else "synthetic"
    output_dir = Path(args.output_dir or Path("runs") / "faces" / config_name)

    dist = init_distributed(device)
    if not dist.is_main:  # rank 0 writes the synthetic set once; the others wait and read it
        barrier(dist)
    train, pairs = _data(cfg, dist.is_main)
    if dist.is_main:
        barrier(dist)
    parts = cfg.loss.parts()
    teacher = None
    if "distill" in parts:
        given = args.embedding_dim is not None or (
            args.config is not None and "embedding_dim" in _model_keys(args.config))
        teacher = load_embedding_teacher(cfg, dist.device, dim_given=given)
    margin_kind = next((p for p in parts if p in ("cosface", "arcface")), None)
    seed_everything(cfg.train.seed + dist.rank)  # the model's initial weights too, not only training
    batches = PKSampler(train.labels, cfg.sampler.identities_per_batch, cfg.sampler.images_per_identity,
                        batches_per_epoch=cfg.sampler.batches_per_epoch, seed=cfg.train.seed, source=train.root)
    train_set = train.augmented() if cfg.data.augment else train
    model = FaceEmbedder(cfg.model, num_classes=len(train.identities) if margin_kind else 0,
                         margin_kind=margin_kind or "cosface", margin_scale=cfg.loss.scale,
                         margin_value=cfg.loss.softmax_margin)
    if dist.is_main:
        n_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("margin."))
        print(f"train: {len(train)} images of {len(train.identities)} identities in {cfg.data.root}")
        print(f"model: {cfg.model.backbone} alpha {cfg.model.alpha} @ {cfg.model.resolution}px -> "
              f"{cfg.model.embedding_dim}-d, {n_params / 1e6:.2f} M parameters | loss {cfg.loss.name} | "
              f"batches {cfg.sampler.identities_per_batch} x {cfg.sampler.images_per_identity}, "
              f"{len(batches)} per epoch")
        if teacher is not None:
            print(f"teacher: {teacher.describe()}")
        if pairs is not None:
            print(f"val:   {len(pairs)} pairs ({int(pairs.same.sum())} same) from {cfg.data.val_pairs}")
        else:
            print("no validation pairs: best.pt is chosen by the training loss, and no accuracy is reported")

    evaluate_fn = None
    if pairs is not None:
        cfg.train.metric, cfg.train.metric_mode = "accuracy", "max"

        def evaluate_fn(m: nn.Module) -> dict[str, float]:
            result, extra = evaluate_pairs(m, pairs, batch_size=cfg.data.eval_batch_size, device=dist.device)
            return {**result.metrics(), **extra}
    else:
        cfg.train.metric, cfg.train.metric_mode = "loss", "min"

    loss_fn = FaceLoss(cfg, teacher, verbose=dist.is_main)
    meta = {"task": "faces", "face_model": cfg.model.to_dict(), "identities": list(train.identities),
            "loss": cfg.loss.name}
    result = fit(model, train_set, cfg=cfg.train, batch_sampler=batches, output_dir=output_dir, loss_fn=loss_fn,
                 evaluate_fn=evaluate_fn, num_workers=cfg.data.num_workers,
                 device=dist.device, resume=args.resume, meta=meta, config_dict=cfg.to_dict())
    summary: dict[str, Any] = {"best_checkpoint": str(result.best_path), "last_checkpoint": str(result.last_path),
                               "output_dir": str(output_dir)}
    if not dist.is_main:
        return summary
    if loss_fn.warned:
        print(f"warning: the embeddings collapsed during training (last batch spread {loss_fn.last_spread:.3f})")
    if pairs is not None and result.best_path is not None:
        best, fp = load_face_model(result.best_path, dist.device)
        vr, extra = evaluate_pairs(best, pairs, batch_size=cfg.data.eval_batch_size, device=dist.device)
        plot_roc(vr, output_dir / "roc.png", title=f"held-out verification: {Path(result.best_path).name}")
        record = {"checkpoint": str(result.best_path), "fingerprint": fp, **vr.metrics(), **extra}
        atomic_write_text(output_dir / "verification.json", json.dumps(record, indent=2) + "\n")
        print(f"\nverification of {result.best_path} on {len(pairs)} held-out pairs ({cfg.data.val_pairs}):")
        print(vr.summary())
        print(f"embedding spread : {extra['embedding_spread']:.3f}")
        print(f"ROC plot         : {output_dir / 'roc.png'}")
        summary.update(vr.metrics(), **extra)
    summary["wall_time_s"] = time.perf_counter() - t0
    print(f"total time       : {summary['wall_time_s']:.1f} s")
    return summary


if __name__ == "__main__":
    run_cli(main)
