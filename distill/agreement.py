"""How well a student emulates its teacher (MobileNets paper, Section 4.5 and its footnote 2).

``teacher_agreement`` is the share of *decisions* on which student and teacher agree:

* classification: the top-1 class of each image;
* attributes: each attribute's yes/no at probability 0.5 (every image x attribute is one decision);
* embeddings: each image's nearest neighbour among the other images (cosine similarity), the
  decision a face search makes.

The paper measures "emulation quality" by the per-attribute cross-entropy averaged over all
attributes (:func:`emulation_cross_entropy`). Inputs are tensors or arrays of raw outputs.
:func:`label_metric` is the student's ground-truth metric where labels are known (top-1, mean AP).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from distill.data import IGNORE_INDEX
from eval.attributes import mean_average_precision

__all__ = [
    "attribute_agreement",
    "emulation_cross_entropy",
    "label_metric",
    "nearest_neighbor_agreement",
    "teacher_agreement",
    "top1_agreement",
]


def _t(x: Any) -> Tensor:
    return torch.as_tensor(x).detach().float().cpu()


def _pair(student: Any, teacher: Any) -> tuple[Tensor, Tensor]:
    s, t = _t(student), _t(teacher)
    if s.shape != t.shape or s.dim() != 2:
        raise ValueError(f"student {tuple(s.shape)} and teacher {tuple(t.shape)} outputs must both be [N, D]")
    if s.shape[0] == 0:
        raise ValueError("no outputs to compare")
    return s, t


def top1_agreement(student_logits: Any, teacher_logits: Any) -> float:
    """Share of images whose top-1 class is the same for student and teacher."""
    s, t = _pair(student_logits, teacher_logits)
    return float((s.argmax(1) == t.argmax(1)).float().mean())


def attribute_agreement(student_logits: Any, teacher_logits: Any) -> float:
    """Share of (image, attribute) yes/no decisions at probability 0.5 (logit 0) that agree."""
    s, t = _pair(student_logits, teacher_logits)
    return float(((s >= 0) == (t >= 0)).float().mean())


def nearest_neighbor_agreement(student_emb: Any, teacher_emb: Any) -> float:
    """Share of images whose nearest other image (cosine similarity) is the same under both models."""
    s, t = _pair(student_emb, teacher_emb)
    if s.shape[0] < 2:
        raise ValueError("nearest-neighbour agreement needs at least 2 images")

    def nn_index(e: Tensor) -> Tensor:
        e = F.normalize(e, dim=1)
        sim = e @ e.T
        sim.fill_diagonal_(-float("inf"))
        return sim.argmax(1)

    return float((nn_index(s) == nn_index(t)).float().mean())


def teacher_agreement(task: str, student: Any, teacher: Any) -> float:
    """Dispatch on the task: "classification", "attributes" or "embedding"."""
    if task == "classification":
        return top1_agreement(student, teacher)
    if task == "attributes":
        return attribute_agreement(student, teacher)
    if task == "embedding":
        return nearest_neighbor_agreement(student, teacher)
    raise ValueError(f"unknown task {task!r}")


def emulation_cross_entropy(student_logits: Any, teacher_logits: Any) -> float:
    """Per-attribute cross-entropy of the student against the teacher's probabilities, averaged over
    images and attributes (the paper's emulation quality, footnote 2 of Section 4.5; nats)."""
    s, t = _pair(student_logits, teacher_logits)
    return float(F.binary_cross_entropy_with_logits(s, torch.sigmoid(t)))


def label_metric(task: str, outputs: np.ndarray, targets: np.ndarray | None,
                 names: Sequence[str] | None) -> tuple[str, float, Any] | None:
    """(name, value, per-attribute ``AttributeAP`` or None) of the ground-truth metric, or None without known
    labels: mean AP over attributes, or top-1 over the images whose class is known (not ``IGNORE_INDEX``)."""
    if targets is None:
        return None
    if task == "attributes":
        res = mean_average_precision(outputs, targets, names)
        return None if math.isnan(res.mean_ap) else ("mean_ap", res.mean_ap, res)
    if task == "classification":
        known = targets != IGNORE_INDEX
        if not known.any():
            return None
        return "top1", float((outputs[known].argmax(1) == targets[known]).mean()), None
    return None
