"""The task scaffold, held to the same contract for every training entry point.

One flag vocabulary, a saved ``config.yaml`` that repeats the run, one error ending (``error: ...``,
exit 2), ``summary.json`` of best.pt, and ``torchrun --nproc_per_node=2`` on the CPU.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from datasets.synthetic_dogs import write_stanford_dogs_layout
from datasets.synthetic_faces import ensure_face_attributes
from datasets.synthetic_geotagged import write_synthetic_geotagged
from datasets.synthetic_identities import write_synthetic_faces
from datasets.synthetic_shapes import write_shapes_dataset
from tasks.checkpoint import load_model
from tasks.flags import COMMON_TRAIN_FLAGS

ROOT = Path(__file__).resolve().parents[1]
RES = 48
ENTRY_POINTS = ["tasks.detection.train", "tasks.faces.train", "tasks.attributes.train", "distill.train",
                "tasks.finegrained.train", "tasks.geolocation.train"]


class _Teacher(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaffold")
    shapes_train = write_shapes_dataset(root / "shapes_train", num_images=24, image_size=64, seed=1, split_name="train",
                                        max_objects=2)
    shapes_val = write_shapes_dataset(root / "shapes_val", num_images=8, image_size=64, seed=2, split_name="val",
                                      max_objects=2)
    ids = write_synthetic_faces(root / "ids", num_train_identities=12, num_test_identities=6, images_per_identity=4,
                                test_images_per_identity=4, probe_images_per_identity=1, image_size=RES, num_folds=2,
                                pairs_per_fold=10, seed=0)
    attrs = ensure_face_attributes(str(root / "attrs"), num_labeled=24, num_unlabeled=24, num_val=12, image_size=RES,
                                   seed=4)
    write_stanford_dogs_layout(root / "dogs", num_breeds=3, images_per_breed=8, train_per_breed=5, size=(48, 40))
    geo = write_synthetic_geotagged(root / "geo", num_train=160, num_val=24, image_size=RES, seed=0)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(_Teacher().eval(), torch.zeros(1, 3, 40, 40)), str(root / "teacher.pt"))
    (root / "teacher.yaml").write_text(yaml.safe_dump({"input_size": 40, "mean": [0.5] * 3, "std": [0.5] * 3}))
    det_cfg = root / "det.yaml"
    det_cfg.write_text(yaml.safe_dump({
        "model": {"arch": "ssd300", "alpha": 0.25, "resolution": 64},
        "data": {"dataset": "coco", "workers": 0, "zoom_out_max": 1.0, "eval_batch_size": 8},
        "train": {"epochs": 1, "batch_size": 8, "optimizer": "adamw", "lr": 0.003},
    }))
    face_cfg = root / "faces.yaml"
    face_cfg.write_text(yaml.safe_dump({
        "model": {"alpha": 0.25, "resolution": RES, "embedding_dim": 16},
        "data": {"augment": False, "workers": 0, "eval_batch_size": 32},
        "sampler": {"images_per_identity": 2, "batches_per_epoch": 3},
        "train": {"epochs": 1, "batch_size": 8, "optimizer": "adamw", "lr": 0.01},
    }))
    small = ["--alpha", "0.25", "--resolution", str(RES), "--epochs", "1", "--batch-size", "8", "--workers", "0"]
    return {
        "tasks.detection.train": ["--config", str(det_cfg), "--data-root", str(shapes_train[0]), "--ann",
                                  str(shapes_train[1]), "--val-data-root", str(shapes_val[0]), "--val-ann",
                                  str(shapes_val[1])],
        "tasks.faces.train": ["--config", str(face_cfg), "--data-root", ids["train"], "--val-ann", ids["pairs"],
                              "--val-data-root", ids["test"]],
        "tasks.attributes.train": ["--data-root", attrs["labeled_images"], "--ann", attrs["labeled_labels"],
                                   "--val-data-root", attrs["val_images"], "--val-ann", attrs["val_labels"], *small],
        "distill.train": ["--teacher", f"torchscript:{root / 'teacher.pt'}", "--data-root", attrs["unlabeled_images"],
                          "--val-data-root", attrs["val_images"], "--val-ann", attrs["val_labels"], *small],
        "tasks.finegrained.train": ["--data-root", str(root / "dogs"), *small],
        "tasks.geolocation.train": ["--data-root", geo["train_root"], "--ann", geo["train_ann"], "--val-data-root",
                                    geo["val_root"], "--val-ann", geo["val_ann"], "--t-min", "3", "--t-max", "40",
                                    *small],
    }


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_entry_point_speaks_the_common_flags(entry):
    parser = importlib.import_module(entry).build_parser()
    options = {o for a in parser._actions for o in a.option_strings}
    for dest in [*COMMON_TRAIN_FLAGS, "amp", "config", "output_dir", "resume", "device"]:
        assert "--" + dest.replace("_", "-") in options, (entry, dest)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_saved_config_repeats_the_run(entry, data, tmp_path):
    main = importlib.import_module(entry).main
    first = main([*data[entry], "--output-dir", str(tmp_path / "a"), "--device", "cpu"])
    saved = tmp_path / "a" / "config.yaml"
    again = main(["--config", str(saved), "--output-dir", str(tmp_path / "b"), "--device", "cpu"])
    assert yaml.safe_load(saved.read_text()) == yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())
    a, b = _records(tmp_path / "a"), _records(tmp_path / "b")
    assert [r["train"] for r in a] == [r["train"] for r in b]
    assert [r["eval"] for r in a] == [r["eval"] for r in b]
    assert first["metrics"] == again["metrics"]
    # summary.json: best.pt's final metrics, the checkpoints, the wall time; best.pt reloads by the one loader
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert {"task", "metrics", "best_checkpoint", "last_checkpoint", "wall_time_s", "selected_by"} <= set(summary)
    assert summary["selected_by"]["split"] == "val"
    _, meta = load_model(summary["best_checkpoint"])
    assert {"task", "model", "preprocess", "labels"} <= set(meta)


def _cli(entry: str, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", entry, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_epochs_zero_is_one_error_line_and_exit_2(entry, data, tmp_path):
    proc = _cli(entry, *data[entry], "--epochs", "0", "--output-dir", str(tmp_path / "o"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "epochs=0" in lines[0], proc.stderr
    assert not (tmp_path / "o").exists()


def test_a_flag_a_task_cannot_use_is_an_error(data, tmp_path):
    proc = _cli("tasks.faces.train", *data["tasks.faces.train"], "--ann", "labels.csv")
    assert proc.returncode == 2 and "takes no annotation file" in proc.stderr


@pytest.mark.parametrize("entry", ["tasks.faces.train", "tasks.attributes.train", "distill.train",
                                   "tasks.finegrained.train",
                                   "tasks.geolocation.train"])
def test_torchrun_two_processes_on_cpu(entry, data, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", entry,
           *data[entry], "--output-dir", str(tmp_path / "ddp"), "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count(" summary\n") == 1  # rank 0 alone reports
    out = tmp_path / "ddp"
    assert len(_records(out)) == 1
    summary = json.loads((out / "summary.json").read_text())
    model, meta = load_model(out / "best.pt")
    assert summary["metrics"] and meta["task"] == summary["task"]
    assert torch.load(out / "last.pt", weights_only=True)["world_size"] == 2


def test_resume_refuses_a_changed_config_unless_told(data, tmp_path):
    main = importlib.import_module("tasks.attributes.train").main
    args = [*data["tasks.attributes.train"], "--output-dir", str(tmp_path / "r"), "--device", "cpu"]
    main(args)
    last = str(tmp_path / "r" / "last.pt")
    main([*args, "--epochs", "2", "--resume", last])  # more epochs: the schedule follows the new total
    assert len(_records(tmp_path / "r")) == 2
    with pytest.raises(ValueError, match=r"differs from the checkpoint's in train.lr: 0.01 -> 0.5"):
        main([*args, "--epochs", "3", "--lr", "0.5", "--resume", last])
    main([*args, "--epochs", "3", "--lr", "0.5", "--resume", last, "--resume-anyway"])
    assert len(_records(tmp_path / "r")) == 3
