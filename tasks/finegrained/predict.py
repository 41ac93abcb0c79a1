"""Top-5 breeds of images from a fine-grained checkpoint (MobileNets paper, Section 4.3, Table 10).

    python -m tasks.finegrained.predict --checkpoint runs/finegrained/best.pt IMAGE [IMAGE ...] [--json]
        [--top-k 5] [--out-dir D] [--device cpu] [--batch-size 32]

Prints each image's top-k classes with their probabilities (``--json``: one JSON document on stdout);
``--out-dir`` also writes ``predictions.json``. Images are decoded by ``datasets.images`` (any of the odd
files of the real set) and preprocessed as the checkpoint says (resolution, mean, std).
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader

from datasets.images import ImageFiles, build_image_transform, drop_unreadable, report_skipped
from datasets.io import atomic_write_text, prepare_output_dir
from tasks.checkpoint import load_model
from tasks.classifier import predict_outputs
from tasks.cli import run_cli
from tasks.distributed import pick_device
from tasks.flags import add_eval_flags

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tasks.finegrained.predict", description=__doc__.split("\n\n")[0])
    add_eval_flags(p)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="skip (and count) files that are missing or cannot be decoded; default: stop at the first")
    return p


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = build_parser().parse_args(argv)
    if args.top_k < 1:
        raise ValueError(f"--top-k {args.top_k}: must be >= 1")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size}: must be >= 1")
    device = pick_device(args.device)
    out = prepare_output_dir(args.out_dir) if args.out_dir else None
    model, meta = load_model(args.checkpoint, device, task="finegrained")
    names = list(meta["labels"])
    pre = meta["preprocess"]
    tf = build_image_transform(int(pre["resolution"]), mean=pre["mean"], std=pre["std"])
    images, skipped = drop_unreadable(args.images) if args.skip_bad_images else (list(args.images), [])
    files = ImageFiles([str(p) for p in images], tf)  # a missing file raises FileNotFoundError naming it
    scores, _, indices = predict_outputs(model, DataLoader(files, batch_size=args.batch_size), device)
    probs = torch.softmax(torch.from_numpy(scores), dim=1)
    k = min(args.top_k, len(names))
    top_p, top_i = probs.topk(k, dim=1)
    results = [{"image": files.paths[int(idx)],
                "top": [{"label": names[int(c)], "prob": round(float(p), 6)} for p, c in zip(top_p[row], top_i[row])]}
               for row, idx in enumerate(indices)]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(r["image"])
            for j, t in enumerate(r["top"], 1):
                print(f"  {j}. {t['label']:<28s} {100 * t['prob']:5.1f}%")
    if out is not None:
        atomic_write_text(out / "predictions.json", json.dumps(results, indent=2) + "\n")
    report_skipped(skipped)
    return results


if __name__ == "__main__":
    run_cli(main)
