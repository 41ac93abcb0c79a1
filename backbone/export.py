"""Export MobileNet v1 (Table 1, any alpha / resolution of Section 3.3-3.4) to ONNX and verify it.

``python -m backbone.export --alpha 0.5 --resolution 160 --out mobilenet.onnx [--weights PATH]``
builds ``mobilenet_v1``, optionally loads weights (``backbone.load_pretrained``: our state dicts or timm's
``mobilenetv1_100`` layout), exports with the TorchScript-based exporter (``dynamo=False``: one traced
graph, no extra dependencies, stable op set), and checks with onnxruntime that the ONNX model computes
the same output as PyTorch on a random input. :func:`export_module` is the ONNX writer that
``python -m tasks.export`` (any task's checkpoint, fp32 and int8) builds on; this command stays for
the bare backbone.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from datasets.io import atomic_path, one_line, prepare_output_file, run_cli

from .mobilenet_v1 import ACTIVATIONS, MIN_INPUT_SIZE, mobilenet_v1
from .pretrained import load_pretrained

__all__ = ["OPSET", "TOLERANCE", "INPUT_NAME", "export_module", "export_onnx", "check_onnx", "main"]

OPSET = 17
TOLERANCE = 1e-4
INPUT_NAME = "input"


def _check_resolution(resolution: int) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, int):
        raise TypeError(f"resolution must be an int (pixels), got {resolution!r}")
    if resolution < MIN_INPUT_SIZE:
        raise ValueError(f"resolution must be >= {MIN_INPUT_SIZE} px, got {resolution}")


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def export_module(module: nn.Module, path: str | os.PathLike, example: Sequence[torch.Tensor], *,
                  input_names: Sequence[str], output_names: Sequence[str],
                  dynamic_axes: dict[str, dict[int, str]] | None = None) -> Path:
    """Trace ``module`` (in eval mode) on ``example`` into an ONNX file at ``path``, written atomically.

    The one ONNX writer of the suite (the bare backbone here, every task's checkpoint in ``tasks.export``):
    the TorchScript-based exporter (``dynamo=False``: one traced graph, no extra dependencies, stable op
    set) at :data:`OPSET`, constant folding on, and ``onnx.checker`` run on the temp file before it
    replaces ``path``, so a reader never sees a half-written or unchecked model.

    Args:
        module: the network; its ``forward`` takes the example tensors.
        path: destination ``.onnx`` file; its folder is created if needed.
        example: the example inputs the graph is traced with.
        input_names, output_names: graph input / output names.
        dynamic_axes: symbolic dimensions per input/output name (``torch.onnx.export``'s argument).
    Returns:
        The path written.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = module.training
    module.eval()
    try:
        with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter announces its own deprecation on every call; the export is fine.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=UserWarning)  # the exporter's notes on traced indexing
            torch.onnx.export(
                module,
                tuple(example),
                str(tmp),
                dynamo=False,
                opset_version=OPSET,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
            onnx.checker.check_model(str(tmp))
    finally:
        module.train(was_training)
    return path


def export_onnx(model: nn.Module, path: str | os.PathLike, resolution: int, *, dynamic_batch: bool = False) -> Path:
    """Export ``model`` (in eval mode) to ONNX at ``path``, written atomically.

    Args:
        model: an image model taking ``[N, C, resolution, resolution]`` (``in_chans`` attribute, default 3).
        path: destination ``.onnx`` file; its folder is created if needed.
        resolution: input height and width in pixels (fixed in the graph).
        dynamic_batch: make the batch dimension symbolic; otherwise the graph is for batch 1.
    Returns:
        The path written.
    """
    _check_resolution(resolution)
    in_chans = getattr(model, "in_chans", 3)
    x = torch.randn(1, in_chans, resolution, resolution, device=_device_of(model))
    output_name = "logits" if getattr(model, "num_classes", 1) else "features"
    dynamic_axes = {INPUT_NAME: {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None
    return export_module(model, path, (x,), input_names=[INPUT_NAME], output_names=[output_name],
                         dynamic_axes=dynamic_axes)


def _outputs(model: nn.Module, path: Path, resolution: int, batch: int | None, seed: int):
    """(onnxruntime output, PyTorch output) as numpy arrays for one seeded random input."""
    import onnxruntime as ort

    _check_resolution(resolution)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
    if batch is None:
        batch = fixed or 2
    elif fixed is not None and batch != fixed:
        raise ValueError(f"{path} was exported for batch {fixed}; got batch={batch}")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, getattr(model, "in_chans", 3), resolution, resolution, generator=gen)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model(x.to(_device_of(model))).float().cpu().numpy()
    finally:
        model.train(was_training)
    (got,) = session.run(None, {inp.name: x.numpy()})
    if got.shape != expected.shape:
        raise ValueError(f"ONNX output shape {got.shape} differs from PyTorch's {expected.shape}")
    return got, expected


def check_onnx(model: nn.Module, path: str | os.PathLike, resolution: int, *, batch: int | None = None,
               seed: int = 0) -> float:
    """Max absolute difference between onnxruntime's and PyTorch's outputs on one random input.

    Args:
        model: the PyTorch model the file was exported from (run in eval mode).
        path: the ``.onnx`` file.
        resolution: input size in pixels.
        batch: batch size of the test input; default 2 when the graph's batch is symbolic, else the fixed one.
        seed: seed of the random input.
    Returns:
        ``max |onnx - torch|`` over all outputs.
    """
    got, expected = _outputs(model, Path(path), resolution, batch, seed)
    return float(np.max(np.abs(got - expected)))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m backbone.export", description="Export MobileNet v1 to ONNX and verify it with onnxruntime"
    )
    p.add_argument("--alpha", type=float, default=1.0, help="width multiplier (default 1.0)")
    p.add_argument("--resolution", type=int, default=224, help="input size in px (default 224)")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--weights", default=None, help="state dict to load (ours or timm's mobilenetv1_100 layout)")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier size; 0 exports the pooled features")
    p.add_argument("--act", choices=tuple(ACTIVATIONS), default="relu", help="relu (paper) or relu6 (timm/TF weights)")
    p.add_argument("--dynamic-batch", action="store_true", help="symbolic batch dimension")
    p.add_argument("--device", default="cpu", help="device to trace on (the ONNX graph does not depend on it)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_resolution(args.resolution)
    prepare_output_file(args.out)
    model = mobilenet_v1(args.alpha, num_classes=args.num_classes, act=args.act)
    if args.weights:
        load_pretrained(model, args.weights)
    try:
        model.to(args.device).eval()
    except (RuntimeError, AssertionError) as e:  # a device torch knows but this machine lacks
        raise ValueError(f"--device {args.device}: not available here ({one_line(str(e))[:120]})") from None
    path = export_onnx(model, args.out, args.resolution, dynamic_batch=args.dynamic_batch)
    got, expected = _outputs(model, path, args.resolution, None, 0)
    diff = float(np.max(np.abs(got - expected)))
    scale = float(np.max(np.abs(expected)))
    size_mb = path.stat().st_size / 2**20
    ok = diff <= TOLERANCE
    print(
        f"exported {args.alpha:g} MobileNet-{args.resolution} ({args.num_classes} classes, {args.act}"
        f"{', weights ' + args.weights if args.weights else ', random init'}) to {path}\n"
        f"  size: {size_mb:.2f} MiB, opset {OPSET}, batch {'dynamic' if args.dynamic_batch else 1}\n"
        f"  onnxruntime vs PyTorch max abs diff: {diff:.3e} ({'OK' if ok else 'FAIL'}, tolerance {TOLERANCE:g}; "
        f"largest |output| {scale:.3e})"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    run_cli(main)
