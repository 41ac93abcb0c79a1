"""Checks after an export: fp32 ONNX against PyTorch, int8 against fp32.

The deploy path is only worth its speed (paper, Figures 4-5) if the numbers survive it:

* fp32 parity: the largest absolute difference between ONNX Runtime and the PyTorch network (BN not
  folded) on the same inputs, per output; a detector's detections are first matched one to one within
  each image and label (near-equal scores may come out in another order), and a different number of
  detections fails the parity (the counts are reported).
* int8 agreement, per kind: top-1 agreement of the logits (classifiers), cosine similarity of the
  embeddings, and for detectors the COCO AP (``eval.coco``) of the int8 detections scored against the
  fp32 detections above :data:`DET_REFERENCE_SCORE` taken as ground truth.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from backbone.export import TOLERANCE

from .runtime import run_graph, session

__all__ = ["DET_REFERENCE_SCORE", "TOLERANCE", "session", "run_graph", "split_detections", "parity",
           "int8_agreement"]

DET_REFERENCE_SCORE = 0.3


def split_detections(outputs: Sequence[np.ndarray], batch: int) -> list[dict[str, np.ndarray]]:
    """Detector outputs of one batch -> per-image dicts (a graph without ``batch_index`` is batch 1)."""
    boxes, scores, labels = outputs[:3]
    image = outputs[3] if len(outputs) > 3 else np.zeros(len(scores), dtype=np.int64)
    return [{"boxes": boxes[image == i], "scores": scores[image == i], "labels": labels[image == i]}
            for i in range(batch)]


def _match_detections(got: Sequence[np.ndarray], ref: Sequence[np.ndarray], batch: int,
                      side: float = 1.0) -> dict[str, Any]:
    """Largest box / score difference between two detection sets, matched one to one within each
    (image, label): the order of near-equal scores may differ between runtimes, the detections may not.

    Boxes are compared in units of ``side`` (the input's longer side in pixels): a tolerance of 1e-4 then
    means the same on a 256- and a 600-pixel input, where float32 rounding alone reaches 1e-4 pixels
    (its spacing at 256 is 3e-5) after the box decoding's exp and multiply-adds."""
    from scipy.optimize import linear_sum_assignment

    worst = {"boxes": 0.0, "scores": 0.0}
    counts: list[list[int]] = []
    for a, b in zip(split_detections(got, batch), split_detections(ref, batch)):
        for label in np.union1d(a["labels"], b["labels"]):
            ia, ib = np.flatnonzero(a["labels"] == label), np.flatnonzero(b["labels"] == label)
            if len(ia) != len(ib):
                counts.append([len(ia), len(ib)])
                continue
            if not len(ia):
                continue
            fa = np.concatenate([a["boxes"][ia] / side, a["scores"][ia, None]], 1).astype(np.float64)
            fb = np.concatenate([b["boxes"][ib] / side, b["scores"][ib, None]], 1).astype(np.float64)
            cost = np.abs(fa[:, None, :] - fb[None, :, :]).max(-1)
            r, c = linear_sum_assignment(cost)
            d = np.abs(fa[r] - fb[c])
            worst["boxes"] = max(worst["boxes"], float(d[:, :4].max()))
            worst["scores"] = max(worst["scores"], float(d[:, 4].max()))
    out: dict[str, Any] = {"per_output": worst, "boxes_in": f"units of the input side ({side:g} px)",
                           "boxes_max_abs_px": worst["boxes"] * side,
                           "detections": [int(len(got[1])), int(len(ref[1]))]}
    if counts or len(got[1]) != len(ref[1]):
        out["count_mismatch_onnx_vs_torch"] = counts or [[int(len(got[1])), int(len(ref[1]))]]
        out["per_output"] = {k: float("inf") for k in worst}
    return out


def parity(module: nn.Module, sess: Any, inputs: np.ndarray, output_names: Sequence[str]) -> dict[str, Any]:
    """Max |ONNX - PyTorch| per output on ``inputs`` (one batch the graph can take); detections are
    matched one to one within each image and label first."""
    with torch.no_grad():
        ref = module(torch.from_numpy(inputs).to(next(module.parameters()).device))
    ref = [r.float().cpu().numpy() if r.is_floating_point() else r.cpu().numpy()
           for r in (ref if isinstance(ref, (tuple, list)) else (ref,))]
    got = run_graph(sess, inputs)
    out: dict[str, Any] = {}
    if "boxes" in output_names:
        out.update(_match_detections(got, ref, inputs.shape[0], float(max(inputs.shape[-2:]))))
    else:
        out["per_output"] = {name: float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
                             if a.shape == b.shape else float("inf") for name, a, b in zip(output_names, got, ref)}
        out["largest_abs_output"] = float(np.max(np.abs(ref[0])))
    worst = max(out["per_output"].values())
    return {"max_abs_diff": worst, "tolerance": TOLERANCE, "ok": bool(worst <= TOLERANCE),
            "images": int(inputs.shape[0]), **out}


def _classifier_agreement(fp32: list[np.ndarray], int8: list[np.ndarray]) -> dict[str, Any]:
    a, b = np.concatenate(fp32), np.concatenate(int8)
    return {"top1_agreement": float(np.mean(a.argmax(1) == b.argmax(1))),
            "max_abs_logit_diff": float(np.max(np.abs(a - b))), "images": int(len(a))}


def _embedding_agreement(fp32: list[np.ndarray], int8: list[np.ndarray]) -> dict[str, Any]:
    a, b = np.concatenate(fp32).astype(np.float64), np.concatenate(int8).astype(np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()), "images": int(len(a))}


def _xywh(box: np.ndarray) -> list[float]:
    return [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]


def _detection_agreement(fp32: list[dict[str, np.ndarray]], int8: list[dict[str, np.ndarray]],
                         num_labels: int, resolution: int) -> dict[str, Any]:
    from eval.coco import evaluate_detections

    images, anns, results = [], [], []
    for i, (ref, got) in enumerate(zip(fp32, int8)):
        images.append({"id": i + 1, "width": resolution, "height": resolution})
        for box, score, label in zip(ref["boxes"], ref["scores"], ref["labels"]):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            if score >= DET_REFERENCE_SCORE and w > 0 and h > 0:
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(label),
                             "bbox": _xywh(box), "area": w * h, "iscrowd": 0})
        for box, score, label in zip(got["boxes"], got["scores"], got["labels"]):
            results.append({"image_id": i + 1, "category_id": int(label), "bbox": _xywh(box), "score": float(score)})
    out: dict[str, Any] = {"images": len(fp32), "reference_boxes": len(anns), "reference_score": DET_REFERENCE_SCORE,
                           "int8_detections": len(results),
                           "fp32_detections": int(sum(len(r["scores"]) for r in fp32))}
    if not anns:
        out["note"] = f"no fp32 detection scored >= {DET_REFERENCE_SCORE}: nothing to measure AP against"
        return out
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": c, "name": str(c)} for c in range(1, num_labels)]}
    stats = evaluate_detections(gt, results).stats
    out["ap_vs_fp32"] = float(stats["AP"])
    out["ap50_vs_fp32"] = float(stats["AP50"])
    return out


def int8_agreement(kind: str, fp32: list[Any], int8: list[Any], *, num_labels: int = 0,
                   resolution: int = 0) -> dict[str, Any]:
    """The agreement measure of ``kind`` between per-batch fp32 and int8 outputs (per-image dicts for
    detectors)."""
    if kind == "classifier":
        return _classifier_agreement(fp32, int8)
    if kind == "embedding":
        return _embedding_agreement(fp32, int8)
    return _detection_agreement(fp32, int8, num_labels, resolution)
