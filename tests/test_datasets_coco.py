"""CocoDetection, the detection transforms and the collate/rescale helpers."""

from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from datasets.coco import BACKGROUND, CocoDetection, collate_detection
from datasets.synthetic_shapes import CATEGORIES, write_shapes_dataset
from datasets.transforms import detection_transforms, frcnn_max_size, rescale_boxes

CATS = [{"id": 5, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 90, "name": "bird"}]


def _write_image(path, w=40, h=30, mode="RGB", color=(200, 50, 20)):
    Image.new(mode, (w, h), color).save(path)


def make_set(tmp_path, images, annotations, categories=CATS, write_images=True, name="ann.json"):
    """images: dicts with id/file_name/width/height; writes a plain RGB image for each unless present."""
    root = tmp_path / "img"
    root.mkdir(exist_ok=True)
    if write_images:
        for img in images:
            path = root / img["file_name"]
            if not path.exists():
                _write_image(path, img["width"], img["height"])
    ann = tmp_path / name
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return str(root), str(ann)


def img(i, w=40, h=30, name=None):
    return {"id": i, "file_name": name or f"{i}.png", "width": w, "height": h}


def ann(i, image_id, cat, bbox, crowd=0, **extra):
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": crowd, **extra}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return write_shapes_dataset(str(root), num_images=8, image_size=64, seed=0, split_name="val", max_objects=3)


# ---- label mapping and targets -------------------------------------------------------------------


def test_label_mapping_round_trip_on_shapes(shapes):
    image_dir, ann_path = shapes
    ds = CocoDetection(image_dir, ann_path)
    ids = [c["id"] for c in CATEGORIES]
    assert ds.cat_ids == sorted(ids) and ds.num_classes == len(ids) + 1
    assert ds.class_names[0] == BACKGROUND and ds.class_names[1:] == [c["name"] for c in CATEGORIES]
    assert set(ds.label_to_cat_id) == set(range(1, len(ids) + 1))
    assert all(ds.label_to_cat_id[ds.cat_id_to_label[c]] == c for c in ids)
    assert all(type(k) is int and type(v) is int for k, v in ds.label_to_cat_id.items())
    json.dumps(ds.label_to_cat_id)  # plain data, storable in a checkpoint

    assert len(ds) == 8
    for index in range(len(ds)):
        image, target = ds[index]
        assert image.dtype == torch.float32 and image.shape == (3, 64, 64)
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert type(image) is torch.Tensor and type(target["boxes"]) is torch.Tensor
        gt = ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=target["image_id"]))
        want = sorted((ds.cat_id_to_label[a["category_id"]], a["bbox"][0], a["bbox"][1],
                       a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]) for a in gt)
        got = sorted((int(l), *map(float, b)) for l, b in zip(target["labels"], target["boxes"]))
        assert got == want
        assert [ds.label_to_cat_id[int(l)] for l in target["labels"]] != []
        assert target["orig_size"].tolist() == [64, 64] == target["size"].tolist()
        assert target["labels"].dtype == torch.int64 and target["boxes"].dtype == torch.float32


def test_crowd_ignored_in_training_kept_for_eval(tmp_path):
    root, ann_file = make_set(tmp_path, [img(1)], [ann(1, 1, 5, [1, 1, 10, 10]), ann(2, 1, 2, [5, 5, 20, 20], crowd=1)])
    train = CocoDetection(root, ann_file, train=True)
    _, t = train[0]
    assert t["labels"].tolist() == [train.cat_id_to_label[5]]
    assert t["iscrowd"].tolist() == [0]
    assert train.stats["crowd_boxes_ignored"] == 1
    gt = train.coco.loadAnns(train.coco.getAnnIds(imgIds=1))
    assert sorted(a["iscrowd"] for a in gt) == [0, 1]

    evalset = CocoDetection(root, ann_file, train=False, transforms=detection_transforms("ssd", False, 32))
    _, t = evalset[0]
    assert t["iscrowd"].tolist() == [0, 1] and t["labels"].shape == (2,)
    assert evalset.stats["crowd_boxes_ignored"] == 0


def test_clipped_and_degenerate_boxes_counted(tmp_path, caplog):
    anns = [
        ann(1, 1, 5, [30, 20, 20, 20]),  # reaches past the right and bottom edges -> clipped to 40 x 30
        ann(2, 1, 5, [-5, 2, 10, 5]),  # starts left of the image -> clipped
        ann(3, 1, 2, [50, 5, 5, 5]),  # entirely outside -> nothing left
        ann(4, 1, 2, [3, 3, 0, 5]),  # zero width
        ann(5, 1, 90, [3, 3, 5, -2]),  # negative height
        ann(6, 1, 90, [2, 2, 4, 4]),  # fine
    ]
    root, ann_file = make_set(tmp_path, [img(1)], anns)
    with caplog.at_level("INFO", logger="datasets.coco"):
        ds = CocoDetection(root, ann_file)
    assert ds.stats["clipped_boxes"] == 2
    assert ds.stats["degenerate_boxes_dropped"] == 3
    assert ds.stats["boxes"] == 3
    assert "3 degenerate" in caplog.text
    _, t = ds[0]
    assert sorted(t["boxes"].tolist()) == [[0, 2, 5, 7], [2, 2, 6, 6], [30, 20, 40, 30]]
    # The evaluation ground truth holds the same clipped boxes.
    assert sorted(a["bbox"] for a in ds.coco.dataset["annotations"]) == [[0, 2, 5, 5], [2, 2, 4, 4], [30, 20, 10, 10]]


def test_negative_images_kept_or_dropped(tmp_path):
    images = [img(1), img(2), img(3)]
    anns = [ann(1, 1, 5, [1, 1, 10, 10]), ann(2, 3, 5, [1, 1, 10, 10], crowd=1)]
    root, ann_file = make_set(tmp_path, images, anns)
    ds = CocoDetection(root, ann_file)
    assert len(ds) == 3 and ds.stats["images_without_annotations"] == 2  # image 3 has only a crowd box
    by_id = {ds[i][1]["image_id"]: ds[i][1] for i in range(3)}
    assert by_id[2]["boxes"].shape == (0, 4) and by_id[2]["labels"].shape == (0,)
    dropped = CocoDetection(root, ann_file, drop_empty=True)
    assert dropped.image_ids == [1] and dropped.stats["empty_images_dropped"] == 2


def test_negative_image_through_every_pipeline(tmp_path):
    root, ann_file = make_set(tmp_path, [img(1)], [])
    for kind in ("ssd", "frcnn"):
        for train in (True, False):
            ds = CocoDetection(root, ann_file, detection_transforms(kind, train, 48, zoom_out_max=2.0))
            for _ in range(5):  # RandomIoUCrop would never finish on a box-less image
                image, t = ds[0]
                assert t["boxes"].shape == (0, 4) and image.shape[0] == 3


# ---- EXIF rotation and boxes (the image formats themselves: tests/test_images.py) ------------------


def test_exif_rotated_jpeg(tmp_path):
    root = tmp_path / "img"
    root.mkdir()
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)  # left half red, right half blue in the stored pixels
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(stored).save(root / "rot.jpg", exif=exif, quality=95)
    # COCO records the displayed size; the box is in displayed coordinates (20 wide, 40 tall).
    _, ann_file = make_set(tmp_path, [img(1, 20, 40, "rot.jpg")], [ann(1, 1, 5, [2, 25, 10, 10])],
                           write_images=False)
    ds = CocoDetection(str(root), ann_file)
    image, t = ds[0]
    assert image.shape == (3, 40, 20)
    assert t["orig_size"].tolist() == [40, 20]
    top, bottom = image[:, 5, 10], image[:, 35, 10]
    assert top[0] > 0.8 and top[2] < 0.2  # the stored left (red) is displayed on top
    assert bottom[2] > 0.8 and bottom[0] < 0.2
    assert t["boxes"].tolist() == [[2, 25, 12, 35]]


# ---- bad images ---------------------------------------------------------------------------------------


def test_missing_image_named_or_skipped(tmp_path):
    root, ann_file = make_set(tmp_path, [img(1), img(2, name="gone.png")], [ann(1, 2, 5, [1, 1, 5, 5])])
    os.remove(os.path.join(root, "gone.png"))
    with pytest.raises(FileNotFoundError, match="gone.png"):
        CocoDetection(root, ann_file)
    ds = CocoDetection(root, ann_file, skip_bad_images=True)
    assert ds.image_ids == [1]
    assert ds.stats["missing_images"] == 1 and ds.stats["bad_images_skipped"] == 1


def _corrupt_set(tmp_path):
    root, ann_file = make_set(tmp_path, [img(1), img(2, name="bad.jpg"), img(3, name="cut.jpg")],
                              [ann(1, 2, 5, [1, 1, 5, 5])], write_images=False)
    _write_image(os.path.join(root, "1.png"))
    with open(os.path.join(root, "bad.jpg"), "wb") as f:
        f.write(b"this is not an image" * 10)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(buf, "JPEG")
    with open(os.path.join(root, "cut.jpg"), "wb") as f:
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])  # truncated
    return root, ann_file


def test_corrupt_image_error_names_file(tmp_path):
    root, ann_file = _corrupt_set(tmp_path)
    ds = CocoDetection(root, ann_file)
    ds[0]
    with pytest.raises(ValueError, match="bad.jpg"):
        ds[1]
    with pytest.raises(ValueError, match="cut.jpg"):
        ds[2]
    with pytest.raises(ValueError, match="bad.jpg"):
        ds.scan_images(num_threads=2)


def test_skip_bad_images_at_load_and_by_scan(tmp_path):
    root, ann_file = _corrupt_set(tmp_path)
    ds = CocoDetection(root, ann_file, skip_bad_images=True)
    # Late skip: the next readable image (wrapping around) stands in, and is counted here.
    assert ds[1][1]["image_id"] == 1 and ds[2][1]["image_id"] == 1
    assert ds.stats["corrupt_images"] == 2

    ds = CocoDetection(root, ann_file, skip_bad_images=True)
    bad = ds.scan_images(num_threads=2)
    assert sorted(os.path.basename(p) for p in bad) == ["bad.jpg", "cut.jpg"]
    assert len(ds) == 1 and ds.image_ids == [1]
    assert ds.stats["bad_images_skipped"] == 2 and ds.stats["images"] == 1


# ---- malformed json -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mutate, pattern", [
    (lambda d: d.pop("images"), "'images'"),
    (lambda d: d.pop("categories"), "'categories'"),
    (lambda d: d.__setitem__("annotations", {}), "'annotations' must be a list"),
    (lambda d: d["annotations"][0].__setitem__("bbox", [1, 2, 3]), "annotation id 7.*'bbox'"),
    (lambda d: d["annotations"][0].__setitem__("bbox", [1, "2", 3, 4]), "annotation id 7.*'bbox'"),
    (lambda d: d["annotations"][0].__setitem__("bbox", [1, 2, float("nan"), 4]), "annotation id 7"),
    (lambda d: d["annotations"][0].__setitem__("category_id", 4), "annotation id 7.*category id 4"),
    (lambda d: d["annotations"][0].__setitem__("image_id", 99), "annotation id 7.*image id 99"),
    (lambda d: d["annotations"][0].pop("category_id"), "annotation id 7.*'category_id'"),
    (lambda d: d["annotations"].append(dict(d["annotations"][0])), "duplicate annotation id 7"),
    (lambda d: d["images"][0].pop("width"), "image id 1.*'width'"),
    (lambda d: d["images"][0].__setitem__("height", 0), "image id 1.*'height'"),
    (lambda d: d["categories"][0].__setitem__("id", "5"), "categories\\[0\\].*'id'"),
])
def test_malformed_json_names_the_field(tmp_path, mutate, pattern):
    data = {"images": [img(1)], "annotations": [ann(7, 1, 5, [1, 1, 5, 5])], "categories": [dict(c) for c in CATS]}
    mutate(data)
    root = tmp_path / "img"
    root.mkdir()
    _write_image(root / "1.png")
    (tmp_path / "a.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=pattern):
        CocoDetection(str(root), str(tmp_path / "a.json"))


def test_not_json_and_missing_files(tmp_path):
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(ValueError, match="a.json"):
        CocoDetection(str(tmp_path), str(tmp_path / "a.json"))
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoDetection(str(tmp_path), str(tmp_path / "nope.json"))
    with pytest.raises(FileNotFoundError, match="nodir"):
        CocoDetection(str(tmp_path / "nodir"), str(tmp_path / "a.json"))


# ---- transforms -----------------------------------------------------------------------------------------------


def _sample(w=40, h=30, boxes=((4, 6, 14, 20),)):
    from torchvision import tv_tensors

    image = tv_tensors.Image(torch.randint(0, 256, (3, h, w), dtype=torch.uint8))
    target = {"boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float32), format="XYXY",
                                                canvas_size=(h, w)),
              "labels": torch.arange(1, len(boxes) + 1), "iscrowd": torch.zeros(len(boxes), dtype=torch.int64)}
    return image, target


def test_flip_moves_box_to_mirror_position():
    image, target = _sample()
    t = detection_transforms("frcnn", True, 30, hflip_prob=1.0)  # shorter side 30: no resize
    out, tgt = t(image, target)
    assert out.shape == (3, 30, 40) and out.dtype == torch.float32
    assert torch.allclose(out, image.flip(-1).float() / 255)
    assert tgt["boxes"].tolist() == [[40 - 14, 6, 40 - 4, 20]]


def test_ssd_and_frcnn_output_sizes():
    image, target = _sample(w=80, h=40, boxes=((8, 4, 40, 20),))
    out, tgt = detection_transforms("ssd", False, 32)(image, target)
    assert out.shape == (3, 32, 32)
    assert torch.allclose(tgt["boxes"], torch.tensor([[3.2, 3.2, 16.0, 16.0]]))
    out, tgt = detection_transforms("frcnn", False, 60)(image, target)  # cap 100 < 120: longer side wins
    assert frcnn_max_size(60) == 100 and frcnn_max_size(600) == 1000
    assert out.shape == (3, 50, 100)
    assert torch.allclose(tgt["boxes"], torch.tensor([[10.0, 5.0, 50.0, 25.0]]))
    out, _ = detection_transforms("frcnn", True, 20, hflip_prob=0.0, max_size=50)(image, target)
    assert out.shape == (3, 20, 40)
    for kind in ("ssd", "frcnn"):
        for _ in range(5):
            out, tgt = detection_transforms(kind, True, 48)(*_sample(w=60, h=50, boxes=((5, 5, 30, 40), (40, 10, 58, 30))))
            assert out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
            if kind == "ssd":
                assert out.shape == (3, 48, 48)
            else:
                assert min(out.shape[1:]) == 48
            b = tgt["boxes"]
            assert len(b) == len(tgt["labels"]) == len(tgt["iscrowd"])
            assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
            assert (b[:, 0::2] <= out.shape[2]).all() and (b[:, 1::2] <= out.shape[1]).all() and (b >= 0).all()


def test_transform_arguments_checked():
    with pytest.raises(ValueError, match="kind"):
        detection_transforms("yolo", True, 300)
    with pytest.raises(ValueError, match="size"):
        detection_transforms("ssd", True, 0)
    with pytest.raises(ValueError, match="max_size"):
        detection_transforms("frcnn", True, 600, max_size=500)


def test_rescale_boxes_round_trip(shapes):
    image_dir, ann_path = shapes
    ds = CocoDetection(image_dir, ann_path, detection_transforms("ssd", False, 100))
    image, t = ds[0]
    assert image.shape == (3, 100, 100) and t["size"].tolist() == [100, 100] and t["orig_size"].tolist() == [64, 64]
    back = rescale_boxes(t["boxes"], t["size"], t["orig_size"])
    raw = CocoDetection(image_dir, ann_path)[0][1]["boxes"]
    assert torch.allclose(back, raw, atol=1e-4)
    assert rescale_boxes(torch.tensor([[0, 0, 10, 20]]), (20, 10), (40, 40)).tolist() == [[0, 0, 40, 40]]
    with pytest.raises(ValueError):
        rescale_boxes(torch.zeros(4), (1, 1), (1, 1))


def test_collate_and_coco_eval_on_ground_truth(shapes):
    from pycocotools.cocoeval import COCOeval

    image_dir, ann_path = shapes
    ds = CocoDetection(image_dir, ann_path, detection_transforms("frcnn", False, 96), train=False)
    loader = DataLoader(ds, batch_size=3, collate_fn=collate_detection)
    results = []
    for images, targets in loader:
        assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets)
        for t in targets:
            boxes = rescale_boxes(t["boxes"], t["size"], t["orig_size"])
            for b, l in zip(boxes.tolist(), t["labels"].tolist()):
                results.append({"image_id": t["image_id"], "category_id": ds.label_to_cat_id[l],
                                "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": 1.0})
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(ds.coco, ds.coco.loadRes(results), "bbox")
        ev.params.imgIds = ds.image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] > 0.95  # ground truth scored against itself, through resize and back


def test_iou_crop_keeps_an_overlapping_box():
    from torchvision.ops import box_iou

    from datasets.transforms import _RandomIoUCropIfBoxes

    torch.manual_seed(0)
    crop = _RandomIoUCropIfBoxes(sampler_options=[0.5])
    image, target = _sample(w=100, h=80, boxes=((10, 10, 60, 50), (70, 40, 95, 75)))
    flat = [image, target["boxes"]]
    for _ in range(20):
        p = crop.make_params(flat)
        box = torch.tensor([[p["left"], p["top"], p["left"] + p["width"], p["top"] + p["height"]]], dtype=torch.float)
        kept = target["boxes"][p["is_within_crop_area"]]
        assert len(kept) > 0 and box_iou(kept, box).max() >= 0.5
        assert 0 <= p["left"] and p["left"] + p["width"] <= 100 and p["top"] + p["height"] <= 80
        out, tgt = crop(image, target)
        assert out.shape[1] <= 80 and out.shape[2] <= 100 and len(tgt["boxes"]) == 2  # degenerate until sanitized
    assert crop.make_params([image, target["boxes"][:0]]) == {}  # no boxes: leave the image alone
