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

from backbone import load_pretrained
from datasets.faces import IdentityFolder, PairList, read_pairs
from eval.verification import plot_roc
from tasks.checkpoint import atomic_write_text, checkpoint_meta
from tasks.cli import run_cli
from tasks.config import read_yaml_mapping
from tasks.distributed import DistInfo
from tasks.faces.config import DEFAULT_CONFIG, FacesConfig, load_config
from tasks.faces.data import PKSampler
from tasks.faces.evaluate import evaluate_pairs
from tasks.faces.losses import (
    collapse_score,
    embedding_distill_loss,
    triplet_batch_hard_loss,
    triplet_semihard_loss,
)
from tasks.faces.model import MARGIN_PREFIX, FaceEmbedder, fingerprint
from tasks.flags import add_alias, flag_overrides, train_parser
from tasks.lifecycle import Report, TrainJob, run_training

__all__ = ["FaceLoss", "build_parser", "main", "resolve_config"]

COLLAPSE_SPREAD = 0.05  # embedding spread below this (see collapse_score) counts as collapsed
COLLAPSE_PATIENCE = 20  # consecutive collapsed batches before warning


def build_parser() -> argparse.ArgumentParser:
    p = train_parser("python -m tasks.faces.train", __doc__.split("\n\n")[0],
                     default_config="configs/faces/synthetic.yaml")
    g = p.add_argument_group("faces (--data-root: identity folders root/<identity>/<image>; --val-ann: an "
                             "LFW-format pairs.txt over the images under --val-data-root)")
    g.add_argument("--teacher", help="distillation teacher spec (torchscript:/export:/onnx:/timm:/module:)")
    g.add_argument("--teacher-input-size", type=int, help="teacher input side (if its files do not say)")
    g.add_argument("--teacher-mean", type=float, nargs=3, metavar=("R", "G", "B"), help="teacher input mean (0..1)")
    g.add_argument("--teacher-std", type=float, nargs=3, metavar=("R", "G", "B"), help="teacher input std (0..1)")
    g.add_argument("--teacher-config", help="teacher YAML (input_size, mean, std, output_index, ...)")
    g.add_argument("--loss", help="semihard | batchhard | cosface | arcface | distill, or '+'-joined "
                                  "(e.g. distill+semihard)")
    g.add_argument("--margin", type=float, help="triplet margin (FaceNet alpha)")
    g.add_argument("--embedding-dim", type=int)
    g.add_argument("--images-per-identity", type=int, help="K of the P x K batches (--batch-size = P x K)")
    g.add_argument("--skip-bad-images", action="store_true", default=None,
                   help="skip and count undecodable images [data.skip_bad_images]")
    g.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice; 1 is faster on a "
                                               "busy shared machine)")
    add_alias(p, "--val-pairs", "--val-ann")
    add_alias(p, "--val-root", "--val-data-root")
    return p


_TASK_FLAGS = {
    "margin": "loss.margin", "embedding_dim": "model.embedding_dim",
    "images_per_identity": "sampler.images_per_identity", "teacher": "loss.teacher",
    "teacher_input_size": "loss.teacher_input_size", "teacher_mean": "loss.teacher_mean",
    "teacher_std": "loss.teacher_std", "teacher_config": "loss.teacher_config", "loss": "loss.name",
    "skip_bad_images": "data.skip_bad_images",
}


def resolve_config(args: argparse.Namespace) -> FacesConfig:
    """The YAML config with the command-line flags applied on top, validated once."""
    overrides = flag_overrides(args, _TASK_FLAGS)
    if args.data_root and not (args.val_ann or args.val_data_root):
        # the synthetic validation pairs belong to the synthetic identities, not to the user's data
        overrides["data"].update(val_ann=None, val_root=None)
    if args.teacher and args.loss is None:
        base = FacesConfig.from_dict(read_yaml_mapping(args.config or DEFAULT_CONFIG), source="config")
        if "distill" not in base.loss.parts():
            overrides["loss"]["name"] = "distill"
    return load_config(args.config, overrides)


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


def _prepare(cfg: FacesConfig, dist: DistInfo) -> tuple[IdentityFolder, PairList | None]:
    if cfg.data.root is None:
        from datasets.synthetic_identities import ensure_synthetic_faces

        paths = ensure_synthetic_faces(**cfg.data.synthetic, progress=dist.is_main)
        cfg.data.root = paths["train"]
        if cfg.data.val_ann is None:
            cfg.data.val_ann, cfg.data.val_root = paths["pairs"], paths["test"]
    train = IdentityFolder(cfg.data.root, resolution=cfg.model.resolution, center_crop=cfg.model.center_crop,
                           min_images=cfg.data.min_images, skip_bad_images=cfg.data.skip_bad_images)
    if cfg.data.skip_bad_images:
        train.scan_images(progress=dist.is_main)
    pairs = read_pairs(cfg.data.val_ann, cfg.data.val_root) if cfg.data.val_ann else None
    if pairs is not None:
        overlap = {s.path for s in train.samples} & set(pairs.unique_paths())
        if overlap:
            raise ValueError(f"{len(overlap)} validation image(s) are also training images, e.g. "
                             f"{sorted(overlap)[0]}; validation must use held-out data")
    return train, pairs


def _build(cfg: FacesConfig, data: tuple[IdentityFolder, PairList | None], dist: DistInfo,
           *, dim_given: bool) -> TrainJob:
    train, pairs = data
    parts = cfg.loss.parts()
    teacher = load_embedding_teacher(cfg, dist.device, dim_given=dim_given) if "distill" in parts else None
    margin_kind = next((p for p in parts if p in ("cosface", "arcface")), None)
    batches = PKSampler(train.labels, cfg.identities_per_batch, cfg.sampler.images_per_identity,
                        batches_per_epoch=cfg.sampler.batches_per_epoch, seed=cfg.train.seed, source=train.root)
    train_set = train.augmented() if cfg.data.augment else train
    network = cfg.model.network()
    model = FaceEmbedder(network, num_classes=len(train.identities) if margin_kind else 0,
                         margin_kind=margin_kind or "cosface", margin_scale=cfg.loss.scale,
                         margin_value=cfg.loss.softmax_margin)
    if cfg.model.pretrained_backbone:
        load_pretrained(model.backbone, cfg.model.pretrained_backbone)
    n_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("margin."))
    lines = [f"train: {len(train)} images of {len(train.identities)} identities in {cfg.data.root}",
             f"model: {network.backbone} alpha {network.alpha} @ {network.resolution}px -> "
             f"{network.embedding_dim}-d, {n_params / 1e6:.2f} M parameters | loss {cfg.loss.name} | "
             f"batches {cfg.identities_per_batch} x {cfg.sampler.images_per_identity}, {len(batches)} per epoch"]
    if teacher is not None:
        lines.append(f"teacher: {teacher.describe()}")
    if pairs is not None:
        lines.append(f"val:   {len(pairs)} pairs ({int(pairs.same.sum())} same) from {cfg.data.val_ann}")
    else:
        lines.append("no validation pairs: best.pt is chosen by the training loss, and no accuracy is reported")
    loss_fn = FaceLoss(cfg, teacher, verbose=dist.is_main)
    meta = checkpoint_meta("faces", "face_embedder", network.to_dict(), resolution=network.resolution,
                           labels=train.identities, train_only=[MARGIN_PREFIX], center_crop=network.center_crop,
                           loss=cfg.loss.name)
    job = TrainJob(model=model, train_set=train_set, loss_fn=loss_fn, meta=meta, batch_sampler=batches, lines=lines)
    if pairs is None:
        return job

    def evaluate_fn(m: nn.Module) -> dict[str, float]:
        result, extra = evaluate_pairs(m, pairs, batch_size=cfg.data.eval_batch_size, device=dist.device)
        return {**result.metrics(), **extra}

    def report(best: nn.Module, meta: dict[str, Any], out: Path) -> Report:
        vr, extra = evaluate_pairs(best, pairs, batch_size=cfg.data.eval_batch_size, device=dist.device)
        roc = plot_roc(vr, out / "roc.png", title="held-out verification: best.pt")
        fp = fingerprint(best.state_dict(), best.cfg)
        record = {"checkpoint": str(out / "best.pt"), "fingerprint": fp, **vr.metrics(), **extra}
        atomic_write_text(out / "verification.json", json.dumps(record, indent=2) + "\n")
        text = (f"verification on {len(pairs)} held-out pairs ({cfg.data.val_ann}):\n{vr.summary()}\n"
                f"embedding spread : {extra['embedding_spread']:.3f}")
        if loss_fn.warned:
            text += f"\nwarning: the embeddings collapsed during training (last batch spread {loss_fn.last_spread:.3f})"
        return Report(metrics={**vr.metrics(), **extra}, text=text, plots=[roc])

    job.evaluate_fn, job.metric, job.metric_mode, job.report = evaluate_fn, "accuracy", "max", report
    return job


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    cfg = resolve_config(args)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    config_name = Path(args.config).stem if args.config else DEFAULT_CONFIG.stem
    output_dir = Path(args.output_dir or Path("runs") / "faces" / config_name)
    # the student's embedding size follows the teacher's unless the user set it
    dim_given = args.embedding_dim is not None or (
        args.config is not None and "embedding_dim" in (read_yaml_mapping(args.config).get("model") or {}))
    summary = run_training("faces", cfg, output_dir=output_dir, prepare=_prepare,
                           build=lambda c, d, dist: _build(c, d, dist, dim_given=dim_given),
                           device=args.device, resume=args.resume, resume_anyway=args.resume_anyway)
    summary.update(summary.get("metrics", {}))
    return summary


if __name__ == "__main__":
    run_cli(main)
