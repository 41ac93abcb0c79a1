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
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from datasets.images import ImageFiles, is_image_file
from datasets.io import atomic_write_text

__all__ = [
    "GeoTable",
    "GeotaggedImages",
    "ID_COLUMNS",
    "LAT_COLUMNS",
    "LON_COLUMNS",
    "read_geotagged_csv",
    "write_geotagged_csv",
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
        lines: int64 [N], the 1-based line of each row in the file (for messages).
        columns: the header names used, ``{"id": ..., "lat": ..., "lon": ...}``.
    """

    path: str
    ids: list[str]
    lat: np.ndarray
    lon: np.ndarray
    lines: np.ndarray
    columns: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, indices: Sequence[int] | np.ndarray) -> GeoTable:
        """The rows at ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        return GeoTable(self.path, [self.ids[i] for i in idx.tolist()], self.lat[idx], self.lon[idx],
                        self.lines[idx], dict(self.columns))


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
    _check_ranges(lat, lon, line_arr, path, header[la], header[lo])
    return GeoTable(path, ids, lat, lon, line_arr, {"id": header[ci], "lat": header[la], "lon": header[lo]})


def _check_ranges(lat: np.ndarray, lon: np.ndarray, lines: np.ndarray, path: str, lat_name: str,
                  lon_name: str) -> None:
    bad_lat = np.abs(lat) > 90.0
    if bad_lat.any():
        k = int(np.flatnonzero(bad_lat)[0])
        where = f"{path}, line {int(lines[k])}, column {lat_name!r}: latitude {float(lat[k])!r} is outside [-90, 90]"
        if np.abs(lon).max() <= 90.0:
            raise ValueError(
                f"{where}, while every value of the longitude column {lon_name!r} fits within [-90, 90]: the "
                f"latitude and longitude columns look swapped ({int(bad_lat.sum())} rows); if the values are "
                f"latitude in {lon_name!r} and longitude in {lat_name!r}, pass --lat-col {lon_name} "
                f"--lon-col {lat_name} (lat_col={lon_name!r}, lon_col={lat_name!r})")
        raise ValueError(where)
    bad_lon = np.abs(lon) > 180.0
    if bad_lon.any():
        k = int(np.flatnonzero(bad_lon)[0])
        raise ValueError(f"{path}, line {int(lines[k])}, column {lon_name!r}: longitude {float(lon[k])!r} is outside "
                         "[-180, 180]")


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
        self.skipped = self.images.skipped

    def _missing_error(self, names: list[str], image_suffix: str) -> FileNotFoundError:
        missing = [k for k, n in enumerate(names) if not os.path.isfile(os.path.join(self.root, n))]
        k = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        hint = ""
        if not image_suffix and not is_image_file(names[k]):
            hint = "; the id has no image extension: pass image_suffix='.jpg' if the files are <id>.jpg"
        return FileNotFoundError(
            f"{self.table.path}, line {int(self.table.lines[k])}: image {self.table.ids[k]!r} not found at "
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
