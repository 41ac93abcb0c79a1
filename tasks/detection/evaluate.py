"""Score a detection checkpoint with COCO mAP (pycocotools) on a COCO-format split.

    python -m tasks.detection.evaluate --checkpoint runs/detection/shapes_ssd/best.pt
    python -m tasks.detection.evaluate --checkpoint best.pt --data-root coco/val2017 \
        --ann coco/annotations/instances_val2017.json --out-dir eval_out

Writes ``detections.json`` (COCO results: real category ids, xywh boxes in original pixels),
``stats.json`` (the 12 standard numbers) and ``pr_curve.png`` into ``--out-dir``.
Without ``--data-root/--ann`` it uses the validation split recorded in the checkpoint's config.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from datasets.coco import CocoDetection
from datasets.images import report_skipped
from datasets.io import atomic_write_json, prepare_output_dir
from eval.coco import format_stats, plot_precision_recall
from tasks.checkpoint import load_checkpoint
from tasks.cli import run_cli
from tasks.distributed import pick_device
from tasks.flags import add_eval_flags

from .config import DetectionConfig
from .inference import evaluate_dataset, load_detector, transforms_for

__all__ = ["build_parser", "main", "open_split"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tasks.detection.evaluate", description=__doc__.split("\n\n")[0])
    add_eval_flags(p, batch_size=8)
    p.add_argument("--data-root", help="image folder (default: the val split of the checkpoint's config)")
    p.add_argument("--ann", help="instances JSON")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--skip-bad-images", action="store_true")
    return p


def _val_split_from_checkpoint(path: str) -> tuple[str, str]:
    config = load_checkpoint(path).get("config") or {}
    try:
        cfg = DetectionConfig.from_dict(config, source=f"{path} (config)")
    except ValueError as e:
        raise ValueError(f"{e}; pass the split to score with --data-root and --ann") from None
    if cfg.data.dataset == "shapes":
        from datasets.synthetic_shapes import ensure_shapes_dataset

        paths = ensure_shapes_dataset(**cfg.data.shapes)
        return paths["val_root"], paths["val_ann"]
    if not cfg.data.val_root:
        raise ValueError(f"{path} was trained without a val split; pass --data-root and --ann")
    return cfg.data.val_root, cfg.data.val_ann


def open_split(model: Any, meta: dict[str, Any], root: str, ann: str, *,
               skip_bad_images: bool = False) -> CocoDetection:
    """A COCO split resized as ``model.input_spec`` says, its categories checked against the checkpoint's."""
    dataset = CocoDetection(root, ann, transforms_for(model, False), train=False, skip_bad_images=skip_bad_images)
    if skip_bad_images:
        dataset.scan_images(progress=True)
    known = set(meta["label_to_cat_id"].values())
    unknown = sorted(set(dataset.cat_ids) - known)
    if unknown:
        raise ValueError(f"{ann} has category ids {unknown} that the checkpoint was not trained on ({sorted(known)})")
    return dataset


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if bool(args.data_root) != bool(args.ann):
        raise ValueError("--data-root and --ann go together")
    device = pick_device(args.device)
    model, meta = load_detector(args.checkpoint, device)
    out = prepare_output_dir(args.out_dir or Path(args.checkpoint).parent / "eval")
    root, ann = (args.data_root, args.ann) if args.data_root else _val_split_from_checkpoint(args.checkpoint)
    dataset = open_split(model, meta, root, ann, skip_bad_images=args.skip_bad_images)

    result, detections = evaluate_dataset(
        model, dataset, meta["label_to_cat_id"], batch_size=args.batch_size, device=device, num_workers=args.workers
    )
    atomic_write_json(out / "detections.json", detections, indent=None)
    atomic_write_json(out / "stats.json", result.stats)
    plot_precision_recall(result, out / "pr_curve.png")
    print(f"{args.checkpoint} on {ann} ({len(dataset)} images, {len(detections)} detections):")
    print(format_stats(result.stats))
    print(f"wrote {out / 'detections.json'}, {out / 'stats.json'}, {out / 'pr_curve.png'}")
    report_skipped(dataset.skipped.files())
    return result.stats


if __name__ == "__main__":
    run_cli(main)
