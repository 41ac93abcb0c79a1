"""Single-label classification metrics as pure functions of scores and labels (MobileNets paper, Section 4.3,
Table 10 reports Stanford Dogs top-1).

* :func:`classification_metrics`: top-1, top-5 (top-k with k capped at the class count), mean per-class
  accuracy (each class weighs the same, whatever its test count: Stanford Dogs' test list has 48-152
  images per breed) and each class's accuracy. A class without test samples has no accuracy (NaN) and is
  left out of the mean.
* :func:`confusion_matrix`, :func:`most_confused_pairs` (off-diagonal counts, largest first) and
  :func:`plot_confusion` (a row-normalised PNG).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from eval.plots import new_figure, save_png

__all__ = ["ClassificationResult", "classification_metrics", "confusion_matrix", "most_confused_pairs",
           "plot_confusion", "topk_accuracy"]


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [N, C], got shape {scores.shape}")
    if labels.shape != (scores.shape[0],):
        raise ValueError(f"labels must be [N] for {scores.shape[0]} score rows, got shape {labels.shape}")
    if scores.shape[0] == 0:
        raise ValueError("no samples to score")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    if labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= scores.shape[1]:
        raise ValueError(f"labels must be integers in [0, {scores.shape[1]}), got {labels.min()}..{labels.max()}")
    return scores, labels.astype(np.int64)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of samples whose label is among the ``k`` highest scores (ties broken by class order)."""
    scores, labels = _check(scores, labels)
    k = max(1, min(int(k), scores.shape[1]))
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


@dataclass
class ClassificationResult:
    """Attributes: top1, top5, mean_class_accuracy; per_class (NaN where a class has no sample); counts."""

    top1: float
    top5: float
    mean_class_accuracy: float
    per_class: np.ndarray
    counts: np.ndarray

    def as_metrics(self, names: Sequence[str], prefix: str = "acc/") -> dict[str, float]:
        """Flat JSON-able metrics: the three numbers and ``acc/<class>`` for each class with samples."""
        out = {"top1": self.top1, "top5": self.top5, "mean_class_accuracy": self.mean_class_accuracy}
        out.update({f"{prefix}{n}": float(a) for n, a in zip(names, self.per_class) if not np.isnan(a)})
        return out


def classification_metrics(scores: np.ndarray, labels: np.ndarray) -> ClassificationResult:
    """Top-1, top-5, mean per-class accuracy and per-class accuracy of ``scores`` [N, C] against ``labels`` [N]."""
    scores, labels = _check(scores, labels)
    c = scores.shape[1]
    correct = scores.argmax(axis=1) == labels
    counts = np.bincount(labels, minlength=c)
    hits = np.bincount(labels, weights=correct.astype(np.float64), minlength=c)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)
    return ClassificationResult(top1=float(correct.mean()), top5=topk_accuracy(scores, labels, 5),
                                mean_class_accuracy=float(np.nanmean(per_class)), per_class=per_class,
                                counts=counts)


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 [C, C]: row = true class, column = predicted class."""
    predicted, labels = np.asarray(predicted, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    if predicted.shape != labels.shape:
        raise ValueError(f"predicted {predicted.shape} and labels {labels.shape} differ in shape")
    out = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(out, (labels, predicted), 1)
    return out


def most_confused_pairs(matrix: np.ndarray, names: Sequence[str], top: int = 10) -> list[dict[str, object]]:
    """The ``top`` largest off-diagonal cells: ``{"true", "predicted", "count", "share"}`` (share of the row)."""
    m = np.asarray(matrix)
    off = m.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")
    rows = m.sum(axis=1)
    out: list[dict[str, object]] = []
    for flat in order[:top]:
        i, j = divmod(int(flat), m.shape[1])
        if off[i, j] == 0:
            break
        out.append({"true": names[i], "predicted": names[j], "count": int(off[i, j]),
                    "share": float(off[i, j] / rows[i])})
    return out


def plot_confusion(matrix: np.ndarray, names: Sequence[str], path: str | Path, *, title: str = "confusion") -> Path:
    """Row-normalised confusion matrix as a PNG (class names on the axes when there are at most 40)."""
    m = np.asarray(matrix, dtype=np.float64)
    norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    n = len(names)
    side = min(14.0, 3.0 + 0.25 * n)
    fig = new_figure((side + 1.5, side))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, cmap="viridis", vmin=0.0, vmax=1.0)
    if n <= 40:
        ax.set_xticks(range(n), labels=list(names), rotation=90, fontsize=7)
        ax.set_yticks(range(n), labels=list(names), fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_png(fig, path, dpi=100)
