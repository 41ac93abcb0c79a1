"""The synthetic generators: shapes (valid COCO, exact boxes, deterministic, cached with a completion
marker) and the face identities (cached, CLI)."""

from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import pytest
from pycocotools.coco import COCO

from datasets import synthetic_shapes as synthetic
from datasets.synthetic_shapes import CATEGORIES, ensure_shapes_dataset, write_shapes_dataset

SMALL = dict(num_train=10, num_val=6, image_size=64, seed=3)


def _load_coco(path: str) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(path)


def _files(folder: str) -> dict[str, bytes]:
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools vs numpy 2
def test_writes_valid_coco(tmp_path):
    image_dir, ann_path = write_shapes_dataset(str(tmp_path), num_images=12, image_size=80, seed=1,
                                               split_name="train", max_objects=4)
    assert image_dir == str(tmp_path / "train")
    assert ann_path == str(tmp_path / "annotations" / "instances_train.json")
    coco = _load_coco(ann_path)
    assert sorted(coco.getCatIds()) == [c["id"] for c in CATEGORIES]
    cat_ids = coco.getCatIds()
    assert cat_ids != list(range(1, len(cat_ids) + 1)), "ids must be non-contiguous to exercise the mapping"
    assert len(coco.getImgIds()) == 12
    assert len(set(coco.getAnnIds())) == len(coco.dataset["annotations"])
    for img in coco.dataset["images"]:
        assert (img["width"], img["height"]) == (80, 80)
        assert os.path.isfile(os.path.join(image_dir, img["file_name"]))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        assert 1 <= len(anns) <= 4
    for ann in coco.dataset["annotations"]:
        assert set(ann) >= {"id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"}
        assert ann["iscrowd"] == 0 and ann["category_id"] in cat_ids
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and x + w <= 80 and y + h <= 80
        assert min(w, h) >= 5, ann  # shapes are never buried or sliver-sized
        # The box is exactly the extent of the visible mask, and area is its pixel count.
        m = coco.annToMask(ann)
        ys, xs = np.nonzero(m)
        assert [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()] == [x, y, w, h]
        assert ann["area"] == m.sum()


def test_render_visible_masks_are_disjoint():
    """Each pixel belongs to at most one object: the one drawn last over it."""
    rng = np.random.default_rng(0)
    image, objects = synthetic.render_shapes_image(rng, 96, 3)
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    assert 1 <= len(objects) <= 3
    union = np.zeros((96, 96), bool)
    for cat, vis in objects:
        assert 0 <= cat < len(CATEGORIES)
        assert not (union & vis).any(), "visible masks must not overlap"
        union |= vis


def test_deterministic_and_seed_dependent(tmp_path):
    kw = dict(num_images=5, image_size=64, split_name="val", max_objects=3)
    d1, a1 = write_shapes_dataset(str(tmp_path / "a"), seed=7, **kw)
    d2, a2 = write_shapes_dataset(str(tmp_path / "b"), seed=7, **kw)
    d3, a3 = write_shapes_dataset(str(tmp_path / "c"), seed=8, **kw)
    assert open(a1, "rb").read() == open(a2, "rb").read()
    assert _files(d1) == _files(d2)
    assert _files(d1) != _files(d3)


def test_png_format(tmp_path):
    image_dir, ann = write_shapes_dataset(str(tmp_path), num_images=2, image_size=48, seed=0, split_name="s",
                                          max_objects=2, image_format="png")
    assert all(n.endswith(".png") for n in os.listdir(image_dir))


@pytest.mark.parametrize("kwargs", [dict(num_images=-1), dict(image_size=16), dict(seed=-1), dict(max_objects=0),
                                    dict(split_name="annotations"), dict(image_format="gif")])
def test_write_rejects_bad_arguments(tmp_path, kwargs):
    args = dict(num_images=1, image_size=64, seed=0, split_name="x", max_objects=2)
    args.update(kwargs)
    with pytest.raises(ValueError):
        write_shapes_dataset(str(tmp_path), **args)


def test_ensure_caches_and_rebuilds(tmp_path):
    paths = ensure_shapes_dataset(str(tmp_path), **SMALL)
    assert set(paths) >= {"train_root", "train_ann", "val_root", "val_ann"}
    assert os.path.dirname(paths["train_root"]).startswith(str(tmp_path))
    assert len(os.listdir(paths["train_root"])) == 10 and len(os.listdir(paths["val_root"])) == 6
    train = json.load(open(paths["train_ann"]))
    val = json.load(open(paths["val_ann"]))
    assert train["images"][0]["file_name"] == val["images"][0]["file_name"]  # same names ...
    assert open(os.path.join(paths["train_root"], train["images"][0]["file_name"]), "rb").read() != \
        open(os.path.join(paths["val_root"], val["images"][0]["file_name"]), "rb").read()  # ... other pixels

    # A second call reuses the files.
    stamp = os.stat(paths["train_ann"]).st_mtime_ns
    ann_bytes = open(paths["train_ann"], "rb").read()
    assert ensure_shapes_dataset(str(tmp_path), **SMALL) == paths
    assert os.stat(paths["train_ann"]).st_mtime_ns == stamp

    # Without the marker (an interrupted copy) it is rebuilt, identically; no temp folders are left.
    os.remove(os.path.join(paths["root"], synthetic.MARKER))
    os.remove(os.path.join(paths["val_root"], sorted(os.listdir(paths["val_root"]))[0]))
    assert ensure_shapes_dataset(str(tmp_path), **SMALL) == paths
    assert os.path.exists(os.path.join(paths["root"], synthetic.MARKER))
    assert len(os.listdir(paths["val_root"])) == 6
    assert open(paths["train_ann"], "rb").read() == ann_bytes
    assert [n for n in os.listdir(tmp_path) if not n.endswith(".lock")] == [os.path.basename(paths["root"])]

    # Other settings go to another folder.
    other = ensure_shapes_dataset(str(tmp_path), **{**SMALL, "seed": 4})
    assert other["root"] != paths["root"]


def test_ensure_uses_cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILENET_SUITE_CACHE", str(tmp_path / "cache"))
    paths = ensure_shapes_dataset(num_train=2, num_val=1, image_size=48)
    assert paths["root"].startswith(str(tmp_path / "cache"))


def test_cli_writes_and_summarises(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert synthetic.main(["--out", str(out), "--num-train", "4", "--num-val", "2", "--image-size", "64"]) == 0
    text = capsys.readouterr().out
    assert "train" in text and "val" in text and "circle" in text
    assert len(os.listdir(out / "train")) == 4 and len(os.listdir(out / "val")) == 2
    _load_coco(str(out / "annotations" / "instances_val.json"))


def test_cli_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(SystemExit):
        synthetic.main(["--out", str(tmp_path), "--num-train", "1", "--num-val", "1", "--image-size", "48"])
    assert (tmp_path / "mine.txt").read_text() == "keep me"


# ---- the synthetic face identities (datasets.synthetic_identities) -------------------------------------

TINY_IDS = dict(num_train_identities=2, num_test_identities=4, images_per_identity=2, test_images_per_identity=2,
                probe_images_per_identity=1, image_size=32, num_folds=2, pairs_per_fold=1, seed=0)


def test_identities_cached_once_and_cli_prints_the_root(tmp_path, monkeypatch, capsys):
    from datasets import synthetic_identities as ids

    paths = ids.ensure_synthetic_faces(str(tmp_path), **TINY_IDS)
    assert os.path.basename(paths["root"]).startswith("faces-ids-v")
    assert sorted(os.listdir(paths["train"])) == ["person_00001", "person_00002"]
    assert len(os.listdir(paths["probe"])) == 4 and os.path.isfile(paths["pairs"])
    stamp = os.stat(paths["pairs"]).st_mtime_ns
    assert ids.ensure_synthetic_faces(str(tmp_path), **TINY_IDS) == paths
    assert os.stat(paths["pairs"]).st_mtime_ns == stamp
    assert ids.ensure_synthetic_faces(str(tmp_path), **{**TINY_IDS, "seed": 1})["root"] != paths["root"]

    monkeypatch.setenv("MOBILENET_SUITE_CACHE", str(tmp_path))
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY_IDS.items()]
    assert ids.main([*flags, "--print-root"]) == 0
    assert capsys.readouterr().out.strip() == paths["root"]
    with pytest.raises(SystemExit):
        ids.main(["--num-folds", "0"])
