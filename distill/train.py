"""Distill a teacher into a MobileNet student over unlabeled images (MobileNets paper, Sections 4.5, 4.7).

    python -m distill.train --teacher SPEC --task {classification,attributes,embedding} --images DIR
        [--labels FILE] [--val-images DIR --val-labels FILE] --alpha A --resolution R --epochs N
        --batch-size B --output-dir OUT [--resume PATH] [--cache-teacher] [--config FILE]

Section 4.5 trains a MobileNet "to emulate the outputs of a larger model instead of the ground-truth
labels, hence enabling training from large (and potentially infinite) unlabeled datasets", with no
regularization; Section 4.7 does the same for FaceNet embeddings with a squared-difference loss.
The student sees every image in ``--images`` (any folder tree); the teacher's outputs on the same
batch are its targets. Where ``--labels`` names some images, ``--hard-weight`` mixes in the ground
truth. Each evaluation writes ``teacher_agreement`` to metrics.jsonl: the share of decisions (top-1
class; each attribute's yes/no at 0.5; each image's nearest neighbour for embeddings) on which student
and teacher agree on the validation images (``--val-images``, or a held-out tenth of ``--images``).

Run with no arguments, it tells the paper's story on drawn faces (``distill.default``): a large timm
teacher trained briefly on a labeled split and frozen as TorchScript is distilled into a
0.5 MobileNet-128 from an unlabeled split, and both are scored by mean AP on a labeled validation split.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

import configs
from datasets.attributes import AttributeDataset
from datasets.images import IMAGENET_MEAN, IMAGENET_STD, ImageFiles, build_image_transform, list_images, split_holdout
from distill.agreement import emulation_cross_entropy, teacher_agreement
from distill.cli import add_engine_flags, build_engine_config, parse_with_config, pick_device
from distill.cost import format_millions, student_cost
from distill.data import IGNORE_INDEX, compute_teacher_outputs, load_labels_for, read_class_labels, teacher_cache
from distill.losses import (
    attribute_distillation_loss,
    embedding_distillation_loss,
    feature_hint_loss,
    hinton_kd_loss,
    make_hint_adapter,
)
from distill.recipe import apply_recipe
from distill.student import DistillModel, build_student, save_student, student_spec
from distill.teachers import TASKS, Teacher, TeacherOutputError, load_teacher
from eval.attributes import AttributeAP, format_ap_table, mean_average_precision
from tasks.attributes.model import predict_outputs
from tasks.checkpoint import atomic_write_text
from tasks.engine import fit, seed_everything

__all__ = ["DEFAULT_CONFIG", "build_parser", "main", "run"]

DEFAULT_CONFIG = Path(configs.__file__).parent / "distill" / "default.yaml"
# Metrics where lower is better; every other metric is maximised.
_MIN_METRICS = ("loss", "emulation_ce", "kl", "embedding_sq_dist")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m distill.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default=None, help="YAML with any of these flags (and an 'engine' mapping)")
    t = p.add_argument_group("teacher")
    t.add_argument("--teacher", default=None,
                   help="torchscript:PATH | export:PATH | onnx:PATH | timm:NAME[:CKPT] | module:pkg.mod:function")
    t.add_argument("--task", choices=TASKS, default="attributes")
    t.add_argument("--teacher-input-size", type=int, default=None)
    t.add_argument("--teacher-mean", type=float, nargs=3, default=None)
    t.add_argument("--teacher-std", type=float, nargs=3, default=None)
    t.add_argument("--teacher-config", default=None, help="teacher YAML (else the one next to the teacher file)")
    t.add_argument("--teacher-output", choices=("logits", "probabilities", "embedding"), default=None)
    d = p.add_argument_group("data")
    d.add_argument("--images", default=None, help="folder tree of (unlabeled) training images")
    d.add_argument("--labels", default=None, help="optional ground truth for some of --images")
    d.add_argument("--val-images", default=None, help="validation images (default: a held-out part of --images)")
    d.add_argument("--val-labels", default=None, help="labels of --val-images: scores both models")
    d.add_argument("--val-fraction", type=float, default=0.1)
    d.add_argument("--skip-bad-images", action="store_true", help="skip and count missing/corrupt images")
    d.add_argument("--augment", action="store_true", help="random resized crop + flip (not with --cache-teacher)")
    d.add_argument("--mean", type=float, nargs=3, default=list(IMAGENET_MEAN), help="student normalisation")
    d.add_argument("--std", type=float, nargs=3, default=list(IMAGENET_STD))
    d.add_argument("--workers", type=int, default=None, help="DataLoader workers (default 0 on CPU, 4 on CUDA)")
    s = p.add_argument_group("student and loss")
    s.add_argument("--backbone", default="mobilenet_v1")
    s.add_argument("--alpha", type=float, default=1.0, help="width multiplier")
    s.add_argument("--resolution", type=int, default=224, help="student input size")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--hard-weight", type=float, default=0.0, help="weight of the ground-truth loss where labels exist")
    s.add_argument("--normalize-embeddings", action="store_true", help="embedding task: compare unit vectors")
    s.add_argument("--hint", default=None, help="feature hint STUDENT_LAYER:TEACHER_INDEX, e.g. conv11:2")
    s.add_argument("--hint-weight", type=float, default=1.0)
    s.add_argument("--cache-teacher", action="store_true", help="compute teacher outputs once (no augmentation)")
    r = p.add_argument_group("run")
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--output-dir", default="runs/distill")
    r.add_argument("--resume", default=None, help="last.pt to continue from")
    r.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    r.add_argument("--metric", default="teacher_agreement", help="metric that selects best.pt")
    add_engine_flags(p, epochs=10, lr=None, optimizer="adamw", weight_decay=0.0)  # lr None: distill.recipe
    return p


# --------------------------------------------------------------------------------------------------
# helpers


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _say(msg: str) -> None:
    if _is_main():
        print(msg, flush=True)


def _teacher_logits(task: str, output: str, t: Tensor) -> Tensor:
    """Teacher outputs as the losses expect them (logits); probabilities are converted."""
    if output != "probabilities":
        return t
    if task == "attributes":
        return torch.logit(t.clamp(1e-6, 1 - 1e-6))
    return torch.log(t.clamp_min(1e-8))


def _label_metric(task: str, outputs: np.ndarray, targets: np.ndarray | None,
                  names: Sequence[str] | None) -> tuple[str, float, AttributeAP | None] | None:
    """(name, value, per-attribute detail) of the ground-truth metric, or None without known labels."""
    if targets is None:
        return None
    if task == "attributes":
        res = mean_average_precision(outputs, targets, names)
        return None if math.isnan(res.mean_ap) else ("mean_ap", res.mean_ap, res)
    if task == "classification":
        known = targets != IGNORE_INDEX
        if not known.any():
            return None
        return "top1", float((outputs[known].argmax(1) == targets[known]).mean()), None
    return None


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


def _build_data(args: argparse.Namespace) -> tuple[ImageFiles, ImageFiles, list[str] | None]:
    train_tf = build_image_transform(args.resolution, mean=args.mean, std=args.std, augment=args.augment)
    eval_tf = build_image_transform(args.resolution, mean=args.mean, std=args.std)
    names = list_images(args.images)
    if not names:
        raise ValueError(f"no image files found under {args.images}")
    targets, attr_names = (None, None)
    if args.labels:
        targets, attr_names = load_labels_for(args.task, args.labels, names)
    full = ImageFiles(names, train_tf, targets=targets, root=args.images, skip_bad_images=args.skip_bad_images)
    if args.val_images:
        train = full
        if args.val_labels and args.task == "attributes":
            val: ImageFiles = AttributeDataset(args.val_images, args.val_labels, eval_tf,
                                               skip_bad_images=args.skip_bad_images)
            if attr_names is not None and val.attribute_names != attr_names:
                raise ValueError(f"{args.val_labels} has attributes {val.attribute_names}, {args.labels} has "
                                 f"{attr_names}")
            attr_names = val.attribute_names
        elif args.val_labels and args.task == "classification":
            vnames, vlabels = read_class_labels(args.val_labels)
            val = ImageFiles(vnames, eval_tf, targets=vlabels, root=args.val_images,
                             skip_bad_images=args.skip_bad_images)
        elif args.val_labels:
            raise ValueError(f"the {args.task} task takes no --val-labels")
        else:
            val = ImageFiles.from_folder(args.val_images, eval_tf, skip_bad_images=args.skip_bad_images)
    else:
        if args.val_labels:
            raise ValueError("--val-labels needs --val-images (the folder its names are relative to)")
        tr, va = split_holdout(len(full), args.val_fraction, args.seed)
        train, val = full.subset(tr), full.subset(va)
        val.transform = eval_tf
    if args.skip_bad_images:
        train.scan_images(progress=_is_main())
        val.scan_images(progress=_is_main())
    return train, val, attr_names


def _hint_setup(args: argparse.Namespace, student: nn.Module, teacher: Teacher, probe: Tensor
                ) -> tuple[dict[str, nn.Module], dict[str, Any]] | None:
    if not args.hint:
        return None
    if args.cache_teacher:
        raise ValueError("--hint needs the teacher in the loop; it cannot be combined with --cache-teacher")
    layer, sep, t_idx = args.hint.rpartition(":")
    if not sep or not layer:
        raise ValueError(f"--hint {args.hint!r}: expected STUDENT_LAYER:TEACHER_INDEX, e.g. conv11:2")
    try:
        t_index = int(t_idx)
    except ValueError:
        raise ValueError(f"--hint {args.hint!r}: teacher index {t_idx!r} is not an integer") from None
    infos = {f["name"]: f for f in getattr(student, "feature_info", [])}
    if layer not in infos:
        raise ValueError(f"--hint: student has no layer {layer!r}; layers: {list(infos)}")
    t_map = teacher.intermediates(probe, [t_index], mean=args.mean, std=args.std)[0]
    adapter = make_hint_adapter(infos[layer]["num_chs"], int(t_map.shape[1]))
    return {"hint": adapter}, {"module": infos[layer]["module"], "teacher_index": t_index}


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


# --------------------------------------------------------------------------------------------------
# the run


def run(args: argparse.Namespace, engine: dict[str, Any], explicit: set[str]) -> dict[str, Any]:
    """Distill ``args.teacher`` into a student; returns the summary dict (also saved as summary.json)."""
    t_start = time.perf_counter()
    task = args.task
    if args.cache_teacher and args.augment:
        raise ValueError("--cache-teacher stores one teacher output per image, which is only right without "
                         "--augment (the teacher must see what the student sees)")
    if args.labels is None and args.hard_weight > 0:
        raise ValueError("--hard-weight > 0 needs --labels")
    metric_mode = "min" if args.metric in _MIN_METRICS else "max"
    if (recipe_note := apply_recipe(args, engine, explicit)) is not None:  # no --lr: batch/width rule + warmup
        _say(recipe_note)
    cfg = build_engine_config(args, engine, explicit, metric=args.metric, metric_mode=metric_mode,
                              source=args.config or "flags")
    device = pick_device(args.device)
    workers = args.workers if args.workers is not None else (4 if device.type == "cuda" else 0)
    out_dir = Path(args.output_dir)

    teacher = load_teacher(args.teacher, input_size=args.teacher_input_size, mean=args.teacher_mean,
                           std=args.teacher_std, config=args.teacher_config, output=args.teacher_output,
                           task=task, device=device)
    _say(f"teacher : {teacher.describe()}")
    train, val, attr_names = _build_data(args)
    if attr_names is not None:
        teacher.expect_outputs(len(attr_names), f"the label file ({len(attr_names)} attributes)")
    _say(f"data    : {len(train)} training images under {args.images}"
         f"{' (labels for some: ' + args.labels + ')' if args.labels else ''}; {len(val)} validation images "
         f"{'under ' + args.val_images if args.val_images else '(held out from --images)'}")

    # One real batch through the teacher: fails early, with the teacher's name, if it does not fit.
    probe = next(iter(DataLoader(val, batch_size=min(8, len(val)), shuffle=False)))["image"]
    teacher(probe, mean=args.mean, std=args.std)
    width = int(teacher.num_outputs)  # type: ignore[arg-type]
    if task == "classification" and train.targets is not None:
        known = train.targets[train.targets != IGNORE_INDEX]
        if known.size and known.max() >= width:
            raise TeacherOutputError(f"--labels {args.labels} has class {int(known.max())} but the teacher outputs "
                                     f"only {width} classes")

    t0 = time.perf_counter()
    val_teacher = _teacher_logits(task, teacher.output, compute_teacher_outputs(
        teacher, val, batch_size=args.batch_size, num_workers=workers, mean=args.mean, std=args.std, amp=cfg.amp,
        progress=_is_main(), desc="teacher on validation")).numpy()
    teacher_val_s = time.perf_counter() - t0
    val_targets = val.targets
    teacher_label = _label_metric(task, val_teacher, val_targets, attr_names)
    if teacher_label is not None:
        _say(f"teacher : validation {teacher_label[0]} = {100 * teacher_label[1]:.2f}%")

    cache: Tensor | None = None
    if args.cache_teacher:
        cache, reused = teacher_cache(out_dir / "teacher_outputs.pt", teacher, train, resolution=args.resolution,
                                      mean=args.mean, std=args.std, batch_size=args.batch_size,
                                      num_workers=workers, amp=cfg.amp, progress=_is_main())
        cache = _teacher_logits(task, teacher.output, cache)
        _say(f"cache   : teacher outputs for {len(train)} images {'reused from' if reused else 'written to'} "
             f"{out_dir / 'teacher_outputs.pt'}")

    spec = student_spec(alpha=args.alpha, num_outputs=width, backbone=args.backbone)
    seed_everything(cfg.seed)  # the student's initial weights depend on the seed only
    student = build_student(spec)
    hint = _hint_setup(args, student, teacher, probe)
    model = DistillModel(student, hint[0] if hint else None)
    captured: list[Tensor] = []
    if hint:
        # Keep the hinted map of training steps only (evaluation passes would pile up maps).
        student.get_submodule(hint[1]["module"]).register_forward_hook(
            lambda m, i, o: captured.append(o) if m.training else None)

    mean, std = list(args.mean), list(args.std)

    def loss_fn(net: nn.Module, batch: dict[str, Any], dev: torch.device) -> dict[str, Tensor]:
        images = batch["image"].to(dev, non_blocking=True)
        captured.clear()
        s = net(images)
        if cache is not None:
            t = cache[torch.as_tensor(batch["index"])].to(dev, non_blocking=True)
        else:
            t = _teacher_logits(task, teacher.output, teacher(images, mean=mean, std=std))
        labels = batch.get("target")
        labels = labels.to(dev, non_blocking=True) if labels is not None and args.hard_weight > 0 else None
        if task == "attributes":
            loss = attribute_distillation_loss(s, t, temperature=args.temperature, labels=labels,
                                               hard_weight=args.hard_weight)
        elif task == "classification":
            loss = hinton_kd_loss(s, t, temperature=args.temperature, labels=labels, hard_weight=args.hard_weight,
                                  ignore_index=IGNORE_INDEX)
        else:
            loss = embedding_distillation_loss(s, t, normalize=args.normalize_embeddings)
        losses = {"distill": loss}
        if hint:
            t_map = teacher.intermediates(images, [hint[1]["teacher_index"]], mean=mean, std=std)[0]
            adapter = _unwrap(net).hint_adapters["hint"]
            losses["hint"] = args.hint_weight * feature_hint_loss(captured[-1], t_map, adapter)
        return losses

    val_loader = DataLoader(val, batch_size=args.batch_size, shuffle=False, num_workers=workers)
    last_eval: dict[str, Any] = {}

    def evaluate_fn(net: nn.Module) -> dict[str, float]:
        t_eval = time.perf_counter()
        s_out, _, idx = predict_outputs(net, val_loader, device, amp=cfg.amp)
        last_eval["student_s"] = time.perf_counter() - t_eval
        metrics = _emulation_metrics(task, s_out, val_teacher[idx])
        lab = _label_metric(task, s_out, val_targets[idx] if val_targets is not None else None, attr_names)
        if lab is not None:
            metrics[lab[0]] = lab[1]
            if lab[2] is not None:  # per-attribute AP next to the mean (NaN = no positive: left out)
                metrics.update({k: v for k, v in lab[2].as_dict().items() if k != "mean_ap" and not math.isnan(v)})
            last_eval["label"] = lab
        return metrics

    meta = {
        "task": task,
        "model": spec,
        "resolution": args.resolution,
        "mean": mean,
        "std": std,
        "attribute_names": attr_names,
        "teacher": args.teacher,
        "state_prefix": "student.",
    }
    config = dict(vars(args))
    config["engine"] = cfg.to_dict()
    _say(f"student : {args.backbone} alpha {args.alpha} @ {args.resolution}, {width} outputs; {task} distillation"
         f"{' from cached teacher outputs' if cache is not None else ' with the teacher in the loop'}")
    result = fit(model, train, cfg=cfg, batch_size=args.batch_size, output_dir=out_dir, loss_fn=loss_fn,
                 evaluate_fn=evaluate_fn, num_workers=workers, device=device, resume=args.resume, meta=meta,
                 config_dict=config)

    # Final model (the paper uses no early stopping): evaluate once more and summarise.
    model.to(device).eval()
    with torch.no_grad():
        final = evaluate_fn(model)
    s_ma, s_params = student_cost(student, args.resolution)
    t_ma, t_params = teacher.mult_adds(), teacher.num_parameters()
    summary: dict[str, Any] = {
        "task": task,
        "teacher": args.teacher,
        "student": {"backbone": args.backbone, "alpha": args.alpha, "resolution": args.resolution},
        "validation_images": len(val),
        "teacher_agreement": final["teacher_agreement"],
        "metrics": final,
        "teacher_metric": None if teacher_label is None else {teacher_label[0]: teacher_label[1]},
        "student_mult_adds": s_ma, "student_params": s_params,
        "teacher_mult_adds": t_ma, "teacher_params": t_params,
        "teacher_val_img_per_s": len(val) / max(teacher_val_s, 1e-9),
        "student_val_img_per_s": len(val) / max(last_eval.get("student_s", 0.0), 1e-9),
        "epochs": result.epochs, "wall_time_s": time.perf_counter() - t_start,
        "bad_images_skipped": train.stats["bad_images_skipped"] + val.stats["bad_images_skipped"],
    }
    if _is_main():
        save_student(out_dir / "student.pt", student, {**meta, "teacher_agreement": final["teacher_agreement"]})
        atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        print(_format_summary(summary, teacher_label, last_eval.get("label"), out_dir))
    return summary


def _format_summary(summary: dict[str, Any], teacher_label: Any, student_label: Any, out_dir: Path) -> str:
    task = summary["task"]
    what = {"classification": "top-1 classes", "attributes": "attribute yes/no decisions at 0.5",
            "embedding": "nearest neighbours"}[task]
    lines = ["", "=" * 72, "distillation summary", "=" * 72,
             f"teacher agreement: {100 * summary['teacher_agreement']:.2f}% of {what} on "
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
    if summary["bad_images_skipped"]:
        lines.append(f"bad images skipped: {summary['bad_images_skipped']}")
    lines += ["", f"student weights: {out_dir / 'student.pt'}   summary: {out_dir / 'summary.json'}",
              f"total time: {summary['wall_time_s']:.1f} s"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, engine, explicit = parse_with_config(parser, argv)
    if args.teacher is None and args.images is None and args.config is None:
        # The embedded default: the paper's Section 4.5 story on drawn faces.
        from distill.default import prepare_default

        args, engine, explicit = parse_with_config(parser, argv, default_config=DEFAULT_CONFIG)
        try:
            paths = prepare_default(device=pick_device(args.device))
        except ValueError as e:
            parser.error(str(e))
        for key in ("teacher", "images", "val_images", "val_labels"):
            if getattr(args, key) is None:
                setattr(args, key, paths[key])
    if args.teacher is None or args.images is None:
        parser.error("--teacher and --images are required (run with no arguments for the embedded default)")
    try:
        return run(args, engine, explicit)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    raise AssertionError("unreachable")


if __name__ == "__main__":
    main()
