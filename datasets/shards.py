"""WebDataset tar shards: how a training set of millions of photos is read (MobileNets paper, Section 4.4:
PlaNet trains on 91 M geotagged photos; a folder of loose files does not scale to that, a few thousand tar
files read front to back do).

**Format** (the webdataset convention). A shard is a plain POSIX tar file; a sample is a run of consecutive
members sharing a key, the member's path up to the first dot of its file name: ``p/0001.jpg`` and
``p/0001.json`` are the parts ``jpg`` and ``json`` of sample ``p/0001``. Folder members and hidden files
(``._*`` from macOS tar) are ignored. Compressed tars are refused: photos are compressed already, and only a
plain tar can be read from a member's offset.

**Shard lists** (:func:`expand_shards`): brace ranges ``shards/{000000..000999}.tar`` (zero padding kept,
as in bash), brace alternatives ``{train,extra}``, globs ``shards/*.tar``, several patterns joined by ``::``
(webdataset's separator), or a Python list of them. A shard listed twice is an error (it would be read twice
per epoch).

**Index** (:func:`index_shards`). Every shard's member headers are read once with :mod:`tarfile`, seeking
over member data; only the parts a caller asks for (a geotagged sample's ``.json``) are read, and with
``check_images`` every image is also decoded once so bad ones are dropped and counted up front. The index
records where each sample's image bytes lie (shard, offset, size), so the images are read later straight
from the file, without extracting anything to disk and without parsing the tar again.

**An epoch** (:func:`epoch_plan`, :class:`ShardStream`). The shard order is shuffled with ``(seed,
epoch)`` and the shards' samples are laid end to end. Rank ``r`` of ``R`` takes the ``r``-th of ``R``
contiguous, equal (to one sample) slices of that sequence; the slice is cut into the epoch's batches, and
worker ``w`` of ``W`` takes the ``w``-th contiguous run of those batches. Each consumer therefore reads whole
shards front to back, except for at most two it shares at its ends, and each sample is read exactly once per
epoch across all ranks and workers. With at least ``R * W`` shards the consumers mostly own whole shards;
with fewer, consumers read disjoint contiguous slices of the same shards (never every shard, as a split by
sample index modulo ``R * W`` would). Whole shards per consumer (webdataset's ``split_by_node`` /
``split_by_worker``) are not used because shards differ in size: ranks would get different sample counts,
hence different step counts, and DDP hangs on the rank that finishes first. Here every rank makes the same
number of steps, :func:`steps_per_epoch` (what the map-style sampler would give: ``ceil(ceil(N / R) / B)``);
its batches are split as evenly as possible (sizes differ by at most one, never above ``B``); with
``drop_last`` every batch holds exactly ``B`` and up to ``R * (B - 1) + N mod R`` samples, different ones
each epoch, sit the epoch out. Within a worker a shuffle buffer (``shuffle_buffer`` samples of raw bytes,
seeded by seed, epoch, rank and worker) mixes neighbouring samples; images are decoded as they leave it.
The order depends only on the seed and the epoch, so a resumed run sees the same batches.

Writing (:func:`write_shards`): samples into ``OUT/000000.tar, 000001.tar, ...``, each file atomic, with fixed
member metadata so the same samples give the same bytes; :func:`shard_pattern` gives the brace pattern.
"""
from __future__ import annotations

import glob
import io
import itertools
import logging
import math
import os
import posixpath
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset, default_collate, get_worker_info

from datasets.images import IMAGE_EXTENSIONS, LOAD_ERRORS, load_rgb_image
from datasets.io import atomic_path

__all__ = [
    "IMAGE_PARTS",
    "SHARD_SEPARATOR",
    "ShardBatches",
    "ShardFiles",
    "ShardIndex",
    "ShardStream",
    "epoch_plan",
    "expand_braces",
    "expand_shards",
    "index_shards",
    "is_shard_spec",
    "shard_pattern",
    "split_key",
    "steps_per_epoch",
    "write_shards",
]

logger = logging.getLogger(__name__)

SHARD_SEPARATOR = "::"
# a sample's image part: the extension after the key, one of the image extensions
IMAGE_PARTS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)
_COMPRESSED = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")


# --------------------------------------------------------------------------------------------------
# shard lists


def _split_top(body: str) -> list[str]:
    """Split a brace body at its top-level commas."""
    parts, depth, start = [], 0, 0
    for k, ch in enumerate(body):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(body[start:k])
            start = k + 1
    parts.append(body[start:])
    return parts


def _range_items(body: str) -> list[str] | None:
    m = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if m is None:
        return None
    a, b = m.group(1), m.group(2)
    lo, hi = int(a), int(b)
    padded = any(len(t.lstrip("-")) > 1 and t.lstrip("-").startswith("0") for t in (a, b))
    width = max(len(a), len(b)) if padded else 0
    step = 1 if hi >= lo else -1
    return [f"{v:0{width}d}" for v in range(lo, hi + step, step)]


def expand_braces(pattern: str) -> list[str]:
    """Bash-style brace expansion: ``{000..003}`` (zero padding kept), ``{a,b}``, nested and repeated groups.

    Raises:
        ValueError: unbalanced braces, or a group that is neither a range ``{A..B}`` of integers nor a
            list ``{x,y}`` of at least two items (naming the pattern).
    """
    depth, start = 0, -1
    for k, ch in enumerate(pattern):
        if ch == "{":
            if depth == 0:
                start = k
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise ValueError(f"shard pattern {pattern!r}: '}}' at position {k} closes no '{{'")
            if depth == 0:
                body = pattern[start + 1:k]
                items = _range_items(body)
                if items is None:
                    items = _split_top(body)
                    if len(items) < 2:
                        raise ValueError(f"shard pattern {pattern!r}: group {{{body}}} is neither a range "
                                         "{A..B} of integers nor a list {x,y}")
                    items = [x for item in items for x in expand_braces(item)]
                head, tails = pattern[:start], expand_braces(pattern[k + 1:])
                return [head + item + tail for item in items for tail in tails]
    if depth:
        raise ValueError(f"shard pattern {pattern!r}: a '{{' is never closed")
    return [pattern]


def is_shard_spec(spec: str | os.PathLike | Sequence[str] | None) -> bool:
    """True when ``spec`` names tar shards (each ``::`` part ends in ``.tar``) rather than an image folder."""
    if spec is None:
        return False
    if not isinstance(spec, (str, os.PathLike)):
        return bool(spec) and all(is_shard_spec(s) for s in spec)
    text = os.fspath(spec)
    if os.path.isdir(text):
        return False
    parts = [p.strip() for p in text.split(SHARD_SEPARATOR)]
    return all(p.lower().endswith((".tar",) + _COMPRESSED) for p in parts if p) and any(parts)


def expand_shards(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The shard files ``spec`` names, in the order given (globs sorted), each checked to exist.

    Args:
        spec: a pattern (braces, globs), several joined by ``::``, or a list of them.

    Raises:
        FileNotFoundError: a listed shard does not exist, or a glob matches nothing (naming the pattern).
        ValueError: a bad brace group, a compressed or non-``.tar`` file, a shard listed twice, or no shard.
    """
    if isinstance(spec, (str, os.PathLike)):
        patterns = [p.strip() for p in os.fspath(spec).split(SHARD_SEPARATOR) if p.strip()]
    else:
        patterns = [os.fspath(p) for p in spec]
    if not patterns:
        raise ValueError(f"no shards in {spec!r}")
    out: list[str] = []
    for pattern in patterns:
        for item in expand_braces(pattern):
            if any(ch in item for ch in "*?["):
                found = sorted(glob.glob(item))
                if not found:
                    raise FileNotFoundError(f"no shard matches {item!r} (from {pattern!r})")
            else:
                if not os.path.isfile(item):
                    raise FileNotFoundError(f"shard not found: {item}" + (f" (from the pattern {pattern!r})"
                                                                           if item != pattern else ""))
                found = [item]
            for path in found:
                low = path.lower()
                if low.endswith(_COMPRESSED):
                    raise ValueError(f"{path}: compressed shards are not supported (a sample is read from its "
                                     "offset, which needs a plain tar; photos are compressed already): write "
                                     "plain .tar files")
                if not low.endswith(".tar"):
                    raise ValueError(f"{path}: a shard must be a .tar file")
            out.extend(found)
    seen: set[str] = set()
    for path in out:
        real = os.path.realpath(path)
        if real in seen:
            raise ValueError(f"shard {path} is listed twice in {spec!r}: its samples would be read twice per epoch")
        seen.add(real)
    return out


def shard_pattern(paths: Sequence[str | os.PathLike]) -> str:
    """A compact spec for ``paths``: ``DIR/{000000..000009}.tar`` for consecutive numbered shards in one
    folder (what :func:`write_shards` writes), else the paths joined by ``::``."""
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError("no shard paths")
    folders = {os.path.dirname(p) for p in paths}
    names = [os.path.basename(p) for p in paths]
    m = [re.fullmatch(r"(\d+)\.tar", n) for n in names]
    if len(folders) == 1 and all(m) and len({len(x.group(1)) for x in m}) == 1:
        numbers = [int(x.group(1)) for x in m]
        if numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            width = len(m[0].group(1))
            if len(numbers) == 1:
                return paths[0]
            return os.path.join(folders.pop(), f"{{{numbers[0]:0{width}d}..{numbers[-1]:0{width}d}}}.tar")
    return SHARD_SEPARATOR.join(paths)


# --------------------------------------------------------------------------------------------------
# index


def split_key(name: str) -> tuple[str, str]:
    """``(key, part)`` of a tar member name (webdataset: the key ends at the first dot of the file name)."""
    folder, base = posixpath.split(name)
    stem, dot, part = base.partition(".")
    return (posixpath.join(folder, stem) if folder else stem), (part if dot else "")


@dataclass
class ShardIndex:
    """Where each sample of a shard list lies, in shard order then tar order.

    Attributes:
        shards: the shard files.
        stamps: ``(size, mtime_ns)`` of each shard when indexed (a shard that changes later is refused).
        shard: int64 [N], the shard of each sample (non-decreasing).
        keys: the sample keys, [N].
        image_part: the image member's extension of each sample (``jpg``, ``png``, ...), [N].
        offset, size: int64 [N], the image bytes' offset and length in the shard.
    """

    shards: list[str]
    stamps: list[tuple[int, int]]
    shard: np.ndarray
    keys: np.ndarray
    image_part: np.ndarray
    offset: np.ndarray
    size: np.ndarray

    def __len__(self) -> int:
        return int(self.shard.size)

    def member(self, i: int) -> str:
        """``SHARD:MEMBER`` of sample ``i``'s image, for messages."""
        return f"{self.shards[int(self.shard[i])]}:{self.keys[i]}.{self.image_part[i]}"

    def select(self, positions: np.ndarray) -> ShardIndex:
        idx = np.asarray(positions, dtype=np.int64)
        return ShardIndex(self.shards, self.stamps, self.shard[idx], self.keys[idx], self.image_part[idx],
                          self.offset[idx], self.size[idx])


@dataclass
class _ShardScan:
    keys: list[str] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    records: list[Any] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # messages
    corrupt: list[str] = field(default_factory=list)
    stamp: tuple[int, int] = (0, 0)


def _check_tar(path: str) -> None:
    with open(path, "rb") as f:
        head = f.read(6)
    if head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00" or head[:4] == b"\x28\xb5\x2f\xfd":
        raise ValueError(f"{path} is compressed: compressed shards are not supported (a sample is read from its "
                         "offset, which needs a plain tar); write plain .tar files")


def _scan_shard(path: str, want: frozenset[str], parse: Callable[[str, str, dict[str, bytes]], Any],
                check_images: bool, skip_bad_images: bool) -> _ShardScan:
    _check_tar(path)
    st = os.stat(path)
    out = _ShardScan(stamp=(st.st_size, st.st_mtime_ns))
    done: set[str] = set()
    try:
        tf = tarfile.open(path, mode="r:")
    except tarfile.TarError as e:
        raise ValueError(f"{path} is not a readable tar file: {e}") from e

    def flush(key: str | None, members: dict[str, tarfile.TarInfo]) -> None:
        if key is None:
            return
        images = [p for p in members if p.lower() in IMAGE_PARTS]
        if len(images) > 1:
            raise ValueError(f"{path}: sample {key!r} has {len(images)} images ({', '.join(images)}); "
                             "one image per sample")
        content: dict[str, bytes] = {}
        for part in want:
            m = members.get(part)
            if m is not None:
                content[part] = _member_bytes(tf, m, path, st.st_size)
        if not images:
            msg = (f"{path}: sample {key!r} has no image member (parts: {', '.join(sorted(members))}; "
                   f"expected one of .{', .'.join(IMAGE_PARTS[:4])}, ...)")
            if not skip_bad_images:
                raise FileNotFoundError(msg + "; pass skip_bad_images=True (--skip-bad-images) to skip such samples")
            out.missing.append(msg)
            return
        record = parse(path, key, content)  # raises on a bad location: a data error, never skipped
        m = members[images[0]]
        member = f"{path}:{m.name}"
        if m.offset_data + m.size > st.st_size:
            bad = f"cannot decode image {member}: the member is truncated (the shard ends inside it)"
            if not skip_bad_images:
                raise ValueError(bad)
            out.corrupt.append(bad)
            return
        if check_images:
            try:
                load_rgb_image(_member_bytes(tf, m, path, st.st_size), name=member)
            except LOAD_ERRORS as err:
                if not skip_bad_images:
                    raise
                out.corrupt.append(str(err))
                return
        out.keys.append(key)
        out.parts.append(images[0])
        out.offsets.append(m.offset_data)
        out.sizes.append(m.size)
        out.records.append(record)

    key: str | None = None
    members: dict[str, tarfile.TarInfo] = {}
    with tf:
        try:
            for m in tf:
                if not m.isfile():
                    continue
                base = posixpath.basename(m.name)
                if not base or base.startswith("."):
                    continue
                k, part = split_key(m.name)
                if k != key:
                    flush(key, members)
                    if key is not None:
                        done.add(key)
                    if k in done:
                        raise ValueError(f"{path}: the members of sample {k!r} are not contiguous ({m.name} comes "
                                         "after other samples); write each sample's files one after another")
                    key, members = k, {}
                if part in members:
                    raise ValueError(f"{path}: sample {k!r} has two {part!r} members")
                members[part] = m
        except tarfile.TarError as e:
            raise ValueError(f"{path} is not a readable tar file (after {len(done)} samples): {e}") from e
        flush(key, members)
    return out


def _member_bytes(tf: tarfile.TarFile, m: tarfile.TarInfo, path: str, file_size: int) -> bytes:
    if m.offset_data + m.size > file_size:
        raise ValueError(f"{path}:{m.name}: the member is truncated (the shard ends inside it)")
    f = tf.extractfile(m)
    assert f is not None  # a regular file member
    return f.read()


def index_shards(shards: Sequence[str], parse: Callable[[str, str, dict[str, bytes]], Any], *,
                 parts: Sequence[str] = ("json",), check_images: bool = False, skip_bad_images: bool = False,
                 num_threads: int | None = None,
                 progress: bool = False) -> tuple[ShardIndex, list[Any], dict[str, int]]:
    """Read every shard's members once (threaded over shards) and index the samples with an image.

    Args:
        shards: shard files (:func:`expand_shards`).
        parse: ``parse(shard, key, {part: bytes})`` -> the caller's record of a sample (e.g. its location),
            given the ``parts`` that the sample has; it raises ``ValueError`` naming the shard and member on
            bad content.
        parts: the member extensions whose bytes ``parse`` needs.
        check_images: decode every image once (only with ``skip_bad_images``: bad ones are dropped).
        skip_bad_images: drop and count samples without an image or with an undecodable one instead of raising.
        num_threads: threads; default min(8, cpus).
        progress: a tqdm bar over the shards.

    Returns:
        (index, records aligned with it, counts ``images``, ``missing_images``, ``corrupt_images``,
        ``bad_images_skipped``).

    Raises:
        FileNotFoundError: a sample without an image (``skip_bad_images`` False).
        ValueError: not a tar, a compressed tar, non-contiguous or duplicated members, a truncated image or
            (with ``check_images``) an undecodable one when not skipping, whatever ``parse`` raises, or no
            sample at all.
    """
    threads = max(1, min(num_threads or min(8, os.cpu_count() or 1), len(shards)))
    want = frozenset(parts)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results: Any = pool.map(lambda p: _scan_shard(p, want, parse, check_images, skip_bad_images), shards)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(shards), desc="indexing shards", unit="shard", leave=False)
        scans: list[_ShardScan] = list(results)
    counts = [len(s.keys) for s in scans]
    index = ShardIndex(
        shards=list(shards), stamps=[s.stamp for s in scans],
        shard=np.repeat(np.arange(len(shards), dtype=np.int64), counts),
        keys=np.array([k for s in scans for k in s.keys], dtype=str),
        image_part=np.array([p for s in scans for p in s.parts], dtype=str),
        offset=np.array([o for s in scans for o in s.offsets], dtype=np.int64),
        size=np.array([z for s in scans for z in s.sizes], dtype=np.int64))
    missing = [m for s in scans for m in s.missing]
    corrupt = [m for s in scans for m in s.corrupt]
    if missing or corrupt:
        logger.warning("%d samples without an image and %d undecodable images skipped "
                                            "(first: %s)", len(missing), len(corrupt), (missing + corrupt)[0])
    if not len(index):
        raise ValueError(f"no samples with an image in {len(shards)} shard(s) ({shards[0]}, ...)"
                         + (f"; {len(missing) + len(corrupt)} were skipped" if missing or corrupt else ""))
    stats = {"images": len(index), "missing_images": len(missing), "corrupt_images": len(corrupt),
             "bad_images_skipped": len(missing) + len(corrupt)}
    return index, [r for s in scans for r in s.records], stats


class ShardFiles:
    """Reads byte ranges of indexed shards; one open file per process (checked by pid, since data-loader
    workers fork), refusing a shard whose size or modification time changed since it was indexed."""

    def __init__(self, index: ShardIndex) -> None:
        self.index = index
        self._open: tuple[int, int, Any] | None = None  # (pid, shard, file)

    def __getstate__(self) -> dict[str, Any]:
        return {"index": self.index, "_open": None}

    def read(self, i: int) -> bytes:
        """The image bytes of sample ``i``."""
        ix = self.index
        s = int(ix.shard[i])
        pid = os.getpid()
        if self._open is None or self._open[0] != pid or self._open[1] != s:
            if self._open is not None and self._open[0] == pid:
                self._open[2].close()
            path = ix.shards[s]
            f = open(path, "rb")
            st = os.fstat(f.fileno())
            if (st.st_size, st.st_mtime_ns) != tuple(ix.stamps[s]):
                f.close()
                raise ValueError(f"shard {path} changed since it was indexed (size or modification time); "
                                 "restart to index it again")
            self._open = (pid, s, f)
        f = self._open[2]
        f.seek(int(ix.offset[i]))
        data = f.read(int(ix.size[i]))
        if len(data) != int(ix.size[i]):
            raise ValueError(f"cannot read image {ix.member(i)}: the shard ends inside it")
        return data

    def close(self) -> None:
        if self._open is not None and self._open[0] == os.getpid():
            self._open[2].close()
        self._open = None


# --------------------------------------------------------------------------------------------------
# epochs


def steps_per_epoch(num_samples: int, world_size: int, batch_size: int, drop_last: bool = False) -> int:
    """Batches each rank makes per epoch (the same on every rank; see the module docstring).

    Raises:
        ValueError: too few samples for ``world_size`` ranks (or, with ``drop_last``, for one full batch each).
    """
    n, r, b = int(num_samples), int(world_size), int(batch_size)
    if r < 1 or b < 1:
        raise ValueError(f"world_size={r} and batch_size={b} must be >= 1")
    low = n // r  # the smaller ranks' share
    if low < 1:
        raise ValueError(f"{n} samples cannot be split over {r} processes")
    if drop_last:
        if low < b:
            raise ValueError(f"{low} samples per process < batch_size={b} with drop_last")
        return low // b
    return min(math.ceil(math.ceil(n / r) / b), low)


def _group_starts(shard_of: np.ndarray) -> np.ndarray:
    change = np.flatnonzero(np.diff(shard_of)) + 1
    return np.concatenate([[0], change, [shard_of.size]]).astype(np.int64)


def epoch_plan(shard_of: np.ndarray, *, epoch: int, seed: int, rank: int = 0, world_size: int = 1,
               batch_size: int = 1, drop_last: bool = False, worker: int = 0,
               num_workers: int = 1) -> tuple[np.ndarray, list[int]]:
    """The samples one consumer (rank, worker) reads in an epoch, in reading order, and its batch sizes.

    Args:
        shard_of: int [N], the shard of each sample position (non-decreasing: positions are in file order).

    Returns:
        (positions int64 [sum(sizes)], batch sizes); the positions are contiguous runs of shards in the
        epoch's shard order, each shard's samples ascending (file order).
    """
    shard_of = np.asarray(shard_of)
    n = shard_of.size
    if n and np.any(np.diff(shard_of) < 0):
        raise ValueError("shard_of must be non-decreasing (positions in file order)")
    if not 0 <= rank < world_size or not 0 <= worker < num_workers:
        raise ValueError(f"rank {rank} of {world_size} / worker {worker} of {num_workers} is out of range")
    steps = steps_per_epoch(n, world_size, batch_size, drop_last)
    starts = _group_starts(shard_of)
    perm = np.random.default_rng([int(seed), int(epoch)]).permutation(starts.size - 1)
    lengths = np.diff(starts)[perm]
    ends_in_order = np.cumsum(lengths)
    lo, hi = rank * n // world_size, (rank + 1) * n // world_size
    if drop_last:
        hi = lo + steps * batch_size
        sizes = [batch_size] * steps
    else:
        m = hi - lo
        sizes = [m // steps + (1 if k < m % steps else 0) for k in range(steps)]
    # this worker's run of batches
    b0, b1 = worker * steps // num_workers, (worker + 1) * steps // num_workers
    before = sum(sizes[:b0])
    a, z = lo + before, lo + before + sum(sizes[b0:b1])
    # positions a..z of the epoch's sequence: the shards in ``perm`` order laid end to end
    first = int(np.searchsorted(ends_in_order, a, side="right"))
    pieces = []
    pos = a
    g = first
    while pos < z:
        g_start = int(ends_in_order[g] - lengths[g])
        take_from, take_to = pos - g_start, min(z, int(ends_in_order[g])) - g_start
        s0 = int(starts[perm[g]])
        pieces.append(np.arange(s0 + take_from, s0 + take_to, dtype=np.int64))
        pos = g_start + take_to
        g += 1
    positions = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    return positions, sizes[b0:b1]


def _shuffled(items: Iterable[Any], buffer: int, rng: np.random.Generator) -> Iterator[Any]:
    """Items through a shuffle buffer of ``buffer`` slots (``<= 1``: in order)."""
    if buffer <= 1:
        yield from items
        return
    buf: list[Any] = []
    for item in items:
        if len(buf) < buffer:
            buf.append(item)
            continue
        j = int(rng.integers(buffer))
        yield buf[j]
        buf[j] = item
    for j in rng.permutation(len(buf)):
        yield buf[j]


class ShardStream(IterableDataset):
    """A streamed view of an indexed shard dataset: what a trainer hands to ``tasks.engine.fit``.

    ``source`` is a map-style dataset over shards that also offers ``shard_of`` (int [N], non-decreasing),
    ``raw(i)`` (sample ``i``'s image bytes, read from its shard) and ``from_raw(i, data)`` (the sample dict
    from those bytes), e.g. ``datasets.geotagged.GeotaggedShards``. ``len()`` is the number of samples;
    :meth:`batches` is the per-rank batch stream the engine iterates (module docstring). Iterating the
    stream itself yields this epoch's samples one by one, split across data-loader workers.

    Args:
        source: see above.
        shuffle_buffer: samples of raw bytes each worker keeps to mix neighbours (<= 1: shard order only).
        seed: the data-order seed of direct iteration (:meth:`batches` takes the engine's).
    """

    def __init__(self, source: Any, *, shuffle_buffer: int = 1000, seed: int = 0) -> None:
        for name in ("shard_of", "raw", "from_raw"):
            if not hasattr(source, name):
                raise TypeError(f"{type(source).__name__} has no {name!r}: ShardStream needs a shard dataset")
        if isinstance(shuffle_buffer, bool) or not isinstance(shuffle_buffer, int) or shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer={shuffle_buffer!r} must be an integer >= 0")
        self.source = source
        self.shuffle_buffer = shuffle_buffer
        self.seed = int(seed)
        self.epoch = 0

    @property
    def stats(self) -> dict[str, int]:
        return getattr(self.source, "stats", {})

    def __len__(self) -> int:
        return len(self.source)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def samples(self, positions: np.ndarray, rng: np.random.Generator) -> Iterator[dict[str, Any]]:
        """Read ``positions`` in order, mix them in the shuffle buffer, decode each as it leaves."""
        raw = ((int(i), self.source.raw(int(i))) for i in positions)
        for i, data in _shuffled(raw, self.shuffle_buffer, rng):
            yield self.source.from_raw(i, data)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        positions, _ = epoch_plan(self.source.shard_of, epoch=self.epoch, seed=self.seed, worker=worker,
                                  num_workers=workers)
        yield from self.samples(positions, np.random.default_rng([self.seed, self.epoch, 0, worker]))

    def batches(self, *, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                drop_last: bool = False, collate_fn: Callable | None = None) -> ShardBatches:
        """This rank's batches, ``steps_per_epoch`` of them every epoch (the engine's loader iterates them)."""
        return ShardBatches(self, batch_size=batch_size, rank=rank, world_size=world_size, seed=seed,
                            drop_last=drop_last, collate_fn=collate_fn)


class ShardBatches(IterableDataset):
    """One rank's collated batches of a :class:`ShardStream` (a DataLoader iterates it with ``batch_size=None``).

    ``len()`` is the number of batches per epoch, the same on every rank; :meth:`set_epoch` picks the order.
    """

    def __init__(self, stream: ShardStream, *, batch_size: int, rank: int, world_size: int, seed: int,
                 drop_last: bool, collate_fn: Callable | None) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1")
        self.stream = stream
        self.batch_size, self.rank, self.world_size = batch_size, int(rank), int(world_size)
        self.seed, self.drop_last = int(seed), bool(drop_last)
        self.collate_fn = collate_fn or default_collate
        self.steps = steps_per_epoch(len(stream), self.world_size, batch_size, self.drop_last)
        self.epoch = 0

    @property
    def stats(self) -> dict[str, int]:
        return self.stream.stats

    def __len__(self) -> int:
        return self.steps

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        positions, sizes = epoch_plan(self.stream.source.shard_of, epoch=self.epoch, seed=self.seed,
                                      rank=self.rank, world_size=self.world_size, batch_size=self.batch_size,
                                      drop_last=self.drop_last, worker=worker, num_workers=workers)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        samples = self.stream.samples(positions, rng)
        for size in sizes:
            yield self.collate_fn(list(itertools.islice(samples, size)))


# --------------------------------------------------------------------------------------------------
# writing


def _check_key(key: str) -> None:
    base = posixpath.basename(key)
    if (not key or not base or "." in base or key.startswith("/") or ".." in key.split("/")
            or "\\" in key or base.startswith(".")):
        raise ValueError(f"sample key {key!r} is not usable: it must be a relative path whose file name has no "
                         "dot and does not start with one")


def write_shards(out_dir: str | os.PathLike, samples: Iterable[tuple[str, Mapping[str, bytes]]], *,
                 shard_size: int, start: int = 0) -> list[Path]:
    """Write ``(key, {part: bytes})`` samples into ``out_dir/000000.tar``, ``000001.tar``, ... atomically.

    Args:
        out_dir: the folder (created).
        samples: each sample's key (no dot in its file name) and parts (``{"jpg": ..., "json": ...}``).
        shard_size: samples per shard (the last may hold fewer).
        start: the first shard number.

    Returns:
        The shard paths, in order (:func:`shard_pattern` gives their brace pattern).
    """
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size={shard_size!r} must be an integer >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    it = iter(samples)
    number = start
    while True:
        chunk = list(itertools.islice(it, shard_size))
        if not chunk:
            break
        path = out / f"{number:06d}.tar"
        with atomic_path(path) as tmp:
            with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tf:
                for key, parts in chunk:
                    _check_key(key)
                    if not parts:
                        raise ValueError(f"sample {key!r} has no parts")
                    for part in sorted(parts):
                        data = bytes(parts[part])
                        if not part or part.startswith(".") or "/" in part:
                            raise ValueError(f"sample {key!r}: part name {part!r} is not an extension")
                        info = tarfile.TarInfo(f"{key}.{part}")
                        info.size, info.mtime, info.mode = len(data), 0, 0o644
                        tf.addfile(info, io.BytesIO(data))
        paths.append(path)
        number += 1
    if not paths:
        raise ValueError("no samples to write")
    return paths

