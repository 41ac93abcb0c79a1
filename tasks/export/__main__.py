"""``python -m tasks.export``: any task's checkpoint to ONNX fp32 (and int8), verified (see ``core.py``).

    python -m tasks.export --checkpoint runs/x/best.pt --out deploy/model.onnx \\
        [--int8 --calib-images DIR [--calib-count 500] [--calib-method minmax|entropy|percentile]] \\
        [--batch dynamic|N] [--resolution R] [--val-data-root DIR [--val-ann LABELS]]

Exit status 0 when the fp32 graph matches PyTorch within the tolerance, 1 when not, 2 on bad input.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from datasets.io import prepare_output_file
from tasks.cli import run_cli
from tasks.distributed import pick_device
from tasks.flags import add_eval_flags

from .core import CALIB_METHODS, INT8_ACTIVATIONS, export_checkpoint

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tasks.export",
                                description="Export a checkpoint of any task to ONNX (fp32, optionally int8) "
                                            "and verify it with ONNX Runtime")
    add_eval_flags(p, batch_size=8)
    p.add_argument("--out", help="the fp32 .onnx file (default: OUT_DIR/model.onnx); model.json, "
                                 "model.int8.onnx and export.json go beside it")
    p.add_argument("--int8", action="store_true", help="also write a statically quantized int8 graph (QDQ, "
                                                       "per-channel weights)")
    p.add_argument("--calib-images", help="folder of images to calibrate int8 on (the model's own preprocessing)")
    p.add_argument("--calib-count", type=int, default=500, help="at most this many calibration images (default 500)")
    p.add_argument("--calib-method", choices=CALIB_METHODS, default="minmax", help="int8 range calibration")
    p.add_argument("--int8-stem", action="store_true",
                   help="quantize the stem as well (default: the first convolution and the depthwise one after it "
                        "stay fp32, where ONNX Runtime's int8 kernels are slower than fp32)")
    p.add_argument("--int8-activations", choices=INT8_ACTIVATIONS, default="uint8",
                   help="uint8 (QDQ U8S8, default: what the x86 kernels of ONNX Runtime and OpenVINO run; SSD 300's "
                        "int8 graph ran 1.7x faster in ONNX Runtime than with int8 activations) or int8 (QDQ S8S8)")
    p.add_argument("--batch", default="dynamic", help="'dynamic' (default) or a fixed batch size of the graph")
    p.add_argument("--resolution", type=int, help="input side in pixels (default: the checkpoint's)")
    p.add_argument("--val-data-root", help="images to compare int8 with fp32 on (default: the calibration images); "
                                           "labelled ones (with --val-ann, or fine-grained class folders / "
                                           "Stanford Dogs) also give the task's metric of both graphs")
    p.add_argument("--val-ann", help="labels of --val-data-root in the task's format: COCO instances json "
                                     "(detection), LFW pairs.txt (faces), attribute file, geotagged CSV, "
                                     "'path,label' CSV (fine-grained), 'image,label' CSV (distilled classifiers)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.out is None and args.out_dir is None:
        raise ValueError("give --out model.onnx (or --out-dir DIR for DIR/model.onnx)")
    out = Path(args.out) if args.out else Path(args.out_dir) / "model.onnx"
    if out.suffix == ".onnx":  # the other case is export_checkpoint's to name
        prepare_output_file(out, "--out")
    report = export_checkpoint(args.checkpoint, out, int8=args.int8, calib_images=args.calib_images,
                               calib_count=args.calib_count, calib_method=args.calib_method, batch=args.batch,
                               resolution=args.resolution, val_data_root=args.val_data_root,
                               val_ann=args.val_ann, batch_size=args.batch_size, int8_stem=args.int8_stem,
                               int8_activations=args.int8_activations,
                               device=str(pick_device(args.device or "cpu")))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    run_cli(main)
