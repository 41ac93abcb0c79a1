"""Geotagged CSVs (header spellings, value checks, swapped columns), the image dataset over them, and the
great-circle metrics against published distances and geopy."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.geotagged import GeoTable, GeotaggedImages, read_geotagged_csv, write_geotagged_csv
from eval.geolocation import accuracy_at_km, geolocation_metrics, geoscore, haversine_km, median_km


def _write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------
# header detection


@pytest.mark.parametrize("header, lat_first", [
    ("IMG_ID,LAT,LON", True),                                    # MP-16 / YFCC4k
    ("IMG_ID,AUTHOR,LAT,LON,S3_Label", True),                    # Im2GPS3k (correct order)
    ("id,latitude,longitude,country,region", True),              # OSV-5M
    ("image,lng,lat", False),
    ("photo,Longitude,Latitude", False),
    ("img_id,lon,lat", False),
])
def test_header_spellings_are_detected(tmp_path, header, lat_first):
    cols = header.split(",")
    rows = []
    for k, (la, lo) in enumerate([(48.8566, 2.3522), (-33.8688, 151.2093)]):
        values = {"id": f"p{k}.jpg", "lat": str(la), "lon": str(lo)}
        row = []
        for c in cols:
            key = c.lower()
            if key in ("img_id", "id", "image", "photo"):
                row.append(values["id"])
            elif key in ("lat", "latitude"):
                row.append(values["lat"])
            elif key in ("lon", "lng", "longitude"):
                row.append(values["lon"])
            else:
                row.append("x")
        rows.append(",".join(row))
    path = _write(tmp_path / "a.csv", header + "\n" + "\n".join(rows) + "\n")
    table = read_geotagged_csv(path)
    assert table.ids == ["p0.jpg", "p1.jpg"]
    np.testing.assert_allclose(table.lat, [48.8566, -33.8688])
    np.testing.assert_allclose(table.lon, [2.3522, 151.2093])
    assert table.lines.tolist() == [2, 3]


def test_explicit_columns_and_tabs(tmp_path):
    path = _write(tmp_path / "a.tsv", "file\ty\tx\nq.jpg\t10.5\t20.25\n")
    table = read_geotagged_csv(path, id_col="file", lat_col="Y", lon_col="x")
    assert table.ids == ["q.jpg"] and table.lat[0] == 10.5 and table.lon[0] == 20.25
    with pytest.raises(ValueError, match="no column 'z' \\(--lat-col\\)"):
        read_geotagged_csv(path, id_col="file", lat_col="z", lon_col="x")


def test_unknown_header_and_headerless_file(tmp_path):
    with pytest.raises(ValueError, match="cannot find the latitude column.*--lat-col"):
        read_geotagged_csv(_write(tmp_path / "a.csv", "IMG_ID,north,east\na,1,2\n"))
    with pytest.raises(ValueError, match="no header row"):
        read_geotagged_csv(_write(tmp_path / "b.csv", "a.jpg,1.0,2.0\nb.jpg,3.0,4.0\n"))
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_geotagged_csv(tmp_path / "nope.csv")


# --------------------------------------------------------------------------------------------------
# values


@pytest.mark.parametrize("value, what", [("", "is empty"), ("abc", "is not a number"), ("nan", "not a finite"),
                                         ("inf", "not a finite")])
def test_bad_values_name_file_line_column_and_value(tmp_path, value, what):
    path = _write(tmp_path / "a.csv", f"IMG_ID,LAT,LON\na.jpg,1.0,2.0\nb.jpg,3.0,4.0\nc.jpg,{value},5.0\n")
    with pytest.raises(ValueError) as info:
        read_geotagged_csv(path)
    msg = str(info.value)
    assert "a.csv, line 4, column 'LAT'" in msg and repr(value) in msg and what in msg


def test_out_of_range_values(tmp_path):
    path = _write(tmp_path / "a.csv", "IMG_ID,LAT,LON\na.jpg,91.5,100.0\n")
    with pytest.raises(ValueError, match=r"line 2, column 'LAT': latitude 91.5 is outside \[-90, 90\]$"):
        read_geotagged_csv(path)
    path = _write(tmp_path / "b.csv", "IMG_ID,LAT,LON\na.jpg,1.0,2.0\nb.jpg,-10.0,-180.5\n")
    with pytest.raises(ValueError, match=r"line 3, column 'LON': longitude -180.5 is outside \[-180, 180\]"):
        read_geotagged_csv(path)
    # the boundaries themselves are fine
    ok = read_geotagged_csv(_write(tmp_path / "c.csv", "IMG_ID,LAT,LON\na,90,180\nb,-90,-180\n"))
    assert ok.lat.tolist() == [90.0, -90.0]


def test_swapped_columns_are_named(tmp_path):
    # One public Im2GPS3k CSV: the header says LON,LAT over values that are latitude then longitude.
    path = _write(tmp_path / "im2gps3k.csv",
                  "IMG_ID,AUTHOR,LON,LAT\n"
                  "a.jpg,x,48.8566,2.3522\n"
                  "b.jpg,y,-33.8688,151.2093\n"
                  "c.jpg,z,40.7128,-74.0060\n")
    with pytest.raises(ValueError) as info:
        read_geotagged_csv(path)
    msg = str(info.value)
    assert "line 3" in msg and "look swapped" in msg and "--lat-col LON --lon-col LAT" in msg
    table = read_geotagged_csv(path, lat_col="LON", lon_col="LAT")
    np.testing.assert_allclose(table.lat, [48.8566, -33.8688, 40.7128])


def test_write_and_read_back(tmp_path):
    lat, lon = np.array([1.0 / 3.0, -45.0]), np.array([179.999999, -0.5])
    write_geotagged_csv(tmp_path / "g.csv", ["a/1.jpg", "b/2.jpg"], lat, lon)
    table = read_geotagged_csv(tmp_path / "g.csv")
    assert table.columns == {"id": "IMG_ID", "lat": "LAT", "lon": "LON"}
    np.testing.assert_array_equal(table.lat, lat)  # repr round-trips float64 exactly
    np.testing.assert_array_equal(table.lon, lon)
    assert isinstance(table.select([1]), GeoTable) and table.select([1]).ids == ["b/2.jpg"]


# --------------------------------------------------------------------------------------------------
# the image dataset


def _images(tmp_path, names):
    root = tmp_path / "imgs"
    for k, n in enumerate(names):
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 6), (k * 40, 0, 0)).save(root / n)
    return root


def test_dataset_serves_image_target_index(tmp_path):
    root = _images(tmp_path, ["a/0.png", "a/1.png"])
    ann = write_geotagged_csv(tmp_path / "g.csv", ["a/0.png", "a/1.png"], [10.0, -20.0], [30.0, -40.0])
    ds = GeotaggedImages(ann, root)
    assert len(ds) == 2
    s = ds[1]
    assert s["image"].shape == (3, 6, 8) and s["index"] == 1 and s["image"][0, 0, 0] == 40
    assert s["target"].dtype == torch.float32 and s["target"].tolist() == [-20.0, -40.0]


def test_missing_image_stops_naming_line_or_is_skipped(tmp_path):
    root = _images(tmp_path, ["0.png", "2.png"])
    ann = write_geotagged_csv(tmp_path / "g.csv", ["0.png", "1.png", "2.png"], [1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    with pytest.raises(FileNotFoundError, match=r"g.csv, line 3: image '1.png' not found at .*1.png"):
        GeotaggedImages(ann, root)
    ds = GeotaggedImages(ann, root, skip_bad_images=True)
    assert len(ds) == 2 and ds.stats["missing_images"] == 1 and ds.stats["bad_images_skipped"] == 1
    assert ds.ids == ["0.png", "2.png"] and ds.lat.tolist() == [1.0, 3.0] and ds.lines.tolist() == [2, 4]
    assert ds[1]["target"].tolist() == [3.0, 6.0] and ds[1]["index"] == 1


def test_ids_without_extension_get_a_hint_and_a_suffix(tmp_path):
    root = _images(tmp_path, ["123.jpg"])
    ann = _write(tmp_path / "osv.csv", "id,latitude,longitude\n123,1.5,2.5\n")
    with pytest.raises(FileNotFoundError, match="image_suffix='.jpg'"):
        GeotaggedImages(ann, root)
    assert GeotaggedImages(ann, root, image_suffix=".jpg")[0]["target"].tolist() == [1.5, 2.5]


# --------------------------------------------------------------------------------------------------
# great-circle metrics

# Great-circle distances between city centres on a 6371 km sphere, as commonly published (London-Paris
# 344 km, New York-Los Angeles 3936 km).
CITY_PAIRS = [
    ((51.5074, -0.1278), (48.8566, 2.3522), 343.6),
    ((40.7128, -74.0060), (34.0522, -118.2437), 3935.7),
]


def test_haversine_matches_published_city_distances():
    a = np.array([p[0] for p in CITY_PAIRS])
    b = np.array([p[1] for p in CITY_PAIRS])
    d = haversine_km(a[:, 0], a[:, 1], b[:, 0], b[:, 1])
    np.testing.assert_allclose(d, [p[2] for p in CITY_PAIRS], atol=0.5)
    # The classic worked example (Nashville BNA to Los Angeles LAX, R = 6372.8 km): 2887.2599506 km.
    assert haversine_km(36.12, -86.67, 33.94, -118.40, radius_km=6372.8) == pytest.approx(2887.2599506, abs=1e-6)
    # exact identities: a quarter meridian, half the equator, zero, symmetric
    assert haversine_km(0.0, 0.0, 90.0, 0.0) == pytest.approx(math.pi * 6371.0 / 2, rel=1e-12)
    assert haversine_km(0.0, 0.0, 0.0, 180.0) == pytest.approx(math.pi * 6371.0, rel=1e-12)
    assert haversine_km(10.0, 179.5, 10.0, -179.5) == pytest.approx(haversine_km(10.0, 0.0, 10.0, 1.0))
    assert haversine_km(12.0, 34.0, 12.0, 34.0) == 0.0


def test_haversine_against_geopy_and_torch():
    great_circle = pytest.importorskip("geopy.distance").great_circle
    rng = np.random.default_rng(0)
    p = np.c_[rng.uniform(-90, 90, (200, 2)), rng.uniform(-180, 180, (200, 2))][:, [0, 2, 1, 3]]
    ours = haversine_km(p[:, 0], p[:, 1], p[:, 2], p[:, 3])
    ref = [great_circle(tuple(r[:2]), tuple(r[2:]), radius=6371.0).km for r in p]
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-6)
    t = haversine_km(*(torch.tensor(p[:, k]) for k in range(4)))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64
    np.testing.assert_allclose(t.numpy(), ours, rtol=1e-12)


def test_accuracy_median_and_geoscore():
    d = np.array([0.0, 1.0, 1.0001, 25.0, 199.0, 750.0, 3000.0, 2500.0])
    acc = accuracy_at_km(d)
    assert acc == {1.0: 2 / 8, 25.0: 4 / 8, 200.0: 5 / 8, 750.0: 6 / 8, 2500.0: 7 / 8}  # d <= t counts
    assert median_km(d) == pytest.approx((25.0 + 199.0) / 2)
    assert geoscore([0.0]) == 5000.0 and geoscore([1492.7]) == pytest.approx(5000 / math.e)
    m = geolocation_metrics(torch.tensor(d))
    assert m["acc@1km"] == 0.25 and m["acc@2500km"] == 7 / 8 and m["count"] == 8
    with pytest.raises(ValueError, match="empty"):
        median_km([])
    with pytest.raises(ValueError, match=r"distances_km\[1\] = nan"):
        geoscore([1.0, float("nan")])
