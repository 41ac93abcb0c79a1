"""COCO-format detection data: an instances json plus an image folder (MobileNets paper, Table 13).

Table 13 trains and evaluates SSD and Faster R-CNN on COCO; this module reads any data set in that
format (``images`` / ``annotations`` / ``categories``) and serves torchvision-style detection samples:

    image:  float32 [3, H, W] in [0, 1]
    target: {"boxes": float32 [N, 4] XYXY absolute pixels, "labels": int64 [N] in 1..K,
             "iscrowd": int64 [N], "image_id": int, "orig_size": int64 [2] (h, w) of the decoded image,
             "size": int64 [2] (h, w) after the transforms}

Conventions, chosen so a run on real COCO behaves like the reference implementations:

* Category ids (arbitrary, often non-contiguous) map to labels 1..K in sorted id order; 0 is background.
  ``label_to_cat_id`` / ``cat_id_to_label`` are plain ``dict[int, int]`` so a checkpoint can store them.
* Crowd annotations never become training targets (``train=True``); with ``train=False`` they are kept in
  the target flagged ``iscrowd=1``. ``coco`` (the pycocotools object for COCOeval) always holds them.
* Boxes reaching outside the image are clipped; boxes with no area left (or a negative/zero w or h in
  the json) are dropped. Both are counted in ``stats`` and logged.
* Images without annotations stay in the set as negatives unless ``drop_empty=True``.
* Images are decoded by ``datasets.images.load_rgb_image``: EXIF orientation applied, converted to 8-bit
  RGB (grey, 16-bit scaled, palette, CMYK; transparency composited over white).

Bad images. Checking every file by decoding it would take minutes on COCO's 118k images, so the
constructor only checks that files exist. Decoding errors surface when an image is loaded:

* ``skip_bad_images=False``: a missing file raises ``FileNotFoundError`` at construction and an
  undecodable one raises ``ValueError`` at load time, both naming the file.
* ``skip_bad_images=True``: missing files are dropped and counted at construction. Call ``scan_images()``
  once in the main process, before building the DataLoader: it decodes every image (threaded), drops the
  bad ones from the index and counts them in ``stats``. This is the robust path: the count is exact and
  each image id appears at most once per epoch. As a last resort ``__getitem__`` replaces an image that
  fails to decode by the next readable one (deterministic); such late skips are flagged in ``skipped``
  (``datasets.images.SkippedImages``, shared with DataLoader workers, so the main process names them in
  the run's summary; the ``stats`` counters of a worker stay in that worker) and they duplicate an image
  within the epoch, so evaluation should always follow a ``scan_images()``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors

from datasets.images import SkippedImages, load_readable, scan_images
from datasets.transforms import rescale_boxes

__all__ = ["CocoDetection", "collate_detection", "rescale_boxes", "BACKGROUND"]

logger = logging.getLogger(__name__)

BACKGROUND = "__background__"

Transforms = Callable[[Any, dict], tuple[Any, dict]]


# --------------------------------------------------------------------------------------------------
# json validation


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(obj: dict, key: str, where: str) -> Any:
    if key not in obj:
        raise ValueError(f"{where} has no '{key}' field")
    return obj[key]


def _read_json(ann_file: str) -> dict:
    if os.path.isdir(ann_file):
        raise IsADirectoryError(f"annotation file {ann_file} is a folder; give the instances JSON inside it")
    if not os.path.isfile(ann_file):
        raise FileNotFoundError(f"annotation file not found: {ann_file}")
    try:
        with open(ann_file, "rb") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{ann_file} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{ann_file}: top level must be an object with 'images', 'annotations', "
                         f"'categories', got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{ann_file} has no '{key}' field")
        if not isinstance(data[key], list):
            raise ValueError(f"{ann_file}: field '{key}' must be a list, got {type(data[key]).__name__}")
    return data


def _check_categories(categories: list, ann_file: str) -> dict[int, str]:
    names: dict[int, str] = {}
    for i, cat in enumerate(categories):
        where = f"{ann_file}: categories[{i}]"
        if not isinstance(cat, dict):
            raise ValueError(f"{where} must be an object")
        cid = _require(cat, "id", where)
        if not _is_int(cid):
            raise ValueError(f"{where}: field 'id' must be an int, got {cid!r}")
        name = cat.get("name", str(cid))
        if not isinstance(name, str):
            raise ValueError(f"{where}: field 'name' must be a string, got {name!r}")
        if cid in names:
            raise ValueError(f"{ann_file}: duplicate category id {cid}")
        names[cid] = name
    if not names:
        raise ValueError(f"{ann_file}: field 'categories' is empty")
    return names


def _check_images(images: list, ann_file: str) -> dict[int, dict]:
    by_id: dict[int, dict] = {}
    for i, img in enumerate(images):
        where = f"{ann_file}: images[{i}]"
        if not isinstance(img, dict):
            raise ValueError(f"{where} must be an object")
        iid = _require(img, "id", where)
        if not _is_int(iid):
            raise ValueError(f"{where}: field 'id' must be an int, got {iid!r}")
        where = f"{ann_file}: image id {iid}"
        name = _require(img, "file_name", where)
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: field 'file_name' must be a non-empty string, got {name!r}")
        for key in ("width", "height"):
            v = _require(img, key, where)
            if not _is_int(v) or v <= 0:
                raise ValueError(f"{where}: field '{key}' must be a positive int, got {v!r}")
        if iid in by_id:
            raise ValueError(f"{ann_file}: duplicate image id {iid}")
        by_id[iid] = img
    return by_id


def _check_annotation(ann: Any, i: int, ann_file: str, image_ids: dict, cat_ids: dict) -> tuple[int, list[float]]:
    """Validate one annotation; return (annotation id, bbox as 4 floats)."""
    if not isinstance(ann, dict):
        raise ValueError(f"{ann_file}: annotations[{i}] must be an object")
    aid = _require(ann, "id", f"{ann_file}: annotations[{i}]")
    if not _is_int(aid):
        raise ValueError(f"{ann_file}: annotations[{i}]: field 'id' must be an int, got {aid!r}")
    where = f"{ann_file}: annotation id {aid}"
    iid = _require(ann, "image_id", where)
    if not _is_int(iid) or iid not in image_ids:
        raise ValueError(f"{where}: field 'image_id' refers to unknown image id {iid!r}")
    cid = _require(ann, "category_id", where)
    if not _is_int(cid) or cid not in cat_ids:
        raise ValueError(f"{where}: field 'category_id' has unknown category id {cid!r} "
                         f"(not in 'categories')")
    bbox = _require(ann, "bbox", where)
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise ValueError(f"{where}: field 'bbox' must be 4 numbers [x, y, w, h], got {bbox!r}")
    if not all(_is_number(v) for v in bbox):
        raise ValueError(f"{where}: field 'bbox' must hold numbers, got {bbox!r}")
    if not all(math.isfinite(v) for v in bbox):
        raise ValueError(f"{where}: field 'bbox' must be finite, got {bbox!r}")
    crowd = ann.get("iscrowd", 0)
    if crowd not in (0, 1) or isinstance(crowd, float):
        raise ValueError(f"{where}: field 'iscrowd' must be 0 or 1, got {crowd!r}")
    if "area" in ann and not (_is_number(ann["area"]) and math.isfinite(ann["area"]) and ann["area"] >= 0):
        raise ValueError(f"{where}: field 'area' must be a non-negative number, got {ann['area']!r}")
    return aid, [float(v) for v in bbox]


def _clip_xywh(bbox: list[float], width: float, height: float) -> tuple[list[float], bool, bool]:
    """Clip an xywh box to the image; return (xyxy, was_clipped, is_degenerate)."""
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return [x, y, x + w, y + h], False, True
    x1, y1, x2, y2 = x, y, x + w, y + h
    cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
    cx2, cy2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
    clipped = (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2)
    return [cx1, cy1, cx2, cy2], clipped, not (cx2 > cx1 and cy2 > cy1)


# --------------------------------------------------------------------------------------------------
# dataset


@dataclass
class _Record:
    """One image of the index; boxes are the json boxes as XYXY (validated, not yet clipped)."""

    image_id: int
    path: str
    width: int
    height: int
    boxes: np.ndarray  # float32 [N, 4]
    labels: np.ndarray  # int64 [N]
    iscrowd: np.ndarray  # int64 [N]


class CocoDetection(torch.utils.data.Dataset):
    """A COCO-format detection set served as ``(image, target)`` pairs (see the module docstring).

    Args:
        root: folder the images' ``file_name`` entries are relative to.
        ann_file: instances json (``images``, ``annotations``, ``categories``).
        transforms: callable ``(image, target) -> (image, target)`` taking a ``tv_tensors.Image`` (uint8)
            and a target whose ``boxes`` are ``tv_tensors.BoundingBoxes``; e.g.
            ``datasets.transforms.detection_transforms(...)``. ``None`` keeps the decoded image.
        train: drop crowd annotations from targets (they stay in ``coco`` for evaluation).
        skip_bad_images: skip and count missing / undecodable images instead of raising.
        drop_empty: leave out images that have no usable box (after crowd/degenerate filtering).

    Attributes:
        cat_ids: sorted dataset category ids; ``cat_ids[label - 1]`` is the id of ``label``.
        cat_id_to_label, label_to_cat_id: the mapping as plain ``dict[int, int]`` (labels 1..K).
        class_names: ``class_names[label]``, with ``class_names[0] == "__background__"``.
        num_classes: K + 1 (background included), what torchvision detectors take.
        stats: counts, see ``STAT_KEYS``.
        coco: pycocotools ``COCO`` ground truth for COCOeval (crowd kept, boxes clipped, degenerate
            boxes removed), built on first use. Evaluate on ``image_ids`` only.
    """

    STAT_KEYS = (
        "images",  # images served (after skipping / dropping)
        "annotations",  # annotations in the json
        "boxes",  # boxes kept in the targets
        "clipped_boxes",  # boxes that reached outside the image and were clipped
        "degenerate_boxes_dropped",  # zero/negative size in the json or after clipping
        "crowd_boxes_ignored",  # crowd annotations left out of training targets
        "images_without_annotations",  # images with no usable box (kept as negatives unless drop_empty)
        "empty_images_dropped",
        "missing_images",  # files not found at construction (skip_bad_images=True)
        "corrupt_images",  # files that failed to decode (scan_images or, per process, __getitem__)
        "bad_images_skipped",  # missing + corrupt
    )

    def __init__(
        self,
        root: str,
        ann_file: str,
        transforms: Transforms | None = None,
        *,
        train: bool = True,
        skip_bad_images: bool = False,
        drop_empty: bool = False,
    ) -> None:
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image folder not found: {root}")
        self.root = root
        self.ann_file = ann_file
        self.transforms = transforms
        self.train = bool(train)
        self.skip_bad_images = bool(skip_bad_images)
        self.drop_empty = bool(drop_empty)
        self.stats: dict[str, int] = {k: 0 for k in self.STAT_KEYS}

        data = _read_json(ann_file)
        names = _check_categories(data["categories"], ann_file)
        images = _check_images(data["images"], ann_file)

        self.cat_ids: list[int] = sorted(names)
        self.cat_id_to_label: dict[int, int] = {cid: i + 1 for i, cid in enumerate(self.cat_ids)}
        self.label_to_cat_id: dict[int, int] = {i + 1: cid for i, cid in enumerate(self.cat_ids)}
        self.class_names: list[str] = [BACKGROUND] + [names[cid] for cid in self.cat_ids]
        self.num_classes: int = len(self.cat_ids) + 1

        self._coco_dataset, per_image = self._index_annotations(data, images)
        self._coco = None
        self._records = self._build_records(images, per_image)
        self._paths = [r.path for r in self._records]  # what the image loader indexes
        self.skipped = SkippedImages(self._paths, [f"image file not found: {p}" for p in self._missing])
        self.stats["images"] = len(self._records)
        self.stats["boxes"] = sum(len(r.labels) for r in self._records)
        self._log_summary()

    # ---- construction helpers ------------------------------------------------------------------

    def _index_annotations(self, data: dict, images: dict[int, dict]) -> tuple[dict, dict[int, list]]:
        """Validate annotations; return the cleaned ground truth for pycocotools and per-image boxes."""
        names = {cid: n for cid, n in zip(self.cat_ids, self.class_names[1:])}
        per_image: dict[int, list] = {iid: [] for iid in images}
        gt_anns: list[dict] = []
        seen_ids: set[int] = set()
        for i, ann in enumerate(data["annotations"]):
            aid, bbox = _check_annotation(ann, i, self.ann_file, images, names)
            if aid in seen_ids:
                raise ValueError(f"{self.ann_file}: duplicate annotation id {aid}")
            seen_ids.add(aid)
            img = images[ann["image_id"]]
            xyxy, clipped, degenerate = _clip_xywh(bbox, img["width"], img["height"])
            if degenerate:
                self.stats["degenerate_boxes_dropped"] += 1
                continue
            self.stats["clipped_boxes"] += int(clipped)
            crowd = int(ann.get("iscrowd", 0))
            # Boxes are stored unclipped: __getitem__ clips to the decoded image, which differs from the
            # json size when EXIF rotation swaps width and height.
            raw = [bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]]
            per_image[ann["image_id"]].append((raw, self.cat_id_to_label[ann["category_id"]], crowd))
            gt = dict(ann)
            gt["bbox"] = [xyxy[0], xyxy[1], xyxy[2] - xyxy[0], xyxy[3] - xyxy[1]]
            gt["iscrowd"] = crowd
            if "area" not in gt:
                gt["area"] = gt["bbox"][2] * gt["bbox"][3]
            gt_anns.append(gt)
        self.stats["annotations"] = len(data["annotations"])
        coco_dataset = {
            "info": data.get("info", {}),
            "licenses": data.get("licenses", []),
            "images": data["images"],
            "annotations": gt_anns,
            "categories": data["categories"],
        }
        return coco_dataset, per_image

    def _build_records(self, images: dict[int, dict], per_image: dict[int, list]) -> list[_Record]:
        records: list[_Record] = []
        missing: list[str] = []
        self._missing: list[str] = []
        for iid, img in images.items():
            path = os.path.join(self.root, img["file_name"])
            if not os.path.exists(path):
                missing.append(path)
                continue
            entries = per_image[iid]
            if self.train:
                self.stats["crowd_boxes_ignored"] += sum(1 for e in entries if e[2])
                entries = [e for e in entries if not e[2]]
            usable = sum(1 for e in entries if not e[2])
            if usable == 0:
                self.stats["images_without_annotations"] += 1
                if self.drop_empty:
                    self.stats["empty_images_dropped"] += 1
                    continue
            boxes = np.array([e[0] for e in entries], dtype=np.float32).reshape(-1, 4)
            labels = np.array([e[1] for e in entries], dtype=np.int64)
            crowd = np.array([e[2] for e in entries], dtype=np.int64)
            records.append(_Record(iid, path, img["width"], img["height"], boxes, labels, crowd))
        if missing:
            if not self.skip_bad_images:
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                raise FileNotFoundError(f"image file not found: {missing[0]}{more}; "
                                        f"pass skip_bad_images=True to skip missing images")
            self._missing = missing
            self.stats["missing_images"] = len(missing)
            self.stats["bad_images_skipped"] += len(missing)
            logger.warning("%s: %d image files missing, skipped (first: %s)", self.ann_file, len(missing), missing[0])
        return records

    def _log_summary(self) -> None:
        s = self.stats
        logger.info(
            "%s: %d images (%d without annotations%s), %d annotations; %d boxes clipped, %d degenerate "
            "dropped, %d crowd ignored, %d bad images skipped",
            self.ann_file, s["images"], s["images_without_annotations"],
            f", {s['empty_images_dropped']} dropped" if self.drop_empty else "", s["annotations"],
            s["clipped_boxes"], s["degenerate_boxes_dropped"], s["crowd_boxes_ignored"], s["bad_images_skipped"],
        )
        if s["degenerate_boxes_dropped"]:
            logger.warning("%s: dropped %d boxes with no area", self.ann_file, s["degenerate_boxes_dropped"])

    # ---- public API -------------------------------------------------------------------------------

    @property
    def coco(self):
        """pycocotools ``COCO`` ground truth (built once, on first use)."""
        if self._coco is None:
            from pycocotools.coco import COCO

            coco = COCO()
            # COCOeval writes flags into these dicts; they are private copies made at construction.
            coco.dataset = self._coco_dataset
            with contextlib.redirect_stdout(io.StringIO()):  # COCO prints "creating index..."
                coco.createIndex()
            self._coco = coco
        return self._coco

    @property
    def image_ids(self) -> list[int]:
        """Ids of the images this dataset serves, in index order (pass to ``COCOeval.params.imgIds``)."""
        return [r.image_id for r in self._records]

    def image_path(self, index: int) -> str:
        return self._records[index].path

    def scan_images(self, num_threads: int | None = None, progress: bool = False) -> list[str]:
        """Decode every image once; drop and count undecodable ones.

        Call in the main process before creating DataLoaders (workers copy the index at fork time).

        Args:
            num_threads: decoding threads (PIL releases the GIL while decoding); default min(8, cpus).
            progress: show a tqdm bar.

        Returns:
            Paths of the images that failed to decode.

        Raises:
            ValueError: naming the bad files, when ``skip_bad_images`` is False.
        """
        bad = scan_images(self._paths, skip_bad_images=self.skip_bad_images, num_threads=num_threads,
                          progress=progress)
        bad_paths = [self._paths[i] for i in bad]
        if bad:
            self._records = [r for i, r in enumerate(self._records) if i not in bad]
            self._paths = [r.path for r in self._records]
            self.skipped.found += list(bad.values())
            self.skipped.reset(self._paths)
            self.stats["corrupt_images"] += len(bad)
            self.stats["bad_images_skipped"] += len(bad)
            self.stats["images"] = len(self._records)
            self.stats["boxes"] = sum(len(r.labels) for r in self._records)
        return bad_paths

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index %= len(self)
        rec, pil = self._load(index)
        return self._make_sample(rec, pil)

    def _load(self, index: int) -> tuple[_Record, Image.Image]:
        before = len(self.skipped)
        j, pil = load_readable(self._paths, index, self.skipped, skip_bad_images=self.skip_bad_images)
        late = len(self.skipped) - before
        self.stats["corrupt_images"] += late
        self.stats["bad_images_skipped"] += late
        return self._records[j], pil

    def _make_sample(self, rec: _Record, pil: Image.Image) -> tuple[Tensor, dict[str, Any]]:
        w, h = pil.size
        boxes = torch.from_numpy(rec.boxes.copy())
        labels = torch.from_numpy(rec.labels.copy())
        iscrowd = torch.from_numpy(rec.iscrowd.copy())
        if boxes.numel():
            # Clip to the decoded image: the json size can differ from it (EXIF rotation).
            boxes[:, 0::2].clamp_(0, w)
            boxes[:, 1::2].clamp_(0, h)
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, labels, iscrowd = boxes[keep], labels[keep], iscrowd[keep]
        image = tv_tensors.Image(torch.from_numpy(np.array(pil, dtype=np.uint8)).permute(2, 0, 1))
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
            "labels": labels,
            "iscrowd": iscrowd,
            "image_id": rec.image_id,
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        image = image.as_subclass(torch.Tensor)
        if not image.is_floating_point():
            image = image.to(torch.float32).div_(255.0)
        elif image.dtype != torch.float32:
            image = image.to(torch.float32)
        out = {
            "boxes": target["boxes"].as_subclass(torch.Tensor).to(torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(target["labels"], dtype=torch.int64),
            "iscrowd": torch.as_tensor(target["iscrowd"], dtype=torch.int64),
            "image_id": rec.image_id,
            "orig_size": torch.tensor([h, w], dtype=torch.int64),
            "size": torch.tensor(image.shape[-2:], dtype=torch.int64),
        }
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"transforms must return a [3, H, W] image, got {tuple(image.shape)}")
        assert out["boxes"].shape[0] == out["labels"].shape[0] == out["iscrowd"].shape[0]
        return image, out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={self.root!r}, ann_file={self.ann_file!r}, images={len(self)}, "
                f"classes={self.num_classes - 1}, train={self.train})")


def collate_detection(batch: Sequence[tuple[Tensor, dict]]) -> tuple[list[Tensor], list[dict]]:
    """DataLoader ``collate_fn`` for detection: images of different sizes stay a list."""
    images = [item[0] for item in batch]
    targets = [item[1] for item in batch]
    return images, targets
