"""``python -m tasks.attributes.train`` / ``.evaluate``: supervised multi-label MobileNet, per-attribute AP table."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from datasets.attributes import read_attribute_file
from datasets.synthetic_faces import ATTRIBUTE_NAMES, ensure_face_attributes
from tasks.attributes import evaluate as attr_eval
from tasks.attributes import train as attr_train
from tasks.attributes.model import build_attribute_model
from tasks.checkpoint import checkpoint_meta, load_model, save_checkpoint
from tasks.classifier import classifier_spec

pytestmark = pytest.mark.usefixtures("one_thread")

RES = 48




@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return ensure_face_attributes(str(tmp_path_factory.mktemp("faces")), num_labeled=24, num_unlabeled=4, num_val=12,
                                  image_size=RES, seed=5)


@pytest.fixture(scope="module")
def many_faces(tmp_path_factory):
    return ensure_face_attributes(str(tmp_path_factory.mktemp("many")), num_labeled=800, num_unlabeled=4,
                                  num_val=120, image_size=64, seed=6, nuisance_strength=0.5)


def _chance_mean_ap(labels_file: str) -> float:
    """Mean AP of an uninformed ranking: each attribute's share of positives among its known labels."""
    table = read_attribute_file(labels_file)
    values = np.asarray(table.labels, dtype=float)
    known = ~np.isnan(values)
    return float(np.mean([values[known[:, j], j].mean() for j in range(values.shape[1])]))


def test_training_learns_well_above_chance(tmp_path, many_faces):
    """The default recipe, shortened: only the data, the model size and the epochs are given."""
    out = tmp_path / "run"
    summary = attr_train.main([
        "--data-root", many_faces["labeled_images"], "--ann", many_faces["labeled_labels"],
        "--val-data-root", many_faces["val_images"], "--val-ann", many_faces["val_labels"],
        "--alpha", "0.5", "--resolution", "64", "--epochs", "10", "--output-dir", str(out), "--device", "cpu"])
    chance = _chance_mean_ap(many_faces["val_labels"])
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # held-out faces, scored by the same code as tasks.attributes.evaluate. When written: 0.60, chance 0.28
    assert summary["mean_ap"] > chance + 0.15, (summary["mean_ap"], chance)
    assert summary["mean_ap"] > recs[0]["eval"]["mean_ap"]
    assert json.loads((out / "summary.json").read_text())["metrics"]["mean_ap"] == pytest.approx(summary["mean_ap"])
    assert (out / "val_ap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_then_evaluate(tmp_path, faces, capsys):
    out = tmp_path / "run"
    res = attr_train.main(["--data-root", faces["labeled_images"], "--ann", faces["labeled_labels"],
                           "--val-data-root", faces["val_images"], "--val-ann", faces["val_labels"],
                           "--alpha", "0.25", "--resolution", str(RES), "--epochs", "2", "--batch-size", "8",
                           "--optimizer", "adamw", "--lr", "0.003", "--output-dir", str(out), "--device", "cpu"])
    printed = capsys.readouterr().out
    assert "mean AP" in printed and "Wearing_Hat" in printed
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and {"mean_ap", "ap/Smiling"} <= set(recs[-1]["eval"])
    model, meta = load_model(out / "best.pt")
    assert meta["task"] == "attributes" and meta["labels"] == list(ATTRIBUTE_NAMES)
    assert meta["preprocess"]["resolution"] == RES
    best_ap = max(r["eval"]["mean_ap"] for r in recs)
    assert res["mean_ap"] == pytest.approx(best_ap, abs=1e-6)  # the summary scores best.pt, chosen on val

    results = attr_eval.main(["--checkpoint", str(out / "best.pt"), "--data-root", faces["val_images"], "--ann",
                              faces["val_labels"], "--device", "cpu", "--out-dir", str(tmp_path / "eval")])
    (only,) = results.values()
    assert only.mean_ap == pytest.approx(res["mean_ap"], abs=1e-6)  # same model, same images: same number
    payload = json.loads((tmp_path / "eval" / "ap.json").read_text())
    assert set(next(iter(payload.values()))["ap"]) == set(ATTRIBUTE_NAMES)


def test_held_out_tenth_and_partition(tmp_path, faces):
    part = tmp_path / "list_eval_partition.txt"
    names = read_attribute_file(faces["labeled_labels"]).image_names
    part.write_text("".join(f"{n} {0 if i < 18 else 1}\n" for i, n in enumerate(names)))
    common = ["--data-root", faces["labeled_images"], "--ann", faces["labeled_labels"], "--alpha", "0.25",
              "--resolution", str(RES), "--epochs", "1", "--batch-size", "8", "--device", "cpu"]
    attr_train.main(common + ["--output-dir", str(tmp_path / "a")])
    attr_train.main(common + ["--partition", str(part), "--output-dir", str(tmp_path / "b")])
    cfg = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())
    assert cfg["data"]["partition"] == str(part)


def test_old_flag_spellings_still_work_and_warn(tmp_path, faces):
    with pytest.warns(FutureWarning, match="--images is deprecated; use --data-root"):
        attr_train.main(["--images", faces["labeled_images"], "--labels", faces["labeled_labels"], "--alpha", "0.25",
                         "--resolution", str(RES), "--epochs", "1", "--batch-size", "8", "--device", "cpu",
                         "--output-dir", str(tmp_path / "o")])
    assert (tmp_path / "o" / "best.pt").is_file()


def test_evaluate_a_teacher_and_errors(tmp_path, faces, capsys):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 8)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, 32, 32)), str(tmp_path / "t.pt"))
    args = ["--teacher", f"torchscript:{tmp_path / 't.pt'}", "--teacher-input-size", "32", "--teacher-mean", "0.5",
            "0.5", "0.5", "--teacher-std", "0.5", "0.5", "0.5", "--data-root", faces["val_images"], "--ann",
            faces["val_labels"], "--device", "cpu"]
    results = attr_eval.main(args)
    assert "torchscript teacher" in results and "mean AP" in capsys.readouterr().out
    # A model trained on other attributes is refused with both lists in the message.
    other = build_attribute_model(2, alpha=0.25)
    meta = checkpoint_meta("attributes", "classifier", classifier_spec(num_outputs=2, alpha=0.25), resolution=RES,
                           labels=["A", "B"])
    save_checkpoint(tmp_path / "other.pt", {"model": other.state_dict(), "meta": meta})
    with pytest.raises(ValueError, match=r"\['A', 'B'\]"):
        attr_eval.main(["--checkpoint", str(tmp_path / "other.pt"), "--data-root", faces["val_images"], "--ann",
                        faces["val_labels"], "--device", "cpu"])
    with pytest.raises(ValueError, match="--checkpoint or --teacher"):
        attr_eval.main(["--data-root", faces["val_images"], "--ann", faces["val_labels"]])


def test_missing_labels_flag():
    with pytest.raises(ValueError, match="--ann"):
        attr_train.main(["--data-root", "/nonexistent"])


TABLE12 = {  # (alpha, resolution): (million Mult-Adds, million parameters) as Table 12 prints them
    (1.0, 224): (568, 3.2), (0.5, 224): (149, 0.8), (0.25, 224): (45, 0.2),
    (1.0, 128): (185, 3.2), (0.5, 128): (48, 0.8), (0.25, 128): (15, 0.2),
}


@pytest.mark.parametrize("kind", ["attributes", "distill"])
def test_table12_configs_parse_and_match_the_paper_cost(kind):
    """Each grid config builds the network of its Table 12 row (40 CelebA attributes)."""
    from pathlib import Path

    import configs
    from distill.cost import student_cost
    from distill.train import DistillConfig
    from tasks.config import load_config

    cls = attr_train.AttributesConfig if kind == "attributes" else DistillConfig
    files = sorted((Path(configs.__file__).parent / kind).glob("table12_*.yaml"))
    assert len(files) == 6
    overrides = {"data": {"root": "imgs", "ann": "labels.csv"}}
    if kind == "distill":
        overrides["distill"] = {"teacher": "torchscript:t.pt"}
    for f in files:
        cfg = load_config(cls, f, overrides=overrides)
        ma, params = student_cost(build_attribute_model(40, alpha=cfg.model.alpha), cfg.model.resolution)
        paper_ma, paper_params = TABLE12[(cfg.model.alpha, cfg.model.resolution)]
        assert round(params / 1e6, 1) == paper_params, f
        if cfg.model.alpha != 0.25:  # Table 12 prints 45/15 M for 0.25; Table 6's 41 M is what the network has
            assert abs(ma / 1e6 - paper_ma) < 1.0, f
        assert cfg.train.warmup_iters == 500
