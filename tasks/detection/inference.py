"""Detection inference shared by train (validation), evaluate and predict.

Predictions come back in each image's original pixel frame with the dataset's own category ids, as
COCO results (``bbox`` in xywh), so ``eval.coco`` scores them exactly as pycocotools would.
"""
from __future__ import annotations

import os
from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn
from tqdm import tqdm

from datasets.coco import CocoDetection, collate_detection
from datasets.transforms import detection_transforms, rescale_boxes
from eval.coco import CocoEvalResult, evaluate_detections
from tasks.checkpoint import CheckpointError, load_model


__all__ = ["transforms_for", "load_detector", "predict_batches", "predict_dataset", "evaluate_dataset", "to_coco_results"]


def transforms_for(model: nn.Module, train: bool, **kwargs: Any):
    """The dataset pipeline that resizes exactly as ``model.input_spec`` says (the model's own resize
    then does nothing). ``kwargs`` go to ``detection_transforms`` (e.g. ``zoom_out_max``)."""
    spec = model.input_spec
    if spec["mode"] == "square":
        return detection_transforms("ssd", train, spec["size"], **kwargs)
    for ssd_only in ("zoom_out_max", "iou_crop_prob", "photometric_prob"):
        kwargs.pop(ssd_only, None)
    return detection_transforms("frcnn", train, spec["min_size"], max_size=spec["max_size"], **kwargs)


def load_detector(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A detection checkpoint through the one loader (``tasks.checkpoint.load_model``).

    Returns:
        (model in eval mode on ``device``, metadata: ``labels`` (class names, background first) and
        ``label_to_cat_id`` with integer keys).
    """
    model, meta = load_model(path, device, task="detection")
    if "label_to_cat_id" not in meta:
        raise CheckpointError(f"{path}: detection checkpoint without label_to_cat_id")
    meta["label_to_cat_id"] = {int(k): int(v) for k, v in meta["label_to_cat_id"].items()}
    return model, meta


def _same_size_groups(images: Sequence[Tensor]) -> list[list[int]]:
    """Indices of the batch grouped by image size.

    The model pads a batch to its largest image; padding changes what the border convolutions see
    (BN shifts the zero padding), so images of different sizes are run in separate sub-batches and a
    prediction never depends on its batch-mates.
    """
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, img in enumerate(images):
        groups[tuple(img.shape[-2:])].append(i)
    return list(groups.values())


@torch.inference_mode()
def predict_batches(
    model: nn.Module, images: Sequence[Tensor], device: torch.device | str
) -> list[dict[str, Tensor]]:
    """Run the model on a list of images (any sizes) and return per-image predictions on the CPU."""
    out: list[dict[str, Tensor] | None] = [None] * len(images)
    for group in _same_size_groups(images):
        preds = model([images[i].to(device, non_blocking=True) for i in group])
        for i, p in zip(group, preds):
            out[i] = {k: v.detach().float().cpu() if v.is_floating_point() else v.cpu() for k, v in p.items()}
    return out  # type: ignore[return-value]


def to_coco_results(
    pred: Mapping[str, Tensor], target: Mapping[str, Any], label_to_cat_id: Mapping[int, int]
) -> list[dict[str, Any]]:
    """One image's predictions as COCO results in the original image frame (xywh, real ids)."""
    boxes = rescale_boxes(pred["boxes"], target["size"], target["orig_size"])
    h, w = (int(v) for v in target["orig_size"])
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)
    image_id = int(target["image_id"])
    results = []
    for box, score, label in zip(xywh.tolist(), pred["scores"].tolist(), pred["labels"].tolist()):
        if box[2] <= 0 or box[3] <= 0:
            continue
        results.append(
            {"image_id": image_id, "category_id": label_to_cat_id[int(label)], "bbox": [round(v, 2) for v in box], "score": round(float(score), 5)}
        )
    return results


def predict_dataset(
    model: nn.Module,
    dataset: CocoDetection,
    label_to_cat_id: Mapping[int, int],
    *,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "predict",
) -> list[dict[str, Any]]:
    """COCO results for every image of ``dataset`` (built with eval transforms)."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_detection
    )
    was_training = model.training
    model.eval()
    results: list[dict[str, Any]] = []
    batches: Iterable = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True) if progress else loader
    for images, targets in batches:
        for pred, target in zip(predict_batches(model, images, device), targets):
            results.extend(to_coco_results(pred, target, label_to_cat_id))
    model.train(was_training)
    return results


def evaluate_dataset(
    model: nn.Module,
    dataset: CocoDetection,
    label_to_cat_id: Mapping[int, int],
    *,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    progress: bool = True,
) -> tuple[CocoEvalResult, list[dict[str, Any]]]:
    """Predict on ``dataset`` and score with pycocotools against its ground truth (crowd kept).

    Only the dataset's images are scored (skipped bad images or dropped empty ones are not misses).
    """
    results = predict_dataset(
        model, dataset, label_to_cat_id, batch_size=batch_size, device=device, num_workers=num_workers,
        progress=progress, desc="evaluate",
    )
    gt = dataset.coco
    if len(dataset.image_ids) != len(gt.getImgIds()):
        gt = _restrict_gt(gt, dataset.image_ids)
    return evaluate_detections(gt, results), results


def _restrict_gt(coco, image_ids: Sequence[int]):
    """A COCO ground truth holding only ``image_ids`` (and their annotations)."""
    from eval.coco import load_coco_gt

    keep = set(int(i) for i in image_ids)
    data = coco.dataset
    return load_coco_gt(
        {
            **{k: v for k, v in data.items() if k not in ("images", "annotations")},
            "images": [im for im in data["images"] if im["id"] in keep],
            "annotations": [a for a in data["annotations"] if a["image_id"] in keep],
        }
    )
