"""``python -m distill.train``: outputs, resume, teacher cache, held-out validation, bad images, tasks, hints."""

from __future__ import annotations

import json
import textwrap
import uuid
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from datasets.synthetic_faces import ensure_face_attributes
from distill import train as distill_train
from tasks.checkpoint import load_checkpoint, load_model

pytestmark = pytest.mark.usefixtures("one_thread")

RES = 48




class SmallTeacher(nn.Module):
    def __init__(self, outputs: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, outputs)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    return ensure_face_attributes(str(root), num_labeled=12, num_unlabeled=30, num_val=12, image_size=RES, seed=3)


def _torchscript_teacher(folder, outputs: int = 8, size: int = 40) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = SmallTeacher(outputs).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, size, size)), str(folder / "teacher.pt"))
    (folder / "teacher.yaml").write_text(yaml.safe_dump({"input_size": size, "mean": [0.5] * 3, "std": [0.5] * 3}))
    return f"torchscript:{folder / 'teacher.pt'}"


def _args(teacher, faces, out, *extra):
    return ["--teacher", teacher, "--data-root", faces["unlabeled_images"], "--val-data-root", faces["val_images"],
            "--val-ann", faces["val_labels"], "--alpha", "0.25", "--resolution", str(RES), "--batch-size", "8",
            "--output-dir", str(out), "--device", "cpu", *extra]


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_end_to_end_outputs(tmp_path, faces, capsys):
    teacher = _torchscript_teacher(tmp_path / "t")
    out = tmp_path / "run"
    summary = distill_train.main(_args(teacher, faces, out, "--epochs", "2"))
    printed = capsys.readouterr().out
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "student.pt", "summary.json", "val_ap.png"):
        assert (out / name).is_file(), name
    recs = _records(out)
    assert [r["epoch"] for r in recs] == [1, 2]
    for r in recs:
        assert 0.0 <= r["eval"]["teacher_agreement"] <= 1.0
        assert {"emulation_ce", "mean_ap"} <= set(r["eval"]) and "distill" in r["train"]
    # The summary prints agreement and both models' metric, Mult-Adds and parameters side by side.
    assert "teacher agreement:" in printed and "mean_ap" in printed and "M Mult-Adds" in printed
    table = printed.split("distill summary", 1)[1].splitlines()
    teacher_line = next(line for line in table if line.startswith("teacher "))
    student_line = next(line for line in table if line.startswith("student "))
    assert "%" in teacher_line and "%" in student_line
    assert summary["student_mult_adds"] > 0 and summary["teacher_mult_adds"] == 16 * 27 * 20 * 20 + 16 * 8
    # best.pt is chosen by validation agreement; the summary scores it again
    assert summary["teacher_agreement"] == pytest.approx(max(r["eval"]["teacher_agreement"] for r in recs))
    # student.pt is a plain MobileNet checkpoint that reproduces the evaluated model.
    student, meta = load_model(out / "student.pt")
    assert meta["task"] == "distill" and meta["output"] == "attributes"
    assert meta["preprocess"]["resolution"] == RES and len(meta["labels"]) == 8
    assert not any(k.startswith("student.") for k in load_checkpoint(out / "student.pt")["model"])
    ckpt = load_checkpoint(out / "last.pt")
    assert all(k.startswith("student.") for k in ckpt["model"])
    x = torch.randn(2, 3, RES, RES)
    from_best, _ = load_model(out / "best.pt")
    torch.testing.assert_close(student(x), from_best(x))


def test_resume_matches_uninterrupted(tmp_path, faces):
    teacher = _torchscript_teacher(tmp_path / "t")
    full, part = tmp_path / "full", tmp_path / "part"
    # A constant schedule makes "1 epoch, then resume to 2" the same run as "2 epochs" (a cosine
    # schedule depends on the total and would differ from the first step on).
    common = ("--cache-teacher", "--schedule", "constant")
    distill_train.main(_args(teacher, faces, full, "--epochs", "2", *common))
    distill_train.main(_args(teacher, faces, part, "--epochs", "1", *common))
    distill_train.main(_args(teacher, faces, part, "--epochs", "2", *common, "--resume", str(part / "last.pt")))
    a, b = _records(full), _records(part)
    assert [r["train"]["loss"] for r in a] == [r["train"]["loss"] for r in b]
    sa, sb = load_checkpoint(full / "student.pt")["model"], load_checkpoint(part / "student.pt")["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_cache_teacher_equals_teacher_in_the_loop(tmp_path, faces, capsys):
    teacher = _torchscript_teacher(tmp_path / "t")
    distill_train.main(_args(teacher, faces, tmp_path / "loop", "--epochs", "1"))
    distill_train.main(_args(teacher, faces, tmp_path / "cached", "--epochs", "1", "--cache-teacher"))
    loop, cached = _records(tmp_path / "loop")[0], _records(tmp_path / "cached")[0]
    assert cached["train"]["loss"] == pytest.approx(loop["train"]["loss"], rel=1e-4)
    assert (tmp_path / "cached" / "teacher_outputs.pt").is_file()
    capsys.readouterr()
    # A second run over the same images reuses the file; a changed teacher invalidates it.
    distill_train.main(_args(teacher, faces, tmp_path / "cached", "--epochs", "1", "--cache-teacher"))
    assert "reused from" in capsys.readouterr().out
    _torchscript_teacher(tmp_path / "t", size=44)
    (tmp_path / "t" / "teacher.yaml").write_text(yaml.safe_dump({"input_size": 44, "mean": [0.5] * 3,
                                                                 "std": [0.5] * 3}))
    distill_train.main(_args(teacher, faces, tmp_path / "cached", "--epochs", "1", "--cache-teacher"))
    assert "written to" in capsys.readouterr().out


def test_cache_teacher_refuses_augmentation(tmp_path, faces, capsys):
    teacher = _torchscript_teacher(tmp_path / "t")
    with pytest.raises(ValueError, match="--augment"):
        distill_train.main(_args(teacher, faces, tmp_path / "x", "--cache-teacher", "--augment"))


def test_held_out_tenth_without_val_images(tmp_path, faces):
    teacher = _torchscript_teacher(tmp_path / "t")
    summary = distill_train.main(["--teacher", teacher, "--data-root", faces["unlabeled_images"], "--alpha", "0.25",
                                  "--resolution", str(RES), "--epochs", "1", "--batch-size", "8", "--output-dir",
                                  str(tmp_path / "run"), "--device", "cpu"])
    assert summary["validation_images"] == 3  # a tenth of 30
    assert "mean_ap" not in summary["metrics"] and "teacher_agreement" in summary["metrics"]


def test_teacher_with_wrong_width_is_a_clear_error(tmp_path, faces, capsys):
    teacher = _torchscript_teacher(tmp_path / "t", outputs=5)
    with pytest.raises(ValueError) as info:
        distill_train.main(_args(teacher, faces, tmp_path / "run", "--epochs", "1"))
    err = str(info.value)
    assert "outputs 5 values per image but 8 are expected" in err and "teacher.pt" in err
    assert not (tmp_path / "run" / "last.pt").exists()


def _copy_faces_with_corrupt(faces, dst):
    dst.mkdir()
    for p in sorted((Path(faces["unlabeled_images"])).iterdir()):
        (dst / p.name).write_bytes(p.read_bytes())
    (dst / "sub").mkdir()
    (dst / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return dst


def test_corrupt_image_error_names_the_file(tmp_path, faces, capsys):
    teacher = _torchscript_teacher(tmp_path / "t")
    images = _copy_faces_with_corrupt(faces, tmp_path / "imgs")
    args = _args(teacher, faces, tmp_path / "run", "--epochs", "1", "--cache-teacher")
    args[args.index("--data-root") + 1] = str(images)
    with pytest.raises((ValueError, OSError), match="broken.jpg"):
        distill_train.main(args)
    summary = distill_train.main(args + ["--skip-bad-images", "--output-dir", str(tmp_path / "run2")])
    assert summary["bad_images_skipped"] == 1
    assert "skipped 1 bad image" in capsys.readouterr().out


def test_classification_with_partial_labels(tmp_path, faces):
    teacher = _torchscript_teacher(tmp_path / "t", outputs=4)
    names = sorted(p.name for p in Path(faces["unlabeled_images"]).iterdir())
    labels = tmp_path / "labels.csv"
    labels.write_text("image,label\n" + "".join(f"{n},{i % 4 if i % 3 else ''}\n" for i, n in enumerate(names[:20])))
    out = tmp_path / "run"
    summary = distill_train.main(["--teacher", teacher, "--task", "classification", "--data-root",
                                  faces["unlabeled_images"], "--ann", str(labels), "--hard-weight", "0.5",
                                  "--temperature", "2", "--alpha", "0.25", "--resolution", str(RES), "--epochs", "1",
                                  "--batch-size", "8", "--output-dir", str(out), "--device", "cpu"])
    assert {"teacher_agreement", "kl"} <= set(summary["metrics"])
    labels.write_text("image,label\n" + f"{names[0]},7\n")
    with pytest.raises(ValueError, match="class 7"):
        distill_train.main(["--teacher", teacher, "--task", "classification", "--data-root", faces["unlabeled_images"],
                            "--ann", str(labels), "--alpha", "0.25", "--resolution", str(RES), "--epochs", "1",
                            "--output-dir", str(out), "--device", "cpu"])


def test_embedding_task(tmp_path, faces):
    teacher = _torchscript_teacher(tmp_path / "t", outputs=16)
    summary = distill_train.main(["--teacher", teacher, "--task", "embedding", "--data-root", faces["unlabeled_images"],
                                  "--val-data-root", faces["val_images"], "--normalize-embeddings", "--alpha", "0.25",
                                  "--resolution", str(RES), "--epochs", "1", "--batch-size", "8", "--output-dir",
                                  str(tmp_path / "run"), "--device", "cpu"])
    m = summary["metrics"]
    assert {"teacher_agreement", "embedding_sq_dist", "cosine"} <= set(m) and 0 <= m["teacher_agreement"] <= 1


def test_feature_hint_with_module_teacher(tmp_path, faces, monkeypatch):
    name = f"distill_hint_teacher_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
        import torch
        from backbone import mobilenet_v1

        def make():
            torch.manual_seed(0)
            net = mobilenet_v1(0.25, num_classes=8)
            net.input_size, net.mean, net.std = 48, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
            return net
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    distill_train.main(_args(f"module:{name}:make", faces, out, "--epochs", "1", "--hint", "conv5:5"))
    rec = _records(out)[0]
    assert rec["train"]["hint"] > 0
    ckpt = load_checkpoint(out / "last.pt")
    assert any(k.startswith("hint_adapters.hint.") for k in ckpt["model"])
    with pytest.raises(ValueError, match="--hint"):
        distill_train.main(_args(f"module:{name}:make", faces, out, "--hint", "conv5:5", "--cache-teacher"))


def test_saved_config_reproduces_the_run(tmp_path, faces):
    teacher = _torchscript_teacher(tmp_path / "t")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"distill": {"teacher": teacher}, "data": {"root": faces["unlabeled_images"]},
                                   "model": {"alpha": 0.25, "resolution": RES},
                                   "train": {"epochs": 3, "batch_size": 8, "warmup_iters": 2}}))
    distill_train.main(["--config", str(cfg), "--epochs", "1", "--output-dir", str(tmp_path / "run"), "--device", "cpu"])
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written["train"]["epochs"] == 1 and written["model"]["alpha"] == 0.25
    assert written["train"]["warmup_iters"] == 2 and written["train"]["optimizer"] == "adamw"
    # the saved config.yaml is accepted back and repeats the run exactly
    distill_train.main(["--config", str(tmp_path / "run" / "config.yaml"), "--output-dir", str(tmp_path / "again"),
                        "--device", "cpu"])
    assert _records(tmp_path / "run")[0]["train"] == _records(tmp_path / "again")[0]["train"]
    assert yaml.safe_load((tmp_path / "again" / "config.yaml").read_text()) == written
    cfg.write_text(yaml.safe_dump({"distill": {"teacher": teacher}, "model": {"alpah": 0.5}}))
    with pytest.raises(ValueError, match=r"unknown key 'alpah' \(did you mean 'alpha'\?\)"):
        distill_train.main(["--config", str(cfg)])


def test_default_mode_uses_the_embedded_config(tmp_path, monkeypatch):
    """No --teacher/--data-root: the embedded default fills them from distill.default (stubbed here)."""
    calls = {}

    def fake_prepare(**kw):
        calls["prepare"] = kw
        return {"teacher": "torchscript:/x/t.pt", "images": "/x/u", "val_images": "/x/v", "val_labels": "/x/v.csv"}

    def fake_run(task, cfg, **kw):
        calls["cfg"] = cfg
        return {}

    import distill.default

    monkeypatch.setattr(distill.default, "prepare_default", fake_prepare)
    monkeypatch.setattr(distill_train, "run_training", fake_run)
    distill_train.main(["--epochs", "1"])
    cfg = calls["cfg"]
    assert cfg.model.alpha == 0.5 and cfg.model.resolution == 128 and cfg.distill.cache_teacher
    assert cfg.train.epochs == 1
    assert cfg.distill.teacher == "torchscript:/x/t.pt" and cfg.data.val_ann == "/x/v.csv"


def test_default_teacher_is_trained_once_into_the_cache(tmp_path, faces, monkeypatch):
    import distill.default as default

    small = {**default.DEFAULT_TEACHER, "input_size": 32, "epochs": 1, "batch_size": 6}
    monkeypatch.setattr(default, "DEFAULT_TEACHER", small)
    path = default.ensure_default_teacher(faces, cache_dir=str(tmp_path))
    folder = path.parent
    assert folder.parent == tmp_path and folder.name.startswith("distill-teacher-v")
    assert sorted(p.name for p in folder.iterdir()) == [".complete", "info.json", "metrics.jsonl", "teacher.pt",
                                                        "teacher.yaml"]
    assert json.loads((folder / "info.json").read_text())["settings"]["input_size"] == 32
    trained = []
    monkeypatch.setattr(default, "_train_teacher", lambda *a: trained.append(a))
    assert default.ensure_default_teacher(faces, cache_dir=str(tmp_path)) == path
    assert trained == []  # reused, not retrained
    monkeypatch.setattr(default, "DEFAULT_TEACHER", {**small, "epochs": 2})
    other = default.ensure_default_teacher(faces, cache_dir=str(tmp_path))  # other settings: trained anew
    assert other.parent != folder and len(trained) == 1


def test_missing_teacher_or_images(tmp_path):
    with pytest.raises(ValueError, match="--teacher"):
        distill_train.main(["--data-root", str(tmp_path)])
