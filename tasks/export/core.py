"""Export any task's checkpoint to ONNX fp32 (and int8), write its sidecar, verify both.

MobileNets trade accuracy for latency and size (paper, Section 3.3 and Figures 4-5); this is where a
trained checkpoint becomes the fast thing the paper is about. Steps of :func:`export_checkpoint`:

1. ``tasks.checkpoint.load_model`` rebuilds the network (any builder of ``MODEL_BUILDERS``).
2. ``tasks.export.graph`` folds BatchNorm and wraps the network (detectors: decoding + NMS in the graph).
3. ``backbone.export.export_module`` traces it to ``model.onnx`` (atomic; opset 17).
4. With ``int8``: ONNX Runtime static quantization, QDQ format, per-channel int8 weights (per-tensor
   weights collapse MobileNet v1's depthwise layers), uint8 activations (QDQ U8S8, see
   :data:`INT8_ACTIVATIONS`) calibrated on the user's images through the checkpoint's own preprocessing
   (MinMax, Entropy or Percentile). Only the network's layers are
   quantized (:data:`QUANT_OP_TYPES`: Conv, Gemm, MatMul and the ReLU / ReLU6 / pooling between them, so
   ORT runs int8 convolutions end to end; with Conv alone the activations went back to fp32 after every
   conv and int8 was only 1.16x faster than fp32 at batch 32, measured); softmax, box decoding, NMS and
   the L2 normalisation stay fp32. The stem stays fp32 too (:func:`fp32_stem_nodes`: the first, full
   convolution, 3 input channels, and the depthwise one after it, with their activations): ORT's int8
   kernels are slowest there (the 3x3x3 convolution is a GEMM of depth 27; the 112 x 112 depthwise layer
   gains nothing), so an int8 stem cost 0.75 + 0.33 ms of a 4.4 ms batch-1 run of 1.0 MobileNet-224 while
   fp32 does both in 0.47 ms; the fp32 stem ran batch 1 in 3.74 ms against 4.34 (median of six interleaved
   runs, Intel Xeon, 2026-12-03). ``int8_stem=True`` quantizes it as well. Written to ``model.int8.onnx``.
5. Sidecars ``model.json`` (and ``model.int8.json``) beside each graph: input layout, resolution, mean,
   std, output names, labels (detectors: the label -> category id map).
6. Verification (``tasks.export.verify``), returned and written to ``export.json`` beside the graph; with a
   labelled validation set, the task's own metric of the fp32 and int8 graphs (``tasks.export.metric``).
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from backbone.export import INPUT_NAME, OPSET, export_module
from datasets.io import atomic_path, atomic_write_json
from tasks.checkpoint import load_model

from .data import ImageBatchReader, iter_batches, load_image_folder
from .graph import ExportError, build_graph, count_batchnorm, fold_batchnorm
from .metric import ANN_FORMAT, labelled, task_metric
from .runtime import run_graph, session
from .verify import int8_agreement, parity, split_detections

__all__ = ["CALIB_METHODS", "INT8_ACTIVATIONS", "QUANT_OP_TYPES", "export_checkpoint", "fp32_stem_nodes", "parse_batch", "sidecar_path",
           "int8_path", "onnx_op_types"]

CALIB_METHODS = ("minmax", "entropy", "percentile")
ACTIVATIONS = ("Relu", "Clip")
# uint8 (QDQ U8S8) is the default. ONNX Runtime's x86 kernels are U8S8: it rewrites an S8S8 graph's
# Q -> DQ pairs to uint8 before fusing them into QLinearConv, but in 1.32 not where an activation feeds
# several convolutions (SSD's feature maps feed the next layer and two heads), so every convolution at such
# a branch stayed fp32 between Q and DQ: SSD 300's S8S8 graph ran 1.7x slower than its U8S8 one (AMD EPYC,
# 2026-12-04), the classifier's as fast. OpenVINO's CPU plugin, too, ran the classifier's S8S8 graph about 4x
# slower than its U8S8 one (Intel Xeon, 2026-12-03).
INT8_ACTIVATIONS = ("uint8", "int8")
QUANT_OP_TYPES = ["Conv", "Gemm", "MatMul", "Relu", "Clip", "GlobalAveragePool", "Flatten"]
PARITY_IMAGES = 4


def parse_batch(value: str | int | None) -> int | None:
    """``"dynamic"`` / None -> None (symbolic batch); a positive integer -> that fixed batch."""
    if value is None or value == "dynamic":
        return None
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise ValueError(f"--batch must be 'dynamic' or a positive integer, got {value!r}")
    return int(text)


def int8_path(out: Path) -> Path:
    return out.with_name(out.stem + ".int8.onnx")


def sidecar_path(onnx_path: Path) -> Path:
    return onnx_path.with_suffix(".json")


def onnx_op_types(path: str | os.PathLike) -> dict[str, int]:
    """Node count per op type of an ONNX file."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def fp32_stem_nodes(model: Any) -> list[str]:
    """Names of the stem's nodes in an ONNX model (``onnx.ModelProto``, nodes in topological order): the
    first Conv, the ReLU / Clip right after it, and, when that feeds a depthwise Conv (``group`` equal to its
    output channels, one input channel per group), that Conv and its activation. [] when the graph has no
    Conv or its nodes have no names."""
    nodes = list(model.graph.node)
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def only_consumer(n: Any) -> Any:
        after = consumers.get(n.output[0], []) if n.output else []
        return after[0] if len(after) == 1 else None

    def with_activation(conv: Any) -> list[Any]:
        act = only_consumer(conv)
        return [conv, act] if act is not None and act.op_type in ACTIVATIONS else [conv]

    first = next((n for n in nodes if n.op_type == "Conv"), None)
    if first is None:
        return []
    stem = with_activation(first)
    nxt = only_consumer(stem[-1])
    if nxt is not None and nxt.op_type == "Conv" and len(nxt.input) > 1 and nxt.input[1] in weights:
        group = next((a.i for a in nxt.attribute if a.name == "group"), 1)
        shape = weights[nxt.input[1]]
        if group > 1 and shape[0] == group and shape[1] == 1:
            stem += with_activation(nxt)
    names = [n.name for n in stem]
    return names if all(names) else []


def _calib_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    table = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}
    if name not in table:
        raise ValueError(f"--calib-method must be one of {', '.join(CALIB_METHODS)}, got {name!r}")
    return table[name]


def _quantize(fp32: Path, out: Path, reader: ImageBatchReader, method: str, int8_stem: bool = False,
              activations: str = "uint8") -> dict[str, Any]:
    """Static QDQ int8 of ``fp32`` into ``out`` (atomic); returns notes on how it went."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    notes: dict[str, Any] = {"format": "QDQ", "per_channel": True, "weights": "int8", "activations": activations,
                             "method": method, "op_types": QUANT_OP_TYPES}
    with tempfile.TemporaryDirectory(prefix="export-int8-") as tmp:
        source = Path(tmp) / "pre.onnx"
        try:  # shape inference + graph cleanup, as ORT's quantization guide asks
            quant_pre_process(str(fp32), str(source))
            notes["pre_process"] = True
        except Exception as e:  # noqa: BLE001 - an optional step; quantizing the plain graph still works
            source = fp32
            notes["pre_process"] = f"skipped: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        keep = [] if int8_stem else fp32_stem_nodes(onnx.load(str(source), load_external_data=False))
        notes["fp32_nodes"] = keep
        with atomic_path(out) as dest:
            quantize_static(str(source), str(dest), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
                            weight_type=QuantType.QInt8,
                            op_types_to_quantize=QUANT_OP_TYPES, calibrate_method=_calib_method(method),
                            nodes_to_exclude=keep)
    return notes


def _sidecar(meta: dict[str, Any], kind: str, resolution: int, batch: int | None, output_names: list[str],
             precision: str, checkpoint: Path) -> dict[str, Any]:
    pre = meta["preprocess"]
    side: dict[str, Any] = {
        "task": meta["task"], "kind": kind, "model": meta["model"].get("name"), "precision": precision,
        "input": {"name": INPUT_NAME, "shape": [batch if batch else "batch", 3, resolution, resolution],
                  "dtype": "float32", "layout": "NCHW", "range": "RGB in [0, 1], then (x - mean) / std"},
        "resolution": resolution, "mean": pre["mean"], "std": pre["std"],
        "outputs": output_names, "labels": meta["labels"], "checkpoint": str(checkpoint), "opset": OPSET,
    }
    if kind == "detector":
        side["label_to_cat_id"] = meta.get("label_to_cat_id", {})
        side["boxes"] = "xyxy, pixels of the resolution x resolution input; labels are contiguous (0 = background)"
        side["resize"] = "stretch to resolution x resolution" if "batch_index" in output_names else \
            "any; the graph resizes as the model does"
    elif meta.get("center_crop") not in (None, 1, 1.0):
        side["center_crop"] = meta["center_crop"]
    return side


def _run_all(sess: Any, images: Any, batch: int, kind: str) -> list[Any]:
    """Outputs over every image: per-batch arrays (classifier / embedding) or per-image dicts (detector)."""
    out: list[Any] = []
    for x, real in iter_batches(images, batch):
        res = run_graph(sess, x)
        if kind == "detector":
            out.extend(split_detections(res, x.shape[0])[:real])
        else:
            out.append(res[0][:real])
    return out


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike, *, int8: bool = False,
                      calib_images: str | os.PathLike | None = None, calib_count: int = 500,
                      calib_method: str = "minmax", batch: str | int | None = None, resolution: int | None = None,
                      val_data_root: str | os.PathLike | None = None, val_ann: str | os.PathLike | None = None,
                      batch_size: int = 8, int8_stem: bool = False, int8_activations: str = "uint8",
                      device: str = "cpu", say: Callable[[str], None] = print) -> dict[str, Any]:
    """Export ``checkpoint`` to ``out`` (and ``out``'s ``.int8.onnx``), verify, write ``export.json``.

    Args:
        checkpoint: any task's ``best.pt`` / ``last.pt`` / ``student.pt``.
        out: the fp32 ``.onnx`` path; ``model.json``, ``model.int8.onnx``, ``model.int8.json`` and
            ``export.json`` go beside it.
        int8: also write the statically quantized graph (needs ``calib_images``).
        calib_images: folder of images (any layout, recursive) to calibrate the int8 ranges on.
        calib_count: at most this many of them (an even random sample).
        calib_method: ``minmax``, ``entropy`` or ``percentile``.
        batch: ``"dynamic"`` (default where the graph allows) or a fixed batch size.
        resolution: input side of the graph (default: the checkpoint's).
        val_data_root: images to measure int8 against fp32 on (default: the calibration images); when they
            are labelled (``val_ann``, or fine-grained class folders / Stanford Dogs), the task's own metric of
            the fp32 and int8 graphs too (``tasks.export.metric``).
        val_ann: the labels of ``val_data_root`` in the task's format (COCO json, pairs.txt, CSV, ...).
        batch_size: images per calibration / verification step of a dynamic-batch graph.
        int8_stem: quantize the stem too (default: it stays fp32, see :func:`fp32_stem_nodes`).
        int8_activations: ``"uint8"`` (QDQ U8S8, default: the format ONNX Runtime's x86 kernels and OpenVINO's
            run, see :data:`INT8_ACTIVATIONS`) or ``"int8"`` (QDQ S8S8: ONNX Runtime's quantization default, for
            runtimes that want signed activations; on x86 ONNX Runtime converts it to U8S8 where it can).
        device: where PyTorch runs the reference.
        say: where progress lines go.

    Returns:
        The report written to ``export.json``.

    Raises:
        FileNotFoundError / ValueError (``CheckpointError``, ``ExportError``): naming the file, flag and value.
    """
    start = time.perf_counter()
    checkpoint, out = Path(checkpoint), Path(out)
    if out.suffix != ".onnx":
        raise ValueError(f"--out {out}: give a file name ending in .onnx")
    if calib_method not in CALIB_METHODS:
        raise ValueError(f"--calib-method must be one of {', '.join(CALIB_METHODS)}, got {calib_method!r}")
    if int8_activations not in INT8_ACTIVATIONS:
        raise ValueError(f"--int8-activations must be one of {', '.join(INT8_ACTIVATIONS)}, got {int8_activations!r}")
    if int8 and calib_images is None:
        raise ValueError("--int8 needs --calib-images DIR (a few hundred of your images, to calibrate the int8 ranges)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"--batch-size must be an integer >= 1, got {batch_size!r}")
    fixed = parse_batch(batch)
    if val_ann is not None and val_data_root is None:
        raise ValueError("--val-ann needs --val-data-root (the images its labels are for)")

    model, meta = load_model(checkpoint, device)
    scored = labelled(meta["task"], None if val_data_root is None else os.fspath(val_data_root),
                      None if val_ann is None else os.fspath(val_ann))
    res = int(meta["preprocess"]["resolution"]) if resolution is None else resolution
    reference = build_graph(model, meta, res)  # BN as trained: the parity reference
    if reference.fixed_batch is not None:
        if fixed not in (None, reference.fixed_batch):
            raise ExportError(f"--batch {fixed}: {meta['model']['args'].get('arch', 'this model')} exports for batch "
                              f"{reference.fixed_batch} only ({'; '.join(reference.notes)})")
        fixed = reference.fixed_batch
    folded_model, folded = fold_batchnorm(model)
    spec = build_graph(folded_model, meta, res)
    left = count_batchnorm(spec.module)

    # the images first: a bad folder fails before minutes of work
    calib = load_image_folder(calib_images, meta, res, count=calib_count) if calib_images is not None else None
    val = load_image_folder(val_data_root, meta, res, count=calib_count, flag="--val-data-root") \
        if val_data_root is not None else None
    step = fixed or batch_size

    example = torch.rand(fixed or 2, 3, res, res, device=device)  # dynamic: not 1 (FIELD_NOTES)
    dyn = None
    if fixed is None:
        dyn = {INPUT_NAME: {0: "batch"}, **{n: {a: "batch"} for n, a in spec.batch_axes.items()}}
    if spec.kind == "detector":
        dyn = {**(dyn or {}), **{n: {0: "detections"} for n in spec.output_names}}
    say(f"exporting {checkpoint} ({meta['task']}, {meta['model'].get('name')}) at {res} px, "
        f"batch {fixed or 'dynamic'}; {folded} BatchNorm layers folded")
    try:
        export_module(spec.module, out, (example,), input_names=[INPUT_NAME], output_names=spec.output_names,
                      dynamic_axes=dyn)
    except (RuntimeError, torch.onnx.errors.OnnxExporterError, NotImplementedError) as e:  # type: ignore[attr-defined]
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"{checkpoint}: the ONNX exporter cannot trace this {meta['model'].get('name')} "
                          f"({type(e).__name__}: {first})") from e
    atomic_write_json(sidecar_path(out), _sidecar(meta, spec.kind, res, fixed, spec.output_names, "fp32", checkpoint))
    ops = onnx_op_types(out)
    report: dict[str, Any] = {
        "checkpoint": str(checkpoint), "task": meta["task"], "model": meta["model"].get("name"), "kind": spec.kind,
        "resolution": res, "batch": fixed or "dynamic", "opset": OPSET, "outputs": spec.output_names,
        "files": {"fp32": str(out), "fp32_sidecar": str(sidecar_path(out))},
        "batchnorm": {"folded": folded, "left_in_module": left, "fp32_graph_nodes": ops.get("BatchNormalization", 0)},
        "notes": list(spec.notes),
    }

    # fp32 parity with PyTorch
    sess = session(out)
    source = calib if calib is not None else val
    if source is not None:
        n = fixed or min(PARITY_IMAGES, len(source))
        x = next(iter_batches(source.subset(range(min(n, len(source)))), n))[0]
        what = "calibration images" if calib is not None else "--val-data-root images"
    else:
        pre = meta["preprocess"]
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(fixed or PARITY_IMAGES, 3, res, res, generator=gen)
        x = ((x - torch.tensor(pre["mean"]).view(1, 3, 1, 1)) / torch.tensor(pre["std"]).view(1, 3, 1, 1)).numpy()
        what = "random images"
    report["parity_fp32_vs_torch"] = {"inputs": what, **parity(reference.module, sess, x, spec.output_names)}
    p = report["parity_fp32_vs_torch"]
    say(f"  fp32 ONNX vs PyTorch on {p['images']} {what}: max abs diff {p['max_abs_diff']:.3e} "
        f"({'OK' if p['ok'] else 'FAIL'}, tolerance {p['tolerance']:g})")

    if int8:
        assert calib is not None
        q = int8_path(out)
        say(f"  calibrating int8 ({calib_method}) on {len(calib)} images of {calib_images}"
            + (f" ({calib.stats['corrupt_images']} undecodable skipped)" if calib.stats["corrupt_images"] else ""))
        notes = _quantize(out, q, ImageBatchReader(calib, INPUT_NAME, step), calib_method, int8_stem,
                          int8_activations)
        if notes["fp32_nodes"]:
            say(f"  kept fp32 (the stem; --int8-stem quantizes it too): {', '.join(notes['fp32_nodes'])}")
        atomic_write_json(sidecar_path(q), _sidecar(meta, spec.kind, res, fixed, spec.output_names, "int8", checkpoint))
        qops = onnx_op_types(q)
        report["files"].update(int8=str(q), int8_sidecar=str(sidecar_path(q)))
        report["batchnorm"]["int8_graph_nodes"] = qops.get("BatchNormalization", 0)
        check = val if val is not None else calib
        qsess = session(q)
        agree = int8_agreement(spec.kind, _run_all(sess, check, step, spec.kind),
                               _run_all(qsess, check, step, spec.kind),
                               num_labels=len(meta["labels"]) or int(meta["model"]["args"].get("num_classes", 0)),
                               resolution=res)
        report["int8"] = {**notes, "calib_images": len(calib), "calib_skipped": calib.stats["corrupt_images"],
                          "quantized_nodes": qops.get("QuantizeLinear", 0),
                          "on": "--val-data-root images" if val is not None else "calibration images",
                          "agreement_vs_fp32": agree}
        say(f"  int8 vs fp32 on {agree.get('images')} {report['int8']['on']}: "
            + ", ".join(f"{k} {v:.4f}" for k, v in agree.items() if isinstance(v, float)))
    if scored:
        assert val_data_root is not None
        graphs = {"fp32": str(out), **({"int8": str(int8_path(out))} if int8 else {})}
        say(f"  task metric ({meta['task']}'s own evaluation) on {val_data_root}"
            + (f" with {val_ann}" if val_ann is not None else ""))
        tm = task_metric(meta, graphs, spec.kind, like=model, resolution=res, fixed_batch=fixed, root=val_data_root,
                         ann=val_ann, batch_size=step)
        report["task_metric"] = tm
        head = tm["metric"]
        line = f"  {head} on {tm['images']} images: fp32 {tm['fp32'][head]:.4f}"
        if "int8" in tm:
            line += f", int8 {tm['int8'][head]:.4f}, int8 - fp32 {tm['int8_minus_fp32'][head]:+.4f}"
        say(line)
    elif val_data_root is not None and meta["task"] in ANN_FORMAT:
        report["notes"].append(f"no task metric: --val-data-root is not labelled (give --val-ann, "
                               f"{ANN_FORMAT[meta['task']]})")
    for name, count in (("fp32", report["batchnorm"]["fp32_graph_nodes"]),
                        ("int8", report["batchnorm"].get("int8_graph_nodes", 0))):
        if count:
            report["notes"].append(f"{count} BatchNormalization nodes left in the {name} graph (not foldable here)")
    report["seconds"] = round(time.perf_counter() - start, 2)
    report["ok"] = bool(report["parity_fp32_vs_torch"]["ok"])
    atomic_write_json(out.parent / "export.json", report)
    for f in [out, sidecar_path(out), *( [int8_path(out), sidecar_path(int8_path(out))] if int8 else [])]:
        say(f"  wrote {f} ({f.stat().st_size / 2**20:.2f} MiB)" if f.suffix == ".onnx" else f"  wrote {f}")
    say(f"  wrote {out.parent / 'export.json'}")
    return report

