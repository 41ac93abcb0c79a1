"""Exact and near-duplicate images between two sets: keep test images out of a web-collected training set.

Web-collected training data for a benchmark (Krause et al. 2016 collected theirs for Stanford Dogs; the
MobileNets paper, Section 4.3, pretrains on such a set) holds copies of the benchmark's own validation and
test images: the same file, or the same photo resized, re-encoded or mirrored. Training on them inflates
the test score, so they are removed before training and counted.

* **Exact duplicates**: equal file contents (BLAKE2b of the bytes).
* **Near duplicates**: a 256-bit perceptual hash (pHash: whether each of the low 16x16 DCT coefficients of
  the 64x64 grayscale image lies above their median, DC left out) within ``max_distance`` bits (Hamming) of
  a reference image's hash or of its mirror image's. The common 64-bit pHash (8x8 of 32x32) sees only the
  coarse layout: on the built-in set, whose backgrounds are smooth gradients, unrelated images came within
  2 of 64 bits of each other; with 16x16 coefficients they stay 34 or more of 256 bits apart, while resized,
  re-encoded and mirrored copies lie within 4. Heavy crops or edits escape it, as with any global hash.

:func:`find_duplicates` hashes both sets (threaded; PIL releases the GIL while decoding) and returns, for
every candidate, the reference it copies, if any.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image
from scipy.fft import dctn

from datasets.images import LOAD_ERRORS, load_rgb_image

__all__ = ["DEFAULT_MAX_DISTANCE", "HASH_BITS", "Duplicate", "content_hash", "find_duplicates", "hamming", "phash"]

HASH_BITS = 256
# Bits out of 256: resized / re-encoded / mirrored copies measured 0-4 bits from their source on the
# built-in set, distinct images 34 or more (tests/test_dedupe.py holds both sides).
DEFAULT_MAX_DISTANCE = 20


def content_hash(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """BLAKE2b (128-bit) hex digest of the file's bytes."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def phash(image: Image.Image) -> np.ndarray:
    """The 256-bit DCT perceptual hash of a PIL image (module docstring): 4 ``uint64`` words."""
    gray = np.asarray(image.convert("L").resize((64, 64), Image.Resampling.LANCZOS), dtype=np.float64)
    low = dctn(gray, type=2, norm="ortho")[:16, :16].ravel()
    bits = low > np.median(low[1:])
    bits[0] = False  # the DC term (mean brightness) says nothing about the content
    return np.packbits(bits).view(">u8").astype(np.uint64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances between hash arrays ``[n, words]`` and ``[m, words]``: ``[n, m]`` int."""
    out = np.zeros((len(a), len(b)), dtype=np.int64)
    for w in range(a.shape[1]):  # one word at a time keeps the temporary at n * m
        out += np.bitwise_count(np.bitwise_xor(a[:, w, None], b[None, :, w]))
    return out


@dataclass(frozen=True)
class Duplicate:
    """A candidate image that copies a reference image.

    Attributes:
        candidate: index into the candidate paths.
        reference: index into the reference paths.
        kind: ``"exact"`` (same bytes) or ``"near"`` (perceptual hash within the threshold).
        distance: Hamming distance of the hashes (0 for exact copies).
    """

    candidate: int
    reference: int
    kind: str
    distance: int


def _hash_one(path: str, mirror: bool = True) -> tuple[str | None, np.ndarray | None, np.ndarray | None, str | None]:
    try:
        digest = content_hash(path)
        img = load_rgb_image(path)
    except (OSError, *LOAD_ERRORS) as err:  # an unreadable file is the loader's business, not a duplicate
        return None, None, None, str(err)
    flipped = phash(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)) if mirror else None
    return digest, phash(img), flipped, None


def _hash_all(paths: Sequence[str], threads: int, desc: str, progress: bool,
              mirror: bool = True) -> list[tuple[Any, ...]]:
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results: Any = pool.map(lambda p: _hash_one(p, mirror), paths, chunksize=32)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(paths), desc=desc, unit="img", leave=False)
        return list(results)


def find_duplicates(candidates: Sequence[str], references: Sequence[str], *,
                    max_distance: int = DEFAULT_MAX_DISTANCE, num_threads: int | None = None,
                    progress: bool = False, block: int = 256) -> tuple[list[Duplicate], list[str]]:
    """Which ``candidates`` copy one of the ``references`` (module docstring).

    Args:
        candidates: image files to filter (the web set).
        references: image files to protect (validation and test).
        max_distance: largest Hamming distance (bits of 256) that counts as a near duplicate; -1: exact only.
        num_threads: hashing threads; default min(8, cpus).
        progress: tqdm bars.
        block: candidates compared per step (memory: about ``block * 2 * len(references) * 16`` bytes).

    Returns:
        ``(duplicates, unreadable)``: one :class:`Duplicate` per copying candidate (its closest reference;
        an exact copy wins), and the messages of files that could not be read (they are not duplicates).
    """
    if not -1 <= int(max_distance) < HASH_BITS:
        raise ValueError(f"max_distance must be in -1..{HASH_BITS - 1} bits, got {max_distance}")
    threads = num_threads or min(8, os.cpu_count() or 1)
    ref = _hash_all(references, threads, "hashing reference images", progress)
    cand = _hash_all(candidates, threads, "hashing candidate images", progress, mirror=False)  # refs carry the mirror
    unreadable = [r[3] for r in ref + cand if r[3] is not None]
    exact: dict[str, int] = {}
    for j, (digest, *_rest) in enumerate(ref):
        if digest is not None:
            exact.setdefault(digest, j)
    ref_ok = [j for j, r in enumerate(ref) if r[0] is not None]
    # each reference by its own hash and its mirror's: a mirrored copy is still a copy
    ref_hashes = np.array([ref[j][1] for j in ref_ok] + [ref[j][2] for j in ref_ok], dtype=np.uint64
                          ).reshape(-1, HASH_BITS // 64)
    ref_index = np.array(ref_ok + ref_ok, dtype=np.int64)
    found: list[Duplicate] = []
    near_rows = [i for i, c in enumerate(cand) if c[0] is not None and c[0] not in exact]
    for i, c in enumerate(cand):
        if c[0] is not None and c[0] in exact:
            found.append(Duplicate(i, exact[c[0]], "exact", 0))
    if max_distance >= 0 and len(ref_hashes) and near_rows:
        for start in range(0, len(near_rows), block):
            rows = near_rows[start:start + block]
            hashes = np.array([cand[i][1] for i in rows], dtype=np.uint64)
            dist = hamming(hashes, ref_hashes)
            best = dist.argmin(axis=1)
            best_d = dist[np.arange(len(rows)), best]
            for row, k, d in zip(rows, best, best_d):
                if d <= max_distance:
                    found.append(Duplicate(row, int(ref_index[k]), "near", int(d)))
    found.sort(key=lambda x: x.candidate)
    return found, unreadable
