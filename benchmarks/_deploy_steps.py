"""The configurations of ``benchmarks/deploy.py`` that ``tasks.export.bench`` has no factory for.

Built inside the worker processes (``tasks.export.bench.Config.factory``); this module imports neither
torch nor OpenVINO at the top, so an OpenVINO worker never loads torch.
"""
from __future__ import annotations

from typing import Any, Callable

from tasks.export.bench import random_batch, torch_module_step

__all__ = ["openvino_step", "timm_step"]


def timm_step(*, weights: str, batch: int, resolution: int, threads: int) -> Callable[[], Any]:
    """timm's ``mobilenetv1_100`` in eager PyTorch, with the weights saved at ``weights``."""
    import timm
    import torch

    model = timm.create_model("mobilenetv1_100", pretrained=False)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return torch_module_step(model, batch, resolution, threads, "eager")


def openvino_step(*, path: str, batch: int, resolution: int, threads: int) -> Callable[[], Any]:
    """OpenVINO (CPU) on an ONNX file: input reshaped to the static batch, one stream, ``threads`` threads,
    f32 inference precision (OpenVINO would otherwise run an "fp32" graph in bf16 on CPUs with bf16)."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(path)
    model.reshape({model.inputs[0].get_any_name(): [batch, 3, resolution, resolution]})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
                                                 "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    x = random_batch(batch, resolution)
    return lambda: request.infer({0: x})
