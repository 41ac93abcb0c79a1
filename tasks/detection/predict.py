"""Run a detection checkpoint on image files and draw what it finds.

    python -m tasks.detection.predict --checkpoint runs/detection/shapes_ssd/best.pt img1.jpg img2.png --out-dir preds/

Writes each image with its boxes, class names and scores drawn (``<name>.png``) and one
``detections.json``: ``[{"image": path, "width", "height", "detections": [{"bbox": [x, y, w, h],
"category_id", "category", "score"}]}]`` with boxes in the image's own pixels and the dataset's category ids.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.utils import draw_bounding_boxes
from tqdm import tqdm

from datasets.images import drop_unreadable, load_rgb_image, report_skipped
from datasets.io import atomic_write, atomic_write_json, prepare_output_dir
from datasets.transforms import rescale_boxes
from tasks.cli import run_cli
from tasks.distributed import pick_device
from tasks.flags import add_alias, add_eval_flags

from .inference import load_detector, predict_batches, transforms_for

__all__ = ["build_parser", "main", "predict_images"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tasks.detection.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("images", nargs="+", help="image files")
    add_eval_flags(p, batch_size=8)
    add_alias(p, "--out", "--out-dir")
    p.add_argument("--score-thresh", type=float, default=0.3, help="draw and keep detections above this score")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="skip (and count) files that are missing or cannot be decoded; default: stop at the first")
    return p


def predict_images(
    checkpoint: str, paths: Sequence[str], *, score_thresh: float = 0.3, device: str = "cpu", batch_size: int = 8,
) -> tuple[list[dict[str, Any]], list[tuple[np.ndarray, dict]]]:
    """Detections per image (original pixels, real category ids) and the images they were made on.

    Images are decoded and run ``batch_size`` at a time (images of one size share a forward pass).
    """
    if not 0.0 <= score_thresh <= 1.0:
        raise ValueError(f"--score-thresh must be in [0, 1], got {score_thresh}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    model, meta = load_detector(checkpoint, device)
    transform = transforms_for(model, False)
    names, to_cat = meta["labels"], meta["label_to_cat_id"]
    records, drawn = [], []
    with tqdm(total=len(paths), desc="predict", disable=len(paths) < 2) as bar:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            pils, inputs = [], []
            for path in chunk:
                pil = load_rgb_image(path)  # FileNotFoundError / ValueError naming the file
                w, h = pil.size
                image = tv_tensors.Image(torch.from_numpy(np.array(pil, dtype=np.uint8)).permute(2, 0, 1))
                empty = {"boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(h, w)),
                         "labels": torch.zeros(0, dtype=torch.int64), "iscrowd": torch.zeros(0, dtype=torch.int64)}
                x, _ = transform(image, empty)
                x = x.as_subclass(torch.Tensor)
                inputs.append(x.float().div(255.0) if not x.is_floating_point() else x.float())
                pils.append(pil)
            for path, pil, x, pred in zip(chunk, pils, inputs, predict_batches(model, inputs, device)):
                w, h = pil.size
                keep = pred["scores"] >= score_thresh
                boxes = rescale_boxes(pred["boxes"][keep], torch.tensor(x.shape[-2:]), torch.tensor([h, w]))
                dets = []
                for box, score, label in zip(boxes.tolist(), pred["scores"][keep].tolist(),
                                             pred["labels"][keep].tolist()):
                    x1, y1, x2, y2 = box
                    dets.append({"bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                                 "category_id": to_cat[int(label)], "category": names[int(label)],
                                 "score": round(score, 4)})
                records.append({"image": str(path), "width": w, "height": h, "detections": dets})
                drawn.append((np.array(pil), {"boxes": boxes,
                                              "labels": [f"{d['category']} {d['score']:.2f}" for d in dets]}))
            bar.update(len(chunk))
    return records, drawn


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = build_parser().parse_args(argv)
    device = pick_device(args.device)
    out = prepare_output_dir(args.out_dir or Path(args.checkpoint).parent / "predict")
    images, skipped = drop_unreadable(args.images) if args.skip_bad_images else (list(args.images), [])
    records, drawn = predict_images(args.checkpoint, images, score_thresh=args.score_thresh, device=device,
                                    batch_size=args.batch_size)
    from PIL import Image

    used: set[str] = set()
    for rec, (pixels, ann) in zip(records, drawn):
        stem = Path(rec["image"]).stem
        name, i = f"{stem}.png", 1
        while name in used:  # two inputs with the same file name from different folders
            name, i = f"{stem}_{i}.png", i + 1
        used.add(name)
        canvas = draw_bounding_boxes(
            torch.from_numpy(pixels).permute(2, 0, 1), ann["boxes"], labels=ann["labels"], colors="red",
            width=max(2, min(pixels.shape[:2]) // 150),
        )
        drawing = Image.fromarray(canvas.permute(1, 2, 0).numpy())
        atomic_write(out / name, lambda f: drawing.save(f, format="PNG"), "wb")
        rec["drawn"] = str(out / name)
    atomic_write_json(out / "detections.json", records)
    total = sum(len(r["detections"]) for r in records)
    print(f"{len(records)} image(s), {total} detection(s) >= {args.score_thresh}; wrote {out / 'detections.json'}")
    report_skipped(skipped)
    return records


if __name__ == "__main__":
    run_cli(main)
