"""Geotagged photos in webdataset tar shards (brace patterns, the JSON locations, bad samples, each sample
read once per epoch across data-loader workers and DDP ranks) and from EXIF GPS tags."""
from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import tarfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, TiffImagePlugin

from datasets.geotagged import (
    GeotaggedImages,
    GeotaggedShards,
    NoGPSError,
    read_exif_gps,
    read_exif_gps_table,
    read_geotagged_csv,
    write_geotagged_shards,
)
from datasets.images import ImageDecodeError, build_image_transform
from datasets.shards import (
    epoch_plan,
    expand_braces,
    expand_shards,
    is_shard_spec,
    shard_pattern,
    steps_per_epoch,
    write_shards,
)
from datasets.synthetic_geotagged import write_synthetic_geotagged
from tasks.distributed import DistInfo
from tasks.engine import build_train_loader

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN = 30  # 5 shards of 7, 7, 7, 7, 2


@pytest.fixture(scope="module")
def geo(tmp_path_factory):
    root = tmp_path_factory.mktemp("geo_shards")
    photos = write_synthetic_geotagged(root / "photos", num_train=N_TRAIN, num_val=8, image_size=16, seed=5)
    train = write_geotagged_shards(photos["train_ann"], photos["train_root"], root / "shards", shard_size=7)
    return photos, shard_pattern(train), root


def _jpeg(colour=(200, 30, 30), size=(12, 10), **save) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG", **save)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# shard lists


def test_brace_expansion():
    assert expand_braces("s/{000..003}.tar") == [f"s/00{k}.tar" for k in range(4)]
    assert expand_braces("{8..11}") == ["8", "9", "10", "11"]
    assert expand_braces("{08..11}") == ["08", "09", "10", "11"]  # padding as in bash
    assert expand_braces("{3..1}") == ["3", "2", "1"]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_braces("{x,y{1,2}}.tar") == ["x.tar", "y1.tar", "y2.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    for bad, what in (("{a}.tar", "neither a range"), ("a{b.tar", "never closed"), ("a}b", "closes no")):
        with pytest.raises(ValueError, match=what):
            expand_braces(bad)


def test_shard_lists(tmp_path):
    for k in range(4):
        (tmp_path / f"{k:06d}.tar").write_bytes(b"")
    d = str(tmp_path)
    four = [f"{d}/{k:06d}.tar" for k in range(4)]
    assert expand_shards(f"{d}/{{000000..000003}}.tar") == four
    assert expand_shards(f"{d}/*.tar") == four
    assert expand_shards(f"{d}/{{000002..000003}}.tar::{d}/000000.tar") == four[2:] + four[:1]
    assert expand_shards(four[1:3]) == four[1:3]
    assert shard_pattern(four) == f"{d}/{{000000..000003}}.tar" and shard_pattern(four[:1]) == four[0]
    assert shard_pattern([four[0], four[2]]) == f"{four[0]}::{four[2]}"
    assert is_shard_spec(f"{d}/{{000000..000003}}.tar") and is_shard_spec(f"{d}/a.tar::{d}/b.tar")
    assert not is_shard_spec(d) and not is_shard_spec("train.csv") and not is_shard_spec(None)
    with pytest.raises(FileNotFoundError, match="000004.tar"):
        expand_shards(f"{d}/{{000000..000004}}.tar")
    with pytest.raises(FileNotFoundError, match="no shard matches"):
        expand_shards(f"{d}/*.nope.tar")
    with pytest.raises(ValueError, match="listed twice"):
        expand_shards(f"{d}/000000.tar::{d}/*.tar")
    (tmp_path / "x.tar.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="compressed"):
        expand_shards(f"{d}/x.tar.gz")


# --------------------------------------------------------------------------------------------------
# reading


def test_shards_hold_the_csv_photos(geo):
    photos, spec, _ = geo
    ds = GeotaggedShards(spec)
    table = read_geotagged_csv(photos["train_ann"])
    assert len(ds) == N_TRAIN and np.unique(ds.shard_of).tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(ds.lat, table.lat)  # JSON floats round-trip exactly
    np.testing.assert_array_equal(ds.lon, table.lon)
    assert ds.ids == table.ids and ds.columns == {"id": "id", "lat": "lat", "lon": "lon"}
    folder = GeotaggedImages(table, photos["train_root"])
    for k in (0, 8, N_TRAIN - 1):  # the same bytes, so the same pixels
        a, b = ds[k], folder[k]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["target"], b["target"]) and a["index"] == k
    sub = ds.select([29, 3, 10], transform=build_image_transform(8))
    assert sub.ids == [table.ids[i] for i in (3, 10, 29)] and sub[2]["image"].shape == (3, 8, 8)
    with tarfile.open(expand_shards(spec)[0]) as tf:  # the webdataset layout: <key>.jpg, <key>.json
        assert tf.getnames()[:2] == ["train_000000.jpg", "train_000000.json"]


def test_json_keys_spellings_and_errors(tmp_path):
    def shard(name, metas):
        write_shards(tmp_path / name, ((f"p{k}", {"jpg": _jpeg(), "json": json.dumps(m).encode()})
                                       for k, m in enumerate(metas)), shard_size=10)
        return str(tmp_path / name / "000000.tar")

    ok = GeotaggedShards(shard("a", [{"Latitude": 48.5, "lng": 2.25}, {"Latitude": "-33.75", "lng": 151}]))
    assert ok.lat.tolist() == [48.5, -33.75] and ok.lon.tolist() == [2.25, 151.0] and ok.ids == ["p0", "p1"]
    xy = shard("b", [{"y": 10.0, "x": 20.0}])
    with pytest.raises(ValueError, match=r"b/000000.tar, member p0.json: cannot find the latitude.*--lat-col"):
        GeotaggedShards(xy)
    assert GeotaggedShards(xy, lat_col="Y", lon_col="x").lat.tolist() == [10.0]
    swapped = shard("c", [{"lat": 2.35, "lon": 48.85}, {"lat": 151.2, "lon": -33.87}])
    with pytest.raises(ValueError) as info:
        GeotaggedShards(swapped)
    msg = str(info.value)
    assert "c/000000.tar, member p1.json, key 'lat'" in msg and "look swapped" in msg
    assert "--lat-col lon --lon-col lat" in msg
    assert GeotaggedShards(swapped, lat_col="lon", lon_col="lat").lat.tolist() == [48.85, -33.87]
    with pytest.raises(ValueError, match=r"member p0.json, key 'lat': value 'north' is not a number"):
        GeotaggedShards(shard("d", [{"lat": "north", "lon": 1.0}]))
    with pytest.raises(ValueError, match=r"member p0.json, key 'lon': longitude 190.0 is outside"):
        GeotaggedShards(shard("e", [{"lat": 1.0, "lon": 190.0}]))
    write_shards(tmp_path / "f", [("p0", {"jpg": _jpeg()})], shard_size=1)
    with pytest.raises(ValueError, match=r"f/000000.tar: sample 'p0' has no .json"):
        GeotaggedShards(str(tmp_path / "f" / "000000.tar"))


def test_bad_samples_are_named_or_skipped_and_counted(tmp_path):
    meta = json.dumps({"lat": 1.0, "lon": 2.0}).encode()
    write_shards(tmp_path / "c", [("p0", {"jpg": _jpeg(), "json": meta}), ("p1", {"jpg": b"not a jpeg", "json": meta}),
                                  ("p2", {"jpg": _jpeg(), "json": meta})], shard_size=3)
    corrupt = str(tmp_path / "c" / "000000.tar")
    ds = GeotaggedShards(corrupt)  # indexing reads headers and JSON only
    assert len(ds) == 3
    with pytest.raises(ImageDecodeError, match=r"c/000000.tar:p1.jpg"):
        ds[1]
    loader = build_train_loader(ds.stream(shuffle_buffer=0), 3, num_workers=0)
    with pytest.raises(ImageDecodeError, match=r"c/000000.tar:p1.jpg"):
        list(loader)
    skipped = GeotaggedShards(corrupt, skip_bad_images=True)
    assert len(skipped) == 2 and skipped.ids == ["p0", "p2"]
    assert skipped.stats == {"images": 2, "missing_images": 0, "corrupt_images": 1, "bad_images_skipped": 1}

    write_shards(tmp_path / "m", [("p0", {"json": meta}), ("p1", {"png": _jpeg(), "json": meta})], shard_size=2)
    missing = str(tmp_path / "m" / "000000.tar")
    with pytest.raises(FileNotFoundError, match=r"m/000000.tar: sample 'p0' has no image member.*skip-bad-images"):
        GeotaggedShards(missing)
    kept = GeotaggedShards(missing, skip_bad_images=True)
    assert kept.ids == ["p1"] and kept.stats["missing_images"] == 1 and kept.stats["bad_images_skipped"] == 1


# --------------------------------------------------------------------------------------------------
# epochs


def test_epoch_plan_reads_each_sample_once_with_equal_steps():
    rng = np.random.default_rng(0)
    for trial in range(40):
        sizes = rng.integers(1, 12, rng.integers(1, 7))
        shard_of = np.repeat(np.arange(sizes.size), sizes)
        n = shard_of.size
        world, workers, batch = int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(1, 6))
        drop_last = bool(trial % 3 == 0)
        try:
            steps = steps_per_epoch(n, world, batch, drop_last)
        except ValueError:
            assert n < world or (drop_last and n // world < batch)
            continue
        orders = []
        for epoch in (0, 1):
            seen = []
            for r in range(world):
                rank_batches = []
                for w in range(workers):
                    pos, bsizes = epoch_plan(shard_of, epoch=epoch, seed=3, rank=r, world_size=world,
                                             batch_size=batch, drop_last=drop_last, worker=w, num_workers=workers)
                    assert pos.size == sum(bsizes) and all(1 <= b <= batch for b in bsizes)
                    if drop_last:
                        assert set(bsizes) <= {batch}
                    for s in np.unique(shard_of[pos]):  # each shard's samples in file order
                        assert np.all(np.diff(pos[shard_of[pos] == s]) > 0)
                    rank_batches += bsizes
                    seen += pos.tolist()
                assert len(rank_batches) == steps, (trial, r)  # the same step count on every rank
            assert len(seen) == len(set(seen))  # nothing read twice
            if not drop_last:
                assert sorted(seen) == list(range(n))  # everything read once
            else:
                assert len(seen) == world * steps * batch
            orders.append(seen)
        if sizes.size > 3 and not drop_last and world == workers == 1:
            assert orders[0] != orders[1]  # another shard order in another epoch


def test_loader_reads_each_sample_once_per_epoch_with_two_workers(geo):
    _, spec, _ = geo
    stream = GeotaggedShards(spec, build_image_transform(8, mean=None, std=None)).stream(shuffle_buffer=4, seed=1)
    loader = build_train_loader(stream, 4, num_workers=2, seed=1)
    assert len(loader) == steps_per_epoch(N_TRAIN, 1, 4) == 8
    epochs = []
    for epoch in (0, 1, 0):
        loader.dataset.set_epoch(epoch)
        batches = [b["index"].tolist() for b in loader]
        assert len(batches) == len(loader) and all(1 <= len(b) <= 4 for b in batches)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(N_TRAIN))
        epochs.append(flat)
    assert epochs[0] != epochs[1] and epochs[0] == epochs[2]  # reshuffled per epoch, repeatable (resume)
    # two ranks (in one process, as DDP would place them): disjoint halves, the same number of steps
    for workers in (0, 2):
        per_rank = [[b["index"].tolist() for b in build_train_loader(stream, 4, num_workers=workers, seed=1,
                                                                     dist=DistInfo(rank=r, world_size=2))]
                    for r in (0, 1)]
        assert len(per_rank[0]) == len(per_rank[1]) == steps_per_epoch(N_TRAIN, 2, 4)
        flat = [i for rank in per_rank for b in rank for i in b]
        assert sorted(flat) == list(range(N_TRAIN))


def test_stream_order_buffer_and_engine_contract(geo):
    from torch.utils.data import IterableDataset

    from datasets.shards import ShardStream

    _, spec, _ = geo
    ds = GeotaggedShards(spec)
    plain = ShardStream(ds, shuffle_buffer=0, seed=2)
    want, _ = epoch_plan(ds.shard_of, epoch=0, seed=2)
    assert [s["index"] for s in plain] == want.tolist()  # shard order, each shard front to back
    mixed = [s["index"] for s in ShardStream(ds, shuffle_buffer=5, seed=2)]
    assert sorted(mixed) == sorted(want.tolist()) and mixed != want.tolist()
    with pytest.raises(ValueError, match="composes its own batches"):
        build_train_loader(plain, None, batch_sampler=[[0]])

    class Bare(IterableDataset):
        def __iter__(self):
            yield from range(3)

    with pytest.raises(TypeError, match="no batches"):
        build_train_loader(Bare(), 2)
    with pytest.raises(TypeError, match="has no 'shard_of'"):
        ShardStream(read_geotagged_csv)


def test_each_sample_once_per_epoch_under_two_process_ddp(geo, tmp_path):
    _, spec, _ = geo
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           str(ROOT / "tests" / "_ddp_shards_script.py"), "--shards", spec, "--output-dir", str(tmp_path / "out"),
           "--record-dir", str(tmp_path / "rec"), "--epochs", "2", "--workers", "2", "--batch-size", "4"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "rec" / f"rank{r}.json").read_text()) for r in (0, 1)]
    steps = steps_per_epoch(N_TRAIN, 2, 4)  # 15 samples per rank, 4 batches
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["steps"] for r in ranks] == [2 * steps, 2 * steps] and [r["announced"] for r in ranks] == [steps] * 2
    for epoch in (0, 1):
        a, b = ([i for batch in r["batches"][epoch * steps:(epoch + 1) * steps] for i in batch] for r in ranks)
        assert not set(a) & set(b) and sorted(a + b) == list(range(N_TRAIN)), epoch
    assert ranks[0]["batches"][:steps] != ranks[0]["batches"][steps:]  # a new order in epoch 2


# --------------------------------------------------------------------------------------------------
# EXIF GPS


def _gps_photo(path, lat_dms, lat_ref, lon_dms, lon_ref, fmt="JPEG"):
    r = TiffImagePlugin.IFDRational
    exif = Image.Exif()
    gps = {}
    if lat_dms is not None:
        gps.update({1: lat_ref, 2: tuple(r(*v) for v in lat_dms)})
    if lon_dms is not None:
        gps.update({3: lon_ref, 4: tuple(r(*v) for v in lon_dms)})
    exif[0x8825] = gps
    Image.new("RGB", (16, 12), (90, 120, 30)).save(path, format=fmt, exif=exif.tobytes())


def _exact(dms, negative):
    value = sum(Fraction(n, d) / 60 ** k for k, (n, d) in enumerate(dms))
    return float(-value if negative else value)


def test_exif_gps_is_parsed_exactly(tmp_path):
    sydney = ([(33, 1), (52, 1), (1013, 100)], [(151, 1), (12, 1), (3348, 100)])
    _gps_photo(tmp_path / "sydney.jpg", sydney[0], "S", sydney[1], "E")
    lat, lon = read_exif_gps(tmp_path / "sydney.jpg")
    assert lat == _exact(sydney[0], True) and lon == _exact(sydney[1], False)
    assert lat == pytest.approx(-33.86948, abs=1e-5) and lon == pytest.approx(151.2093, abs=1e-4)
    rio = ([(2290683, 100000)], [(43, 1), (1035, 100)])  # decimal degrees / degrees + decimal minutes
    _gps_photo(tmp_path / "rio.png", rio[0], "S", rio[1], "W", fmt="PNG")
    assert read_exif_gps(tmp_path / "rio.png") == (_exact(rio[0], True), _exact(rio[1], True))
    _gps_photo(tmp_path / "sydney.tif", sydney[0], "S", sydney[1], "E", fmt="TIFF")  # IFDs read while open
    assert read_exif_gps(tmp_path / "sydney.tif") == (lat, lon)
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.jpg")
    with pytest.raises(NoGPSError, match=r"plain.jpg: no GPS position"):
        read_exif_gps(tmp_path / "plain.jpg")
    _gps_photo(tmp_path / "half.jpg", sydney[0], "S", None, None)
    with pytest.raises(NoGPSError, match=r"half.jpg: the EXIF GPS tags have no GPSLongitude"):
        read_exif_gps(tmp_path / "half.jpg")
    _gps_photo(tmp_path / "ref.jpg", sydney[0], "Q", sydney[1], "E")
    with pytest.raises(NoGPSError, match=r"ref.jpg: EXIF GPSLatitudeRef is 'Q', expected N or S"):
        read_exif_gps(tmp_path / "ref.jpg")

    with pytest.raises(ValueError, match=r"(half|plain|ref).jpg.*\(3 of the 6 photos.*--skip-bad-images"):
        read_exif_gps_table(tmp_path)
    table = read_exif_gps_table(tmp_path, skip_bad_images=True)
    assert table.ids == ["rio.png", "sydney.jpg", "sydney.tif"] and table.counts == {"no_gps_images": 3}
    assert table.lat.tolist() == [_exact(rio[0], True), lat, lat]
    ds = GeotaggedImages(table, tmp_path)
    assert ds.stats["no_gps_images"] == 3 and ds.stats["bad_images_skipped"] == 3 and len(ds) == 3


# --------------------------------------------------------------------------------------------------
# the entry points


def _with_exif(photos_root, ann, out):
    """Copies of the CSV's photos carrying their location in EXIF GPS tags (decimal degrees, 1e-7 steps)."""
    r = TiffImagePlugin.IFDRational
    table = read_geotagged_csv(ann)
    out.mkdir()
    want = []
    for name, la, lo in zip(table.ids, table.lat, table.lon):
        exif = Image.Exif()
        exif[0x8825] = {1: "N" if la >= 0 else "S", 2: (r(round(abs(la) * 1e7), 10**7),),
                        3: "E" if lo >= 0 else "W", 4: (r(round(abs(lo) * 1e7), 10**7),)}
        Image.open(os.path.join(photos_root, name)).save(out / name, exif=exif, quality=95)
        want.append(tuple(math.copysign(float(Fraction(round(abs(v) * 1e7), 10**7)), v) for v in (la, lo)))
    return want


SMALL = ["--alpha", "0.25", "--resolution", "32", "--epochs", "1", "--batch-size", "8", "--workers", "0",
         "--device", "cpu", "--t-min", "1", "--t-max", "10"]


def test_train_evaluate_partition_from_shards_and_exif(geo, tmp_path):
    from tasks.geolocation import evaluate as geo_eval
    from tasks.geolocation import partition as geo_partition
    from tasks.geolocation import train as geo_train
    from tasks.geolocation.partition import build_partition, read_cells_csv

    photos, spec, root = geo
    val_spec = shard_pattern(write_geotagged_shards(photos["val_ann"], photos["val_root"], tmp_path / "val",
                                                    shard_size=3))
    out = tmp_path / "run"
    summary = geo_train.main(["--data-root", spec, "--val-data-root", val_spec, "--output-dir", str(out), *SMALL])
    saved = json.loads((out / "summary.json").read_text())
    assert saved["metrics"]["count"] == 8 and saved["partition"]["train_photos"] == N_TRAIN
    assert summary["epochs"] == 1 and (out / "best.pt").is_file()
    # the partition came from the shards' JSON: the same cells as from the CSV
    table = read_geotagged_csv(photos["train_ann"])
    cells = read_cells_csv(out / "cells.csv")
    assert cells.tokens == build_partition(table.lat, table.lon, t_min=1, t_max=10).tokens
    geo_partition.main(["--data-root", spec, "--t-min", "1", "--t-max", "10", "--out", str(tmp_path / "c.csv")])
    assert read_cells_csv(tmp_path / "c.csv").tokens == cells.tokens

    on_shards = geo_eval.main(["--checkpoint", str(out / "best.pt"), "--data-root", val_spec, "--out-dir",
                               str(tmp_path / "e1"), "--device", "cpu"])
    assert on_shards["metrics"]["geoscore"] == pytest.approx(saved["metrics"]["geoscore"])  # same photos, same path
    ids = [line.split(",")[0] for line in (tmp_path / "e1" / "predictions.csv").read_text().splitlines()[1:]]
    assert ids == read_geotagged_csv(photos["val_ann"]).ids

    want = _with_exif(photos["val_root"], photos["val_ann"], tmp_path / "exif_val")
    on_exif = geo_eval.main(["--checkpoint", str(out / "best.pt"), "--data-root", str(tmp_path / "exif_val"),
                             "--exif-gps", "--out-dir", str(tmp_path / "e2"), "--device", "cpu"])
    rows = [line.split(",") for line in (tmp_path / "e2" / "predictions.csv").read_text().splitlines()[1:]]
    assert on_exif["metrics"]["count"] == 8
    assert np.allclose([(float(r[1]), float(r[2])) for r in rows], want, rtol=0, atol=1e-6)

    _with_exif(photos["train_root"], photos["train_ann"], tmp_path / "exif_train")
    held = geo_train.main(["--data-root", str(tmp_path / "exif_train"), "--exif-gps", "--output-dir",
                           str(tmp_path / "run_exif"), *SMALL])
    assert held["partition"]["train_photos"] == N_TRAIN - 3 and held["metrics"]["count"] == 3
    with pytest.raises(ValueError, match="drop --ann"):
        geo_train.main(["--data-root", spec, "--ann", photos["train_ann"], *SMALL])


def test_column_flags_swapped_and_missing_rows_in_train_and_evaluate(geo, tmp_path):
    """--id-col --lat-col --lon-col --skip-bad-images in both commands: the Im2GPS3k-style swap is named, the
    flags fix it, a row naming a missing photo stops the run or is skipped and counted."""
    from tasks.geolocation import evaluate as geo_eval
    from tasks.geolocation import train as geo_train

    photos, _, _ = geo

    def swapped(ann, name):  # header PIC,AUTHOR,LON,LAT over values that are latitude then longitude
        t = read_geotagged_csv(ann)
        rows = [f"{i},x,{a!r},{b!r}" for i, a, b in zip(t.ids, t.lat.tolist(), t.lon.tolist())]
        rows.insert(2, "gone.jpg,x,10.0,20.0")
        path = tmp_path / name
        path.write_text("PIC,AUTHOR,LON,LAT\n" + "\n".join(rows) + "\n")
        return str(path)

    train_csv, val_csv = swapped(photos["train_ann"], "train.csv"), swapped(photos["val_ann"], "val.csv")
    base = ["--data-root", photos["train_root"], "--ann", train_csv, "--val-data-root", photos["val_root"],
            "--val-ann", val_csv, "--output-dir", str(tmp_path / "run"), *SMALL]
    with pytest.raises(ValueError, match="image id column.*--id-col"):
        geo_train.main(base)
    with pytest.raises(ValueError, match=r"look swapped.*--lat-col LON --lon-col LAT"):
        geo_train.main([*base, "--id-col", "PIC"])
    fixed = [*base, "--id-col", "PIC", "--lat-col", "LON", "--lon-col", "LAT"]
    with pytest.raises(FileNotFoundError, match=r"train.csv, line 4: image 'gone.jpg' not found"):
        geo_train.main(fixed)
    summary = geo_train.main([*fixed, "--skip-bad-images"])
    assert summary["bad_images_skipped"] == 2 and summary["metrics"]["count"] == 8  # one per CSV

    ev = ["--checkpoint", str(tmp_path / "run" / "best.pt"), "--data-root", photos["val_root"], "--ann", val_csv,
          "--device", "cpu", "--id-col", "PIC"]
    with pytest.raises(ValueError, match=r"look swapped.*--lat-col LON --lon-col LAT"):
        geo_eval.main(ev)
    with pytest.raises(FileNotFoundError, match=r"val.csv, line 4: image 'gone.jpg' not found"):
        geo_eval.main([*ev, "--lat-col", "LON", "--lon-col", "LAT"])
    result = geo_eval.main([*ev, "--lat-col", "LON", "--lon-col", "LAT", "--skip-bad-images"])
    assert result["bad_images_skipped"] == 1 and result["metrics"]["count"] == 8
