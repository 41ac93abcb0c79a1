"""Attribute label files (CelebA 1/-1, CSV 1/0/empty), the attribute dataset, and mean AP vs scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.attributes import (
    AttributeDataset,
    align_labels,
    read_attribute_file,
    read_partition_file,
    write_attribute_file,
)
from eval.attributes import average_precision, format_ap_table, mean_average_precision

CELEBA = """3
Smiling Eyeglasses Bald
000001.jpg -1  1 -1
000002.jpg  1  1 -1
000003.jpg  1 -1  1
"""


def test_read_celeba_layout(tmp_path):
    path = tmp_path / "list_attr_celeba.txt"
    path.write_text(CELEBA)
    table = read_attribute_file(path)
    assert table.attribute_names == ["Smiling", "Eyeglasses", "Bald"]
    assert table.image_names == ["000001.jpg", "000002.jpg", "000003.jpg"]
    np.testing.assert_array_equal(table.labels, [[0, 1, 0], [1, 1, 0], [1, 0, 1]])
    assert table.labels.dtype == np.float32


def test_read_csv_with_unknown(tmp_path):
    path = tmp_path / "attrs.csv"
    path.write_text("image,Smiling,Hat\na/1.png,1,\nb/2.png,0,1\n\n")
    table = read_attribute_file(path)
    assert table.image_names == ["a/1.png", "b/2.png"]
    assert table.labels[0, 0] == 1 and math.isnan(table.labels[0, 1]) and table.labels[1].tolist() == [0, 1]


@pytest.mark.parametrize("content, match", [
    ("3\nA B\nx.jpg 1 -1\n", "line 1 says 3 images"),
    ("1\nA B\nx.jpg 1 0\n", r"line 3, attribute 'B': value '0' is not 1 or -1"),
    ("1\nA B\nx.jpg 1\n", "line 3: expected an image name and 2 values"),
    ("2\nA A\nx.jpg 1 1\ny.jpg 1 1\n", "duplicate attribute names"),
    ("2\nA\nx.jpg 1\nx.jpg -1\n", "listed more than once"),
    ("hello world\n", "cannot tell the label format"),
])
def test_bad_celeba_files_name_the_problem(tmp_path, content, match):
    path = tmp_path / "labels.txt"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as err:
        read_attribute_file(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("content, match", [
    ("image,A\nx.jpg,2\n", r"line 2, attribute 'A': value '2'"),
    ("image,A\nx.jpg,1,0\n", "expected 2 columns"),
    ("image,A\n,1\n", "empty image name"),
    ("image\nx.jpg\n", "header needs an image column"),
    ("image,A\n", "no image rows"),
])
def test_bad_csv_files_name_the_problem(tmp_path, content, match):
    path = tmp_path / "labels.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        read_attribute_file(path)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_attribute_file("/nonexistent/nope.csv")


@pytest.mark.parametrize("fmt", ["celeba", "csv"])
def test_write_read_round_trip(tmp_path, fmt):
    rng = np.random.default_rng(0)
    labels = (rng.random((5, 4)) < 0.5).astype(np.float32)
    if fmt == "csv":
        labels[1, 2] = np.nan
    names = [f"{i:06d}.jpg" for i in range(5)]
    path = write_attribute_file(tmp_path / f"l.{'txt' if fmt == 'celeba' else 'csv'}", names, list("ABCD"), labels,
                                fmt=fmt)
    table = read_attribute_file(path)
    assert table.image_names == names and table.attribute_names == list("ABCD")
    np.testing.assert_array_equal(np.isnan(table.labels), np.isnan(labels))
    np.testing.assert_array_equal(np.nan_to_num(table.labels, nan=7), np.nan_to_num(labels, nan=7))


def test_celeba_cannot_hold_unknown(tmp_path):
    with pytest.raises(ValueError, match="unknown"):
        write_attribute_file(tmp_path / "x.txt", ["a.jpg"], ["A"], np.array([[np.nan]]), fmt="celeba")


def test_align_labels_and_partition(tmp_path):
    path = tmp_path / "attrs.csv"
    path.write_text("image,A\n./sub/1.jpg,1\n2.jpg,0\n")
    table = read_attribute_file(path)
    out = align_labels(["2.jpg", "3.jpg", "sub/1.jpg"], table)
    assert out[0, 0] == 0 and math.isnan(out[1, 0]) and out[2, 0] == 1
    with pytest.raises(ValueError, match="not in the image folder"):
        align_labels(["2.jpg"], table)
    part = tmp_path / "list_eval_partition.txt"
    part.write_text("000001.jpg 0\n000002.jpg 2\n")
    assert read_partition_file(part) == {"000001.jpg": 0, "000002.jpg": 2}
    part.write_text("000001.jpg 5\n")
    with pytest.raises(ValueError, match="line 1"):
        read_partition_file(part)


def test_attribute_dataset_serves_images_and_targets(tmp_path):
    for i in range(3):
        Image.new("RGB", (20, 30), (i * 40, 0, 0)).save(tmp_path / f"{i + 1:06d}.jpg")
    (tmp_path / "list_attr_celeba.txt").write_text(CELEBA)
    (tmp_path / "part.txt").write_text("000001.jpg 0\n000002.jpg 1\n000003.jpg 0\n")
    ds = AttributeDataset(tmp_path, tmp_path / "list_attr_celeba.txt")
    assert len(ds) == 3 and ds.num_attributes == 3
    s = ds[1]
    assert s["image"].shape == (3, 30, 20) and s["image"].dtype == torch.uint8
    assert s["target"].tolist() == [1.0, 1.0, 0.0] and s["index"] == 1
    train = AttributeDataset(tmp_path, tmp_path / "list_attr_celeba.txt", partition=(str(tmp_path / "part.txt"), "train"))
    assert train.names == ["000001.jpg", "000003.jpg"]
    (tmp_path / "000002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="000002.jpg"):
        AttributeDataset(tmp_path, tmp_path / "list_attr_celeba.txt")
    ds = AttributeDataset(tmp_path, tmp_path / "list_attr_celeba.txt", skip_bad_images=True)
    assert len(ds) == 2 and ds.stats["missing_images"] == 1
    assert ds[1]["target"].tolist() == [1.0, 0.0, 1.0]  # targets stay aligned after the skip


# ---- mean AP ------------------------------------------------------------------------------------


def test_average_precision_matches_sklearn():
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for trial in range(30):
        n = int(rng.integers(2, 60))
        y = (rng.random(n) < rng.uniform(0.1, 0.9)).astype(float)
        if y.sum() == 0:
            y[0] = 1
        # Coarse scores produce many ties, which is where definitions differ.
        s = np.round(rng.normal(size=n) + y * rng.uniform(0, 2), int(rng.integers(0, 3)))
        assert average_precision(s, y) == pytest.approx(sklearn.average_precision_score(y, s), abs=1e-12), trial


def test_average_precision_known_values():
    assert average_precision([0.9, 0.8, 0.1], [1, 1, 0]) == 1.0
    assert average_precision([0.1, 0.8, 0.9], [1, 0, 0]) == pytest.approx(1 / 3)
    assert average_precision([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0]) == pytest.approx(0.5)  # all tied: the prevalence
    assert math.isnan(average_precision([0.3, 0.2], [0, 0]))
    assert average_precision([0.9, 0.2, 0.5], [1, np.nan, 0]) == 1.0  # unknown left out
    with pytest.raises(ValueError):
        average_precision([0.1, 0.2], [1, 2])
    with pytest.raises(ValueError):
        average_precision([np.inf, 0.2], [1, 0])


def test_mean_ap_excludes_unknown_per_attribute_and_matches_sklearn():
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    y = (rng.random((50, 4)) < 0.4).astype(float)
    s = rng.normal(size=(50, 4)) + y
    y_unknown = y.copy()
    y_unknown[rng.random((50, 4)) < 0.2] = np.nan
    y_unknown[:, 3] = np.where(np.isnan(y_unknown[:, 3]), np.nan, 0.0)  # no positive: no AP
    res = mean_average_precision(s, y_unknown, ["a", "b", "c", "d"])
    for a in range(3):
        known = ~np.isnan(y_unknown[:, a])
        assert res.ap[a] == pytest.approx(sklearn.average_precision_score(y_unknown[known, a], s[known, a]))
    assert math.isnan(res.ap[3])
    assert res.mean_ap == pytest.approx(np.mean(res.ap[:3]))
    assert res.known.tolist() == (~np.isnan(y_unknown)).sum(0).tolist()
    assert "ap/d" not in {k for k, v in res.as_dict().items() if not math.isnan(v)}
    table = format_ap_table({"teacher": res, "student": res})
    assert "teacher" in table and "mean AP" in table and "n/a" in table


def test_mean_ap_shape_errors():
    with pytest.raises(ValueError):
        mean_average_precision(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError):
        mean_average_precision(np.zeros((3, 2)), np.zeros((3, 2)), ["one"])
