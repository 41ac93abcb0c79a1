"""Distill a teacher into a MobileNet student over unlabeled images (MobileNets paper, Sections 4.5, 4.7).

    python -m distill.train --teacher SPEC --task {classification,attributes,embedding} --data-root DIR
        [--ann LABELS] [--val-data-root DIR --val-ann LABELS] --alpha A --resolution R --epochs N
        --batch-size B --output-dir OUT [--resume PATH] [--cache-teacher] [--config FILE]

Section 4.5 trains a MobileNet "to emulate the outputs of a larger model instead of the ground-truth
labels, hence enabling training from large (and potentially infinite) unlabeled datasets", with no
regularization; Section 4.7 does the same for FaceNet embeddings with a squared-difference loss.
The student sees every image under ``--data-root`` (any folder tree); the teacher's outputs on the same
batch are its targets. Where ``--ann`` labels some images, ``--hard-weight`` mixes in the ground
truth. Each evaluation writes ``teacher_agreement`` to metrics.jsonl: the share of decisions (top-1
class; each attribute's yes/no at 0.5; each image's nearest neighbour for embeddings) on which student
and teacher agree on the validation images (``--val-data-root``, or a held-out tenth of ``--data-root``);
best.pt is chosen by it.

Run with no arguments, it tells the paper's story on drawn faces (``distill.default``): a large timm
teacher trained briefly on a labeled split and frozen as TorchScript is distilled into a
0.5 MobileNet-128 from an unlabeled split, and both are scored by mean AP on a labeled validation split.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

import configs
from datasets.attributes import AttributeDataset
from datasets.images import ImageFiles, build_image_transform, list_images, split_holdout
from distill.agreement import emulation_cross_entropy, label_metric, teacher_agreement
from distill.cost import format_millions, student_cost
from distill.data import IGNORE_INDEX, compute_teacher_outputs, labelled_class_images, load_labels_for, teacher_cache
from distill.losses import (
    attribute_distillation_loss,
    embedding_distillation_loss,
    feature_hint_loss,
    hinton_kd_loss,
    make_hint_adapter,
)
from distill.recipe import apply_recipe
from distill.student import DistillModel
from distill.teachers import TASKS, Teacher, TeacherOutputError, load_teacher
from eval.attributes import AttributeAP, format_ap_table, plot_ap_bars
from tasks.checkpoint import checkpoint_meta, save_checkpoint
from tasks.classifier import ClassifierModelConfig, ImageDataConfig, predict_outputs
from tasks.cli import run_cli
from tasks.config import build_section, deep_merge, load_config, read_yaml_mapping
from tasks.distributed import DistInfo, pick_device
from tasks.engine import EngineConfig
from tasks.flags import add_alias, flag_overrides, train_parser
from tasks.lifecycle import Report, TrainJob, resolve_workers, run_training

__all__ = ["DEFAULT_CONFIG", "DistillConfig", "build_parser", "main", "resolve_config"]

DEFAULT_CONFIG = Path(configs.__file__).parent / "distill" / "default.yaml"
# Metrics where lower is better; every other metric is maximised.
_MIN_METRICS = ("loss", "emulation_ce", "kl", "embedding_sq_dist")


@dataclass
class DistillSection:
    """The teacher and how the student learns from it (the ``distill`` section)."""

    teacher: str | None = None  # torchscript:PATH | export:PATH | onnx:PATH | timm:NAME[:CKPT] | module:pkg.mod:fn
    task: str = "attributes"  # what the teacher's outputs are: classification, attributes or embedding
    teacher_input_size: int | None = None
    teacher_mean: tuple[float, float, float] | None = None
    teacher_std: tuple[float, float, float] | None = None
    teacher_config: str | None = None  # teacher YAML (else the one next to the teacher file)
    teacher_output: str | None = None  # logits | probabilities | embedding
    temperature: float = 1.0
    hard_weight: float = 0.0  # weight of the ground-truth loss where --ann labels exist
    normalize_embeddings: bool = False  # embedding task: compare unit vectors
    hint: str | None = None  # feature hint STUDENT_LAYER:TEACHER_INDEX, e.g. conv11:2
    hint_weight: float = 1.0
    cache_teacher: bool = False  # compute the teacher's outputs once (needs no augmentation)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"distill.task={self.task!r}: choose from {list(TASKS)}")
        if self.teacher_output not in (None, "logits", "probabilities", "embedding"):
            raise ValueError(f"distill.teacher_output={self.teacher_output!r}: logits, probabilities or embedding")
        if not self.temperature > 0:
            raise ValueError(f"distill.temperature={self.temperature!r}: must be > 0")
        if not self.hard_weight >= 0:
            raise ValueError(f"distill.hard_weight={self.hard_weight!r}: must be >= 0")


@dataclass
class DistillConfig:
    model: ClassifierModelConfig = field(default_factory=ClassifierModelConfig)
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    distill: DistillSection = field(default_factory=DistillSection)
    # The paper: distillation "requires no regularization (e.g. weight-decay and early-stopping)".
    train: EngineConfig = field(default_factory=lambda: EngineConfig(
        epochs=10, batch_size=64, optimizer="adamw", lr=1e-3, weight_decay=0.0, metric="teacher_agreement",
        metric_mode="max"))

    def validate(self) -> None:
        d, k = self.data, self.distill
        if not k.teacher or not d.root:
            raise ValueError("--teacher and --data-root are required (distill.teacher, data.root; "
                             "run with no arguments for the embedded default)")
        if k.cache_teacher and d.augment:
            raise ValueError("distill.cache_teacher (--cache-teacher) stores one teacher output per image, which is "
                             "only right without data.augment (--augment): the teacher must see what the student sees")
        if d.ann is None and k.hard_weight > 0:
            raise ValueError("distill.hard_weight > 0 (--hard-weight) needs labels (--ann)")
        if d.val_ann and not d.val_root:
            raise ValueError("data.val_ann (--val-ann) needs data.val_root (--val-data-root), the folder its names "
                             "are relative to")
        if d.val_ann and k.task == "embedding":
            raise ValueError("the embedding task takes no --val-ann")
        if k.hint and k.cache_teacher:
            raise ValueError("--hint needs the teacher in the loop; it cannot be combined with --cache-teacher")


def build_parser() -> argparse.ArgumentParser:
    p = train_parser("python -m distill.train", __doc__.split("\n\n")[0])
    g = p.add_argument_group("teacher and distillation (the distill section)")
    g.add_argument("--teacher", help="torchscript:PATH | export:PATH | onnx:PATH | timm:NAME[:CKPT] | "
                                     "module:pkg.mod:function")
    g.add_argument("--task", choices=TASKS, help="what the teacher outputs (default: attributes)")
    g.add_argument("--teacher-input-size", type=int)
    g.add_argument("--teacher-mean", type=float, nargs=3)
    g.add_argument("--teacher-std", type=float, nargs=3)
    g.add_argument("--teacher-config", help="teacher YAML (else the one next to the teacher file)")
    g.add_argument("--teacher-output", choices=("logits", "probabilities", "embedding"))
    g.add_argument("--temperature", type=float)
    g.add_argument("--hard-weight", type=float, help="weight of the ground-truth loss where --ann labels exist")
    g.add_argument("--normalize-embeddings", action="store_true", default=None,
                   help="embedding task: compare unit vectors")
    g.add_argument("--hint", help="feature hint STUDENT_LAYER:TEACHER_INDEX, e.g. conv11:2")
    g.add_argument("--hint-weight", type=float)
    g.add_argument("--cache-teacher", action="store_true", default=None,
                   help="compute teacher outputs once (no augmentation)")
    g.add_argument("--augment", action="store_true", default=None,
                   help="random resized crop + flip (not with --cache-teacher) [data.augment]")
    g.add_argument("--skip-bad-images", action="store_true", default=None,
                   help="skip and count missing/corrupt images [data.skip_bad_images]")
    g.add_argument("--val-fraction", type=float, help="held out of --data-root without --val-data-root")
    g.add_argument("--mean", type=float, nargs=3, help="student input normalisation [data.mean]")
    g.add_argument("--std", type=float, nargs=3, help="[data.std]")
    g.add_argument("--metric", help="metric that selects best.pt (default: teacher_agreement)")
    for old, new in (("--images", "--data-root"), ("--labels", "--ann"), ("--val-images", "--val-data-root"),
                     ("--val-labels", "--val-ann")):
        add_alias(p, old, new)
    return p


_TASK_FLAGS = {name: f"distill.{name}" for name in (
    "teacher", "task", "teacher_input_size", "teacher_mean", "teacher_std", "teacher_config", "teacher_output",
    "temperature", "hard_weight", "normalize_embeddings", "hint", "hint_weight", "cache_teacher")}
_TASK_FLAGS.update(augment="data.augment", skip_bad_images="data.skip_bad_images", val_fraction="data.val_fraction",
                   mean="data.mean", std="data.std", metric="train.metric")


def embedded_default(args: argparse.Namespace) -> bool:
    """No teacher, no images, no config: the paper's story on drawn faces (``distill.default``)."""
    return args.teacher is None and args.data_root is None and args.config is None


def resolve_config(args: argparse.Namespace) -> DistillConfig:
    """The YAML config (the embedded default's when nothing names a teacher) with the flags on top.

    Without a learning rate in the flags or the YAML, ``distill.recipe`` sets it from the batch size
    and the student's width (and a short warmup); the resolved values go into ``config.yaml``.
    """
    overrides = flag_overrides(args, _TASK_FLAGS)
    if args.metric is not None:
        overrides["train"]["metric_mode"] = "min" if args.metric in _MIN_METRICS else "max"
    embedded = embedded_default(args)
    source = DEFAULT_CONFIG if embedded else args.config
    yaml_train = (read_yaml_mapping(source).get("train") or {}) if source is not None else {}
    if embedded:
        from distill.default import prepare_default

        # every value is checked before the default's data and teacher are written (minutes on a CPU)
        build_section(DistillConfig, deep_merge(read_yaml_mapping(DEFAULT_CONFIG), overrides),
                      f"{DEFAULT_CONFIG} + command line")
        paths = prepare_default(device=pick_device(args.device))
        fill = {"distill": {"teacher": paths["teacher"]},
                "data": {"root": paths["images"], "val_root": paths["val_images"], "val_ann": paths["val_labels"]}}
        cfg = load_config(DistillConfig, None, overrides=deep_merge(fill, overrides), default=DEFAULT_CONFIG)
    else:
        cfg = load_config(DistillConfig, args.config, overrides=overrides)
    note = apply_recipe(cfg.train, cfg.model.alpha, lr_given=args.lr is not None or "lr" in yaml_train,
                        warmup_given=args.warmup_iters is not None or "warmup_iters" in yaml_train)
    if note and int(os.environ.get("RANK", "0")) == 0:
        print(note)
    return cfg


# --------------------------------------------------------------------------------------------------
# helpers


def _teacher_logits(task: str, output: str, t: Tensor) -> Tensor:
    """Teacher outputs as the losses expect them (logits); probabilities are converted."""
    if output != "probabilities":
        return t
    if task == "attributes":
        return torch.logit(t.clamp(1e-6, 1 - 1e-6))
    return torch.log(t.clamp_min(1e-8))


def _emulation_metrics(task: str, s: np.ndarray, t: np.ndarray) -> dict[str, float]:
    st, tt = torch.from_numpy(s), torch.from_numpy(t)
    out = {"teacher_agreement": teacher_agreement(task, st, tt)}
    if task == "attributes":
        out["emulation_ce"] = emulation_cross_entropy(st, tt)
    elif task == "classification":
        out["kl"] = float(hinton_kd_loss(st, tt))
    else:
        out["embedding_sq_dist"] = float(embedding_distillation_loss(st, tt))
        out["cosine"] = float(torch.nn.functional.cosine_similarity(st, tt, dim=1).mean())
    return out


def _build_data(cfg: DistillConfig) -> tuple[ImageFiles, ImageFiles, list[str] | None]:
    d, task, res = cfg.data, cfg.distill.task, cfg.model.resolution
    train_tf = build_image_transform(res, mean=d.mean, std=d.std, augment=d.augment)
    eval_tf = build_image_transform(res, mean=d.mean, std=d.std)
    names = list_images(d.root)
    if not names:
        raise ValueError(f"no image files found under {d.root}")
    targets, attr_names = (None, None)
    if d.ann:
        targets, attr_names = load_labels_for(task, d.ann, names)
    full = ImageFiles(names, train_tf, targets=targets, root=d.root, skip_bad_images=d.skip_bad_images)
    if d.val_root:
        train = full
        if d.val_ann and task == "attributes":
            val: ImageFiles = AttributeDataset(d.val_root, d.val_ann, eval_tf, skip_bad_images=d.skip_bad_images)
            if attr_names is not None and val.attribute_names != attr_names:
                raise ValueError(f"{d.val_ann} has attributes {val.attribute_names}, {d.ann} has {attr_names}")
            attr_names = val.attribute_names
        elif d.val_ann:
            val = labelled_class_images(d.val_root, d.val_ann, eval_tf, skip_bad_images=d.skip_bad_images)
        else:
            val = ImageFiles.from_folder(d.val_root, eval_tf, skip_bad_images=d.skip_bad_images)
    else:
        tr, va = split_holdout(len(full), d.val_fraction, cfg.train.seed)
        train, val = full.subset(tr), full.subset(va)
        val.transform = eval_tf
    return train, val, attr_names


def _hint_setup(cfg: DistillConfig, student: nn.Module, teacher: Teacher, probe: Tensor
                ) -> tuple[dict[str, nn.Module], dict[str, Any]] | None:
    if not cfg.distill.hint:
        return None
    if cfg.distill.cache_teacher:
        raise ValueError("--hint needs the teacher in the loop; it cannot be combined with --cache-teacher")
    layer, sep, t_idx = cfg.distill.hint.rpartition(":")
    if not sep or not layer:
        raise ValueError(f"--hint {cfg.distill.hint!r}: expected STUDENT_LAYER:TEACHER_INDEX, e.g. conv11:2")
    try:
        t_index = int(t_idx)
    except ValueError:
        raise ValueError(f"--hint {cfg.distill.hint!r}: teacher index {t_idx!r} is not an integer") from None
    infos = {f["name"]: f for f in getattr(student, "feature_info", [])}
    if layer not in infos:
        raise ValueError(f"--hint: student has no layer {layer!r}; layers: {list(infos)}")
    t_map = teacher.intermediates(probe, [t_index], mean=cfg.data.mean, std=cfg.data.std)[0]
    adapter = make_hint_adapter(infos[layer]["num_chs"], int(t_map.shape[1]))
    return {"hint": adapter}, {"module": infos[layer]["module"], "teacher_index": t_index}


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


# --------------------------------------------------------------------------------------------------
# the run


@dataclass
class _Prepared:
    teacher: Teacher
    train: ImageFiles
    val: ImageFiles
    attr_names: list[str] | None
    probe: Tensor
    width: int
    val_teacher: np.ndarray | None
    teacher_label: tuple[str, float, AttributeAP | None] | None
    teacher_val_s: float
    cache: Tensor | None


def _prepare(cfg: DistillConfig, dist: DistInfo, out_dir: Path) -> _Prepared:
    """Teacher, data, the teacher's validation outputs and (``--cache-teacher``) its training outputs.

    Runs on rank 0 first: under torchrun the cache file is written once and the other ranks read it.
    Each rank's teacher runs on that rank's own device.
    """
    d, k = cfg.data, cfg.distill
    say = print if dist.is_main else (lambda *a, **kw: None)
    teacher = load_teacher(k.teacher, input_size=k.teacher_input_size, mean=k.teacher_mean, std=k.teacher_std,
                           config=k.teacher_config, output=k.teacher_output, task=k.task, device=dist.device)
    say(f"teacher : {teacher.describe()}")
    train, val, attr_names = _build_data(cfg)
    if d.skip_bad_images:
        train.scan_images(progress=dist.is_main)
        val.scan_images(progress=dist.is_main)
    if attr_names is not None:
        teacher.expect_outputs(len(attr_names), f"the label file ({len(attr_names)} attributes)")
    say(f"data    : {len(train)} training images under {d.root}"
        f"{' (labels for some: ' + d.ann + ')' if d.ann else ''}; {len(val)} validation images "
        f"{'under ' + d.val_root if d.val_root else '(held out from --data-root)'}")
    # One real batch through the teacher: fails early, with the teacher's name, if it does not fit.
    probe = next(iter(DataLoader(val, batch_size=min(8, len(val)), shuffle=False)))["image"]
    teacher(probe, mean=d.mean, std=d.std)
    width = int(teacher.num_outputs)  # type: ignore[arg-type]
    if k.task == "classification" and train.targets is not None:
        known = train.targets[train.targets != IGNORE_INDEX]
        if known.size and known.max() >= width:
            raise TeacherOutputError(f"--ann {d.ann} has class {int(known.max())} but the teacher outputs "
                                     f"only {width} classes")
    workers = resolve_workers(d.workers, dist)
    val_teacher, teacher_label, teacher_val_s = None, None, 0.0
    if dist.is_main:  # only rank 0 evaluates
        t0 = time.perf_counter()
        val_teacher = _teacher_logits(k.task, teacher.output, compute_teacher_outputs(
            teacher, val, batch_size=cfg.train.batch_size, num_workers=workers, mean=d.mean, std=d.std,
            amp=cfg.train.amp, progress=True, desc="teacher on validation")).numpy()
        teacher_val_s = time.perf_counter() - t0
        teacher_label = label_metric(k.task, val_teacher, val.targets, attr_names)
        if teacher_label is not None:
            say(f"teacher : validation {teacher_label[0]} = {100 * teacher_label[1]:.2f}%")
    cache = None
    if k.cache_teacher:
        cache, reused = teacher_cache(out_dir / "teacher_outputs.pt", teacher, train, resolution=cfg.model.resolution,
                                      mean=d.mean, std=d.std, batch_size=cfg.train.batch_size, num_workers=workers,
                                      amp=cfg.train.amp, progress=dist.is_main)
        cache = _teacher_logits(k.task, teacher.output, cache)
        say(f"cache   : teacher outputs for {len(train)} images {'reused from' if reused else 'written to'} "
            f"{out_dir / 'teacher_outputs.pt'}")
    return _Prepared(teacher, train, val, attr_names, probe, width, val_teacher, teacher_label, teacher_val_s, cache)


def _build(cfg: DistillConfig, p: _Prepared, dist: DistInfo) -> TrainJob:
    d, k, task = cfg.data, cfg.distill, cfg.distill.task
    teacher, cache = p.teacher, p.cache
    spec = cfg.model.spec(p.width)
    student = cfg.model.build(p.width)
    hint = _hint_setup(cfg, student, teacher, p.probe)
    model = DistillModel(student, hint[0] if hint else None)
    captured: list[Tensor] = []
    if hint:
        # Keep the hinted map of training steps only (evaluation passes would pile up maps).
        student.get_submodule(hint[1]["module"]).register_forward_hook(
            lambda m, i, o: captured.append(o) if m.training else None)
    mean, std = list(d.mean), list(d.std)

    def loss_fn(net: nn.Module, batch: dict[str, Any], dev: torch.device) -> dict[str, Tensor]:
        images = batch["image"].to(dev, non_blocking=True)
        captured.clear()
        s = net(images)
        if cache is not None:
            t = cache[torch.as_tensor(batch["index"])].to(dev, non_blocking=True)
        else:
            t = _teacher_logits(task, teacher.output, teacher(images, mean=mean, std=std))
        labels = batch.get("target")
        labels = labels.to(dev, non_blocking=True) if labels is not None and k.hard_weight > 0 else None
        if task == "attributes":
            loss = attribute_distillation_loss(s, t, temperature=k.temperature, labels=labels,
                                               hard_weight=k.hard_weight)
        elif task == "classification":
            loss = hinton_kd_loss(s, t, temperature=k.temperature, labels=labels, hard_weight=k.hard_weight,
                                  ignore_index=IGNORE_INDEX)
        else:
            loss = embedding_distillation_loss(s, t, normalize=k.normalize_embeddings)
        losses = {"distill": loss}
        if hint:
            t_map = teacher.intermediates(images, [hint[1]["teacher_index"]], mean=mean, std=std)[0]
            adapter = _unwrap(net).hint_adapters["hint"]
            losses["hint"] = k.hint_weight * feature_hint_loss(captured[-1], t_map, adapter)
        return losses

    val_loader = DataLoader(p.val, batch_size=cfg.train.batch_size, shuffle=False,
                            num_workers=resolve_workers(d.workers, dist))
    timing: dict[str, float] = {}

    def scores(net: nn.Module) -> tuple[dict[str, float], Any]:
        t0 = time.perf_counter()
        s_out, _, idx = predict_outputs(net, val_loader, dist.device, amp=cfg.train.amp)
        timing["student_s"] = time.perf_counter() - t0
        metrics = _emulation_metrics(task, s_out, p.val_teacher[idx])
        lab = label_metric(task, s_out, p.val.targets[idx] if p.val.targets is not None else None, p.attr_names)
        if lab is not None:
            metrics[lab[0]] = lab[1]
            if lab[2] is not None:  # per-attribute AP next to the mean (NaN = no positive: left out)
                metrics.update({n: v for n, v in lab[2].as_dict().items() if n != "mean_ap" and not math.isnan(v)})
        return metrics, lab

    def evaluate_fn(net: nn.Module) -> dict[str, float]:
        return scores(net)[0]

    meta = checkpoint_meta("distill", "classifier", spec, resolution=cfg.model.resolution, mean=mean, std=std,
                           labels=p.attr_names or [], state_prefix="student.", train_only=["hint_adapters."],
                           output=task, teacher=k.teacher)

    def report(best: nn.Module, meta: Mapping[str, Any], out: Path) -> Report:
        metrics, lab = scores(best)
        # student.pt: the evaluated student alone, a plain MobileNet state dict (loads anywhere timm-style)
        student_meta = {**meta, "model": {**meta["model"], "state_prefix": "", "train_only": []},
                        "teacher_agreement": metrics["teacher_agreement"]}
        state = {n: v.detach().cpu() for n, v in best.state_dict().items()}
        save_checkpoint(out / "student.pt", {"model": state, "meta": student_meta})
        s_ma, s_params = student_cost(best, cfg.model.resolution)
        extra = {
            "distill_task": task, "teacher": k.teacher,
            "student": {"backbone": cfg.model.backbone, "alpha": cfg.model.alpha, "resolution": cfg.model.resolution},
            "validation_images": len(p.val), "teacher_agreement": metrics["teacher_agreement"],
            "teacher_metric": None if p.teacher_label is None else {p.teacher_label[0]: p.teacher_label[1]},
            "student_mult_adds": s_ma, "student_params": s_params,
            "teacher_mult_adds": teacher.mult_adds(), "teacher_params": teacher.num_parameters(),
            "teacher_val_img_per_s": len(p.val) / max(p.teacher_val_s, 1e-9),
            "student_val_img_per_s": len(p.val) / max(timing.get("student_s", 0.0), 1e-9),
            "student_checkpoint": str(out / "student.pt"),
        }
        text = _format_summary(extra, p.teacher_label, lab)
        plots = []
        if p.teacher_label is not None and lab is not None and p.teacher_label[2] is not None:
            plots.append(plot_ap_bars({"teacher": p.teacher_label[2], "student": lab[2]}, out / "val_ap.png",
                                      title=f"teacher and student on {len(p.val)} validation images"))
        return Report(metrics=metrics, text=text, extra=extra, plots=plots)

    lines = [f"student : {cfg.model.backbone} alpha {cfg.model.alpha} @ {cfg.model.resolution}, {p.width} outputs; "
             f"{task} distillation{' from cached teacher outputs' if cache is not None else ' with the teacher in the loop'}"]
    metric = cfg.train.metric
    return TrainJob(model=model, train_set=p.train, loss_fn=loss_fn, meta=meta, evaluate_fn=evaluate_fn,
                    metric=metric, metric_mode=cfg.train.metric_mode, report=report, val_set=p.val, lines=lines)


def _format_summary(summary: dict[str, Any], teacher_label: Any, student_label: Any) -> str:
    task = summary["distill_task"]
    what = {"classification": "top-1 classes", "attributes": "attribute yes/no decisions at 0.5",
            "embedding": "nearest neighbours"}[task]
    lines = [f"teacher agreement: {100 * summary['teacher_agreement']:.2f}% of {what} on "
             f"{summary['validation_images']} validation images"]
    metric_name = teacher_label[0] if teacher_label is not None else None
    head = f"{'model':<10}" + (f"{metric_name:>10}" if metric_name else "") + f"{'M Mult-Adds':>14}{'M params':>11}"
    lines += ["", head, "-" * len(head)]
    for who, lab, ma, params in (("teacher", teacher_label, summary["teacher_mult_adds"], summary["teacher_params"]),
                                 ("student", student_label, summary["student_mult_adds"], summary["student_params"])):
        val = (f"{100 * lab[1]:>9.2f}%" if lab is not None else f"{'n/a':>10}") if metric_name else ""
        lines.append(f"{who:<10}{val}{format_millions(ma):>14}{format_millions(params):>11}")
    if summary["teacher_mult_adds"] and summary["student_mult_adds"]:
        share = 100 * summary["student_mult_adds"] / summary["teacher_mult_adds"]
        lines.append(f"student / teacher Mult-Adds: {share:.1f}%"
                     "  (teacher parameters: all tensors; student: conv + FC weights, as the paper counts)")
    if teacher_label is not None and student_label is not None and teacher_label[2] is not None:
        lines += ["", format_ap_table({"teacher": teacher_label[2], "student": student_label[2]})]
    lines += ["", f"student weights: {summary['student_checkpoint']} (the network alone)"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    cfg = resolve_config(args)
    output_dir = Path(args.output_dir or ("runs/distill_default" if embedded_default(args) else "runs/distill"))
    summary = run_training("distill", cfg, output_dir=output_dir,
                           prepare=lambda c, dist: _prepare(c, dist, output_dir), build=_build,
                           device=args.device, resume=args.resume, resume_anyway=args.resume_anyway)
    return summary


if __name__ == "__main__":
    run_cli(main)
