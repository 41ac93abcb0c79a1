"""The images an export is calibrated and verified on, through the checkpoint's own preprocessing.

The int8 scales are only as good as the activations they are measured on (FIELD_NOTES: a few hundred
images, the model's exact preprocessing), so calibration reads the user's images with the decoder and
transform every task uses (``datasets.images``): the checkpoint's resolution, mean and std, the centre
crop of face models, the square stretch of SSD.
"""
from __future__ import annotations

import os
from typing import Any, Iterator, Mapping

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from datasets.images import ImageFiles, build_image_transform

__all__ = ["image_transform", "load_image_folder", "iter_batches", "ImageBatchReader"]


def image_transform(meta: Mapping[str, Any], resolution: int):
    """PIL image -> normalised float tensor [3, R, R], as the checkpoint's task prepares its inputs."""
    pre = meta["preprocess"]
    args = meta["model"].get("args", {})
    stretch = meta["model"].get("name") == "detector" and str(args.get("arch", "")).startswith("ssd")
    crop = meta.get("center_crop", args.get("center_crop"))
    center_crop = float(crop) if crop is not None and float(crop) < 1.0 else None
    return build_image_transform(resolution, mean=pre["mean"], std=pre["std"], stretch=stretch,
                                 center_crop=center_crop)


def load_image_folder(folder: str | os.PathLike, meta: Mapping[str, Any], resolution: int, *, count: int,
                      flag: str = "--calib-images") -> ImageFiles:
    """The readable images under ``folder`` (at most ``count``, an even random sample), preprocessed.

    Undecodable files are skipped and counted (``stats["corrupt_images"]``).

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        PermissionError: it cannot be read.
        ValueError: it holds no (readable) image, or ``count`` < 1.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"--calib-count must be an integer >= 1, got {count!r}")
    folder = os.fspath(folder)
    if not os.path.exists(folder):
        raise FileNotFoundError(f"{flag} {folder}: no such folder")
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"{flag} {folder}: not a folder (give the folder that holds the images)")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise PermissionError(f"{flag} {folder}: the folder cannot be read (permission denied)")
    try:
        images = ImageFiles.from_folder(folder, image_transform(meta, resolution), skip_bad_images=True)
    except ValueError as e:
        raise ValueError(f"{flag}: {e}") from None
    if len(images) > count:
        pick = np.random.default_rng(0).permutation(len(images))[:count]
        images = images.subset(sorted(int(i) for i in pick))
    bad = images.scan_images()
    if not len(images):
        raise ValueError(f"{flag} {folder}: none of its {len(bad)} image files could be decoded "
                         f"(e.g. {bad[0] if bad else '?'})")
    return images


def iter_batches(images: ImageFiles, batch: int) -> Iterator[tuple[np.ndarray, int]]:
    """(float32 array [batch, 3, R, R], number of real images in it); the last batch is padded by
    repeating its images, so a graph of fixed batch can take it."""
    for start in range(0, len(images), batch):
        idx = list(range(start, min(start + batch, len(images))))
        arr = np.stack([images[i]["image"].numpy() for i in idx]).astype(np.float32, copy=False)
        real = len(idx)
        if real < batch:
            arr = np.concatenate([arr, arr[np.arange(batch - real) % real]])
        yield arr, real


class ImageBatchReader(CalibrationDataReader):
    """ONNX Runtime's calibration reader over an :class:`ImageFiles`, ``batch`` images per step."""

    def __init__(self, images: ImageFiles, input_name: str, batch: int) -> None:
        self.images, self.input_name, self.batch = images, input_name, int(batch)
        self.rewind()

    def rewind(self) -> None:
        self._it = iter_batches(self.images, self.batch)

    def get_next(self) -> dict[str, np.ndarray] | None:
        nxt = next(self._it, None)
        return None if nxt is None else {self.input_name: nxt[0]}
