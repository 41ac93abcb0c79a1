"""One checkpoint metadata shape and one loader for every task (tasks.checkpoint.load_model)."""
from __future__ import annotations

import pytest
import torch

from tasks.checkpoint import CHECKPOINT_FORMAT, CheckpointError, checkpoint_meta, load_model, save_checkpoint
from tasks.classifier import build_classifier, classifier_spec
from tasks.detection.build import build_detector
from tasks.faces.model import FaceEmbedder, FaceModelConfig

SPEC = classifier_spec(num_outputs=3, alpha=0.25)


def _classifier_ckpt(path, **meta_kw):
    torch.manual_seed(0)
    net = build_classifier(**SPEC)
    meta = checkpoint_meta("attributes", "classifier", SPEC, resolution=64, labels=["a", "b", "c"], **meta_kw)
    save_checkpoint(path, {"model": net.state_dict(), "meta": meta})
    return net


def test_round_trip_gives_the_same_network(tmp_path):
    net = _classifier_ckpt(tmp_path / "c.pt")
    model, meta = load_model(tmp_path / "c.pt")
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(model(x), net.eval()(x), rtol=0, atol=0)
    assert meta["format"] == CHECKPOINT_FORMAT and meta["labels"] == ["a", "b", "c"] and not model.training
    assert meta["preprocess"] == {"resolution": 64, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


def test_weights_of_another_width_name_the_tensors(tmp_path):
    other = build_classifier(num_outputs=3, alpha=0.5)
    meta = checkpoint_meta("attributes", "classifier", SPEC, resolution=64)
    save_checkpoint(tmp_path / "w.pt", {"model": other.state_dict(), "meta": meta})
    with pytest.raises(ValueError, match=r"weights do not fit the model: \d+ of other shape .*features\.") as info:
        load_model(tmp_path / "w.pt")
    assert "w.pt" in str(info.value)
    state = build_classifier(**SPEC).state_dict()
    state.pop("classifier.weight")
    state["extra.weight"] = torch.zeros(1)
    save_checkpoint(tmp_path / "m.pt", {"model": state, "meta": meta})
    with pytest.raises(ValueError, match=r"1 missing, e.g. \['classifier.weight'\]; 1 unexpected, e.g. \['extra.weight'\]"):
        load_model(tmp_path / "m.pt")


def test_task_and_format_checks(tmp_path):
    _classifier_ckpt(tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="is a attributes checkpoint; this command reads detection"):
        load_model(tmp_path / "c.pt", task="detection")
    _classifier_ckpt(tmp_path / "new.pt")
    ck = torch.load(tmp_path / "new.pt", weights_only=True)
    ck["meta"]["format"] = CHECKPOINT_FORMAT + 1
    save_checkpoint(tmp_path / "new.pt", ck)
    with pytest.raises(CheckpointError, match="format 3; this version reads up to 2"):
        load_model(tmp_path / "new.pt")
    ck["meta"]["format"] = CHECKPOINT_FORMAT
    ck["meta"]["model"]["name"] = "os.system"
    save_checkpoint(tmp_path / "evil.pt", ck)
    with pytest.raises(CheckpointError, match="names model 'os.system', which this suite does not build"):
        load_model(tmp_path / "evil.pt")


def test_files_that_are_not_checkpoints(tmp_path):
    (tmp_path / "some.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"some.json is not a checkpoint: torch.save writes a zip archive"):
        load_model(tmp_path / "some.json")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="an empty file"):
        load_model(tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="is a folder"):
        load_model(tmp_path)
    _classifier_ckpt(tmp_path / "c.pt")
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])  # a write killed half way
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(tmp_path / "cut.pt")
    save_checkpoint(tmp_path / "plain.pt", {"weights": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="not a model checkpoint"):
        load_model(tmp_path / "plain.pt")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")


# Checkpoints written before the one shape (format 1) keep loading: three layouts, one per old loader.

def test_format_1_student_with_state_prefix(tmp_path):
    torch.manual_seed(0)
    net = build_classifier(num_outputs=4, alpha=0.25)
    state = {f"student.{k}": v for k, v in net.state_dict().items()}
    state["hint_adapters.hint.weight"] = torch.zeros(2, 2, 1, 1)
    meta = {"task": "attributes", "model": {"backbone": "mobilenet_v1", "alpha": 0.25, "num_outputs": 4, "dropout": 0.0},
            "resolution": 96, "mean": [0.5] * 3, "std": [0.5] * 3, "attribute_names": list("wxyz"),
            "teacher": "torchscript:t.pt", "state_prefix": "student."}
    save_checkpoint(tmp_path / "old.pt", {"model": state, "meta": meta})
    model, new = load_model(tmp_path / "old.pt")
    assert new["task"] == "distill" and new["labels"] == list("wxyz") and new["preprocess"]["resolution"] == 96
    x = torch.rand(1, 3, 96, 96)
    torch.testing.assert_close(model(x), net.eval()(x), rtol=0, atol=0)


def test_format_1_face_and_detector(tmp_path):
    cfg = FaceModelConfig(alpha=0.25, resolution=48, embedding_dim=8)
    face = FaceEmbedder(cfg, num_classes=5)  # with a margin head, training-only
    save_checkpoint(tmp_path / "face.pt", {"model": face.state_dict(),
                                           "meta": {"face_model": cfg.to_dict(), "identities": ["p", "q"]}})
    model, meta = load_model(tmp_path / "face.pt", task="faces")
    assert meta["labels"] == ["p", "q"] and model.margin is None
    det = build_detector("ssd300", 3, alpha=0.25, size=64)
    save_checkpoint(tmp_path / "det.pt", {"model": det.state_dict(), "meta": {
        "task": "detection", "model": det.build_args, "label_to_cat_id": {"1": 7, "2": 9},
        "class_names": ["__background__", "a", "b"]}})
    model, meta = load_model(tmp_path / "det.pt", task="detection")
    assert meta["labels"] == ["__background__", "a", "b"] and meta["label_to_cat_id"] == {"1": 7, "2": 9}
    assert meta["preprocess"]["resolution"] == 64
