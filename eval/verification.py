"""Face verification metrics: 10-fold accuracy, ROC and TAR at a fixed FAR (Table 14).

MobileNets paper, Section 4.7 / Table 14 scores the distilled face embeddings by "1e-4 accuracy": the
true-accept rate (FaceNet's "validation rate") at a false-accept rate of 1e-4. FaceNet (Schroff et al.
2015) and the LFW protocol (Huang et al. 2007) add the 10-fold verification accuracy, where the
same/different threshold of each fold is chosen on the other nine folds.

Everything here is a pure function of pair scores (higher = more likely the same person) and labels
(True = same person); nothing imports a model. ``plot_roc`` writes the ROC as a PNG.

Definitions used:
    * ROC: one point per distinct score, predicting "same" when ``score >= threshold``, plus the
      origin (threshold +inf). Identical to ``sklearn.metrics.roc_curve(drop_intermediate=False)``.
    * TAR@FAR=f: the largest TPR among ROC points with FPR <= f. With fewer than 1/f different-person
      pairs no FPR other than 0 is <= f, so the value is the TAR at zero false accepts; the result
      then says ``resolvable=False``.
    * 10-fold accuracy: on fold k, the threshold maximising accuracy over the other folds (midpoint
      between adjacent distinct scores, ties broken towards the middle of the best plateau) is applied
      to fold k; the mean and standard deviation over folds are reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eval.plots import new_figure, save_png

__all__ = [
    "DEFAULT_FARS",
    "KFoldResult",
    "TarAtFar",
    "VerificationResult",
    "best_threshold",
    "kfold_accuracy",
    "make_folds",
    "pair_scores",
    "plot_roc",
    "roc_curve",
    "tar_at_far",
    "verification_report",
]

DEFAULT_FARS = (1e-3, 1e-4)


# --------------------------------------------------------------------------------------------------
# input checks


def _check_scores_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim != 1 or y.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D, got shapes {s.shape} and {y.shape}")
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.shape[0]}) and labels ({y.shape[0]}) differ in length")
    if s.size == 0:
        raise ValueError("no pairs to evaluate: scores is empty")
    if not np.all(np.isfinite(s)):
        bad = int(np.flatnonzero(~np.isfinite(s))[0])
        raise ValueError(f"score of pair {bad} is {s[bad]}; scores must be finite")
    if y.dtype != bool:
        if not np.all(np.isin(y, (0, 1))):
            raise ValueError(f"labels must be boolean or 0/1, got values {np.unique(y)[:5].tolist()}")
        y = y.astype(bool)
    return s, y


def _need_both_classes(y: np.ndarray, what: str) -> None:
    if not y.any() or y.all():
        kind = "different-person" if y.all() else "same-person"
        raise ValueError(f"{what} needs both same- and different-person pairs; there are no {kind} pairs")


# --------------------------------------------------------------------------------------------------
# scores


def pair_scores(emb_a: Any, emb_b: Any) -> np.ndarray:
    """Cosine similarity of row-aligned embedding pairs.

    Args:
        emb_a, emb_b: ``[N, D]`` arrays (normalised or not; they are L2-normalised here).

    Returns:
        ``[N]`` float64 similarities in [-1, 1].
    """
    a = np.asarray(emb_a, dtype=np.float64)
    b = np.asarray(emb_b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"embedding pairs must be two [N, D] arrays of one shape, got {a.shape} and {b.shape}")
    na = np.linalg.norm(a, axis=1, keepdims=True)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    if np.any(na == 0) or np.any(nb == 0):
        raise ValueError("an embedding is all zeros; cosine similarity is undefined")
    return np.sum((a / na) * (b / nb), axis=1)


# --------------------------------------------------------------------------------------------------
# ROC and TAR@FAR


def roc_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False/true accept rates at every distinct threshold.

    Args:
        scores: ``[N]`` similarities (higher = same person).
        labels: ``[N]`` booleans (True = same person).

    Returns:
        ``(far, tar, thresholds)``, thresholds decreasing from +inf; "same" means ``score >= t``.
    """
    s, y = _check_scores_labels(scores, labels)
    _need_both_classes(y, "a ROC")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    # the last position of each run of equal scores is where a threshold at that score lands
    ends = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tp = np.cumsum(y)[ends]
    fp = (ends + 1) - tp
    far = np.r_[0.0, fp / (~y).sum()]
    tar = np.r_[0.0, tp / y.sum()]
    thresholds = np.r_[np.inf, s[ends]]
    return far, tar, thresholds


@dataclass(frozen=True)
class TarAtFar:
    """True-accept rate at a target false-accept rate.

    Attributes:
        far_target: the requested FAR.
        tar: the largest TAR with FAR <= far_target.
        far: the FAR actually reached at that threshold.
        threshold: the similarity threshold ("same" when ``score >= threshold``).
        resolvable: False when there are fewer than ``1 / far_target`` different-person pairs, so the
            value is really the TAR at zero false accepts.
    """

    far_target: float
    tar: float
    far: float
    threshold: float
    resolvable: bool


def tar_at_far(scores: Any, labels: Any, far: float) -> TarAtFar:
    """TAR at FAR <= ``far`` read off the ROC (see the module docstring)."""
    if not (isinstance(far, (int, float)) and 0 < far < 1):
        raise ValueError(f"far must be in (0, 1), got {far!r}")
    s, y = _check_scores_labels(scores, labels)
    fars, tars, thr = roc_curve(s, y)
    # tiny tolerance so FAR = 3/3000 counts as <= 1e-3 despite float rounding
    ok = np.flatnonzero(fars <= far * (1 + 1e-9))
    best = ok[np.argmax(tars[ok])]  # first (highest threshold) point with the best TAR
    n_neg = int((~y).sum())
    return TarAtFar(float(far), float(tars[best]), float(fars[best]), float(thr[best]), n_neg * far >= 1)


# --------------------------------------------------------------------------------------------------
# k-fold accuracy


def best_threshold(scores: Any, labels: Any) -> tuple[float, float]:
    """The threshold that maximises accuracy on these pairs.

    Candidates are midpoints between adjacent distinct scores plus one below the minimum and one above
    the maximum; among equally accurate candidates the middle one of the best run is taken, so the
    threshold sits in the middle of the gap rather than on its edge.

    Returns:
        ``(threshold, accuracy)``; "same" means ``score >= threshold``.
    """
    s, y = _check_scores_labels(scores, labels)
    u = np.unique(s)
    cands = np.r_[u[0] - 1.0, (u[:-1] + u[1:]) / 2.0, u[-1] + 1.0]
    pos, neg = np.sort(s[y]), np.sort(s[~y])
    tp = pos.size - np.searchsorted(pos, cands, side="left")  # positives with score >= t
    tn = np.searchsorted(neg, cands, side="left")  # negatives with score < t
    acc = (tp + tn) / s.size
    top = np.flatnonzero(acc == acc.max())
    pick = top[len(top) // 2]
    return float(cands[pick]), float(acc[pick])


def make_folds(labels: Any, n_folds: int = 10) -> np.ndarray:
    """Fold index per pair when the pairs file has no fold structure: round robin within each class."""
    y = np.asarray(labels).astype(bool)
    if not isinstance(n_folds, int) or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    folds = np.empty(y.size, dtype=np.int64)
    for cls in (True, False):
        idx = np.flatnonzero(y == cls)
        folds[idx] = np.arange(idx.size) % n_folds
    return folds


@dataclass(frozen=True)
class KFoldResult:
    """Per-fold verification accuracy with thresholds chosen on the other folds."""

    accuracy: float
    std: float
    fold_accuracy: tuple[float, ...]
    thresholds: tuple[float, ...]


def kfold_accuracy(scores: Any, labels: Any, folds: Any) -> KFoldResult:
    """LFW-protocol accuracy.

    Args:
        scores: ``[N]`` similarities.
        labels: ``[N]`` booleans.
        folds: ``[N]`` integer fold index per pair (at least two distinct folds).

    Returns:
        :class:`KFoldResult` (mean and population standard deviation over folds, as FaceNet reports).
    """
    s, y = _check_scores_labels(scores, labels)
    f = np.asarray(folds)
    if f.shape != s.shape or not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"folds must be an integer array of shape {s.shape}, got {f.dtype} {f.shape}")
    ids = np.unique(f)
    if ids.size < 2:
        raise ValueError(f"k-fold accuracy needs at least 2 folds, got {ids.size}")
    accs, thrs = [], []
    for k in ids:
        test = f == k
        thr, _ = best_threshold(s[~test], y[~test])
        pred = s[test] >= thr
        accs.append(float(np.mean(pred == y[test])))
        thrs.append(thr)
    return KFoldResult(float(np.mean(accs)), float(np.std(accs)), tuple(accs), tuple(thrs))


# --------------------------------------------------------------------------------------------------
# report and plot


@dataclass
class VerificationResult:
    """Everything ``tasks.faces.evaluate`` prints and saves."""

    num_pairs: int
    num_same: int
    num_different: int
    kfold: KFoldResult
    tar: tuple[TarAtFar, ...]
    auc: float
    far: np.ndarray = field(repr=False)
    tpr: np.ndarray = field(repr=False)

    def metrics(self) -> dict[str, float]:
        """Flat dict of scalars (keys like ``accuracy``, ``tar@far=1e-04``) for logs and ``best.pt``."""
        out = {"accuracy": self.kfold.accuracy, "accuracy_std": self.kfold.std, "auc": self.auc}
        for t in self.tar:
            out[f"tar@far={t.far_target:.0e}"] = t.tar
        return out

    def summary(self) -> str:
        lines = [
            f"pairs            : {self.num_pairs} ({self.num_same} same, {self.num_different} different)",
            f"10-fold accuracy : {self.kfold.accuracy:.4f} +- {self.kfold.std:.4f} "
            f"({len(self.kfold.fold_accuracy)} folds)",
            f"ROC AUC          : {self.auc:.4f}",
        ]
        for t in self.tar:
            note = "" if t.resolvable else f"  (only {self.num_different} different pairs: TAR at 0 false accepts)"
            lines.append(
                f"TAR @ FAR={t.far_target:.0e}  : {t.tar:.4f} (FAR {t.far:.2e}, threshold {t.threshold:.4f}){note}"
            )
        return "\n".join(lines)


def verification_report(
    scores: Any, labels: Any, folds: Any | None = None, fars: Sequence[float] = DEFAULT_FARS
) -> VerificationResult:
    """k-fold accuracy, ROC, its AUC and TAR at each FAR in ``fars``.

    Args:
        scores, labels: pair similarities and same-person flags.
        folds: fold index per pair (from the pairs file); ``None`` makes 10 folds with :func:`make_folds`.
        fars: false-accept rates at which the TAR is reported.
    """
    s, y = _check_scores_labels(scores, labels)
    _need_both_classes(y, "verification")
    if folds is None:
        folds = make_folds(y, 10)
    kf = kfold_accuracy(s, y, folds)
    far, tpr, _ = roc_curve(s, y)
    auc = float(np.sum(np.diff(far) * (tpr[1:] + tpr[:-1]) / 2.0))
    tars = tuple(tar_at_far(s, y, f) for f in fars)
    return VerificationResult(int(s.size), int(y.sum()), int((~y).sum()), kf, tars, auc, far, tpr)


def plot_roc(result: VerificationResult, path: str | Path, title: str = "Face verification ROC") -> Path:
    """Write the ROC (TAR against FAR on a log axis) as a PNG, marking the TAR@FAR points."""
    out = Path(path)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"folder for the ROC plot does not exist: {out.parent}")
    fig = new_figure((5.5, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    # log axis: FAR 0 cannot be drawn, so start the curve at half the smallest non-zero FAR
    n_neg = max(result.num_different, 1)
    floor = 0.5 / n_neg
    ax.step(np.maximum(result.far, floor), result.tpr, where="post", lw=1.5,
            label=f"acc {result.kfold.accuracy:.3f}, AUC {result.auc:.3f}")
    for t in result.tar:
        ax.axvline(t.far_target, color="grey", ls=":", lw=1)
        ax.plot([max(t.far, floor)], [t.tar], "o", ms=5, label=f"TAR {t.tar:.3f} @ FAR {t.far_target:.0e}")
    ax.set_xscale("log")
    ax.set_xlim(min(floor, min(t.far_target for t in result.tar) / 2 if result.tar else floor), 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return save_png(fig, out)
