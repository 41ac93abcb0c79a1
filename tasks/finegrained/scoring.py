"""Scoring a fine-grained classifier on a labeled split (MobileNets paper, Section 4.3, Table 10: test top-1).

Shared by the training report (best.pt on the test list) and ``python -m tasks.finegrained.evaluate``, so
both give the same numbers: top-1, top-5, mean class accuracy, per-class accuracy, the confusion matrix
(PNG) and the most-confused pairs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from eval.classification import ClassificationResult, classification_metrics, confusion_matrix, \
    most_confused_pairs, plot_confusion
from tasks.classifier import predict_outputs

__all__ = ["SplitScore", "evaluate_classifier", "score_split"]


def evaluate_classifier(model: torch.nn.Module, loader: DataLoader, device: torch.device, *, amp: bool = False,
                        progress: bool = False) -> tuple[ClassificationResult, np.ndarray, np.ndarray]:
    """Metrics of ``model`` on a labeled loader, with the scores [N, C] and dataset indices [N]."""
    scores, targets, indices = predict_outputs(model, loader, device, amp=amp, progress=progress, desc="evaluate")
    if targets is None:
        raise ValueError("evaluation needs labeled images")
    return classification_metrics(scores, targets), scores, indices


@dataclass
class SplitScore:
    """Everything :func:`score_split` measured."""

    result: ClassificationResult
    scores: np.ndarray
    indices: np.ndarray
    targets: np.ndarray
    matrix: np.ndarray
    pairs: list[dict[str, Any]]
    plot: Path | None
    metrics: dict[str, float] = field(default_factory=dict)

    def text(self, names: Sequence[str], split: str, limit: int = 12) -> str:
        """The printed block: the headline numbers, the weakest classes and the most-confused pairs."""
        r, n = self.result, len(names)
        lines = [f"{split} ({len(self.targets)} samples, {n} classes): top-1 {100 * r.top1:.1f}%  "
                 f"top-5 {100 * r.top5:.1f}%  mean class accuracy {100 * r.mean_class_accuracy:.1f}%  "
                 f"(chance {100 / n:.1f}%)"]
        order = np.argsort(np.nan_to_num(r.per_class, nan=2.0), kind="stable")
        lines.append(f"per-class {split} accuracy" + (f" (the {limit} lowest)" if n > limit else "") + ":")
        lines += [f"  {names[i]:<28s} {100 * r.per_class[i]:5.1f}%  ({r.counts[i]})" for i in order[:limit]
                  if r.counts[i] > 0]
        if self.pairs:
            lines.append("most confused (true -> predicted: count):")
            lines += [f"  {p['true']} -> {p['predicted']}: {p['count']} ({100 * p['share']:.0f}% of {p['true']})"
                      for p in self.pairs]
        return "\n".join(lines)


def score_split(model: torch.nn.Module, loader: DataLoader, names: Sequence[str], device: torch.device, *,
                amp: bool = False, progress: bool = False, plot_path: str | Path | None = None,
                title: str = "confusion") -> SplitScore:
    """Score ``model`` on ``loader``'s labeled split; ``plot_path``: also write the confusion PNG there."""
    res, scores, indices = evaluate_classifier(model, loader, device, amp=amp, progress=progress)
    targets = np.asarray(loader.dataset.targets)[indices]
    matrix = confusion_matrix(scores.argmax(axis=1), targets, len(names))
    pairs = most_confused_pairs(matrix, names, 10)
    plot = None
    if plot_path is not None:
        plot = plot_confusion(matrix, names, plot_path, title=f"{title} ({len(targets)} samples, top-1 "
                                                              f"{100 * res.top1:.1f}%)")
    return SplitScore(res, scores, indices, targets, matrix, pairs, plot, res.as_metrics(names))
