"""Face data in the formats of CASIA-WebFace, VGGFace2 and LFW.

MobileNets Section 4.7 / Table 14 trains and scores face embeddings; the real data is the user's to
bring. This module reads and writes what those sets look like on disk:

* identity folders: ``root/<identity>/<image>`` (CASIA-WebFace, VGGFace2, LFW). :func:`scan_identity_folders`
  lists them; :class:`IdentityFolder` is the matching ``Dataset`` (image tensor, identity label), its
  input built by :func:`face_transform` (the one face preprocessing, also used to embed image files).
* LFW ``pairs.txt``: a header line (``<folds> <pairs per fold>``, or a single count for the
  ``pairsDevTrain/DevTest`` files), then per fold ``n`` same-person lines ``name i j`` followed by ``n``
  different-person lines ``name1 i name2 j``; image ``i`` of ``name`` is ``<root>/name/name_<i:04d>.<ext>``.
  :func:`read_pairs` resolves every image (a missing one fails with its name) and keeps the fold of
  each pair; :func:`write_pairs` writes the same format.

The built-in synthetic identities written in these formats are ``datasets.synthetic_identities``.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from datasets.images import (IMAGE_EXTENSIONS, SkippedImages, build_image_transform, is_image_file, load_readable,
                             scan_images)
from datasets.io import atomic_write_text

__all__ = [
    "FaceSample",
    "IdentityFolder",
    "PairList",
    "face_transform",
    "read_pairs",
    "scan_identity_folders",
    "write_pairs",
]


# --------------------------------------------------------------------------------------------------
# images


# Training augmentation of aligned faces: a random crop of 90-100 % of the side (81-100 % of the area)
# with a little aspect jitter, a horizontal flip, and brightness/contrast scaled by up to +-20 %.
FACE_CROP_SCALE = (0.81, 1.0)
FACE_JITTER = 0.2


def face_transform(resolution: int, center_crop: float = 1.0, *, augment: bool = False
                   ) -> Callable[[Image.Image], torch.Tensor]:
    """The face model's input: PIL image -> float32 ``[3, resolution, resolution]`` in [0, 1].

    The centred square of ``center_crop`` of the shorter side (the face, not the background), resized
    to ``resolution``; with ``augment`` the training augmentation above on that square. Built from
    ``torchvision.transforms.v2`` (``datasets.images.build_image_transform``); randomness comes from
    torch's generator, which DataLoader workers seed from the (checkpointed) global one.
    """
    return build_image_transform(resolution, mean=None, std=None, center_crop=center_crop, augment=augment,
                                 crop_scale=FACE_CROP_SCALE, jitter=FACE_JITTER if augment else 0.0)


# --------------------------------------------------------------------------------------------------
# identity folders


@dataclass(frozen=True)
class FaceSample:
    """One image of an identity folder."""

    path: str
    identity: str


def scan_identity_folders(root: str | os.PathLike, *, min_images: int = 1) -> list[FaceSample]:
    """List ``root/<identity>/<image>`` files, sorted by identity then file name.

    Files directly under ``root`` (such as a ``pairs.txt``) and hidden entries are ignored.

    Args:
        root: dataset root.
        min_images: identities with fewer images are left out (2 are needed to form a positive pair).

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no identity folder with at least ``min_images`` images.
    """
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"face data root is not a folder: {r}")
    samples: list[FaceSample] = []
    for ident in sorted(os.listdir(r)):
        d = r / ident
        if ident.startswith(".") or not d.is_dir():
            continue
        files = sorted(f for f in os.listdir(d) if is_image_file(f) and (d / f).is_file())
        if len(files) >= min_images:
            samples.extend(FaceSample(str(d / f), ident) for f in files)
    if not samples:
        raise ValueError(f"no identity folders with >= {min_images} image(s) under {r} "
                         f"(expected root/<identity>/<image>{'|'.join(IMAGE_EXTENSIONS[:3])})")
    return samples


class IdentityFolder(torch.utils.data.Dataset):
    """Identity-folder dataset: ``(image tensor [3, R, R], identity label)``.

    Args:
        root: ``root/<identity>/<image>``.
        resolution, center_crop: the input, see :func:`face_transform` (used when ``transform`` is None).
        transform: PIL image -> tensor; default ``face_transform(resolution, center_crop)``.
        min_images: identities with fewer images are left out.
        skip_bad_images: :meth:`scan_images` drops undecodable files, and one that fails later is replaced
            by the next readable image (with that image's label); ``datasets.images`` explains the policy.

    Attributes:
        samples: the :class:`FaceSample` list.
        identities: sorted identity names; label ``i`` is ``identities[i]``.
        labels: label per sample.
        skipped: the files left out (``datasets.images.SkippedImages``).
    """

    def __init__(self, root: str | os.PathLike, *, resolution: int = 160, center_crop: float = 1.0,
                 transform: Callable[[Image.Image], torch.Tensor] | None = None, min_images: int = 1,
                 skip_bad_images: bool = False):
        self.root = str(root)
        self.min_images = min_images
        self.skip_bad_images = bool(skip_bad_images)
        self._index(scan_identity_folders(root, min_images=min_images))
        self.skipped = SkippedImages([s.path for s in self.samples])
        self.resolution = resolution
        self.center_crop = center_crop
        self.transform = transform if transform is not None else face_transform(resolution, center_crop)

    def _index(self, samples: list[FaceSample]) -> None:
        self.samples = samples
        self.identities = sorted({s.identity for s in self.samples})
        index = {name: i for i, name in enumerate(self.identities)}
        self.labels = [index[s.identity] for s in self.samples]

    def scan_images(self, num_threads: int | None = None, progress: bool = False) -> list[str]:
        """Decode every image once; drop the undecodable ones (then identities left with fewer than
        ``min_images``). Call before training.

        Raises:
            ValueError: naming the bad files, when ``skip_bad_images`` is False.
        """
        paths = [s.path for s in self.samples]
        bad = scan_images(paths, skip_bad_images=self.skip_bad_images, num_threads=num_threads, progress=progress)
        if bad:
            kept = [s for i, s in enumerate(self.samples) if i not in bad]
            counts: dict[str, int] = {}
            for s in kept:
                counts[s.identity] = counts.get(s.identity, 0) + 1
            kept = [s for s in kept if counts[s.identity] >= self.min_images]
            if not kept:
                raise ValueError(f"{self.root}: no identity keeps {self.min_images} readable image(s)")
            self._index(kept)
            self.skipped.found += list(bad.values())
            self.skipped.reset([s.path for s in self.samples])
        return [paths[i] for i in bad]

    def augmented(self) -> IdentityFolder:
        """The same images and labels with the training augmentation of :func:`face_transform`."""
        out = copy.copy(self)
        out.transform = face_transform(self.resolution, self.center_crop, augment=True)
        return out

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j, pil = load_readable(self.skipped.paths, i, self.skipped, skip_bad_images=self.skip_bad_images)
        return self.transform(pil), self.labels[j]  # the label of the image served


# --------------------------------------------------------------------------------------------------
# LFW pairs.txt


@dataclass
class PairList:
    """Resolved verification pairs.

    Attributes:
        path_a, path_b: image paths of each pair.
        same: True for same-person pairs.
        folds: fold index of each pair (from the file's layout).
        num_folds: folds declared by the header.
    """

    path_a: list[str]
    path_b: list[str]
    same: np.ndarray
    folds: np.ndarray
    num_folds: int

    def __len__(self) -> int:
        return len(self.same)

    def unique_paths(self) -> list[str]:
        return sorted(set(self.path_a) | set(self.path_b))


def _resolve_image(root: Path, name: str, num: int, where: str) -> str:
    folder = root / name
    stem = f"{name}_{num:04d}"
    for ext in IMAGE_EXTENSIONS:
        for e in (ext, ext.upper()):
            p = folder / (stem + e)
            if p.is_file():
                return str(p)
    raise FileNotFoundError(f"{where}: image {stem} not found in {folder} (tried {', '.join(IMAGE_EXTENSIONS)})")


def read_pairs(pairs_file: str | os.PathLike, data_root: str | os.PathLike, *, check_images: bool = True) -> PairList:
    """Parse an LFW-format ``pairs.txt`` and resolve its images under ``data_root``.

    Args:
        pairs_file: the pairs file.
        data_root: folder holding ``<name>/<name>_<i:04d>.<ext>``.
        check_images: resolve (and require) every image file; with False, ``.jpg`` paths are assumed.

    Returns:
        :class:`PairList` with one entry per pair, in file order.

    Raises:
        FileNotFoundError: the file, ``data_root`` or a named image is missing (the message names it).
        ValueError: a malformed line (the message names file and line number).
    """
    pf, root = Path(pairs_file), Path(data_root)
    if pf.is_dir():
        raise IsADirectoryError(f"pairs file {pf} is a folder; give the pairs.txt inside it")
    if not pf.is_file():
        raise FileNotFoundError(f"pairs file not found: {pf}")
    if not root.is_dir():
        raise FileNotFoundError(f"face data root is not a folder: {root}")
    try:
        text = pf.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{pf} is not a text file (an LFW pairs.txt): byte {e.start} is not UTF-8") from None
    lines = [(i + 1, ln.split()) for i, ln in enumerate(text.splitlines())]
    lines = [(n, f) for n, f in lines if f]
    if not lines:
        raise ValueError(f"{pf} is empty")
    (hn, header), body = lines[0], lines[1:]
    try:
        nums = [int(x) for x in header]
    except ValueError:
        raise ValueError(f"{pf} line {hn}: header must be '<folds> <pairs per fold>' or '<pairs>', "
                         f"got {' '.join(header)!r}") from None
    if len(nums) == 2:
        num_folds, per_fold = nums
    elif len(nums) == 1:
        num_folds, per_fold = 1, nums[0]
    else:
        raise ValueError(f"{pf} line {hn}: header has {len(nums)} numbers, expected 1 or 2")
    if num_folds < 1 or per_fold < 1:
        raise ValueError(f"{pf} line {hn}: folds and pairs per fold must be >= 1, got {nums}")
    expected = num_folds * 2 * per_fold
    if len(body) != expected:
        raise ValueError(f"{pf}: header {' '.join(header)} announces {expected} pair lines "
                         f"({num_folds} fold(s) x ({per_fold} same + {per_fold} different)), found {len(body)}")

    cache: dict[tuple[str, int], str] = {}

    def resolve(name: str, num_s: str, n: int) -> str:
        where = f"{pf} line {n}"
        if not re.fullmatch(r"\d+", num_s):
            raise ValueError(f"{where}: image number must be a positive integer, got {num_s!r}")
        num = int(num_s)
        key = (name, num)
        if key not in cache:
            cache[key] = (_resolve_image(root, name, num, where) if check_images
                          else str(root / name / f"{name}_{num:04d}.jpg"))
        return cache[key]

    a, b, same, folds = [], [], [], []
    for j, (n, f) in enumerate(body):
        fold, pos_in_fold = divmod(j, 2 * per_fold)
        expect_same = pos_in_fold < per_fold
        if len(f) == 3:
            is_same = True
            pa, pb = resolve(f[0], f[1], n), resolve(f[0], f[2], n)
        elif len(f) == 4:
            is_same = False
            pa, pb = resolve(f[0], f[1], n), resolve(f[2], f[3], n)
        else:
            raise ValueError(f"{pf} line {n}: expected 'name i j' (same person) or 'name1 i name2 j' "
                             f"(different people), got {len(f)} fields")
        if is_same != expect_same:
            kind = "same-person" if expect_same else "different-person"
            raise ValueError(f"{pf} line {n}: fold {fold + 1} expects a {kind} line here "
                             f"({per_fold} same then {per_fold} different per fold)")
        a.append(pa)
        b.append(pb)
        same.append(is_same)
        folds.append(fold)
    return PairList(a, b, np.asarray(same, dtype=bool), np.asarray(folds, dtype=np.int64), num_folds)


def write_pairs(path: str | os.PathLike, folds: Sequence[tuple[Sequence[tuple[str, int, int]],
                                                                Sequence[tuple[str, int, str, int]]]]) -> Path:
    """Write an LFW-format pairs file (atomically).

    Args:
        path: output file.
        folds: per fold ``(same, different)`` with ``same = [(name, i, j)]`` and
            ``different = [(name1, i, name2, j)]``; every fold must have the same count of each.
    """
    if not folds:
        raise ValueError("write_pairs needs at least one fold")
    n = len(folds[0][0])
    for k, (same, diff) in enumerate(folds):
        if len(same) != n or len(diff) != n:
            raise ValueError(f"fold {k}: {len(same)} same and {len(diff)} different pairs; every fold needs "
                             f"{n} of each")
    lines = [f"{len(folds)}\t{n}"]
    for same, diff in folds:
        lines += [f"{a}\t{i}\t{j}" for a, i, j in same]
        lines += [f"{a}\t{i}\t{b}\t{j}" for a, i, b, j in diff]
    out = Path(path)
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out
