"""Image files without (or with optional) labels: the unlabeled folders distillation trains on.

Section 4.5 of the MobileNets paper trains by distillation, "hence enabling training from large (and
potentially infinite) unlabeled datasets". :class:`ImageFiles` serves any list of image files, and
:meth:`ImageFiles.from_folder` any folder tree of images (recursive, common extensions, hidden files
and folders skipped, sorted so the order is stable across machines).

Samples are dicts: ``{"image": float [3, R, R], "index": int}`` plus ``"target"`` when targets were
given. ``index`` is the position of the image actually served, which is what a cache of teacher
outputs is keyed by.

Images are decoded with EXIF orientation applied and converted to RGB (``datasets.coco.load_rgb_image``).
Bad images are handled the way the detection loader (``datasets.coco``) handles them:

* ``skip_bad_images=False``: a missing file raises ``FileNotFoundError`` at construction and an
  undecodable one ``ValueError`` when loaded, both naming the file.
* ``skip_bad_images=True``: missing files are dropped and counted at construction; call
  :meth:`ImageFiles.scan_images` once in the main process before building DataLoaders to decode
  every file and drop (and count) the bad ones. As a last resort ``__getitem__`` serves the next
  readable image in place of one that fails to decode, counting it in that process only.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from datasets.coco import load_rgb_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageFiles",
    "build_image_transform",
    "list_images",
    "split_holdout",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Errors PIL raises on unreadable or truncated files (SyntaxError/EOFError come from a few old decoders).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def list_images(root: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[str]:
    """Paths (relative to ``root``, '/'-separated) of all image files under ``root``, sorted.

    Matching is by extension, case-insensitive; hidden files and folders (leading '.') are skipped;
    symbolic links to folders are followed.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder not found: {root}")
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            if name.startswith(".") or not name.lower().endswith(exts):
                continue
            rel = name if rel_dir == "." else os.path.join(rel_dir, name)
            found.append(rel.replace(os.sep, "/"))
    return sorted(found)


def split_holdout(n: int, fraction: float = 0.1, seed: int = 0) -> tuple[list[int], list[int]]:
    """Split ``range(n)`` into (train, held-out) index lists, the held-out part being ``fraction``
    of it (at least one item, and at least one left for training); seeded, so runs agree."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"held-out fraction must be in (0, 1), got {fraction}")
    if n < 2:
        raise ValueError(f"cannot hold out a validation part of {n} image(s); give validation images explicitly")
    k = min(n - 1, max(1, int(round(n * fraction))))
    perm = np.random.default_rng(seed).permutation(n)
    return sorted(int(i) for i in perm[k:]), sorted(int(i) for i in perm[:k])


def build_image_transform(
    resolution: int,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    augment: bool = False,
    crop_scale: tuple[float, float] | None = (0.7, 1.0),
) -> Callable[[Image.Image], Tensor]:
    """PIL image -> normalized float tensor [3, resolution, resolution].

    Without ``augment``: resize the shorter side to ``resolution`` and take the centre square
    (aligned face crops such as CelebA's 178x218 keep their aspect ratio). With ``augment``: a
    random resized crop keeping ``crop_scale`` of the area (``None``: no crop) and a horizontal flip.
    """
    from torchvision.transforms import v2

    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")
    _check_norm(mean, std)
    if augment and crop_scale is not None:
        geometry = [v2.RandomResizedCrop(resolution, scale=crop_scale, ratio=(0.9, 1.1), antialias=True),
                    v2.RandomHorizontalFlip()]
    elif augment:
        geometry = [v2.Resize(resolution, antialias=True), v2.CenterCrop(resolution), v2.RandomHorizontalFlip()]
    else:
        geometry = [v2.Resize(resolution, antialias=True), v2.CenterCrop(resolution)]
    return v2.Compose([v2.PILToTensor(), *geometry, v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(list(mean), list(std))])


def _check_norm(mean: Sequence[float], std: Sequence[float]) -> None:
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (R G B), got mean={list(mean)} std={list(std)}")
    if any(not float(s) > 0 for s in std):
        raise ValueError(f"std values must be > 0, got {list(std)}")


class ImageFiles(torch.utils.data.Dataset):
    """A list of image files served as ``{"image", "index"[, "target"]}`` dicts (see module docstring).

    Args:
        paths: image file paths (absolute, or relative to ``root``).
        transform: PIL image -> tensor, e.g. :func:`build_image_transform`; ``None`` returns a
            uint8 tensor [3, H, W].
        targets: optional array with one row per path (e.g. attribute vectors), kept aligned when
            images are skipped; served as ``"target"``.
        root: folder the relative ``paths`` are joined to (``None``: used as given).
        skip_bad_images: skip and count missing / undecodable images instead of raising.

    Attributes:
        stats: counts, see ``STAT_KEYS``.
    """

    STAT_KEYS = ("images", "missing_images", "corrupt_images", "bad_images_skipped")

    def __init__(
        self,
        paths: Sequence[str],
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        targets: np.ndarray | None = None,
        root: str | os.PathLike | None = None,
        skip_bad_images: bool = False,
    ) -> None:
        self.root = os.fspath(root) if root is not None else None
        self.transform = transform
        self.skip_bad_images = bool(skip_bad_images)
        self.stats: dict[str, int] = {k: 0 for k in self.STAT_KEYS}
        names = [str(p) for p in paths]
        if targets is not None:
            targets = np.asarray(targets)
            if len(targets) != len(names):
                raise ValueError(f"targets has {len(targets)} rows for {len(names)} images")
        full = [os.path.join(self.root, p) if self.root is not None else p for p in names]
        keep = [i for i, p in enumerate(full) if os.path.isfile(p)]
        if len(keep) < len(full):
            missing = [full[i] for i in sorted(set(range(len(full))) - set(keep))]
            if not self.skip_bad_images:
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                raise FileNotFoundError(f"image file not found: {missing[0]}{more}; "
                                        "pass skip_bad_images=True (--skip-bad-images) to skip missing images")
            self.stats["missing_images"] = len(missing)
            self.stats["bad_images_skipped"] = len(missing)
            logger.warning("%d image files missing, skipped (first: %s)", len(missing), missing[0])
        self.names: list[str] = [names[i] for i in keep]
        self.paths: list[str] = [full[i] for i in keep]
        self.targets: np.ndarray | None = targets[keep] if targets is not None else None
        self._bad_at_load: set[int] = set()
        self.stats["images"] = len(self.paths)

    @classmethod
    def from_folder(
        cls,
        root: str | os.PathLike,
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        skip_bad_images: bool = False,
    ) -> ImageFiles:
        """All images under ``root`` (recursive, see :func:`list_images`); ``names`` are relative to it.

        Raises:
            FileNotFoundError: ``root`` is not a folder.
            ValueError: ``root`` holds no image files.
        """
        names = list_images(root, extensions)
        if not names:
            raise ValueError(f"no image files ({', '.join(extensions)}) found under {os.fspath(root)}")
        return cls(names, transform, root=root, skip_bad_images=skip_bad_images)

    def subset(self, indices: Sequence[int]) -> ImageFiles:
        """A new dataset with the images at ``indices`` (same transform, root and skip setting)."""
        idx = [int(i) for i in indices]
        for i in idx:
            if not 0 <= i < len(self):
                raise IndexError(f"subset index {i} out of range for {len(self)} images")
        out = ImageFiles.__new__(type(self))
        out.__dict__.update(self.__dict__)
        out.names = [self.names[i] for i in idx]
        out.paths = [self.paths[i] for i in idx]
        out.targets = self.targets[idx] if self.targets is not None else None
        out.stats = dict(self.stats, images=len(idx))
        out._bad_at_load = set()
        return out

    def scan_images(self, num_threads: int | None = None, progress: bool = False) -> list[str]:
        """Decode every image once; drop and count undecodable ones (call before building loaders).

        Returns:
            Paths of the images that failed to decode.

        Raises:
            ValueError: naming the bad files, when ``skip_bad_images`` is False.
        """
        threads = num_threads or min(8, os.cpu_count() or 1)

        def check(path: str) -> str | None:
            try:
                with Image.open(path) as img:
                    img.load()
            except DECODE_ERRORS as err:
                return f"{path}: {type(err).__name__}: {err}"
            return None

        with ThreadPoolExecutor(max_workers=threads) as pool:
            results: Any = pool.map(check, self.paths, chunksize=64)
            if progress:
                from tqdm import tqdm

                results = tqdm(results, total=len(self.paths), desc="scanning images", unit="img", leave=False)
            errors = list(results)
        bad = [i for i, msg in enumerate(errors) if msg is not None]
        bad_paths = [self.paths[i] for i in bad]
        if bad and not self.skip_bad_images:
            listed = "; ".join(errors[i] for i in bad[:5])  # type: ignore[misc]
            more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
            raise ValueError(f"{len(bad)} images cannot be decoded: {listed}{more}; "
                             "pass skip_bad_images=True (--skip-bad-images) to skip them")
        if bad:
            keep = [i for i in range(len(self.paths)) if errors[i] is None]
            self.names = [self.names[i] for i in keep]
            self.paths = [self.paths[i] for i in keep]
            if self.targets is not None:
                self.targets = self.targets[keep]
            self._bad_at_load.clear()
            self.stats["corrupt_images"] += len(bad)
            self.stats["bad_images_skipped"] += len(bad)
            self.stats["images"] = len(self.paths)
            logger.warning("%d undecodable images skipped (first: %s)", len(bad), errors[bad[0]])
        return bad_paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.paths)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        index %= n
        for step in range(n):
            j = (index + step) % n
            if j in self._bad_at_load:
                continue
            try:
                pil = load_rgb_image(self.paths[j])
            except DECODE_ERRORS as err:
                if not self.skip_bad_images:
                    raise ValueError(f"cannot decode image {self.paths[j]}: {type(err).__name__}: {err}") from err
                self._bad_at_load.add(j)
                self.stats["corrupt_images"] += 1
                self.stats["bad_images_skipped"] += 1
                logger.warning("skipping undecodable image %s (%s); call scan_images() to drop bad images "
                               "up front", self.paths[j], err)
                continue
            image = self.transform(pil) if self.transform is not None else \
                torch.from_numpy(np.array(pil, dtype=np.uint8)).permute(2, 0, 1)
            sample: dict[str, Any] = {"image": image, "index": j}
            if self.targets is not None:
                sample["target"] = torch.from_numpy(np.array(self.targets[j]))
            return sample
        raise ValueError(f"none of the {n} images can be decoded (first: {self.paths[0] if n else '-'})")
