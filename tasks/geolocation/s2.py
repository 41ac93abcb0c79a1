"""S2 cell ids for whole arrays of points (numpy), checked against the ``s2cell`` library.

The S2 library's scheme: a point on the sphere goes to one of the 6 faces of a cube, its face coordinates
(u, v) are warped by the quadratic projection to (s, t) in [0, 1), quantised to 30-bit integers (i, j),
and (i, j) is ordered along a Hilbert curve. A 64-bit cell id holds the face (3 bits), two bits per level
of the Hilbert position, and a trailing 1 bit whose position gives the level: a level-L cell has its
lowest set bit at 2 * (30 - L). So a level-30 ("leaf") id per photo is all one needs: every coarser
cell of that photo is bit arithmetic on it, and the leaves below one cell form one contiguous id range.

Library choice (compared here, 2026-12): ``s2geometry`` (Google's C++ library through SWIG; wheels for
Linux x86_64 and macOS arm64 only; one call per point, about 0.18 M points/s in Python), ``s2cell``
(pure Python, small, installs everywhere; ids, tokens, levels, parents, lat/lon; about 0.29 M points/s,
one call per point; agreed with s2geometry on 20,000 random points at level 10) and ``s2sphere``
(pure Python, archived since 2017, needs the Python-2 ``future`` package). None of them takes arrays, so
the hot path (lat/lon -> leaf id, parents, levels, tokens) is written here in numpy (about 20x faster
for leaf ids, ``benchmarks/geolocation.py``), and ``s2cell`` is the dependency: it is the reference the
tests hold these functions to, and it parses and validates the tokens read back from ``cells.csv``.

Two details follow the C++ library rather than ``s2cell``: the face of a point whose largest
coordinates tie goes to the later axis, and longitudes are used as given (180 and -180 are the same
meridian and land in the same cell).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import s2cell

__all__ = [
    "MAX_LEVEL",
    "cell_id_ranges",
    "cell_levels",
    "cell_tokens",
    "leaf_cell_ids",
    "parent_cell_ids",
    "token_to_cell_id",
]

MAX_LEVEL = 30
_IJ_BITS = 30
_IJ_SIZE = 1 << _IJ_BITS

# The Hilbert curve as a state machine over quadrants. A quadrant is ij = 2 * i_bit + j_bit; in each of
# the 4 orientations the curve visits the quadrants in the order of _IJ_TO_POS, and after visiting
# position p the orientation of the sub-curve is flipped by _POS_TO_FLIP[p] (1: swap i and j, 2: invert).
_IJ_TO_POS = np.array([[0, 1, 3, 2], [0, 3, 1, 2], [2, 3, 1, 0], [2, 1, 3, 0]], dtype=np.uint64).ravel()
_POS_TO_FLIP = np.array([1, 0, 0, 3], dtype=np.int64)

# Four bits of i and j at a time: a table indexed by (orientation, 4 bits of i, 4 bits of j) holding
# 4 * (8 bits of position) + the orientation after them, built once from the one-bit machine above.
_CHUNK = 4


def _build_chunk_table() -> np.ndarray:
    size = 1 << _CHUNK
    table = np.zeros(4 * size * size, dtype=np.int32)
    for orient in range(4):
        for i in range(size):
            for j in range(size):
                o, pos = orient, 0
                for k in range(_CHUNK - 1, -1, -1):
                    p = int(_IJ_TO_POS[o * 4 + ((((i >> k) & 1) << 1) | ((j >> k) & 1))])
                    pos = (pos << 2) | p
                    o ^= int(_POS_TO_FLIP[p])
                table[(orient * size + i) * size + j] = (pos << 2) | o
    return table


_CHUNK_TABLE = _build_chunk_table()

# Per face: which coordinate (0 x, 1 y, 2 z) over the major one gives u and v, and with which sign.
_FACE_U_AXIS = np.array([1, 0, 0, 2, 2, 1])
_FACE_U_SIGN = np.array([1.0, -1.0, -1.0, 1.0, 1.0, -1.0])
_FACE_V_AXIS = np.array([2, 2, 1, 1, 0, 0])
_FACE_V_SIGN = np.array([1.0, 1.0, -1.0, 1.0, -1.0, -1.0])


def _as_degrees(values: np.ndarray | Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ValueError(f"{name}[{bad}] is {arr[bad]}, not a finite number")
    return arr


def leaf_cell_ids(lat: np.ndarray | Sequence[float], lon: np.ndarray | Sequence[float]) -> np.ndarray:
    """Level-30 S2 cell ids (uint64 [N]) of points given in degrees.

    Raises:
        ValueError: a coordinate is not finite, a latitude is outside [-90, 90], or the lengths differ.
    """
    lat_deg = _as_degrees(lat, "lat")
    lon_deg = _as_degrees(lon, "lon")
    if lat_deg.shape != lon_deg.shape:
        raise ValueError(f"lat has {lat_deg.size} values but lon has {lon_deg.size}")
    if lat_deg.size and np.abs(lat_deg).max() > 90.0:
        bad = int(np.flatnonzero(np.abs(lat_deg) > 90.0)[0])
        raise ValueError(f"lat[{bad}] = {lat_deg[bad]} is outside [-90, 90]")
    phi, theta = np.radians(lat_deg), np.radians(lon_deg)
    cos_phi = np.cos(phi)
    xyz = np.stack([cos_phi * np.cos(theta), cos_phi * np.sin(theta), np.sin(phi)])
    ax, ay, az = np.abs(xyz)
    axis = np.where(ax > ay, np.where(ax > az, 0, 2), np.where(ay > az, 1, 2))
    major = np.take_along_axis(xyz, axis[None], 0)[0]
    face = axis + 3 * (major < 0)
    # (u, v) on each face: two other coordinates over the major one, in the order and with the signs that
    # make the six faces join up into S2's cube (the _FACE_* tables).
    u = np.take_along_axis(xyz, _FACE_U_AXIS[face][None], 0)[0] * _FACE_U_SIGN[face] / major
    v = np.take_along_axis(xyz, _FACE_V_AXIS[face][None], 0)[0] * _FACE_V_SIGN[face] / major
    i = _uv_to_ij(u)
    j = _uv_to_ij(v)
    # Walk the Hilbert curve 4 bits of i and j at a time, from the top. i and j have 30 bits; the first
    # chunk's two extra (zero) top bits add two zero position digits and leave the starting orientation
    # (0, or 1 on odd faces, which start with i and j swapped) as it was: quadrant 0 is position 0 in
    # those orientations and swaps i and j, twice.
    state = (face & 1).astype(np.int32) << (2 * _CHUNK)
    halves = []
    for half in (1, 0):
        acc = np.zeros(i.size, dtype=np.int64)
        for shift in range(16 * half + 12, 16 * half - 1, -_CHUNK):
            val = _CHUNK_TABLE[state | (((i >> shift) & 15) << _CHUNK) | ((j >> shift) & 15)]
            acc = (acc << (2 * _CHUNK)) | (val >> 2)
            state = (val & 3) << (2 * _CHUNK)
        halves.append(acc.astype(np.uint64))
    pos = (halves[0] << np.uint64(32)) | halves[1]
    return (face.astype(np.uint64) << np.uint64(61)) | (pos << np.uint64(1)) | np.uint64(1)


def _uv_to_ij(u: np.ndarray) -> np.ndarray:
    # S2's quadratic projection from the cube face to cell space, then quantisation to 30 bits.
    r = 0.5 * np.sqrt(1.0 + 3.0 * np.abs(u))
    s = np.where(u >= 0.0, r, 1.0 - r)
    return np.clip(np.floor(_IJ_SIZE * s), 0, _IJ_SIZE - 1).astype(np.int32)


def _lsb(level: int | np.ndarray) -> np.ndarray | np.uint64:
    return np.left_shift(np.uint64(1), (2 * (MAX_LEVEL - np.asarray(level, dtype=np.int64))).astype(np.uint64))


def parent_cell_ids(ids: np.ndarray, level: int | np.ndarray) -> np.ndarray:
    """The level-``level`` ancestors of cell ids (uint64); ``level`` at or below each id's own level.

    Raises:
        ValueError: ``level`` outside [0, 30].
    """
    lv = np.asarray(level)
    if lv.size and (lv.min() < 0 or lv.max() > MAX_LEVEL):
        raise ValueError(f"S2 level must be within [0, {MAX_LEVEL}], got {level!r}")
    ids = np.asarray(ids, dtype=np.uint64)
    lsb = _lsb(lv)
    # clear everything below the new trailing bit, then set it
    return (ids & ~(lsb - np.uint64(1)) & ~lsb) | lsb


def cell_levels(ids: np.ndarray) -> np.ndarray:
    """Levels (int64 [N]) of valid cell ids: 30 minus half the position of the lowest set bit."""
    ids = np.asarray(ids, dtype=np.uint64)
    lowest = ids & (~ids + np.uint64(1))
    # lowest is a power of two up to 2**60: log2 is exact for those in float64
    return (MAX_LEVEL - np.log2(lowest.astype(np.float64)).astype(np.int64) // 2).astype(np.int64)


def cell_id_ranges(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(first, last)`` leaf ids (uint64) covered by each cell: a cell holds exactly the leaves in
    ``first <= leaf <= last``."""
    ids = np.asarray(ids, dtype=np.uint64)
    lowest = ids & (~ids + np.uint64(1))
    below = lowest - np.uint64(1)
    return ids - below, ids + below


def cell_tokens(ids: np.ndarray) -> list[str]:
    """S2 tokens: the id in hex (16 digits) without trailing zeros."""
    return [format(int(c), "016x").rstrip("0") or "X" for c in np.asarray(ids, dtype=np.uint64)]


def token_to_cell_id(token: str) -> int:
    """The cell id of an S2 token (through ``s2cell``).

    Raises:
        ValueError: ``token`` is not a valid S2 token (bad hex, face above 5, misplaced trailing bit).
    """
    if not isinstance(token, str) or not s2cell.token_is_valid(token):
        raise ValueError(f"{token!r} is not a valid S2 cell token")
    return int(s2cell.token_to_cell_id(token))
