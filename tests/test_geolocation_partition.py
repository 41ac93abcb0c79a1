"""PlaNet's adaptive S2 partition: the vectorised S2 ids against the s2cell library, the partition's
invariants, cells.csv and its reader's errors, and the command."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import s2cell

from datasets.geotagged import write_geotagged_csv
from tasks.geolocation import s2
from tasks.geolocation.partition import (Partition, build_partition, build_partitions, main, partition_paths,
                                         read_cells_csv, spherical_mean, write_cells_csv)


def _random_points(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return np.degrees(np.arcsin(rng.uniform(-1, 1, n))), rng.uniform(-180, 180, n)


def _clustered_points(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Photos around a few dozen 'cities' of very different sizes, plus a sparse background."""
    rng = np.random.default_rng(seed)
    centres = np.c_[rng.uniform(-60, 70, 40), rng.uniform(-180, 180, 40)]
    weights = rng.pareto(1.0, 40) + 0.05
    c = rng.choice(40, n, p=weights / weights.sum())
    spread = rng.choice([0.05, 0.5, 3.0], n)
    lat = np.clip(centres[c, 0] + rng.normal(0, 1, n) * spread, -90, 90)
    lon = (centres[c, 1] + rng.normal(0, 1, n) * spread + 180) % 360 - 180
    bg_lat, bg_lon = _random_points(n // 20, seed + 1)
    return np.r_[lat, bg_lat], np.r_[lon, bg_lon]


# --------------------------------------------------------------------------------------------------
# S2 ids against the library


def test_leaf_ids_parents_levels_tokens_match_s2cell():
    lat, lon = _random_points(3000, seed=3)
    # poles, the antimeridian both ways, the equator, face centres and edges
    lat = np.r_[lat, 90, -90, 0, 0, 0, 45, -45, 0, 89.9999999, -0.0]
    lon = np.r_[lon, 0, 0, 180, -180, 90, 45, -135, -90, 10, 0]
    ids = s2.leaf_cell_ids(lat, lon)
    ref = np.array([s2cell.lat_lon_to_cell_id(a, b, 30) for a, b in zip(lat.tolist(), lon.tolist())],
                   dtype=np.uint64)
    np.testing.assert_array_equal(ids, ref)
    for level in (0, 1, 2, 5, 11, 17, 23, 29, 30):
        par = s2.parent_cell_ids(ids[:500], level)
        np.testing.assert_array_equal(par, [s2cell.lat_lon_to_cell_id(a, b, level)
                                            for a, b in zip(lat[:500].tolist(), lon[:500].tolist())])
        assert (s2.cell_levels(par) == level).all()
        assert s2.cell_tokens(par[:50]) == [s2cell.cell_id_to_token(int(c)) for c in par[:50]]
        assert all(s2cell.token_to_level(t) == level for t in s2.cell_tokens(par[:50]))
        first, last = s2.cell_id_ranges(par[:50])
        assert (first <= ids[:50]).all() and (ids[:50] <= last).all()


def test_face_ties_follow_the_cxx_library():
    # The cube corner x = y = z: S2's C++ library gives the tie to the last axis (face 2); this id is what
    # s2geometry 0.14 returns (s2cell breaks the tie the other way).
    assert int(s2.leaf_cell_ids([35.264389682754654], [45.0])[0]) == 4611686018427387905


def test_tokens_parse_and_bad_tokens_are_rejected():
    assert s2.token_to_cell_id("89c25") == s2cell.token_to_cell_id("89c25")
    for bad in ("", "X", "zz", "c" * 17, "e", "89c2"):  # face 7 / even trailing bit are invalid
        with pytest.raises(ValueError, match="not a valid S2 cell token"):
            s2.token_to_cell_id(bad)
    with pytest.raises(ValueError, match="outside"):
        s2.leaf_cell_ids([91.0], [0.0])
    with pytest.raises(ValueError, match="not a finite"):
        s2.leaf_cell_ids([0.0], [float("nan")])


# --------------------------------------------------------------------------------------------------
# the partition


@pytest.mark.parametrize("t_min, t_max, min_level, max_level", [(50, 2000, 2, 30), (10, 300, 2, 30),
                                                                 (5, 100, 4, 9), (0, 1, 3, 6)])
def test_partition_invariants(t_min, t_max, min_level, max_level):
    lat, lon = _clustered_points(20000, seed=t_max)
    part = build_partition(lat, lon, t_min=t_min, t_max=t_max, min_level=min_level, max_level=max_level)
    assert len(part) >= 2
    # every cell holds more than t_min photos; none more than t_max unless it is at max_level
    assert (part.counts > t_min).all()
    assert ((part.counts <= t_max) | (part.levels == max_level)).all()
    assert ((part.levels >= min_level) & (part.levels <= max_level)).all()
    # levels and tokens agree with the library; labels run in id order
    assert all(s2cell.token_to_level(t) == lv for t, lv in zip(part.tokens, part.levels.tolist()))
    assert (np.diff(part.ids.astype(np.float64)) > 0).all()
    assert part.overlapping() is None
    # every kept photo lies in exactly one cell (brute force over all cells), the counts add up
    labels = part.assign(lat, lon)
    leaves = s2.leaf_cell_ids(lat, lon)
    first, last = s2.cell_id_ranges(part.ids)
    sample = np.random.default_rng(0).choice(lat.size, 2000, replace=False)
    inside = (leaves[sample, None] >= first[None]) & (leaves[sample, None] <= last[None])
    assert (inside.sum(1) <= 1).all()
    np.testing.assert_array_equal(np.where(inside.any(1), inside.argmax(1), -1), labels[sample])
    np.testing.assert_array_equal(np.bincount(labels[labels >= 0], minlength=len(part)), part.counts)
    assert part.counts.sum() + part.num_outside == part.num_photos == lat.size
    assert part.num_outside == int((labels < 0).sum())
    # each photo's cell is its own S2 ancestor at that cell's level
    kept = labels >= 0
    np.testing.assert_array_equal(s2.parent_cell_ids(leaves[kept], part.levels[labels[kept]]),
                                  part.ids[labels[kept]])


def test_split_follows_the_procedure_by_brute_force():
    # The published loop, one cell at a time, in plain Python over s2cell: start at min_level, split the
    # cells above t_max one level down, drop cells <= t_min.
    lat, lon = _clustered_points(3000, seed=7)
    t_min, t_max, min_level, max_level = 5, 120, 3, 12
    cells: dict[int, list[int]] = {}
    for k, (a, b) in enumerate(zip(lat.tolist(), lon.tolist())):
        cells.setdefault(s2cell.lat_lon_to_cell_id(a, b, min_level), []).append(k)
    cells = {c: m for c, m in cells.items() if len(m) > t_min}
    while True:
        big = [c for c, m in cells.items() if len(m) > t_max and s2cell.cell_id_to_level(c) < max_level]
        if not big:
            break
        for c in big:
            level = s2cell.cell_id_to_level(c) + 1
            for k in cells.pop(c):
                cells.setdefault(s2cell.lat_lon_to_cell_id(lat[k], lon[k], level), []).append(k)
    cells = {c: m for c, m in cells.items() if len(m) > t_min}
    part = build_partition(lat, lon, t_min=t_min, t_max=t_max, min_level=min_level, max_level=max_level)
    assert part.ids.tolist() == sorted(cells)
    assert part.counts.tolist() == [len(cells[c]) for c in sorted(cells)]


def test_cell_location_is_the_spherical_mean_of_its_photos():
    # Photos on both sides of the antimeridian: the naive mean longitude would be near 0.
    rng = np.random.default_rng(1)
    lat = np.r_[rng.uniform(10, 11, 300), rng.uniform(-50, -49, 300)]
    lon = np.r_[rng.choice([179.5, -179.5], 300) + rng.uniform(-0.2, 0.2, 300), rng.uniform(20, 21, 300)]
    part = build_partition(lat, lon, t_min=10, t_max=1000, min_level=2)
    labels = part.assign(lat, lon)
    for k in range(len(part)):
        m = labels == k
        v = np.c_[np.cos(np.radians(lat[m])) * np.cos(np.radians(lon[m])),
                  np.cos(np.radians(lat[m])) * np.sin(np.radians(lon[m])), np.sin(np.radians(lat[m]))].sum(0)
        assert part.lat_mean[k] == pytest.approx(np.degrees(np.arcsin(v[2] / np.linalg.norm(v))), abs=1e-9)
        assert part.lon_mean[k] == pytest.approx(np.degrees(np.arctan2(v[1], v[0])), abs=1e-9)
    across = int(np.argmax(part.lat_mean))
    assert abs(part.lon_mean[across]) > 179.0  # not the naive ~0
    la, lo = spherical_mean(np.array([0.0, 0.0]), np.array([90.0, 0.0]), np.array([0, 0]), 1)
    assert la[0] == pytest.approx(0.0, abs=1e-12) and lo[0] == pytest.approx(45.0)


def test_hierarchy_fine_cells_lie_in_coarse_cells():
    lat, lon = _clustered_points(20000, seed=2)
    coarse, fine = build_partitions(lat, lon, t_min=20, t_max=(2000, 400))
    assert len(fine) > len(coarse)
    parents = fine.parent_labels(coarse)
    assert (parents >= 0).all()
    # a fine cell's parent is the coarse cell of its photos
    lf, lc = fine.assign(lat, lon), coarse.assign(lat, lon)
    assert (parents[lf[lf >= 0]] == lc[lf >= 0]).all()


def test_too_few_cells_says_which_thresholds_fit():
    lat, lon = _clustered_points(2000, seed=4)
    part = build_partition(lat, lon, t_min=0, t_max=1500, min_level=2)
    second = int(np.sort(part.counts)[-2])
    with pytest.raises(ValueError, match=f"leave [01] cell.*t_min below {second}.*--t-min {second - 1}"):
        build_partition(lat, lon, t_min=second, t_max=1500, min_level=2)
    assert len(build_partition(lat, lon, t_min=second - 1, t_max=1500, min_level=2)) == 2
    with pytest.raises(ValueError, match="one cell of 100 photos: a t_max below 100"):
        build_partition(np.full(100, 10.0), np.full(100, 20.0), t_min=5, t_max=1000, min_level=2)
    with pytest.raises(ValueError, match="no thresholds separate them"):
        build_partition(np.full(100, 10.0), np.full(100, 20.0), t_min=5, t_max=50, min_level=2)
    with pytest.raises(ValueError, match="t_max must be larger than t_min"):
        build_partition(lat, lon, t_min=50, t_max=50)
    with pytest.raises(ValueError, match="min_level <= max_level"):
        build_partition(lat, lon, min_level=10, max_level=5)


# --------------------------------------------------------------------------------------------------
# cells.csv


def _cells(tmp_path) -> tuple[Partition, str]:
    lat, lon = _clustered_points(5000, seed=5)
    part = build_partition(lat, lon, t_min=10, t_max=500)
    return part, write_cells_csv(tmp_path / "cells.csv", part)


def test_cells_csv_round_trip(tmp_path):
    part, path = _cells(tmp_path)
    lines = open(path).read().splitlines()
    assert lines[0] == "class_label,token,level,count,lat_mean,lon_mean"
    back = read_cells_csv(path)
    np.testing.assert_array_equal(back.ids, part.ids)
    np.testing.assert_array_equal(back.counts, part.counts)
    np.testing.assert_allclose(back.lat_mean, part.lat_mean, atol=1e-7)
    # rows in any order come back in label order
    shuffled = tmp_path / "shuffled.csv"
    shuffled.write_text("\n".join([lines[0]] + lines[1:][::-1]) + "\n")
    np.testing.assert_array_equal(read_cells_csv(shuffled).ids, part.ids)


def _edit(path, tmp_path, line: int, column: int, value: str):
    lines = open(path).read().splitlines()
    fields = lines[line - 1].split(",")
    fields[column] = value
    lines[line - 1] = ",".join(fields)
    out = tmp_path / "edited.csv"
    out.write_text("\n".join(lines) + "\n")
    return out


def test_cells_reader_errors(tmp_path):
    part, path = _cells(tmp_path)
    text = open(path).read()
    (tmp_path / "nocount.csv").write_text(text.replace(",count,", ",n,", 1))
    with pytest.raises(ValueError, match="missing column\\(s\\) count"):
        read_cells_csv(tmp_path / "nocount.csv")
    with pytest.raises(ValueError, match="line 3, column 'token': 'zz' is not a valid S2 cell token"):
        read_cells_csv(_edit(path, tmp_path, 3, 1, "zz"))
    with pytest.raises(ValueError, match="line 3, column 'level': value 29 but token"):
        read_cells_csv(_edit(path, tmp_path, 3, 2, "29"))
    with pytest.raises(ValueError, match="line 3: class_label 0 already given on line 2"):
        read_cells_csv(_edit(path, tmp_path, 3, 0, "0"))
    with pytest.raises(ValueError, match="without gaps; label 1 is missing"):
        read_cells_csv(_edit(path, tmp_path, 3, 0, str(len(part) + 5)))
    with pytest.raises(ValueError, match="line 3, column 'count': value 'x' is not an integer"):
        read_cells_csv(_edit(path, tmp_path, 3, 3, "x"))
    with pytest.raises(ValueError, match="line 2, column 'lat_mean'"):
        read_cells_csv(_edit(path, tmp_path, 2, 4, "95"))
    with pytest.raises(ValueError, match="token .* already given on line 2"):
        read_cells_csv(_edit(path, tmp_path, 3, 1, part.tokens[0]))
    parent = s2.cell_tokens(s2.parent_cell_ids(part.ids[:1], int(part.levels[0]) - 1))[0]
    edited = _edit(path, tmp_path, 3, 1, parent)
    edited = _edit(edited, tmp_path, 3, 2, str(int(part.levels[0]) - 1))
    with pytest.raises(ValueError, match="cells overlap"):
        read_cells_csv(edited)
    with pytest.raises(FileNotFoundError, match="cells file not found"):
        read_cells_csv(tmp_path / "none.csv")


# --------------------------------------------------------------------------------------------------
# the command


def test_command_writes_one_partition_per_t_max(tmp_path, capsys):
    lat, lon = _clustered_points(6000, seed=6)
    ann = write_geotagged_csv(tmp_path / "train.csv", [f"{k}.jpg" for k in range(lat.size)], lat, lon)
    out = tmp_path / "out" / "cells.csv"
    assert main(["--ann", ann, "--t-min", "10", "--t-max", "1000", "300", "--out", str(out)]) == 0
    paths = partition_paths(out, [1000, 300])
    assert [p.name for p in paths] == ["cells_tmax1000.csv", "cells_tmax300.csv"]
    coarse, fine = (read_cells_csv(p) for p in paths)
    assert len(fine) > len(coarse) >= 2 and (coarse.counts <= 1000).all() and (fine.counts <= 300).all()
    printed = capsys.readouterr().out
    assert "photos/s" in printed and "cells_tmax300.csv" in printed
    assert main(["--ann", ann, "--t-max", "500", "--t-min", "10", "--out", str(out)]) == 0
    assert read_cells_csv(out).counts.max() <= 500


def test_command_user_error_is_one_line(tmp_path):
    ann = write_geotagged_csv(tmp_path / "train.csv", ["a.jpg", "b.jpg"], [1.0, 2.0], [3.0, 4.0])
    proc = subprocess.run([sys.executable, "-m", "tasks.geolocation.partition", "--ann", ann, "--t-min", "5",
                           "--t-max", "50", "--out", str(tmp_path / "c.csv")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: t_min=5, t_max=50")
    assert not (tmp_path / "c.csv").exists()
