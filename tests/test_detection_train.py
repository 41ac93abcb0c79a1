"""Detection end to end: train CLI on COCO-format synthetic data, evaluate, predict, resume, bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from datasets.synthetic_shapes import write_shapes_dataset
from eval.coco import STAT_KEYS
from tasks.detection import evaluate as det_evaluate
from tasks.detection import predict as det_predict
from tasks.detection import train as det_train
from tasks.detection.inference import load_detector

ROOT = Path(__file__).resolve().parents[1]


def _write_config(path: Path, **overrides) -> Path:
    cfg = {
        "model": {"arch": "ssd300", "alpha": 0.25, "resolution": 96},
        "data": {"dataset": "coco", "zoom_out_max": 1.0, "workers": 0, "eval_batch_size": 16},
        "train": {"epochs": 2, "batch_size": 16, "optimizer": "adamw", "lr": 0.004, "weight_decay": 0.0001,
                  "warmup_iters": 5, "seed": 0},
    }
    for section, values in overrides.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A small COCO-format shapes set: 2 objects at most, 96 px, separate train / val images."""
    root = tmp_path_factory.mktemp("shapes")
    train = write_shapes_dataset(root / "train", num_images=160, image_size=96, seed=10, split_name="train", max_objects=2)
    val = write_shapes_dataset(root / "val", num_images=40, image_size=96, seed=11, split_name="val", max_objects=2)
    return {"train": train, "val": val, "root": root}


def _data_args(shapes):
    (train_root, train_ann), (val_root, val_ann) = shapes["train"], shapes["val"]
    return ["--data-root", str(train_root), "--ann", str(train_ann), "--val-data-root", str(val_root), "--val-ann", str(val_ann)]


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    """One short training run shared by the output / evaluate / predict tests (the real CLI entry point)."""
    out = tmp_path_factory.mktemp("run")
    cfg = _write_config(out / "cfg.yaml", train={"epochs": 2})
    torch.manual_seed(0)
    summary = det_train.main(["--config", str(cfg), *_data_args(shapes), "--output-dir", str(out / "out"), "--device", "cpu"])
    return out / "out", summary


@pytest.fixture(scope="module")
def easy_shapes(tmp_path_factory):
    """One object per 64 px image: small enough for a from-scratch SSD to learn in about a minute."""
    root = tmp_path_factory.mktemp("easy")
    train = write_shapes_dataset(root / "train", num_images=600, image_size=64, seed=10, split_name="train", max_objects=1)
    val = write_shapes_dataset(root / "val", num_images=60, image_size=64, seed=11, split_name="val", max_objects=1)
    return {"train": train, "val": val}


def test_training_learns_well_above_chance(easy_shapes, tmp_path):
    # The 64 px images are fed at 192 px: at 64 px 71% of these boxes match no anchor at IoU 0.5, at 192 px
    # 1.5% (python -m tasks.detection.coverage), and matched anchors are what SSD learns from.
    cfg = _write_config(
        tmp_path / "cfg.yaml",
        model={"alpha": 0.25, "resolution": 192, "options": {"min_scale": 0.15, "reduce_boxes_in_lowest_layer": False,
                                                       "aspect_ratios": [1.0, 2.0, 0.5]}},
        data={"iou_crop_prob": 0.0, "photometric_prob": 0.0},
        train={"epochs": 8, "batch_size": 16, "lr": 0.016, "warmup_iters": 30, "eval_every": 2, "grad_clip": 10.0},
    )
    summary = det_train.main(["--config", str(cfg), *_data_args(easy_shapes), "--output-dir", str(tmp_path / "o"), "--device", "cpu"])
    lines = [json.loads(l) for l in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["train"]["loss"] < 0.75 * lines[0]["train"]["loss"]
    # AP50 on the held-out val images through the real eval path. Measured on an AMD EPYC (2026-12-02):
    # 0.009 after 2 of these epochs, 0.355 after 6, 0.379 after 8. With lr 0.008 and 6 epochs the same
    # machine reached only 0.064 (an Intel one 0.271): the shorter, slower schedule sat on the edge.
    assert summary["stats"]["AP50"] > 0.15, summary["stats"]
    assert summary["stats"]["AP50"] > 5 * lines[0]["eval"]["AP50"]  # vs the same model after 2 epochs


def test_training_writes_its_outputs(trained):
    out, summary = trained
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2]
    assert set(lines[-1]["eval"]) == set(STAT_KEYS)
    assert summary["stats"] == json.loads((out / "val_stats.json").read_text())
    for name in ("best.pt", "last.pt", "config.yaml", "val_stats.json", "val_detections.json", "val_pr_curve.png"):
        assert (out / name).is_file(), name


def test_checkpoint_keeps_category_ids_and_loads_safely(trained, shapes):
    out, _ = trained
    ckpt = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    gt = json.loads(Path(shapes["val"][1]).read_text())
    real_ids = sorted(c["id"] for c in gt["categories"])
    assert sorted(int(v) for v in ckpt["meta"]["label_to_cat_id"].values()) == real_ids
    assert real_ids != list(range(1, len(real_ids) + 1))  # the synthetic ids are non-contiguous on purpose
    dets = json.loads((out / "val_detections.json").read_text())
    assert dets and {d["category_id"] for d in dets} <= set(real_ids)


def test_evaluate_cli_equals_pycocotools_and_ignores_batch_size(trained, shapes, tmp_path):
    out, summary = trained
    val_root, val_ann = shapes["val"]
    a = det_evaluate.main(["--checkpoint", str(out / "best.pt"), "--data-root", str(val_root), "--ann", str(val_ann),
                           "--out-dir", str(tmp_path / "a"), "--batch-size", "1", "--workers", "0"])
    b = det_evaluate.main(["--checkpoint", str(out / "best.pt"), "--data-root", str(val_root), "--ann", str(val_ann),
                           "--out-dir", str(tmp_path / "b"), "--batch-size", "7", "--workers", "0"])
    for key in STAT_KEYS:
        assert a[key] == pytest.approx(b[key], abs=1e-6), key
        assert a[key] == pytest.approx(summary["stats"][key], abs=1e-6), key
    # Direct pycocotools on the files the CLI wrote gives the same numbers.
    gt = COCO(str(val_ann))
    dt = gt.loadRes(str(tmp_path / "a" / "detections.json"))
    ev = COCOeval(gt, dt, "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert [a[k] for k in STAT_KEYS] == pytest.approx(list(ev.stats), abs=1e-12)
    stats = json.loads((tmp_path / "a" / "stats.json").read_text())
    assert list(stats) == list(STAT_KEYS)
    assert (tmp_path / "a" / "pr_curve.png").stat().st_size > 1000


def test_predict_draws_and_writes_json(trained, shapes, tmp_path):
    out, _ = trained
    images = sorted(Path(shapes["val"][0]).iterdir())[:2]
    records = det_predict.main(["--checkpoint", str(out / "best.pt"), *map(str, images), "--out-dir", str(tmp_path), "--score-thresh", "0.0"])
    assert len(records) == 2
    saved = json.loads((tmp_path / "detections.json").read_text())
    assert [r["image"] for r in saved] == [str(p) for p in images]
    assert any(r["detections"] for r in saved)
    for r in saved:
        assert Path(r["drawn"]).is_file()
        for d in r["detections"]:
            x, y, w, h = d["bbox"]
            assert 0 <= x and 0 <= y and x + w <= r["width"] + 0.01 and y + h <= r["height"] + 0.01
            assert 0.0 <= d["score"] <= 1.0
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        det_predict.main(["--checkpoint", str(out / "best.pt"), str(tmp_path / "nope.jpg"), "--out-dir", str(tmp_path)])


def test_resume_continues_the_same_loss_curve(shapes, tmp_path, monkeypatch):
    cfg = _write_config(tmp_path / "cfg.yaml", train={"epochs": 3}, model={"resolution": 64})
    args = ["--config", str(cfg), *_data_args(shapes), "--device", "cpu"]
    det_train.main([*args, "--output-dir", str(tmp_path / "full")])

    # The same run, killed in the middle of epoch 2 (160 images / batch 16 = 10 steps per epoch) ...
    real_loss_fn, calls = det_train._loss_fn, {"n": 0}

    def crashing_loss_fn(model, batch, device):
        calls["n"] += 1
        if calls["n"] == 15:
            raise KeyboardInterrupt("simulated crash")
        return real_loss_fn(model, batch, device)

    monkeypatch.setattr(det_train, "_loss_fn", crashing_loss_fn)
    with pytest.raises(KeyboardInterrupt):
        det_train.main([*args, "--output-dir", str(tmp_path / "part")])
    monkeypatch.setattr(det_train, "_loss_fn", real_loss_fn)
    assert torch.load(tmp_path / "part" / "last.pt", weights_only=True)["epoch"] == 1
    # ... and resumed from its last checkpoint.
    det_train.main([*args, "--output-dir", str(tmp_path / "part"), "--resume", str(tmp_path / "part" / "last.pt")])

    def curve(run):
        return [json.loads(l)["train"] for l in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    assert len(curve("full")) == 3
    assert curve("full") == curve("part")
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "part" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def _broken_copy(shapes, tmp_path, mutate):
    train_root, train_ann = shapes["train"]
    data = json.loads(Path(train_ann).read_text())
    mutate(data)
    ann = tmp_path / "broken.json"
    ann.write_text(json.dumps(data))
    return ["--data-root", str(train_root), "--ann", str(ann)]


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda d: d.pop("annotations"), "annotations"),
        (lambda d: d["annotations"][0].update(category_id=999), "999"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "bbox"),
        (lambda d: d["images"][0].update(file_name="missing.jpg"), "missing.jpg"),
    ],
)
def test_bad_annotations_give_clear_errors(shapes, tmp_path, mutate, match):
    cfg = _write_config(tmp_path / "cfg.yaml")
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        det_train.main(["--config", str(cfg), *_broken_copy(shapes, tmp_path, mutate), "--output-dir", str(tmp_path / "o")])


def test_skip_bad_images_counts_a_corrupt_file(shapes, tmp_path, capsys):
    train_root, train_ann = shapes["train"]
    data = json.loads(Path(train_ann).read_text())
    import shutil

    images = tmp_path / "images"
    shutil.copytree(train_root, images)
    first = images / data["images"][0]["file_name"]
    first.write_bytes(b"this is not a jpeg")
    data["images"] = data["images"][:24]
    keep = {im["id"] for im in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    cfg = _write_config(tmp_path / "cfg.yaml", train={"epochs": 1}, model={"resolution": 64})
    args = ["--config", str(cfg), "--data-root", str(images), "--ann", str(ann), "--output-dir", str(tmp_path / "o")]
    with pytest.raises((ValueError, OSError), match=first.name):
        det_train.main(args)
    det_train.main([*args, "--skip-bad-images"])
    assert "skipped 1 bad image" in capsys.readouterr().out


def test_non_finite_loss_stops_with_the_step(shapes, tmp_path):
    cfg = _write_config(tmp_path / "cfg.yaml", train={"epochs": 1, "lr": 1e30, "warmup_iters": 0}, model={"resolution": 64})
    from tasks.engine import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match="step"):
        det_train.main(["--config", str(cfg), *_data_args(shapes)[:4], "--output-dir", str(tmp_path / "o")])


def test_torchrun_two_processes_on_cpu(shapes, tmp_path):
    cfg = _write_config(tmp_path / "cfg.yaml", model={"resolution": 64}, train={"epochs": 1, "batch_size": 8})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "tasks.detection.train",
           "--config", str(cfg), *_data_args(shapes), "--output-dir", str(tmp_path / "ddp"), "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("detection summary") == 1  # only rank 0 reports
    assert (tmp_path / "ddp" / "best.pt").is_file()
    assert len((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()) == 1
    model, meta = load_detector(tmp_path / "ddp" / "best.pt")
    assert meta["model"]["args"]["size"] == 64 and meta["preprocess"]["resolution"] == 64
