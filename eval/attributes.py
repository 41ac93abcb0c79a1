"""Mean average precision across binary attributes (MobileNets paper, Section 4.5, Table 12).

Table 12 reports "mean average precision across attributes (mean AP)". Average precision here is the
definition of scikit-learn's ``average_precision_score`` (no interpolation):

    AP = sum_n (R_n - R_{n-1}) * P_n

over the distinct score thresholds in decreasing order, where P_n and R_n are precision and recall
when everything scoring at least the n-th threshold is called positive (tied scores enter together).

Conventions: unknown labels (NaN) are left out of their attribute only; an attribute with no known
positive has no AP (NaN, where scikit-learn would return 0 with a warning) and is left out of the
mean. Pure NumPy: no model, no scikit-learn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from eval.plots import new_figure, save_png

__all__ = ["AttributeAP", "average_precision", "format_ap_table", "mean_average_precision"]


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision of one binary attribute.

    Args:
        scores: [N] real scores (higher = more likely positive), e.g. probabilities or logits.
        labels: [N] with 1 (positive) and 0 (negative); NaN entries are ignored.

    Returns:
        AP in [0, 1], or NaN when no known label is positive.

    Raises:
        ValueError: shapes differ, labels other than 0/1/NaN, or non-finite scores for known labels.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must have the same length")
    known = ~np.isnan(y)
    s, y = s[known], y[known]
    if np.any((y != 0) & (y != 1)):
        raise ValueError(f"labels must be 0, 1 or NaN, got values {sorted(set(y.tolist()) - {0.0, 1.0})[:5]}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    positives = y.sum()
    if positives == 0:
        return math.nan
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    # One operating point per distinct score: the last index of each run of ties.
    last_of_run = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tp = tp[last_of_run]
    seen = last_of_run + 1.0
    precision = tp / seen
    recall = tp / positives
    recall_steps = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_steps * precision))


@dataclass
class AttributeAP:
    """Result of :func:`mean_average_precision`.

    Attributes:
        mean_ap: mean of the per-attribute APs that exist (NaN when none does).
        ap: [A] per-attribute AP (NaN: no known positive).
        positives: [A] known positive labels per attribute.
        known: [A] known labels per attribute.
        names: attribute names.
    """

    mean_ap: float
    ap: np.ndarray
    positives: np.ndarray
    known: np.ndarray
    names: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, float]:
        """``{"mean_ap": ..., "ap/<name>": ...}`` for metrics.jsonl."""
        out = {"mean_ap": float(self.mean_ap)}
        out.update({f"ap/{n}": float(v) for n, v in zip(self.names, self.ap)})
        return out


def mean_average_precision(
    scores: np.ndarray, labels: np.ndarray, names: Sequence[str] | None = None
) -> AttributeAP:
    """Per-attribute AP and their mean.

    Args:
        scores: [N, A] scores.
        labels: [N, A] with 1, 0, NaN (unknown).
        names: A attribute names (default ``attr0 .. attrA-1``).

    Returns:
        :class:`AttributeAP`.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if s.ndim != 2 or s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must both be [N, A]")
    names = list(names) if names is not None else [f"attr{i}" for i in range(s.shape[1])]
    if len(names) != s.shape[1]:
        raise ValueError(f"{len(names)} names for {s.shape[1]} attributes")
    ap = np.array([average_precision(s[:, a], y[:, a]) for a in range(s.shape[1])], dtype=np.float64)
    known = (~np.isnan(y)).sum(axis=0)
    positives = np.nansum(y, axis=0)
    valid = ~np.isnan(ap)
    mean = float(ap[valid].mean()) if valid.any() else math.nan
    return AttributeAP(mean, ap, positives.astype(np.int64), known.astype(np.int64), names)


def format_ap_table(results: dict[str, AttributeAP] | AttributeAP) -> str:
    """A text table: one row per attribute, one AP column per model, and the mean at the bottom.

    Args:
        results: one :class:`AttributeAP` or ``{"model name": AttributeAP}`` over the same attributes.
    """
    if isinstance(results, AttributeAP):
        results = {"AP": results}
    if not results:
        raise ValueError("no results to format")
    first = next(iter(results.values()))
    for name, r in results.items():
        if r.names != first.names:
            raise ValueError(f"results {name!r} cover other attributes than the first one")
    width = max([len("attribute"), len("mean AP"), *(len(n) for n in first.names)])
    cols = list(results)
    colw = [max(8, len(c)) for c in cols]

    def fmt(v: float, w: int) -> str:
        return f"{'n/a':>{w}}" if math.isnan(v) else f"{100 * v:>{w}.1f}"

    head = f"{'attribute':<{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cols, colw)) + "  positives/known"
    lines = [head, "-" * len(head)]
    for i, n in enumerate(first.names):
        vals = "  ".join(fmt(results[c].ap[i], w) for c, w in zip(cols, colw))
        lines.append(f"{n:<{width}}  {vals}  {first.positives[i]}/{first.known[i]}")
    lines.append("-" * len(head))
    lines.append(f"{'mean AP':<{width}}  " + "  ".join(fmt(results[c].mean_ap, w) for c, w in zip(cols, colw)))
    return "\n".join(lines)


def plot_ap_bars(results: dict[str, AttributeAP] | AttributeAP, path: str | Path,
                 title: str = "average precision per attribute") -> Path:
    """Write a PNG of each attribute's AP as grouped horizontal bars, one colour per model, the mean in the legend.

    Args:
        results: as for :func:`format_ap_table`.
        path: the PNG (its folder must exist); written atomically.
    """
    if isinstance(results, AttributeAP):
        results = {"AP": results}
    format_ap_table(results)  # the same checks: non-empty, the same attributes everywhere
    out = Path(path)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"folder for the AP plot does not exist: {out.parent}")
    names = next(iter(results.values())).names
    fig = new_figure((6.5, 1.2 + 0.35 * len(names) * max(1, len(results)) ** 0.5))
    ax = fig.add_subplot(1, 1, 1)
    height = 0.8 / len(results)
    y = np.arange(len(names))
    for k, (label, r) in enumerate(results.items()):
        values = np.nan_to_num(np.asarray(r.ap, dtype=float), nan=0.0)  # an attribute without AP draws no bar
        ax.barh(y + (k - (len(results) - 1) / 2) * height, values, height=height,
                label=f"{label} (mean AP {100 * r.mean_ap:.1f}%)")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("average precision")
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return save_png(fig, out)
