"""eval.coco must give exactly pycocotools' COCOeval numbers, and fail loudly on bad input."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from eval.coco import (
    STAT_KEYS,
    evaluate_detections,
    format_stats,
    load_coco_gt,
    main,
    plot_precision_recall,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _ann(ann_id, image_id, cat, box, crowd=0):
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": list(box),
            "area": float(box[2] * box[3]), "iscrowd": crowd}


def make_gt() -> dict:
    """Non-contiguous ids, a crowd box, an image without annotations, small/medium/large objects."""
    images = [{"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in (10, 11, 12, 20, 21, 30)]
    categories = [{"id": 3, "name": "cat"}, {"id": 17, "name": "dog"}, {"id": 90, "name": "toothbrush"}]
    boxes = [
        (10, 3, (50, 60, 200, 180)),    # large
        (10, 17, (300, 100, 50, 40)),   # medium
        (10, 90, (10, 10, 12, 14)),     # small
        (11, 17, (400, 50, 60, 70)),
        (11, 3, (500, 400, 20, 20)),
        (20, 90, (100, 100, 150, 120)),  # image 20 gets no detections
        (20, 3, (20, 300, 40, 45)),
        (21, 17, (10, 10, 30, 30)),
        (21, 17, (100, 100, 80, 60)),
        (21, 17, (200, 200, 120, 110)),
        (30, 90, (5, 5, 40, 40)),
    ]
    anns = [_ann(i + 1, img, cat, box) for i, (img, cat, box) in enumerate(boxes)]
    anns.append(_ann(100, 11, 17, (0, 0, 300, 300), crowd=1))
    return {"images": images, "annotations": anns, "categories": categories}


def make_detections(gt: dict, seed: int = 0) -> list[dict]:
    """Jittered true positives, misses, duplicates, wrong classes, hits on the crowd, clutter."""
    rng = np.random.default_rng(seed)
    dets = []
    for ann in gt["annotations"]:
        if ann["image_id"] == 20 or ann["iscrowd"]:
            continue
        x, y, w, h = ann["bbox"]
        for _ in range(int(rng.integers(1, 3))):
            jit = rng.normal(0.0, 0.12, 4) * [w, h, w, h]
            box = [x + jit[0], y + jit[1], max(1.0, w + jit[2]), max(1.0, h + jit[3])]
            dets.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                         "bbox": [float(v) for v in box], "score": float(rng.uniform(0.3, 1.0))})
        wrong = [c for c in (3, 17, 90) if c != ann["category_id"]][int(rng.integers(0, 2))]
        dets.append({"image_id": ann["image_id"], "category_id": wrong,
                     "bbox": [float(v) for v in ann["bbox"]], "score": float(rng.uniform(0.0, 0.6))})
    for _ in range(3):  # inside the crowd region: must be ignored, not counted as false positives
        x, y = rng.uniform(0, 200, 2)
        dets.append({"image_id": 11, "category_id": 17, "bbox": [float(x), float(y), 60.0, 60.0],
                     "score": float(rng.uniform(0.2, 0.9))})
    for _ in range(130):  # clutter beyond maxDets=100 on one image, and on the image without GT
        img = 21 if rng.random() < 0.8 else 12
        x, y = rng.uniform(0, 500, 2)
        w, h = rng.uniform(2, 150, 2)
        dets.append({"image_id": img, "category_id": int(rng.choice([3, 17, 90])),
                     "bbox": [float(x), float(y), float(w), float(h)], "score": float(rng.uniform(0.0, 0.5))})
    return dets


def perfect_detections(gt: dict) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
            for a in gt["annotations"] if not a["iscrowd"]]


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def pycocotools_eval(gt_path: Path, dt_path: Path, iou_type: str = "bbox") -> COCOeval:
    """The plain pycocotools recipe, as its README shows it."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        coco_dt = coco_gt.loadRes(str(dt_path))
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


@pytest.fixture
def files(tmp_path):
    gt = make_gt()
    dets = make_detections(gt)
    return gt, dets, write_json(tmp_path / "gt.json", gt), write_json(tmp_path / "dt.json", dets)


# --------------------------------------------------------------------------------------- equality


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stats_equal_pycocotools(tmp_path, seed):
    gt = make_gt()
    dets = make_detections(gt, seed)
    gt_path, dt_path = write_json(tmp_path / "gt.json", gt), write_json(tmp_path / "dt.json", dets)
    ref = pycocotools_eval(gt_path, dt_path)

    res = evaluate_detections(gt_path, dt_path)
    assert list(res.stats) == list(STAT_KEYS)
    for key, expected in zip(STAT_KEYS, ref.stats):
        assert abs(res.stats[key] - expected) <= 1e-12, key
    np.testing.assert_array_equal(res.precision, ref.eval["precision"])
    np.testing.assert_array_equal(res.recall, ref.eval["recall"])
    assert res.cat_ids == (3, 17, 90)
    assert res.num_detections == len(dets)
    # a non-trivial case: neither all-perfect nor all-wrong
    assert 0.0 < res.stats["AP"] < 1.0 and 0.0 < res.stats["AR100"] < 1.0


def test_in_memory_inputs_match_files_and_are_not_modified(files):
    gt, dets, gt_path, dt_path = files
    gt_before, dets_before = copy.deepcopy(gt), copy.deepcopy(dets)
    from_files = evaluate_detections(gt_path, dt_path)
    from_memory = evaluate_detections(gt, dets)
    from_coco = evaluate_detections(load_coco_gt(gt), tuple(dets))
    assert from_memory.stats == from_files.stats == from_coco.stats
    assert gt == gt_before and dets == dets_before


def test_missing_area_range_is_minus_one_like_pycocotools(tmp_path):
    gt = make_gt()
    gt["annotations"] = [a for a in gt["annotations"] if a["area"] >= 32 ** 2]  # no small objects
    dets = make_detections(gt)
    ref = pycocotools_eval(write_json(tmp_path / "gt.json", gt), write_json(tmp_path / "dt.json", dets))
    res = evaluate_detections(gt, dets)
    assert res.stats["APs"] == res.stats["ARs"] == -1.0
    assert [res.stats[k] for k in STAT_KEYS] == pytest.approx(list(ref.stats), abs=1e-12)


def test_perfect_detections_give_ap_one(files):
    gt = files[0]
    res = evaluate_detections(gt, perfect_detections(gt))
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "ARs", "ARm", "ARl"):
        assert res.stats[key] == pytest.approx(1.0, abs=1e-12), key
    assert res.per_category_ap() == pytest.approx({3: 1.0, 17: 1.0, 90: 1.0}, abs=1e-12)


def test_per_category_ap_averages_to_ap(files):
    res = evaluate_detections(files[2], files[3])
    per_cat = res.per_category_ap()
    assert set(per_cat) == {3, 17, 90}
    assert np.mean(list(per_cat.values())) == pytest.approx(res.stats["AP"], abs=1e-12)
    assert len(set(per_cat.values())) > 1


def test_empty_detections_give_zeros(tmp_path, files):
    gt, _, gt_path, _ = files
    for dets in ([], write_json(tmp_path / "empty.json", [])):
        res = evaluate_detections(gt_path, dets)
        assert res.stats == {k: 0.0 for k in STAT_KEYS}
        assert res.num_detections == 0
    # where pycocotools would say -1 (no ground truth in that setting), so do we
    no_small = dict(gt, annotations=[a for a in gt["annotations"] if a["area"] >= 32 ** 2])
    stats = evaluate_detections(no_small, []).stats
    assert stats["APs"] == stats["ARs"] == -1.0
    assert all(v == 0.0 for k, v in stats.items() if k not in ("APs", "ARs"))


def test_segm_equals_pycocotools(tmp_path):
    h, w = 60, 80
    masks = []
    for (y0, y1, x0, x1) in [(5, 30, 5, 40), (35, 58, 10, 70), (2, 20, 50, 78)]:
        m = np.zeros((h, w), dtype=np.uint8, order="F")
        m[y0:y1, x0:x1] = 1
        masks.append(m)
    anns = []
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        poly = [x0, y0, x1, y0, x1, y1, x0, y1]
        anns.append({"id": i + 1, "image_id": 1, "category_id": 5 if i else 7, "segmentation": [poly],
                     "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float(m.sum()), "iscrowd": 0})
    gt = {"images": [{"id": 1, "height": h, "width": w}], "annotations": anns,
          "categories": [{"id": 5, "name": "a"}, {"id": 7, "name": "b"}]}
    dets = []
    for i, m in enumerate(masks):
        shifted = np.asfortranarray(np.roll(m, 3 * i, axis=1))
        rle = mask_utils.encode(shifted)
        rle["counts"] = rle["counts"].decode("ascii")
        dets.append({"image_id": 1, "category_id": 5 if i else 7, "segmentation": rle, "score": 0.9 - 0.1 * i})
    ref = pycocotools_eval(write_json(tmp_path / "gt.json", gt), write_json(tmp_path / "dt.json", dets), "segm")
    res = evaluate_detections(gt, dets, "segm")
    assert [res.stats[k] for k in STAT_KEYS] == pytest.approx(list(ref.stats), abs=1e-12)
    assert 0.0 < res.stats["AP"] < 1.0


# --------------------------------------------------------------------------------------- bad input


def test_unknown_image_or_category_id_raises(files):
    gt, dets = files[0], files[1]
    bad_img = dets[:3] + [dict(dets[3], image_id=999)]
    with pytest.raises(ValueError, match=r"image_id 999"):
        evaluate_detections(gt, bad_img)
    bad_cat = dets[:2] + [dict(dets[2], category_id=4242)]
    with pytest.raises(ValueError, match=r"category_id 4242"):
        evaluate_detections(gt, bad_cat)


@pytest.mark.parametrize("bbox", [[1.0, 2.0, 3.0], [1, 2, 3, 4, 5], ["a", 2, 3, 4], [0, 0, float("nan"), 4],
                                  [0, 0, -5, 4], "1234", None])
def test_malformed_bbox_names_index(files, bbox):
    gt, dets = files[0], files[1]
    bad = dets[:2] + [dict(dets[2], bbox=bbox)] + dets[3:]
    with pytest.raises(ValueError, match=r"\[2\].*bbox"):
        evaluate_detections(gt, bad)


def test_malformed_detection_fields(files, tmp_path):
    gt, dets = files[0], files[1]
    no_score = {k: v for k, v in dets[0].items() if k != "score"}
    with pytest.raises(ValueError, match=r"\[1\].*score"):
        evaluate_detections(gt, [dets[0], no_score])
    with pytest.raises(ValueError, match=r"score"):
        evaluate_detections(gt, [dict(dets[0], score=float("inf"))])
    not_a_list = write_json(tmp_path / "dets_obj.json", {"annotations": dets})
    with pytest.raises(ValueError, match="dets_obj.json"):
        evaluate_detections(gt, not_a_list)
    with pytest.raises(ValueError, match="iou_type"):
        evaluate_detections(gt, dets, "keypoints")


def test_malformed_gt_names_file_and_field(tmp_path, files):
    gt, dets = files[0], files[1]
    no_anns = write_json(tmp_path / "no_anns.json", {k: v for k, v in gt.items() if k != "annotations"})
    with pytest.raises(ValueError, match=r"no_anns\.json.*'annotations'"):
        load_coco_gt(no_anns)
    with pytest.raises(ValueError, match=r"no_anns\.json.*'annotations'"):
        evaluate_detections(no_anns, dets)

    not_json = tmp_path / "broken.json"
    not_json.write_text("{'images': [}")
    with pytest.raises(ValueError, match=r"broken\.json.*not valid JSON"):
        load_coco_gt(not_json)
    with pytest.raises(ValueError, match=r"missing\.json"):
        load_coco_gt(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="top level"):
        load_coco_gt(write_json(tmp_path / "list.json", []))

    with pytest.raises(ValueError, match="'categories'"):
        load_coco_gt({k: v for k, v in gt.items() if k != "categories"})
    bad_ref = copy.deepcopy(gt)
    bad_ref["annotations"][0]["image_id"] = 555
    with pytest.raises(ValueError, match=r"annotations\[0\].*image_id 555"):
        load_coco_gt(bad_ref)
    no_crowd = copy.deepcopy(gt)
    del no_crowd["annotations"][4]["iscrowd"]
    with pytest.raises(ValueError, match=r"annotations\[4\].*'iscrowd'"):
        load_coco_gt(no_crowd)
    dup = copy.deepcopy(gt)
    dup["images"].append(dict(dup["images"][0]))
    with pytest.raises(ValueError, match=r"images\[6\] repeats id 10"):
        load_coco_gt(dup)
    with pytest.raises(TypeError):
        load_coco_gt(42)


def test_load_coco_gt_is_silent(files, capsys):
    coco = load_coco_gt(files[2])
    assert sorted(coco.getCatIds()) == [3, 17, 90]
    assert len(coco.getImgIds()) == 6
    evaluate_detections(coco, files[1])
    assert capsys.readouterr().out == ""


# --------------------------------------------------------------------------------------- plot + CLI


def test_plot_precision_recall(tmp_path, files):
    res = evaluate_detections(files[2], files[3])
    out = plot_precision_recall(res, tmp_path / "pr.png")
    assert out.read_bytes()[:8] == PNG_MAGIC
    # no ground truth at all: every precision is -1, still a (labelled) plot
    no_gt = dict(files[0], annotations=[])
    res = evaluate_detections(no_gt, [])
    assert res.stats == {k: -1.0 for k in STAT_KEYS}
    assert plot_precision_recall(res, tmp_path / "empty.png").read_bytes()[:8] == PNG_MAGIC
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_cli_writes_json_and_png(tmp_path, files, capsys):
    _, _, gt_path, dt_path = files
    out, plot = tmp_path / "stats.json", tmp_path / "pr.png"
    returned = main(["--gt", str(gt_path), "--dt", str(dt_path), "--out", str(out), "--plot", str(plot)])

    written = json.loads(out.read_text())
    assert list(written) == list(STAT_KEYS)
    ref = pycocotools_eval(gt_path, dt_path)
    assert [written[k] for k in STAT_KEYS] == pytest.approx(list(ref.stats), abs=1e-12)
    assert written == returned
    assert plot.read_bytes()[:8] == PNG_MAGIC

    stdout = capsys.readouterr().out
    summary = [line for line in stdout.splitlines() if "@[ IoU=" in line]
    assert len(summary) == 12
    assert summary == format_stats(written).splitlines()
    assert f"= {written['AP']:0.3f}" in summary[0] and "IoU=0.50:0.95" in summary[0]


def test_cli_bad_input_exits_with_message(tmp_path, files):
    bad = write_json(tmp_path / "bad_dt.json", [dict(files[1][0], image_id=31337)])
    with pytest.raises(ValueError, match="31337"):
        main(["--gt", str(files[2]), "--dt", str(bad)])
    proc = subprocess.run([sys.executable, "-m", "eval.coco", "--gt", str(files[2]), "--dt", str(bad)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "31337" in proc.stderr


def test_module_entry_point(tmp_path, files):
    out = tmp_path / "s.json"
    proc = subprocess.run(
        [sys.executable, "-m", "eval.coco", "--gt", str(files[2]), "--dt", str(files[3]), "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert list(json.loads(out.read_text())) == list(STAT_KEYS)
    assert proc.stdout.count("Average Precision") == 6 and proc.stdout.count("Average Recall") == 6
