"""COCO detection metrics: a thin, validated wrapper around pycocotools' COCOeval.

MobileNets paper, Section 4.6 / Table 13: detectors are compared by the COCO primary
challenge metric, AP averaged over IoU 0.50:0.05:0.95. The numbers here are exactly the
ones pycocotools' ``COCOeval.summarize`` produces; this module only adds input checks
(ValueError naming the file/field/id instead of pycocotools' asserts and KeyErrors),
silences pycocotools' prints, handles an empty detection list, and plots PR curves.

Usage:
    python -m eval.coco --gt instances_val.json --dt detections.json --out stats.json --plot pr.png
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import numbers
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from datasets.io import atomic_write_json, prepare_output_file, run_cli
from eval.plots import new_figure, save_png

__all__ = [
    "STAT_KEYS",
    "CocoEvalResult",
    "load_coco_gt",
    "evaluate_detections",
    "format_stats",
    "plot_precision_recall",
    "main",
]

STAT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

# How each entry of COCOeval.stats is defined (its _summarizeDets order): which array,
# IoU threshold (None = averaged over .50:.95), area range label and maxDets.
_STAT_SPECS = (
    ("AP", "precision", None, "all", 100),
    ("AP50", "precision", 0.50, "all", 100),
    ("AP75", "precision", 0.75, "all", 100),
    ("APs", "precision", None, "small", 100),
    ("APm", "precision", None, "medium", 100),
    ("APl", "precision", None, "large", 100),
    ("AR1", "recall", None, "all", 1),
    ("AR10", "recall", None, "all", 10),
    ("AR100", "recall", None, "all", 100),
    ("ARs", "recall", None, "small", 100),
    ("ARm", "recall", None, "medium", 100),
    ("ARl", "recall", None, "large", 100),
)
assert tuple(spec[0] for spec in _STAT_SPECS) == STAT_KEYS

# keypoints has a different (10-number) summary, so it is not offered here.
IOU_TYPES = ("bbox", "segm")

PathLike = Union[str, "os.PathLike[str]"]
GroundTruth = Union[PathLike, Mapping[str, Any], COCO]
Detections = Union[PathLike, Sequence[Mapping[str, Any]]]


@dataclass(frozen=True)
class CocoEvalResult:
    """What one COCOeval run produced.

    Attributes:
        stats: the 12 summary numbers keyed by ``STAT_KEYS``; -1.0 where pycocotools reports -1
            (no ground truth in that area range / setting).
        precision: COCOeval's ``eval["precision"]``, shape [T, R, K, A, M] (IoU thresholds, recall
            thresholds, categories, area ranges, maxDets); -1 for categories without ground truth.
        recall: COCOeval's ``eval["recall"]``, shape [T, K, A, M]; -1 likewise.
        iou_thrs: the T IoU thresholds (0.50 ... 0.95).
        rec_thrs: the R recall thresholds (0.00 ... 1.00).
        cat_ids: the K category ids (sorted, as in the ground truth), indexing axis K.
        area_labels: the A area-range labels ("all", "small", "medium", "large").
        max_dets: the M maxDets settings (1, 10, 100).
        num_detections: how many detections were evaluated.
    """

    stats: dict[str, float]
    precision: np.ndarray
    recall: np.ndarray
    iou_thrs: np.ndarray
    rec_thrs: np.ndarray
    cat_ids: tuple[int, ...]
    area_labels: tuple[str, ...]
    max_dets: tuple[int, ...]
    num_detections: int

    def per_category_ap(self) -> dict[int, float]:
        """AP@[.50:.95] (area all, maxDets 100) per category id; -1.0 where it has no ground truth."""
        a = self.area_labels.index("all")
        out = {}
        for k, cat_id in enumerate(self.cat_ids):
            p = self.precision[:, :, k, a, -1]
            valid = p[p > -1]
            out[cat_id] = float(np.mean(valid)) if valid.size else -1.0
        return out


# ----------------------------------------------------------------------------------------------
# validation helpers


def _is_int(x: Any) -> bool:
    # bool is an Integral too, but an id of True is a bug, not an id
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_)) and math.isfinite(x)


def _check_box(box: Any, where: str) -> None:
    if isinstance(box, (str, bytes, Mapping)) or not hasattr(box, "__len__") or len(box) != 4:
        raise ValueError(f"{where}: 'bbox' must be 4 numbers [x, y, w, h], got {box!r}")
    if not all(_is_real(v) for v in box):
        raise ValueError(f"{where}: 'bbox' must be 4 finite numbers [x, y, w, h], got {box!r}")
    if box[2] < 0 or box[3] < 0:
        raise ValueError(f"{where}: 'bbox' width and height must be >= 0, got {box!r}")


def _read_json(path: PathLike, what: str) -> Any:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{what} file not found: {str(p)!r}")
    try:
        with open(p, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} file {str(p)!r} is not valid JSON: {e}") from None


def _validate_gt_dataset(dataset: Any, source: str) -> None:
    """Check the parts of a COCO instances dict that COCOeval relies on."""
    if not isinstance(dataset, Mapping):
        raise ValueError(f"{source}: expected a JSON object at the top level, got {type(dataset).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in dataset:
            raise ValueError(f"{source}: missing required key {key!r}")
        if not isinstance(dataset[key], list):
            raise ValueError(f"{source}: {key!r} must be a list, got {type(dataset[key]).__name__}")

    def ids_of(key: str) -> set:
        seen: set = set()
        for i, entry in enumerate(dataset[key]):
            if not isinstance(entry, Mapping):
                raise ValueError(f"{source}: {key}[{i}] must be an object, got {type(entry).__name__}")
            if "id" not in entry or not _is_int(entry["id"]):
                raise ValueError(f"{source}: {key}[{i}] needs an integer 'id', got {entry.get('id')!r}")
            if entry["id"] in seen:
                # pycocotools would silently keep only the last one
                raise ValueError(f"{source}: {key}[{i}] repeats id {entry['id']}")
            seen.add(entry["id"])
        return seen

    image_ids = ids_of("images")
    cat_ids = ids_of("categories")
    ids_of("annotations")
    for i, ann in enumerate(dataset["annotations"]):
        where = f"{source}: annotations[{i}] (id {ann['id']})"
        for field in ("image_id", "category_id", "bbox", "area", "iscrowd"):
            if field not in ann:
                raise ValueError(f"{where}: missing required field {field!r}")
        if ann["image_id"] not in image_ids:
            raise ValueError(f"{where}: image_id {ann['image_id']!r} is not in 'images'")
        if ann["category_id"] not in cat_ids:
            raise ValueError(f"{where}: category_id {ann['category_id']!r} is not in 'categories'")
        _check_box(ann["bbox"], where)
        if not _is_real(ann["area"]) or ann["area"] < 0:
            raise ValueError(f"{where}: 'area' must be a finite number >= 0, got {ann['area']!r}")
        if ann["iscrowd"] not in (0, 1):
            raise ValueError(f"{where}: 'iscrowd' must be 0 or 1, got {ann['iscrowd']!r}")


def _validate_gt_for_segm(coco_gt: COCO, source: str) -> None:
    for img in coco_gt.dataset["images"]:
        for field in ("height", "width"):
            if not _is_int(img.get(field)):
                raise ValueError(f"{source}: image id {img['id']} needs an integer {field!r} for segm evaluation")
    for ann in coco_gt.dataset["annotations"]:
        if "segmentation" not in ann:
            raise ValueError(f"{source}: annotation id {ann['id']} has no 'segmentation' (needed for segm)")


def _validate_detections(
    dets: Any, source: str, image_ids: set, cat_ids: set, iou_type: str
) -> None:
    if not isinstance(dets, (list, tuple)):
        raise ValueError(f"{source}: expected a list of result objects, got {type(dets).__name__}")
    first_has_bbox = bool(dets) and isinstance(dets[0], Mapping) and "bbox" in dets[0]
    for i, d in enumerate(dets):
        where = f"{source}: detection [{i}]"
        if not isinstance(d, Mapping):
            raise ValueError(f"{where} must be an object, got {type(d).__name__}")
        required = ("image_id", "category_id", "score") + (("bbox",) if iou_type == "bbox" else ("segmentation",))
        for field in required:
            if field not in d:
                raise ValueError(f"{where}: missing required field {field!r}")
        if not _is_int(d["image_id"]):
            raise ValueError(f"{where}: 'image_id' must be an integer, got {d['image_id']!r}")
        if d["image_id"] not in image_ids:
            raise ValueError(f"{where}: image_id {d['image_id']} is not in the ground truth")
        if not _is_int(d["category_id"]):
            raise ValueError(f"{where}: 'category_id' must be an integer, got {d['category_id']!r}")
        if d["category_id"] not in cat_ids:
            raise ValueError(f"{where}: category_id {d['category_id']} is not in the ground truth")
        if not _is_real(d["score"]):
            raise ValueError(f"{where}: 'score' must be a finite number, got {d['score']!r}")
        if iou_type == "segm":
            seg = d["segmentation"]
            if not (isinstance(seg, Mapping) and "size" in seg and "counts" in seg):
                raise ValueError(f"{where}: 'segmentation' must be an RLE object with 'size' and 'counts'")
            # pycocotools picks its loading branch from the first result only
            if ("bbox" in d) != first_has_bbox:
                raise ValueError(f"{where}: either every segm result carries 'bbox' or none does")
        if "bbox" in d:
            _check_box(d["bbox"], where)


# ----------------------------------------------------------------------------------------------
# public API


def _quiet(verbose: bool):
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


def load_coco_gt(gt: PathLike | Mapping[str, Any], *, verbose: bool = False) -> COCO:
    """Build a pycocotools ``COCO`` ground-truth object from a JSON path or an in-memory dict.

    The dict is validated first ("images"/"annotations"/"categories" present, ids unique and
    integer, annotations referring to existing images/categories, with bbox/area/iscrowd).
    An in-memory dict is not modified (COCOeval writes flags into annotation dicts, so they are
    copied).

    Raises:
        ValueError: missing/unreadable/non-JSON file, or a malformed field (named in the message).
        TypeError: ``gt`` is neither a path nor a mapping.
    """
    if isinstance(gt, Mapping):
        source, dataset = "ground-truth dict", gt
    elif isinstance(gt, (str, os.PathLike)):
        source = f"ground-truth file {os.fspath(gt)!r}"
        dataset = _read_json(gt, "ground-truth")
    else:
        raise TypeError(f"gt must be a path or a dict, got {type(gt).__name__}")
    _validate_gt_dataset(dataset, source)

    coco = COCO()
    coco.dataset = {
        **dataset,
        "images": list(dataset["images"]),
        "categories": list(dataset["categories"]),
        "annotations": [dict(a) for a in dataset["annotations"]],
    }
    with _quiet(verbose):
        coco.createIndex()
    return coco


def evaluate_detections(
    gt: GroundTruth,
    detections: Detections,
    iou_type: str = "bbox",
    *,
    verbose: bool = False,
    progress: bool = False,
) -> CocoEvalResult:
    """Run COCOeval (evaluate, accumulate, summarize) on ``detections`` against ``gt``.

    Args:
        gt: COCO instances JSON path, the same as a dict, or a ready ``COCO`` object (used as is;
            COCOeval adds an "ignore" flag to its annotations, as it always does).
        detections: COCO results JSON path or a list of
            ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` (segm: an RLE
            ``"segmentation"`` instead of / besides ``"bbox"``). Not modified.
        iou_type: "bbox" or "segm".
        verbose: let pycocotools print its progress and summary.
        progress: show a tqdm bar over the evaluate/accumulate/summarize stages (stderr).

    Returns:
        A ``CocoEvalResult``; ``stats`` equal ``COCOeval.stats`` for the same inputs.

        For an empty detection list (which pycocotools' ``loadRes`` cannot load) COCOeval is run
        on an empty result set instead, so each stat is 0.0 where ground truth exists and -1.0
        where pycocotools would report -1 (no ground truth in that setting, e.g. APs without small
        objects) -- the same convention as for non-empty inputs.

    Raises:
        ValueError: bad iou_type, malformed files/fields, a detection whose image_id or
            category_id is not in the ground truth (the id is named), a bbox that is not 4 numbers.
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")

    if isinstance(gt, COCO):
        gt_source = "ground-truth COCO object"
        _validate_gt_dataset(gt.dataset, gt_source)
        coco_gt = gt
    else:
        coco_gt = load_coco_gt(gt, verbose=verbose)
        gt_source = "ground-truth dict" if isinstance(gt, Mapping) else f"ground-truth file {os.fspath(gt)!r}"
    if iou_type == "segm":
        _validate_gt_for_segm(coco_gt, gt_source)

    if isinstance(detections, (str, os.PathLike)):
        dt_source = f"detections file {os.fspath(detections)!r}"
        dets = _read_json(detections, "detections")
    else:
        dt_source = "detections"
        dets = detections
    _validate_detections(dets, dt_source, set(coco_gt.getImgIds()), set(coco_gt.getCatIds()), iou_type)

    # loadRes and COCOeval write fields into the result dicts: work on copies
    dets = [dict(d) for d in dets]
    with _quiet(verbose):
        if dets:
            coco_dt = coco_gt.loadRes(dets)
        else:
            coco_dt = COCO()
            coco_dt.dataset = {
                "images": list(coco_gt.dataset["images"]),
                "categories": list(coco_gt.dataset["categories"]),
                "annotations": [],
            }
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        stages = (evaluator.evaluate, evaluator.accumulate, evaluator.summarize)
        if progress:
            from tqdm import tqdm

            with tqdm(total=len(stages), desc="COCOeval", unit="stage", file=sys.stderr) as bar:
                for stage in stages:
                    bar.set_postfix_str(stage.__name__)
                    stage()
                    bar.update(1)
        else:
            for stage in stages:
                stage()

    p = evaluator.params
    assert len(evaluator.stats) == len(STAT_KEYS)
    return CocoEvalResult(
        stats={k: float(v) for k, v in zip(STAT_KEYS, evaluator.stats)},
        precision=np.asarray(evaluator.eval["precision"]),
        recall=np.asarray(evaluator.eval["recall"]),
        iou_thrs=np.asarray(p.iouThrs),
        rec_thrs=np.asarray(p.recThrs),
        cat_ids=tuple(int(c) for c in p.catIds),
        area_labels=tuple(p.areaRngLbl),
        max_dets=tuple(int(m) for m in p.maxDets),
        num_detections=len(dets),
    )


def format_stats(stats: Mapping[str, float]) -> str:
    """The 12 stats, one per line, in the layout of pycocotools' ``COCOeval.summarize``."""
    lines = []
    for key, kind, iou, area, max_dets in _STAT_SPECS:
        title, abbr = ("Average Precision", "(AP)") if kind == "precision" else ("Average Recall", "(AR)")
        iou_str = "0.50:0.95" if iou is None else f"{iou:0.2f}"
        lines.append(
            f" {title:<18} {abbr} @[ IoU={iou_str:<9} | area={area:>6} | maxDets={max_dets:>3d} ]"
            f" = {stats[key]:0.3f}   {key}"
        )
    return "\n".join(lines)


def _mean_pr_curve(precision: np.ndarray) -> np.ndarray:
    """Mean over all axes but recall (axis 1) of a [T, R, K] slice, skipping -1 entries."""
    p = np.moveaxis(precision, 1, 0).reshape(precision.shape[1], -1)
    valid = p > -1
    counts = valid.sum(axis=1)
    sums = np.where(valid, p, 0.0).sum(axis=1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def plot_precision_recall(result: CocoEvalResult, path: PathLike) -> Path:
    """Write a PNG of the category-averaged PR curves (area all, maxDets 100).

    Curves: IoU 0.50, IoU 0.75, and the mean over IoU 0.50:0.95; categories without ground truth
    (precision -1) are left out of the averages. The legend's AP equals the stats' AP50/AP75/AP.

    Returns:
        The path written (atomically).
    """
    out = Path(path)
    if out.parent and not out.parent.is_dir():
        raise ValueError(f"plot directory does not exist: {str(out.parent)!r}")
    a = result.area_labels.index("all")
    m = result.max_dets.index(max(result.max_dets))
    prec = result.precision[:, :, :, a, m]  # [T, R, K]

    fig = new_figure((6, 5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    curves = []
    for iou in (0.50, 0.75):
        t = np.flatnonzero(np.isclose(result.iou_thrs, iou))
        if t.size:
            curves.append((f"IoU={iou:.2f}", prec[t[:1]]))
    curves.append((f"IoU={result.iou_thrs[0]:.2f}:{result.iou_thrs[-1]:.2f}", prec))
    drawn = 0
    for label, p in curves:
        curve = _mean_pr_curve(p)
        if np.all(np.isnan(curve)):
            continue
        ax.plot(result.rec_thrs, curve, label=f"{label} (AP {np.nanmean(curve):.3f})")
        drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "no ground truth to evaluate", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(loc="lower left")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"COCO PR curve, mean over {len(result.cat_ids)} categories (area all, maxDets {result.max_dets[m]})")
    ax.title.set_fontsize(9)
    ax.grid(True, alpha=0.3)

    return save_png(fig, out, dpi=None)


# ----------------------------------------------------------------------------------------------
# CLI


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m eval.coco",
        description="COCO AP/AR (pycocotools COCOeval) of a results JSON against a ground-truth JSON.",
    )
    parser.add_argument("--gt", required=True, help="ground-truth COCO instances JSON")
    parser.add_argument("--dt", required=True, help="detections: COCO results JSON (a list)")
    parser.add_argument("--iou-type", default="bbox", choices=IOU_TYPES)
    parser.add_argument("--out", help="write the 12 stats as JSON here")
    parser.add_argument("--plot", help="write the precision/recall curves as PNG here")
    parser.add_argument("--verbose", action="store_true", help="show pycocotools' own output")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Entry point of ``python -m eval.coco``; returns the stats dict."""
    args = _parse_args(argv)
    for flag in ("out", "plot"):
        if getattr(args, flag):
            prepare_output_file(getattr(args, flag), f"--{flag}")
    result = evaluate_detections(args.gt, args.dt, args.iou_type, verbose=args.verbose, progress=True)

    print(f"{args.iou_type} evaluation of {result.num_detections} detections, {len(result.cat_ids)} categories")
    print(format_stats(result.stats))
    if args.out:
        atomic_write_json(args.out, {k: result.stats[k] for k in STAT_KEYS})
        print(f"wrote {args.out}")
    if args.plot:
        plot_precision_recall(result, args.plot)
        print(f"wrote {args.plot}")
    return result.stats


if __name__ == "__main__":
    run_cli(main)
