"""Unlabeled image folders: recursive listing, samples, bad images (formats: tests/test_images.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.images import ImageFiles, build_image_transform, list_images, split_holdout


def _img(path, size=(20, 12), color=(200, 10, 10), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else None).save(path)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imgs"
    _img(root / "b.jpg")
    _img(root / "a" / "x.PNG")
    _img(root / "a" / "deep" / "y.webp")
    _img(root / ".hidden" / "z.jpg")
    _img(root / ".dot.jpg")
    (root / "notes.txt").write_text("not an image")
    return root


def test_list_images_recursive_sorted_filtered(folder):
    assert list_images(folder) == ["a/deep/y.webp", "a/x.PNG", "b.jpg"]
    assert list_images(folder, extensions=["jpg"]) == ["b.jpg"]
    with pytest.raises(FileNotFoundError):
        list_images(folder / "missing")


def test_from_folder_serves_dicts_with_index(folder):
    ds = ImageFiles.from_folder(folder, build_image_transform(16, mean=(0, 0, 0), std=(1, 1, 1)))
    assert len(ds) == 3 and ds.names[2] == "b.jpg"
    s = ds[2]
    assert s["index"] == 2 and s["image"].shape == (3, 16, 16) and s["image"].dtype == torch.float32
    assert "target" not in s
    red = s["image"].mean((1, 2))
    assert red[0] > 0.7 and red[1] < 0.1  # RGB order kept, scaled to 0..1
    with pytest.raises(ValueError, match="no image files"):
        ImageFiles.from_folder(folder / "a" / "deep", extensions=[".bmp"])


def _corrupt(path):
    path.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")


def test_corrupt_image_raises_naming_the_file(folder):
    _corrupt(folder / "a" / "broken.jpg")
    ds = ImageFiles.from_folder(folder)
    bad = ds.names.index("a/broken.jpg")
    with pytest.raises(ValueError, match="broken.jpg"):
        ds[bad]
    with pytest.raises(ValueError, match=r"1 images cannot be decoded: .*broken.jpg"):
        ds.scan_images()


def test_corrupt_image_skipped_and_counted(folder):
    _corrupt(folder / "a" / "broken.jpg")
    ds = ImageFiles.from_folder(folder, skip_bad_images=True)
    assert len(ds) == 4
    bad = ds.scan_images()
    assert [p.endswith("broken.jpg") for p in bad] == [True]
    assert len(ds) == 3 and "a/broken.jpg" not in ds.names
    assert ds.stats["corrupt_images"] == 1 and ds.stats["bad_images_skipped"] == 1


def test_late_skip_serves_the_next_image(folder):
    _corrupt(folder / "a" / "broken.jpg")
    targets = np.arange(4, dtype=np.float32)
    names = list_images(folder)
    ds = ImageFiles(names, targets=targets, root=folder, skip_bad_images=True)
    bad = names.index("a/broken.jpg")
    s = ds[bad]
    assert s["index"] == bad + 1 and s["target"].item() == targets[bad + 1]  # index and target of what is served
    assert ds.stats["corrupt_images"] == 1


def test_missing_file(folder):
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        ImageFiles(["b.jpg", "gone.jpg"], root=folder)
    ds = ImageFiles(["b.jpg", "gone.jpg"], root=folder, skip_bad_images=True)
    assert len(ds) == 1 and ds.stats["missing_images"] == 1


def test_subset_and_split_holdout(folder):
    ds = ImageFiles.from_folder(folder)
    tr, va = split_holdout(len(ds), 0.34, seed=0)
    assert sorted(tr + va) == [0, 1, 2] and len(va) == 1
    assert split_holdout(100, 0.1, 3) == split_holdout(100, 0.1, 3)
    assert len(split_holdout(100, 0.1, 3)[1]) == 10
    sub = ds.subset(va)
    assert len(sub) == 1 and sub.names == [ds.names[va[0]]] and sub[0]["index"] == 0
    with pytest.raises(ValueError):
        split_holdout(1, 0.1)
    with pytest.raises(ValueError):
        split_holdout(10, 1.5)


def test_transform_validation():
    with pytest.raises(ValueError):
        build_image_transform(0)
    with pytest.raises(ValueError):
        build_image_transform(32, mean=(0, 0), std=(1, 1, 1))
    with pytest.raises(ValueError):
        build_image_transform(32, std=(1, 0, 1))
    t = build_image_transform(8, augment=True)
    out = t(Image.new("RGB", (20, 30)))
    assert out.shape == (3, 8, 8)
