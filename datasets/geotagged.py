"""Geotagged photo lists (CSV: image id, latitude, longitude) and the image dataset over them (MobileNets
paper, Section 4.4: PlaNet geolocation).

The public lists spell their columns differently: MP-16, YFCC4k and Im2GPS3k use ``IMG_ID, ..., LAT, LON``,
OSV-5M ``id, latitude, longitude, ...``, others ``image``/``photo``/``lng``. :func:`read_geotagged_csv`
finds the three columns by those spellings (case-insensitive, :data:`ID_COLUMNS`, :data:`LAT_COLUMNS`,
:data:`LON_COLUMNS`), or takes explicit column names (``--id-col --lat-col --lon-col``); other columns
are ignored. Every value is checked, naming the file, line, column and value:

* empty, non-numeric, NaN or infinite coordinates;
* latitude outside [-90, 90], longitude outside [-180, 180];
* a latitude column holding values beyond +-90 while the longitude column fits within +-90 is reported as
  swapped columns (one public Im2GPS3k CSV has the header ``IMG_ID,AUTHOR,LON,LAT`` over values that are
  latitude then longitude). A file whose coordinates all lie within +-90 cannot show a swap this way.

:class:`GeotaggedImages` serves ``{"image", "target": float32 [2] (lat, lon), "index"}`` from the images
under a root folder, through :class:`datasets.images.ImageFiles` (the one decoder and the one bad-image
policy): a listed image that is missing stops the run naming the CSV line and the file, or with
``skip_bad_images=True`` is skipped and counted in ``stats``.

Two other sources of locations, for the same trainers (:func:`read_locations` picks by the flags):

* ``--exif-gps``: each photo's EXIF GPS tags (:func:`read_exif_gps`: degrees, minutes, seconds as rationals
  with N/S, E/W references, computed exactly); a photo without a position stops the run naming it, or is
  skipped and counted with ``--skip-bad-images``.
* webdataset tar shards (``--data-root 'shards/{000000..000999}.tar'``): each sample an image plus a
  ``.json`` whose keys are found by the same spellings (or ``--lat-col``/``--lon-col``) and checked the same
  way, naming the shard and member (:class:`GeotaggedShards`, streamed for training by
  ``datasets.shards.ShardStream``). :func:`write_geotagged_shards` (``python -m datasets.geotagged``) writes
  a CSV's photos as shards.
"""
from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from datasets.images import LOAD_ERRORS, ImageFiles, apply_transform, is_image_file, list_images, load_rgb_image, \
    read_exif
from datasets.io import atomic_write_text, run_cli
from datasets.shards import (
    IMAGE_PARTS,
    SHARD_SEPARATOR,
    ShardFiles,
    ShardIndex,
    ShardStream,
    expand_shards,
    index_shards,
    is_shard_spec,
    shard_pattern,
    write_shards,
)

__all__ = [
    "GeoTable",
    "GeotaggedImages",
    "GeotaggedShards",
    "ID_COLUMNS",
    "LAT_COLUMNS",
    "LON_COLUMNS",
    "NoGPSError",
    "geotagged_dataset",
    "read_exif_gps",
    "read_exif_gps_table",
    "read_geotagged_csv",
    "read_locations",
    "write_geotagged_csv",
    "write_geotagged_shards",
]

# Header spellings, most specific first: the first one present is taken.
ID_COLUMNS = ("img_id", "image_id", "imgid", "photo_id", "image", "img", "photo", "id", "filename", "file",
              "image_path", "path", "name")
LAT_COLUMNS = ("lat", "latitude", "gps_lat", "gps_latitude")
LON_COLUMNS = ("lon", "lng", "long", "longitude", "gps_lon", "gps_lng", "gps_longitude")


@dataclass
class GeoTable:
    """The rows of a geotagged CSV.

    Attributes:
        path: the file read.
        ids: N image ids as written (a file name or a path relative to the image root).
        lat, lon: float64 [N], degrees.
        lines: int64 [N], the 1-based line of each row in the file (for messages); 0 for locations read
            from the photos' EXIF.
        columns: the header names used, ``{"id": ..., "lat": ..., "lon": ...}``.
        counts: photos left out while reading, e.g. ``{"no_gps_images": 3}`` (EXIF without a position).
    """

    path: str
    ids: list[str]
    lat: np.ndarray
    lon: np.ndarray
    lines: np.ndarray
    columns: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def where(self, k: int) -> str:
        """Where row ``k`` came from, for messages: ``file, line N`` (a CSV) or the photo (EXIF)."""
        if int(self.lines[k]) > 0:
            return f"{self.path}, line {int(self.lines[k])}"
        return os.path.join(self.path, self.ids[k])

    def select(self, indices: Sequence[int] | np.ndarray, *, keep_counts: bool = True) -> GeoTable:
        """The rows at ``indices``, in that order; ``keep_counts=False`` drops the counts of photos skipped
        while reading (for the second part of a split, so that they are reported once)."""
        idx = np.asarray(indices, dtype=np.int64)
        return GeoTable(self.path, [self.ids[i] for i in idx.tolist()], self.lat[idx], self.lon[idx],
                        self.lines[idx], dict(self.columns), dict(self.counts) if keep_counts else {})


def _find_column(header: list[str], given: str | None, spellings: Sequence[str], what: str, flag: str,
                 path: str) -> int:
    lowered = [h.strip().lower() for h in header]
    if given is not None:
        key = given.strip().lower()
        hits = [k for k, h in enumerate(lowered) if h == key]
        if not hits:
            raise ValueError(f"{path}: no column {given!r} ({flag}) in the header {header}")
    else:
        hits = []
        for name in spellings:
            hits = [k for k, h in enumerate(lowered) if h == name]
            if hits:
                break
        if not hits:
            looks_numeric = any(_is_number(h) for h in header)
            hint = (" (the first line looks like data: the file seems to have no header row; add one)"
                    if looks_numeric else "")
            raise ValueError(f"{path}: cannot find the {what} column in the header {header}{hint}; expected "
                             f"one of {', '.join(spellings)} (any case), or name it with {flag}")
    if len(hits) > 1:
        raise ValueError(f"{path}: the header names column {header[hits[0]]!r} {len(hits)} times")
    return hits[0]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _parse_coords(values: list[str], lines: np.ndarray, path: str, column: str) -> np.ndarray:
    try:
        out = np.asarray(values, dtype=np.float64)
    except ValueError:
        out = None
    if out is not None and np.isfinite(out).all():
        return out
    for k, raw in enumerate(values):  # slow path only to name the bad row
        text = raw.strip()
        what = "empty" if not text else None
        if what is None:
            try:
                value = float(text)
            except ValueError:
                what = "not a number"
            else:
                if not np.isfinite(value):
                    what = "not a finite number"
        if what is not None:
            raise ValueError(f"{path}, line {int(lines[k])}, column {column!r}: value {raw!r} is {what}")
    raise AssertionError("unreachable: a non-finite value was not found")  # pragma: no cover


def read_geotagged_csv(path: str | os.PathLike, *, id_col: str | None = None, lat_col: str | None = None,
                       lon_col: str | None = None, delimiter: str | None = None) -> GeoTable:
    """Read a geotagged CSV (see the module docstring for the columns and checks).

    Args:
        path: the CSV file (UTF-8, a header row first).
        id_col, lat_col, lon_col: header names of the image id, latitude and longitude columns
            (case-insensitive); ``None`` finds them by the common spellings.
        delimiter: field separator; ``None``: a tab when the header has tabs and no commas, else a comma.

    Returns:
        The rows, in file order (blank lines skipped).

    Raises:
        FileNotFoundError: no such file.
        ValueError: no header / column not found, a row with too few fields or an empty id, a coordinate
            that is empty, non-numeric, NaN or out of range (naming file, line, column and value),
            swapped latitude/longitude columns, or no rows.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"geotagged CSV not found: {path}")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a UTF-8 text file: {e}") from e
    first = text.split("\n", 1)[0]
    if delimiter is None:
        delimiter = "\t" if "\t" in first and "," not in first else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise ValueError(f"{path}: empty file (expected a header such as IMG_ID,LAT,LON)") from None
    header = [h.strip() for h in header]
    ci = _find_column(header, id_col, ID_COLUMNS, "image id", "--id-col", path)
    la = _find_column(header, lat_col, LAT_COLUMNS, "latitude", "--lat-col", path)
    lo = _find_column(header, lon_col, LON_COLUMNS, "longitude", "--lon-col", path)
    if len({ci, la, lo}) < 3:
        raise ValueError(f"{path}: the id, latitude and longitude columns must differ, got "
                         f"{header[ci]!r}, {header[la]!r}, {header[lo]!r}")
    need = max(ci, la, lo) + 1
    ids: list[str] = []
    lats: list[str] = []
    lons: list[str] = []
    lines: list[int] = []
    for row in reader:
        lineno = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < need:
            raise ValueError(f"{path}, line {lineno}: expected at least {need} fields, got {len(row)}")
        image = row[ci].strip()
        if not image:
            raise ValueError(f"{path}, line {lineno}, column {header[ci]!r}: empty image id")
        ids.append(image)
        lats.append(row[la])
        lons.append(row[lo])
        lines.append(lineno)
    if not ids:
        raise ValueError(f"{path}: no rows after the header")
    line_arr = np.asarray(lines, dtype=np.int64)
    lat = _parse_coords(lats, line_arr, path, header[la])
    lon = _parse_coords(lons, line_arr, path, header[lo])
    _check_ranges(lat, lon, lambda k: f"{path}, line {int(line_arr[k])}", header[la], header[lo])
    return GeoTable(path, ids, lat, lon, line_arr, {"id": header[ci], "lat": header[la], "lon": header[lo]})


def _check_ranges(lat: np.ndarray, lon: np.ndarray, where: Callable[[int], str], lat_name: str, lon_name: str,
                  what: str = "column") -> None:
    """Latitudes within +-90, longitudes within +-180; a latitude beyond 90 beside longitudes that all fit
    within 90 is reported as swapped columns. ``where(k)`` names row ``k`` (a CSV line, a shard member)."""
    bad_lat = np.abs(lat) > 90.0
    if bad_lat.any():
        k = int(np.flatnonzero(bad_lat)[0])
        here = f"{where(k)}, {what} {lat_name!r}: latitude {float(lat[k])!r} is outside [-90, 90]"
        if np.abs(lon).max() <= 90.0:
            raise ValueError(
                f"{here}, while every value of the longitude {what} {lon_name!r} fits within [-90, 90]: the "
                f"latitude and longitude {what}s look swapped ({int(bad_lat.sum())} rows); if the values are "
                f"latitude in {lon_name!r} and longitude in {lat_name!r}, pass --lat-col {lon_name} "
                f"--lon-col {lat_name} (lat_col={lon_name!r}, lon_col={lat_name!r})")
        raise ValueError(here)
    bad_lon = np.abs(lon) > 180.0
    if bad_lon.any():
        k = int(np.flatnonzero(bad_lon)[0])
        raise ValueError(f"{where(k)}, {what} {lon_name!r}: longitude {float(lon[k])!r} is outside [-180, 180]")


def write_geotagged_csv(path: str | os.PathLike, ids: Sequence[str], lat: Sequence[float] | np.ndarray,
                        lon: Sequence[float] | np.ndarray, *,
                        header: tuple[str, str, str] = ("IMG_ID", "LAT", "LON")) -> str:
    """Write ``id, lat, lon`` rows (MP-16's header by default) atomically; returns the path."""
    path = os.fspath(path)
    lat = np.asarray(lat, dtype=np.float64).reshape(-1)
    lon = np.asarray(lon, dtype=np.float64).reshape(-1)
    if not len(ids) == lat.size == lon.size:
        raise ValueError(f"got {len(ids)} ids, {lat.size} latitudes and {lon.size} longitudes")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for image, a, b in zip(ids, lat.tolist(), lon.tolist()):
        w.writerow([image, repr(a), repr(b)])
    atomic_write_text(path, buf.getvalue())
    return path


class GeotaggedImages(torch.utils.data.Dataset):
    """Geotagged photos under ``root``: samples ``{"image", "target": float32 [2] (lat, lon), "index"}``.

    ``index`` is the position of the served image in this dataset; :attr:`lat`, :attr:`lon`, :attr:`ids`
    and :attr:`lines` are aligned with it (after skipped images are dropped), so a trainer can map
    positions to S2 class labels once: ``labels = partition.assign(ds.lat, ds.lon)``.

    Args:
        ann: a geotagged CSV path, or a :class:`GeoTable` already read.
        root: the folder the ids are relative to.
        transform: PIL image -> tensor (e.g. ``datasets.images.build_image_transform``); ``None`` gives
            uint8 [3, H, W].
        id_col, lat_col, lon_col: column names, when ``ann`` is a path (see :func:`read_geotagged_csv`).
        image_suffix: appended to every id to form the file name (OSV-5M lists ids without ``.jpg``).
        skip_bad_images: skip and count missing (and, after :meth:`scan_images`, undecodable) images
            instead of raising.

    Attributes:
        table: the CSV's rows (all of them).
        stats: ``ImageFiles`` counts (``images``, ``missing_images``, ``corrupt_images``,
            ``bad_images_skipped``).

    Raises:
        FileNotFoundError: the CSV or ``root`` is missing, or (without ``skip_bad_images``) a listed image
            is, naming the CSV line and the file.
    """

    def __init__(self, ann: str | os.PathLike | GeoTable, root: str | os.PathLike,
                 transform: Callable[[Image.Image], Any] | None = None, *, id_col: str | None = None,
                 lat_col: str | None = None, lon_col: str | None = None, image_suffix: str = "",
                 skip_bad_images: bool = False) -> None:
        self.table = ann if isinstance(ann, GeoTable) else read_geotagged_csv(
            ann, id_col=id_col, lat_col=lat_col, lon_col=lon_col)
        self.root = os.fspath(root)
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"image folder not found: {self.root}")
        names = [i + image_suffix for i in self.table.ids]
        rows = np.arange(len(names), dtype=np.int64)
        try:
            # the targets ImageFiles keeps aligned are our row numbers: lat/lon follow from them
            self.images = ImageFiles(names, transform, targets=rows, root=self.root,
                                     skip_bad_images=skip_bad_images)
        except FileNotFoundError:
            raise self._missing_error(names, image_suffix) from None
        self.stats = self.images.stats
        for key, count in self.table.counts.items():  # photos the reader left out (EXIF without a position)
            self.stats[key] = self.stats.get(key, 0) + int(count)
            self.stats["bad_images_skipped"] += int(count)
        self.skipped = self.images.skipped

    def _missing_error(self, names: list[str], image_suffix: str) -> FileNotFoundError:
        missing = [k for k, n in enumerate(names) if not os.path.isfile(os.path.join(self.root, n))]
        k = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        hint = ""
        if not image_suffix and not is_image_file(names[k]):
            hint = "; the id has no image extension: pass image_suffix='.jpg' if the files are <id>.jpg"
        return FileNotFoundError(
            f"{self.table.where(k)}: image {self.table.ids[k]!r} not found at "
            f"{os.path.join(self.root, names[k])}{more}{hint}; pass skip_bad_images=True (--skip-bad-images) "
            "to skip missing images")

    @property
    def rows(self) -> np.ndarray:
        """int64 [len(self)]: the table row of each served position."""
        return np.asarray(self.images.targets, dtype=np.int64)

    @property
    def lat(self) -> np.ndarray:
        """float64 [len(self)] latitudes, aligned with ``index``."""
        return self.table.lat[self.rows]

    @property
    def lon(self) -> np.ndarray:
        """float64 [len(self)] longitudes, aligned with ``index``."""
        return self.table.lon[self.rows]

    @property
    def ids(self) -> list[str]:
        """Image ids as written in the CSV, aligned with ``index``."""
        return [self.table.ids[r] for r in self.rows.tolist()]

    @property
    def lines(self) -> np.ndarray:
        """CSV line of each position."""
        return self.table.lines[self.rows]

    def scan_images(self, num_threads: int | None = None, progress: bool = False) -> list[str]:
        """Decode every image once and drop (and count) the undecodable ones; see ``ImageFiles.scan_images``."""
        return self.images.scan_images(num_threads=num_threads, progress=progress)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.images[index]
        row = int(sample.pop("target"))
        sample["target"] = torch.tensor([self.table.lat[row], self.table.lon[row]], dtype=torch.float32)
        return sample


# --------------------------------------------------------------------------------------------------
# EXIF GPS

GPS_IFD = 0x8825  # the EXIF pointer to the GPS tags
_GPS_TAGS = {"lat": (2, 1, "GPSLatitude", ("N", "S"), 90), "lon": (4, 3, "GPSLongitude", ("E", "W"), 180)}


class NoGPSError(ValueError):
    """A photo whose EXIF holds no usable GPS position."""


def _rational(value: Any, path: str, name: str) -> Fraction:
    num, den = getattr(value, "numerator", None), getattr(value, "denominator", None)
    if num is not None and den is not None:
        if den == 0:
            raise NoGPSError(f"{path}: EXIF {name} has a zero denominator ({num}/0)")
        return Fraction(num) / Fraction(den)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
        return Fraction(value)
    raise NoGPSError(f"{path}: EXIF {name} holds {value!r}, not a number")


def _gps_degrees(gps: Mapping[int, Any], which: str, path: str) -> float:
    tag, ref_tag, name, refs, bound = _GPS_TAGS[which]
    value, ref = gps.get(tag), gps.get(ref_tag)
    if value is None:
        raise NoGPSError(f"{path}: the EXIF GPS tags have no {name}")
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "replace")
    ref = str(ref).strip("\x00 ").upper() if ref is not None else ""
    if ref not in refs:
        raise NoGPSError(f"{path}: EXIF {name}Ref is {ref or 'missing'!r}, expected {' or '.join(refs)}")
    parts = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if not 1 <= len(parts) <= 3:
        raise NoGPSError(f"{path}: EXIF {name} has {len(parts)} values, expected degrees, minutes, seconds")
    total = sum((_rational(v, path, name) / 60 ** k for k, v in enumerate(parts)), Fraction(0))
    if total < 0 or total > bound:
        raise NoGPSError(f"{path}: EXIF {name} {float(total)!r} is outside [0, {bound}] degrees")
    return float(-total if ref == refs[1] else total)


def read_exif_gps(path: str | os.PathLike) -> tuple[float, float]:
    """``(lat, lon)`` in degrees from a photo's EXIF GPS tags (the GPS IFD: degrees, minutes and seconds as
    rationals, with N/S and E/W references), computed exactly and rounded once.

    Raises:
        FileNotFoundError / datasets.images.ImageDecodeError: not a readable image.
        NoGPSError: no GPS tags, or no complete, valid latitude and longitude among them (a ``ValueError``
            naming the photo and the tag).
    """
    path = os.fspath(path)
    gps = read_exif(path, GPS_IFD)
    if not gps:
        raise NoGPSError(f"{path}: no GPS position in its EXIF")
    return _gps_degrees(gps, "lat", path), _gps_degrees(gps, "lon", path)


def read_exif_gps_table(root: str | os.PathLike, *, skip_bad_images: bool = False, num_threads: int | None = None,
                        progress: bool = False) -> GeoTable:
    """The photos under ``root`` (recursive, ``datasets.images.list_images``) with their EXIF GPS positions.

    Args:
        skip_bad_images: leave out (and count in ``counts``) photos without a GPS position or unreadable ones
            instead of raising.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no images; without ``skip_bad_images``, a photo without a position (naming it and how
            many others lack one) or an unreadable one; with it, no photo with a position at all.
    """
    root = os.fspath(root)
    names = list_images(root)
    if not names:
        raise ValueError(f"no image files under {root}")

    def one(name: str) -> tuple[tuple[float, float] | None, str, str]:
        try:
            return read_exif_gps(os.path.join(root, name)), "", ""
        except NoGPSError as err:
            return None, "no_gps_images", str(err)
        except LOAD_ERRORS as err:
            return None, "corrupt_images", str(err)

    threads = num_threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results: Any = pool.map(one, names, chunksize=64)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(names), desc="reading EXIF GPS", unit="img", leave=False)
        results = list(results)
    bad = [(kind, msg) for _, kind, msg in results if kind]
    if bad and not skip_bad_images:
        more = f" ({len(bad)} of the {len(names)} photos have no usable position or cannot be read)" \
            if len(bad) > 1 else ""
        raise ValueError(f"{bad[0][1]}{more}; pass --skip-bad-images (skip_bad_images=True) to skip them")
    keep = [k for k, (pos, _, _) in enumerate(results) if pos is not None]
    if not keep:
        raise ValueError(f"none of the {len(names)} photos under {root} has an EXIF GPS position (first: {bad[0][1]})")
    counts = {kind: sum(1 for b, _ in bad if b == kind) for kind in ("no_gps_images", "corrupt_images")}
    lat = np.array([results[k][0][0] for k in keep], dtype=np.float64)
    lon = np.array([results[k][0][1] for k in keep], dtype=np.float64)
    return GeoTable(root, [names[k] for k in keep], lat, lon, np.zeros(len(keep), dtype=np.int64),
                    {"id": "file", "lat": "EXIF GPSLatitude", "lon": "EXIF GPSLongitude"},
                    {k: v for k, v in counts.items() if v})


# --------------------------------------------------------------------------------------------------
# webdataset shards


def _json_coord(value: Any, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{where}, key {key!r}: value {value!r} is not a number")
    try:
        out = float(value)
    except ValueError:
        raise ValueError(f"{where}, key {key!r}: value {value!r} is not a number") from None
    if not np.isfinite(out):
        raise ValueError(f"{where}, key {key!r}: value {value!r} is not a finite number")
    return out


def _json_key(obj: Mapping[str, Any], given: str | None, spellings: Sequence[str], what: str, flag: str,
              where: str) -> str | None:
    lowered = {str(k).strip().lower(): k for k in obj}
    if given is not None:
        hit = lowered.get(given.strip().lower())
        if hit is None:
            raise ValueError(f"{where}: no key {given!r} ({flag}) among {sorted(obj)}")
        return hit
    for name in spellings:
        if name in lowered:
            return lowered[name]
    if what == "image id":
        return None
    raise ValueError(f"{where}: cannot find the {what} among the keys {sorted(obj)}; expected one of "
                     f"{', '.join(spellings)} (any case), or name it with {flag}")


class _JsonLocation:
    """Reads a shard sample's ``.json``: ``(lat, lon, id, lat key, lon key, id key)``; the id is the sample key unless
    ``id_col`` (or one of :data:`ID_COLUMNS`) names a key with a string or integer value."""

    def __init__(self, id_col: str | None, lat_col: str | None, lon_col: str | None) -> None:
        self.id_col, self.lat_col, self.lon_col = id_col, lat_col, lon_col

    def __call__(self, shard: str, key: str, parts: Mapping[str, bytes]) -> tuple[float, float, str, str, str,
                                                                                  str | None]:
        where = f"{shard}, member {key}.json"
        data = parts.get("json")
        if data is None:
            raise ValueError(f"{shard}: sample {key!r} has no .json member with its location (lat, lon)")
        try:
            obj = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{where}: not valid JSON: {e}") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object with the location, got {type(obj).__name__}")
        la = _json_key(obj, self.lat_col, LAT_COLUMNS, "latitude", "--lat-col", where)
        lo = _json_key(obj, self.lon_col, LON_COLUMNS, "longitude", "--lon-col", where)
        ident = _json_key(obj, self.id_col, ID_COLUMNS, "image id", "--id-col", where)
        value = obj.get(ident) if ident is not None else None
        if self.id_col is not None and (isinstance(value, bool) or not isinstance(value, (str, int)) or value == ""):
            raise ValueError(f"{where}, key {ident!r}: the image id {value!r} is not a string or integer")
        if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
            ident, value = None, key
        return _json_coord(obj[la], where, la), _json_coord(obj[lo], where, lo), str(value), la, lo, ident


_SAME = object()  # select(): keep the transform


class GeotaggedShards(torch.utils.data.Dataset):
    """Geotagged photos in webdataset tar shards: each sample an image plus a ``.json`` with its location.

    The JSON's keys are found by the CSV's header spellings (:data:`LAT_COLUMNS`, :data:`LON_COLUMNS`, any
    case) or named by ``lat_col`` / ``lon_col``; the values are checked as the CSV's are (range, swapped
    keys), naming the shard and member. The image id is the sample key, or the JSON's ``id_col`` (or an
    :data:`ID_COLUMNS` key). Indexing reads the shards' headers and JSON only (``datasets.shards``), so
    locations, and a partition of them, are known without touching an image; with ``skip_bad_images`` every
    image is decoded once too and samples without a (readable) image are dropped and counted.

    As a map-style dataset (evaluation, validation) sample ``i`` is read from its offset; training streams
    the shards through :meth:`stream`. Samples are ``{"image", "target": float32 [2] (lat, lon), "index"}``,
    as :class:`GeotaggedImages` serves.

    Args:
        spec: the shards (``datasets.shards.expand_shards``: braces, globs, ``::`` lists).
        transform: PIL image -> tensor; ``None`` gives uint8 [3, H, W].
        id_col, lat_col, lon_col: JSON keys (default: found by name).
        skip_bad_images: see above.

    Raises:
        FileNotFoundError: a shard is missing; a sample has no image (without ``skip_bad_images``).
        ValueError: a bad shard, a sample without a ``.json``, a JSON without a valid location (naming shard,
            member, key and value), swapped keys, an undecodable image when scanned without skipping.
    """

    def __init__(self, spec: str | os.PathLike | Sequence[str], transform: Callable[[Image.Image], Any] | None = None,
                 *, id_col: str | None = None, lat_col: str | None = None, lon_col: str | None = None,
                 skip_bad_images: bool = False, num_threads: int | None = None, progress: bool = False) -> None:
        self.spec = os.fspath(spec) if isinstance(spec, (str, os.PathLike)) else \
            SHARD_SEPARATOR.join(os.fspath(s) for s in spec)
        shards = expand_shards(spec)
        index, records, stats = index_shards(shards, _JsonLocation(id_col, lat_col, lon_col), parts=("json",),
                                             check_images=skip_bad_images, skip_bad_images=skip_bad_images,
                                             num_threads=num_threads, progress=progress)
        lat = np.array([r[0] for r in records], dtype=np.float64)
        lon = np.array([r[1] for r in records], dtype=np.float64)
        lat_key, lon_key = records[0][3], records[0][4]
        _check_ranges(lat, lon, lambda k: f"{index.shards[int(index.shard[k])]}, member {index.keys[k]}.json",
                      lat_key, lon_key, what="key")
        ids = [r[2] for r in records]
        self.columns = {"id": records[0][5] or "sample key", "lat": lat_key, "lon": lon_key}
        self._set(index, lat, lon, ids if ids != list(index.keys) else None, transform, stats)

    def _set(self, index: ShardIndex, lat: np.ndarray, lon: np.ndarray, ids: list[str] | None,
             transform: Callable[[Image.Image], Any] | None, stats: dict[str, int]) -> None:
        self.index, self.lat, self.lon, self._ids, self.transform = index, lat, lon, ids, transform
        self.files = ShardFiles(index)
        self.stats = dict(stats, images=len(index))

    def select(self, positions: Sequence[int] | np.ndarray, *, transform: Any = _SAME,
               keep_counts: bool = True) -> GeotaggedShards:
        """The samples at ``positions`` (sorted into file order), with ``transform`` (default: this one's);
        ``keep_counts=False`` drops the counts of skipped samples (the second part of a split)."""
        idx = np.unique(np.asarray(positions, dtype=np.int64))
        if idx.size and not 0 <= idx[0] <= idx[-1] < len(self):
            raise IndexError(f"positions out of range for {len(self)} samples")
        out = GeotaggedShards.__new__(GeotaggedShards)
        out.spec, out.columns = self.spec, dict(self.columns)
        stats = dict(self.stats) if keep_counts else {k: 0 for k in self.stats}
        out._set(self.index.select(idx), self.lat[idx], self.lon[idx],
                 [self._ids[i] for i in idx.tolist()] if self._ids is not None else None,
                 self.transform if transform is _SAME else transform, stats)
        return out

    def with_transform(self, transform: Callable[[Image.Image], Any] | None) -> GeotaggedShards:
        return self.select(np.arange(len(self)), transform=transform)

    def stream(self, *, shuffle_buffer: int = 1000, seed: int = 0) -> ShardStream:
        """This set as a training stream (``datasets.shards.ShardStream``)."""
        return ShardStream(self, shuffle_buffer=shuffle_buffer, seed=seed)

    @property
    def ids(self) -> list[str]:
        """Image ids, aligned with ``index``."""
        return list(self._ids) if self._ids is not None else self.index.keys.tolist()

    @property
    def shard_of(self) -> np.ndarray:
        return self.index.shard

    @property
    def path(self) -> str:
        return self.spec

    def raw(self, i: int) -> bytes:
        """Sample ``i``'s image bytes, read from its shard."""
        return self.files.read(i)

    def from_raw(self, i: int, data: bytes) -> dict[str, Any]:
        """Sample ``i`` from its image bytes (decoding errors name the shard and member)."""
        image = apply_transform(load_rgb_image(data, name=self.index.member(i)), self.transform)
        return {"image": image, "target": torch.tensor([self.lat[i], self.lon[i]], dtype=torch.float32),
                "index": int(i)}

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        i = int(index) % n
        return self.from_raw(i, self.raw(i))


def read_locations(root: str | os.PathLike, ann: str | os.PathLike | None = None, *, exif_gps: bool = False,
                   id_col: str | None = None, lat_col: str | None = None, lon_col: str | None = None,
                   skip_bad_images: bool = False, progress: bool = False) -> GeoTable | GeotaggedShards:
    """Where the photos of ``root`` were taken, from whichever source the flags name.

    * ``root`` names tar shards (``*.tar``, braces, ``::``): :class:`GeotaggedShards` (JSON only);
    * ``exif_gps``: the photos' EXIF (:func:`read_exif_gps_table`);
    * else the geotagged CSV ``ann`` (:func:`read_geotagged_csv`).

    Both results offer ``lat``, ``lon``, ``len()`` and ``select``; :func:`geotagged_dataset` turns them into
    the image dataset.
    """
    root_s = os.fspath(root)
    if is_shard_spec(root_s):
        if ann is not None:
            raise ValueError(f"--ann {ann}: tar shards carry each photo's location in its .json; drop --ann")
        if exif_gps:
            raise ValueError("--exif-gps reads image folders; tar shards carry their locations in each sample's .json")
        return GeotaggedShards(root_s, id_col=id_col, lat_col=lat_col, lon_col=lon_col,
                               skip_bad_images=skip_bad_images, progress=progress)
    if exif_gps:
        if ann is not None:
            raise ValueError(f"--exif-gps reads the locations from the photos' EXIF; drop --ann {ann} (or drop "
                             "--exif-gps to use the CSV)")
        return read_exif_gps_table(root_s, skip_bad_images=skip_bad_images, progress=progress)
    if ann is None:
        raise ValueError(f"no locations for the photos under {root_s}: give a geotagged CSV (--ann), --exif-gps "
                         "to read the photos' EXIF GPS, or tar shards ('shards/{000000..000099}.tar')")
    return read_geotagged_csv(ann, id_col=id_col, lat_col=lat_col, lon_col=lon_col)


def geotagged_dataset(locations: GeoTable | GeotaggedShards, root: str | os.PathLike,
                      transform: Callable[[Image.Image], Any] | None = None, *, image_suffix: str = "",
                      skip_bad_images: bool = False) -> GeotaggedImages | GeotaggedShards:
    """The image dataset over :func:`read_locations`' result (the shards themselves, or ``root``'s files)."""
    if isinstance(locations, GeotaggedShards):
        return locations.with_transform(transform)
    return GeotaggedImages(locations, root, transform, image_suffix=image_suffix, skip_bad_images=skip_bad_images)


def _sample_key(name: str, used: set[str]) -> str:
    stem = name.rsplit(".", 1)[0] if "." in os.path.basename(name) else name
    parts = [p for p in stem.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    parts[-1] = parts[-1].replace(".", "_").lstrip("_") or "photo"
    key = "/".join(parts)
    base, n = key, 1
    while key in used:
        n += 1
        key = f"{base}_{n}"
    used.add(key)
    return key


def write_geotagged_shards(locations: GeoTable | str | os.PathLike, root: str | os.PathLike,
                           out_dir: str | os.PathLike, *, shard_size: int = 1000, image_suffix: str = "") -> list[Path]:
    """Write photos listed in a geotagged CSV (or a :class:`GeoTable`) as webdataset shards.

    Each sample is the image file's bytes as they are (``<key>.jpg``, ``.png``, ...) and ``<key>.json`` with
    ``{"id", "lat", "lon"}`` (floats written exactly); the key is the id without its extension (dots in the
    file name become ``_``; a repeated key gets ``_2``, ``_3``). Returns the shard paths
    (``datasets.shards.shard_pattern`` gives the ``--data-root`` pattern).

    Raises:
        FileNotFoundError: a listed image is missing (naming the CSV line); ValueError: a file without an
            image extension.
    """
    table = locations if isinstance(locations, GeoTable) else read_geotagged_csv(locations)
    root = os.fspath(root)

    def samples() -> Iterator[tuple[str, dict[str, bytes]]]:
        used: set[str] = set()
        for k, image in enumerate(table.ids):
            name = image + image_suffix
            path = os.path.join(root, name)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{table.where(k)}: image {image!r} not found at {path}")
            part = os.path.basename(name).rsplit(".", 1)[-1].lower() if "." in os.path.basename(name) else ""
            if part not in IMAGE_PARTS:
                raise ValueError(f"{table.where(k)}: {name!r} has no image extension ({', '.join(IMAGE_PARTS)}); "
                                 "pass image_suffix (--image-suffix) if the files are <id>.jpg")
            with open(path, "rb") as f:
                data = f.read()
            meta = {"id": image, "lat": float(table.lat[k]), "lon": float(table.lon[k])}
            yield _sample_key(name, used), {part: data, "json": json.dumps(meta).encode()}

    return write_shards(out_dir, samples(), shard_size=shard_size)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m datasets.geotagged``: a geotagged CSV and its image folder into webdataset tar shards."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m datasets.geotagged",
                                description="Write the photos of a geotagged CSV as webdataset tar shards "
                                            "(image + .json with id, lat, lon).")
    p.add_argument("--data-root", required=True, help="the image folder the CSV's ids are relative to")
    p.add_argument("--ann", required=True, help="geotagged CSV (id, lat, lon)")
    p.add_argument("--out", required=True, help="folder for 000000.tar, 000001.tar, ...")
    p.add_argument("--shard-size", type=int, default=1000, help="photos per shard (default 1000)")
    p.add_argument("--id-col", help="image id column (default: found by name)")
    p.add_argument("--lat-col", help="latitude column")
    p.add_argument("--lon-col", help="longitude column")
    p.add_argument("--image-suffix", default="", help="appended to each id to make the file name, e.g. .jpg")
    p.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    args = p.parse_args(argv)
    table = read_geotagged_csv(args.ann, id_col=args.id_col, lat_col=args.lat_col, lon_col=args.lon_col)
    paths = write_geotagged_shards(table, args.data_root, args.out, shard_size=args.shard_size,
                                   image_suffix=args.image_suffix)
    print(f"{len(table)} photos of {args.ann} in {len(paths)} shard(s): --data-root '{shard_pattern(paths)}'")
    return 0


if __name__ == "__main__":
    run_cli(main)
