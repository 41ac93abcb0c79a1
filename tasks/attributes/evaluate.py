"""Mean AP across attributes and a per-attribute AP table (MobileNets paper, Section 4.5, Table 12).

    python -m tasks.attributes.evaluate --checkpoint OUT/best.pt --data-root DIR --ann FILE
    python -m tasks.attributes.evaluate --teacher torchscript:teacher.pt --data-root DIR --ann FILE

``--checkpoint`` takes any model written by ``tasks.attributes.train`` or ``distill.train``
(``best.pt``, ``last.pt``, ``student.pt``); ``--teacher`` any teacher spec of ``distill.teachers``,
so a teacher and its students are scored on the same labels. Several models may be given at once
(repeat the flags); the table then has one AP column per model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Any, Sequence

from torch.utils.data import DataLoader

from datasets.attributes import AttributeDataset
from datasets.images import build_image_transform, report_skipped
from datasets.io import prepare_output_dir
from distill.teachers import load_teacher
from eval.attributes import AttributeAP, format_ap_table, mean_average_precision
from tasks.checkpoint import atomic_write_text, load_model
from tasks.classifier import predict_outputs
from tasks.cli import run_cli
from tasks.distributed import pick_device
from tasks.flags import add_alias

__all__ = ["build_parser", "main", "score_attributes"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tasks.attributes.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", action="append", default=[], help="model checkpoint (repeatable)")
    p.add_argument("--teacher", action="append", default=[], help="teacher spec (repeatable)")
    p.add_argument("--teacher-input-size", type=int, default=None)
    p.add_argument("--teacher-mean", type=float, nargs=3, default=None)
    p.add_argument("--teacher-std", type=float, nargs=3, default=None)
    p.add_argument("--data-root", required=True, help="image folder the label file's names are relative to")
    p.add_argument("--ann", required=True, help="list_attr_celeba.txt (1/-1) or CSV (1/0/empty)")
    add_alias(p, "--images", "--data-root")
    add_alias(p, "--labels", "--ann")
    p.add_argument("--partition", default=None, help="CelebA list_eval_partition.txt")
    p.add_argument("--split", choices=("train", "val", "test"), default="test", help="split of --partition")
    p.add_argument("--resolution", type=int, default=None, help="images fed to teachers (default: 224)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--skip-bad-images", action="store_true")
    p.add_argument("--out-dir", default=None, help="also write the results as ap.json there")
    p.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    return p


def score_attributes(model: Any, data_root: str, ann: str, *, resolution: int, mean: Sequence[float],
                     std: Sequence[float], names: list[str] | None, device: Any, batch_size: int = 64,
                     workers: int = 0, skip_bad_images: bool = False, partition: tuple[str, str] | None = None,
                     label: str = "model") -> AttributeAP:
    """Mean AP over the attributes of ``ann`` of a model (``nn.Module`` or teacher) fed at ``resolution``.

    Args:
        names: the attributes the model was trained on (checked against ``ann``'s); None: not checked.
        partition: (CelebA ``list_eval_partition.txt``, split) to score one split only.
        label: how the model is named in messages and the progress bar.
    """
    tf = build_image_transform(resolution, mean=mean, std=std)
    ds = AttributeDataset(data_root, ann, tf, skip_bad_images=skip_bad_images, partition=partition)
    if skip_bad_images:
        ds.scan_images(progress=True)
    if names is not None and names != ds.attribute_names:
        raise ValueError(f"{label} was trained on attributes {names}, but {ann} has {ds.attribute_names}")
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers)
    scores, targets, _ = predict_outputs(model, loader, device, progress=True, desc=label, mean=mean, std=std)
    if scores.shape[1] != ds.num_attributes:
        raise ValueError(f"{label} outputs {scores.shape[1]} values per image, {ann} has "
                         f"{ds.num_attributes} attributes")
    assert targets is not None
    report_skipped(ds.skipped.files())
    return mean_average_precision(scores, targets, ds.attribute_names)


def _score(label: str, model: Any, args: argparse.Namespace, device: Any, resolution: int,
           mean: Sequence[float], std: Sequence[float], names: list[str] | None) -> AttributeAP:
    return score_attributes(model, args.data_root, args.ann, resolution=resolution, mean=mean, std=std, names=names,
                            device=device, batch_size=args.batch_size, workers=args.workers,
                            skip_bad_images=args.skip_bad_images,
                            partition=(args.partition, args.split) if args.partition else None, label=label)


def main(argv: Sequence[str] | None = None) -> dict[str, AttributeAP]:
    args = build_parser().parse_args(argv)
    if not args.checkpoint and not args.teacher:
        raise ValueError("give at least one --checkpoint or --teacher")
    results: dict[str, AttributeAP] = {}
    device = pick_device(args.device)
    if args.out_dir:
        prepare_output_dir(args.out_dir)
    for path in args.checkpoint:
        model, meta = load_model(path, device, task=("attributes", "distill"))
        if meta.get("output", "attributes") != "attributes":
            raise ValueError(f"{path} is a {meta.get('output')!r} model, not an attribute model")
        pre = meta["preprocess"]
        res = int(args.resolution or pre["resolution"])
        results[os.path.basename(os.path.dirname(os.path.abspath(path))) + "/" + os.path.basename(path)] = _score(
            path, model, args, device, res, pre["mean"], pre["std"], meta["labels"] or None)
    for spec in args.teacher:
        teacher = load_teacher(spec, input_size=args.teacher_input_size, mean=args.teacher_mean,
                               std=args.teacher_std, task="attributes", device=device)
        # Feed the teacher at its own input size with its own normalisation: no double resize.
        results[spec.split(":", 1)[0] + " teacher"] = _score(
            spec, teacher, args, device, args.resolution or teacher.input_size[0], teacher.config.mean,
            teacher.config.std, None)
    print(format_ap_table(results))
    if args.out_dir:
        payload = {k: {"mean_ap": None if math.isnan(r.mean_ap) else r.mean_ap,
                       "ap": {n: None if math.isnan(v) else float(v) for n, v in zip(r.names, r.ap)},
                       "positives": r.positives.tolist(), "known": r.known.tolist()} for k, r in results.items()}
        atomic_write_text(os.path.join(args.out_dir, "ap.json"), json.dumps(payload, indent=2) + "\n")
    return results


if __name__ == "__main__":
    run_cli(main)
