"""Image files: the one image decoder of the suite, the image extensions, the bad-image scan, and
unlabeled image folders (what distillation trains on).

Decoding (:func:`load_rgb_image`, used by every loader: COCO detection, face identity folders, attribute
sets, image folders, prediction and search CLIs) gives an 8-bit RGB image as displayed:

* EXIF orientation is applied (phones store portrait photos rotated and say so in EXIF);
* 16-bit images (``I;16*``, e.g. 16-bit grey PNG/TIFF) are scaled to 8 bits, not clipped: Pillow's own
  conversion clips at 255, which turns most of a 16-bit image white. 16-bit RGB(A) PNGs already decode
  to 8 bits per channel. 32-bit integer and float images are scaled the same way (floats within [0, 1]
  are taken as that range);
* transparency (RGBA, LA, PA, a palette's transparent colour) is composited over white, so a transparent
  background looks the same whatever colour its hidden pixels hold;
* CMYK, grayscale, 1-bit and palette images are converted to RGB;
* the format is read from the file's content, not its name (a PNG named ``.jpg`` decodes fine).

A missing file raises ``FileNotFoundError`` and an undecodable one :class:`ImageDecodeError` (a
``ValueError``), both naming the file.

Bad images, the way every dataset here handles them (``CocoDetection``, :class:`ImageFiles`, the face
search ingest):

* ``skip_bad_images=False``: a missing file raises ``FileNotFoundError`` at construction and an
  undecodable one ``ValueError`` when loaded, both naming the file.
* ``skip_bad_images=True``: missing files are dropped and counted at construction; call the dataset's
  ``scan_images()`` (built on :func:`scan_images`) once in the main process before building DataLoaders
  to decode every file and drop (and count) the bad ones. As a last resort :func:`load_readable` serves
  the next readable image in place of one that fails to decode (a file that changed after the scan).
  Every dataset keeps a :class:`SkippedImages`, ``dataset.skipped``: the files left out, with the reason,
  and those that failed later, flagged in shared memory so the main process sees what DataLoader workers
  met; the training scaffold names them in ``summary.json`` (``bad_images``).

:class:`ImageFiles` serves any list of image files, and :meth:`ImageFiles.from_folder` any folder tree
of images (recursive, :data:`IMAGE_EXTENSIONS`, hidden files and folders skipped, sorted so the order is
stable across machines). Samples are dicts: ``{"image": float [3, R, R], "index": int}`` plus
``"target"`` when targets were given. ``index`` is the position of the image actually served, which is
what a cache of teacher outputs is keyed by. Section 4.5 of the MobileNets paper trains by
distillation, "hence enabling training from large (and potentially infinite) unlabeled datasets".
"""

from __future__ import annotations

import io
import logging
import os
import struct
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LOAD_ERRORS",
    "CenterSquare",
    "SkippedImages",
    "ImageDecodeError",
    "ImageFiles",
    "apply_transform",
    "build_image_transform",
    "drop_unreadable",
    "is_image_file",
    "list_images",
    "load_readable",
    "load_rgb_image",
    "read_exif",
    "report_skipped",
    "scan_images",
    "split_holdout",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Errors PIL raises on unreadable or truncated files (SyntaxError/EOFError come from a few old decoders).
_PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class ImageDecodeError(ValueError):
    """A file exists but is not a readable image (truncated, corrupt, not an image, unsupported mode)."""


# What loading an image raises for a bad file: catch these to skip bad images.
LOAD_ERRORS = (FileNotFoundError, ImageDecodeError)


# --------------------------------------------------------------------------------------------------
# decoding


def is_image_file(name: str) -> bool:
    """True for a visible file name with one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    base = os.path.basename(name)
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def _source(path: str | os.PathLike | bytes, name: str | None) -> tuple[Any, str]:
    if isinstance(path, (bytes, bytearray, memoryview)):
        return io.BytesIO(path), name or "<bytes>"
    return path, name or os.fspath(path)


def load_rgb_image(path: str | os.PathLike | bytes, *, name: str | None = None) -> Image.Image:
    """Decode ``path`` fully into an 8-bit RGB PIL image in its displayed orientation (module docstring).

    Args:
        path: an image file, or an encoded image's bytes (a tar shard's member).
        name: what messages call it (default: the path); e.g. ``shard.tar:key.jpg``.

    Raises:
        FileNotFoundError: no such file (the message names it).
        ImageDecodeError: the file is not a readable image (a ``ValueError`` naming the file).
    """
    src, shown = _source(path, name)
    try:
        with Image.open(src) as img:
            img.load()  # decode now, so truncation is detected here and not later inside a transform
            return _to_rgb(ImageOps.exif_transpose(img))
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {shown}") from None
    except _PIL_ERRORS as err:
        raise ImageDecodeError(f"cannot decode image {shown}: {type(err).__name__}: {err}") from err


def read_exif(path: str | os.PathLike | bytes, ifd: int | None = None, *, name: str | None = None) -> dict[int, Any]:
    """An image's EXIF tags (file or bytes), or those of one sub-IFD (e.g. ``0x8825``, GPS), without decoding
    its pixels; empty when it has none. Read while the file is open (TIFF reads its IFDs lazily).

    Raises:
        FileNotFoundError / ImageDecodeError: as :func:`load_rgb_image` (a corrupt EXIF block too).
    """
    src, shown = _source(path, name)
    try:
        with Image.open(src) as img:
            exif = img.getexif()
            return dict(exif.get_ifd(ifd) if ifd is not None else exif)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {shown}") from None
    except (*_PIL_ERRORS, struct.error) as err:
        raise ImageDecodeError(f"cannot read image {shown}: {type(err).__name__}: {err}") from err


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        arr = np.asarray(img).astype(np.float64)
        if img.mode.startswith("I;16"):
            top = 65535.0
        elif img.mode == "F" and arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
            top = 1.0
        else:  # 32-bit data of unknown range: 8-bit values stay, anything larger is taken as 16-bit
            top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def apply_transform(image: Image.Image, transform: Callable[[Image.Image], Any] | None) -> Any:
    """``transform(image)``; without one, the pixels as a uint8 tensor [3, H, W]."""
    if transform is not None:
        return transform(image)
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


# --------------------------------------------------------------------------------------------------
# bad images


def scan_images(paths: Sequence[str], *, skip_bad_images: bool, num_threads: int | None = None,
                progress: bool = False) -> dict[int, str]:
    """Decode every image once (threaded: PIL releases the GIL while decoding) and report the bad ones.

    Args:
        paths: image files.
        skip_bad_images: False raises on any bad image; True logs a warning and returns them.
        num_threads: decoding threads; default min(8, cpus).
        progress: show a tqdm bar.

    Returns:
        ``{position in paths: error message naming the file}``, in path order.

    Raises:
        ValueError: naming (up to five of) the bad files, when ``skip_bad_images`` is False.
    """
    threads = num_threads or min(8, os.cpu_count() or 1)

    def check(path: str) -> str | None:
        try:
            load_rgb_image(path)
        except LOAD_ERRORS as err:
            return str(err)
        return None

    with ThreadPoolExecutor(max_workers=threads) as pool:
        results: Any = pool.map(check, paths, chunksize=64)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(paths), desc="scanning images", unit="img", leave=False)
        bad = {i: msg for i, msg in enumerate(results) if msg is not None}
    if bad and not skip_bad_images:
        listed = "; ".join(list(bad.values())[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise ValueError(f"{len(bad)} images cannot be decoded: {listed}{more}; "
                         "pass skip_bad_images=True (--skip-bad-images) to skip them")
    if bad and len(bad) < len(paths):  # none readable: the caller stops with an error that says so
        logger.warning("%d bad images skipped (first: %s)", len(bad), next(iter(bad.values())))
    return bad


def drop_unreadable(paths: Sequence[str], *, progress: bool = False) -> tuple[list[str], list[str]]:
    """Decode every file once: (the readable ones in order, a "what is wrong" line per other one).

    What a command given image files does with ``--skip-bad-images``: predict on the rest and report
    the skipped ones. Without the flag commands decode as they go and stop at the first bad file.

    Raises:
        ValueError: not one of the files can be decoded.
    """
    bad = scan_images(paths, skip_bad_images=True, progress=progress)
    if paths and len(bad) == len(paths):
        raise ValueError(f"none of the {len(paths)} image(s) can be decoded: {'; '.join(list(bad.values())[:3])}")
    return [p for i, p in enumerate(paths) if i not in bad], list(bad.values())


def report_skipped(skipped: Sequence[str]) -> None:
    """The count and the first names of the files a command skipped, on stderr (stdout may be JSON)."""
    if skipped:
        more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
        print(f"skipped {len(skipped)} bad image(s): {'; '.join(skipped[:5])}{more}", file=sys.stderr)


class SkippedImages:
    """The images a dataset left out: before any epoch, and while one ran (shared with DataLoader workers).

    ``found`` lists the files skipped up front (missing at construction, undecodable at the scan) with
    the reason. A file that breaks later, e.g. replaced after the scan, is met inside whichever process
    decodes it, often a DataLoader worker whose own counters never reach the main process; so its
    position is flagged in a shared-memory tensor (inherited by forked workers, handed over by handle
    to spawned ones), and :meth:`files` in the main process lists it too.

    :func:`load_readable` uses it as its set of bad positions (``in``, ``add``, ``len``).
    """

    def __init__(self, paths: Sequence[str], found: Sequence[str] = ()) -> None:
        self.found: list[str] = list(found)
        self.reset(paths)

    def reset(self, paths: Sequence[str]) -> None:
        """Positions changed (a scan dropped files): ``paths`` by position, no late skip yet."""
        self.paths = [str(p) for p in paths]
        self._late = torch.zeros(max(len(self.paths), 1), dtype=torch.bool).share_memory_()

    def __contains__(self, position: int) -> bool:
        return bool(self._late[position])

    def add(self, position: int) -> None:
        self._late[position] = True

    def __len__(self) -> int:
        """How many positions failed late (not the ``found`` ones)."""
        return int(self._late.sum())

    def files(self) -> list[str]:
        """Every skipped file with its reason: the ``found`` ones, then those that failed while being read."""
        late = sorted({self.paths[j] for j in self._late.nonzero().flatten().tolist() if j < len(self.paths)})
        return self.found + [f"cannot decode image {p} (it failed after the scan, while being read)" for p in late]


def load_readable(paths: Sequence[str], index: int, bad: set[int] | SkippedImages, *,
                  skip_bad_images: bool) -> tuple[int, Image.Image]:
    """``(index, decoded image)``; with ``skip_bad_images``, the next readable image in place of a bad one.

    The late-skip fallback for images that fail after (or without) a scan: positions that fail are added
    to ``bad`` (the caller counts them) and the search wraps around, so the choice is deterministic.

    Raises:
        FileNotFoundError / ImageDecodeError: the image is bad and ``skip_bad_images`` is False.
        ValueError: no image at all can be decoded.
    """
    n = len(paths)
    for step in range(n):
        j = (index + step) % n
        if j in bad:
            continue
        try:
            return j, load_rgb_image(paths[j])
        except LOAD_ERRORS as err:
            if not skip_bad_images:
                raise
            bad.add(j)
            logger.warning("skipping bad image (%s); call scan_images() to drop bad images up front", err)
    raise ValueError(f"none of the {n} images can be decoded (first: {paths[0] if n else '-'})")


# --------------------------------------------------------------------------------------------------
# image folders


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


class CenterSquare:
    """Crop the centred square whose side is ``fraction`` of the image's shorter side (uint8/float tensor).

    Aligned face crops keep the face and drop most of the background this way. A class, not a lambda,
    so pipelines pickle into DataLoader workers.
    """

    def __init__(self, fraction: float = 1.0) -> None:
        if not 0.0 < float(fraction) <= 1.0:
            raise ValueError(f"centre-crop fraction must be in (0, 1], got {fraction!r}")
        self.fraction = float(fraction)

    def __call__(self, image: Tensor) -> Tensor:
        from torchvision.transforms.v2 import functional as F

        h, w = image.shape[-2:]
        side = max(1, int(round(min(h, w) * self.fraction)))
        return F.center_crop(image, [side, side])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fraction={self.fraction})"


def build_image_transform(
    resolution: int,
    *,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
    augment: bool = False,
    crop_scale: tuple[float, float] | None = (0.7, 1.0),
    center_crop: float | None = None,
    jitter: float = 0.0,
    stretch: bool = False,
) -> Callable[[Image.Image], Tensor]:
    """PIL image -> float tensor [3, resolution, resolution] (``torchvision.transforms.v2``).

    Without ``augment``: resize the shorter side to ``resolution`` and take the centre square
    (aligned face crops such as CelebA's 178x218 keep their aspect ratio). With ``augment``: a
    random resized crop keeping ``crop_scale`` of the area (``None``: no crop), a horizontal flip and,
    when ``jitter`` > 0, brightness and contrast each scaled by a factor in [1 - jitter, 1 + jitter].

    Args:
        resolution: output side.
        mean, std: normalisation; ``None`` for both leaves the values in [0, 1].
        augment: random crop / flip / jitter for training.
        crop_scale: area fraction range of the random crop.
        center_crop: first keep the centred square of this fraction of the shorter side (faces); ``None``:
            no such crop, the whole image goes on.
        jitter: brightness/contrast jitter strength (with ``augment`` only).
        stretch: without ``augment``, resize to ``resolution`` x ``resolution`` regardless of the aspect
            ratio (no crop), as SSD's input pipeline does.
    """
    from torchvision.transforms import v2

    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither (values then stay in [0, 1])")
    if mean is not None and std is not None:
        _check_norm(mean, std)
    if not 0.0 <= float(jitter) < 1.0:
        raise ValueError(f"jitter must be in [0, 1), got {jitter!r}")
    steps: list[Any] = [v2.PILToTensor()]
    if center_crop is not None:
        steps.append(CenterSquare(center_crop))
    if augment and crop_scale is not None:
        steps += [v2.RandomResizedCrop(resolution, scale=crop_scale, ratio=(0.9, 1.1), antialias=True),
                  v2.RandomHorizontalFlip()]
    elif augment:
        steps += [v2.Resize(resolution, antialias=True), v2.CenterCrop(resolution), v2.RandomHorizontalFlip()]
    elif stretch:
        steps.append(v2.Resize((resolution, resolution), antialias=True))
    else:
        steps += [v2.Resize(resolution, antialias=True), v2.CenterCrop(resolution)]
    if augment and jitter > 0:
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if mean is not None and std is not None:
        steps.append(v2.Normalize(list(mean), list(std)))
    return v2.Compose(steps)


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
        missing = [full[i] for i in sorted(set(range(len(full))) - set(keep))]
        if missing:
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
        self.skipped = SkippedImages(self.paths, [f"image file not found: {p}" for p in missing])
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
        out.skipped = SkippedImages(out.paths, self.skipped.found)
        return out

    def scan_images(self, num_threads: int | None = None, progress: bool = False) -> list[str]:
        """Decode every image once; drop and count undecodable ones (call before building loaders).

        Returns:
            Paths of the images that failed to decode.

        Raises:
            ValueError: naming the bad files, when ``skip_bad_images`` is False.
        """
        bad = scan_images(self.paths, skip_bad_images=self.skip_bad_images, num_threads=num_threads,
                          progress=progress)
        bad_paths = [self.paths[i] for i in bad]
        if bad:
            keep = [i for i in range(len(self.paths)) if i not in bad]
            self.names = [self.names[i] for i in keep]
            self.paths = [self.paths[i] for i in keep]
            if self.targets is not None:
                self.targets = self.targets[keep]
            self.skipped.found += list(bad.values())
            self.skipped.reset(self.paths)
            self.stats["corrupt_images"] += len(bad)
            self.stats["bad_images_skipped"] += len(bad)
            self.stats["images"] = len(self.paths)
        return bad_paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.paths)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        before = len(self.skipped)
        j, pil = load_readable(self.paths, index % n, self.skipped, skip_bad_images=self.skip_bad_images)
        late = len(self.skipped) - before
        self.stats["corrupt_images"] += late
        self.stats["bad_images_skipped"] += late
        sample: dict[str, Any] = {"image": apply_transform(pil, self.transform), "index": j}
        if self.targets is not None:
            sample["target"] = torch.from_numpy(np.array(self.targets[j]))
        return sample
