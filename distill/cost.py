"""Mult-Adds and parameters of teacher and student, for the comparison of Table 12 / Table 14.

The student is a MobileNet and is counted with ``backbone.profile.count_mult_adds`` (the paper's
convention: conv and FC layers; parameters = conv + FC weights). A teacher may be a TorchScript or
``torch.export`` program or an ONNX graph whose modules cannot be hooked, so teachers are counted
at the operator level: PyTorch's ``FlopCounterMode`` for torch teachers (FLOPs / 2) and the
Conv/Gemm/MatMul nodes of the shape-inferred graph for ONNX. Both count the same convolution and
matrix-multiply work as the module hooks do, plus matmuls that are not modules (attention).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor, nn

__all__ = ["format_millions", "onnx_mult_adds", "student_cost", "traced_mult_adds"]


def traced_mult_adds(fn: Callable[[Tensor], Any], example: Tensor) -> int | None:
    """Multiply-adds of ``fn(example)`` counted by ``torch.utils.flop_counter`` (FLOPs / 2).

    Returns ``None`` when the program cannot be counted (an operator the counter rejects).
    """
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter:
            fn(example)
    except Exception:  # the count is informative; never fail a run over it
        return None
    return int(counter.get_total_flops() // 2)


def _dims(type_proto: Any) -> list[int] | None:
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in type_proto.tensor_type.shape.dim]
    return dims if all(d > 0 for d in dims) else None


def onnx_mult_adds(path: str, input_shape: tuple[int, ...]) -> int | None:
    """Multiply-adds of an ONNX model for one input of ``input_shape`` (Conv, ConvTranspose, Gemm,
    MatMul nodes after shape inference); ``None`` when a needed shape cannot be inferred."""
    import onnx

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:
        return None
    graph = model.graph
    inits = {t.name: list(t.dims) for t in graph.initializer}
    data_inputs = [i for i in graph.input if i.name not in inits]
    if len(data_inputs) != 1:
        return None
    dims = data_inputs[0].type.tensor_type.shape.dim
    if len(dims) != len(input_shape):
        return None
    for d, v in zip(dims, input_shape):
        d.ClearField("dim_param")
        d.dim_value = int(v)
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return None
    shapes: dict[str, list[int] | None] = dict(inits.items())
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if vi.name not in shapes:
            shapes[vi.name] = _dims(vi.type)

    total = 0
    for node in inferred.graph.node:
        op = node.op_type
        if op not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        out = shapes.get(node.output[0])
        a = shapes.get(node.input[0])
        b = shapes.get(node.input[1]) if len(node.input) > 1 else None
        if out is None or a is None or b is None:
            return None
        if op == "Conv":
            # weight [Cout, Cin/groups, k...]: every output element costs Cin/groups * prod(k)
            total += math.prod(out) * math.prod(b[1:])
        elif op == "ConvTranspose":
            # weight [Cin, Cout/groups, k...]: every input element is spread over Cout/groups * prod(k)
            total += math.prod(a) * math.prod(b[1:])
        elif op == "Gemm":
            trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
            k = a[0] if trans_a else a[1]
            total += math.prod(out) * k
        else:
            total += math.prod(out) * a[-1]
    return int(total)


def student_cost(model: nn.Module, resolution: int) -> tuple[int | None, int | None]:
    """(Mult-Adds, parameters) of a student for one image, with the paper's conventions when
    ``backbone.profile`` is available (else operator-level Mult-Adds and all parameters)."""
    x = torch.zeros(1, 3, resolution, resolution, device=next(model.parameters()).device)
    try:
        from backbone.profile import count_mult_adds
    except ImportError:  # profile module not present: operator-level count
        was = model.training
        model.eval()
        with torch.no_grad():
            ma = traced_mult_adds(model, x)
        model.train(was)
        return ma, sum(p.numel() for p in model.parameters())
    res = count_mult_adds(model, x)
    return int(res.mult_adds), int(res.params)


def format_millions(v: int | None) -> str:
    return "n/a" if v is None else f"{v / 1e6:.1f}"
