"""Section 4.7 distillation: a student trained on the squared difference to a frozen teacher's
embeddings (a TorchScript archive here, loaded through distill.teachers) gets closer to it."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from datasets.faces import face_transform, scan_identity_folders
from datasets.images import load_rgb_image
from datasets.synthetic_identities import write_synthetic_faces
from tasks.faces import train as train_cli
from tasks.config import read_yaml_mapping
from tasks.faces.config import FacesConfig, load_config
from tasks.faces.embed import embed_paths
from tasks.faces.losses import collapse_score
from tasks.faces.model import FaceEmbedder, FaceModelConfig, load_face_model

RES = 32


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # the CI machine is a shared 2-core box; one thread is faster there and keeps timings stable
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    data = write_synthetic_faces(root / "data", num_train_identities=8, num_test_identities=4, images_per_identity=4,
                                 test_images_per_identity=3, probe_images_per_identity=0, image_size=RES,
                                 num_folds=2, pairs_per_fold=3)
    torch.manual_seed(1)
    teacher = FaceEmbedder(FaceModelConfig(alpha=0.5, resolution=RES, embedding_dim=24))
    # calibrate BatchNorm on real faces so the (untrained) teacher's embeddings differ between images
    paths = [s.path for s in scan_identity_folders(data["train"])]
    for m in teacher.modules():
        if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            m.momentum = None  # cumulative average
    with torch.no_grad():
        teacher.train()(torch.stack([face_transform(RES)(load_rgb_image(p)) for p in paths]))
    teacher.eval()
    scripted = torch.jit.trace(teacher, torch.rand(2, 3, RES, RES))
    path = root / "teacher.pt"
    scripted.save(str(path))
    # the teacher's own description of its input (0..1 pixels: it normalises internally)
    (root / "teacher.yaml").write_text(yaml.safe_dump({"input_size": RES, "mean": [0, 0, 0], "std": [1, 1, 1],
                                                       "output": "embedding"}))
    cfg = {
        "model": {"alpha": 0.25, "resolution": RES},
        "data": {"augment": False},
        "sampler": {"images_per_identity": 4, "batches_per_epoch": 20},
        "train": {"epochs": 2, "batch_size": 16, "optimizer": "adamw", "lr": 0.01, "weight_decay": 0.0, "seed": 0},
    }
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return root, data, teacher, f"torchscript:{path}"


def _run(root, data, teacher_spec, out, *extra):
    return train_cli.main(["--config", str(root / "cfg.yaml"), "--data-root", data["train"], "--val-ann",
                           data["pairs"], "--val-data-root", data["test"], "--teacher", teacher_spec,
                           "--output-dir", str(out), "--device", "cpu", *extra])


def test_distillation_moves_the_student_towards_the_teacher(setup, tmp_path):
    root, data, teacher, spec = setup
    # 3 epochs: after 2 the distance ratio sat at 0.37-0.51 over training seeds (before the P x K sampler
    # too), on the 0.5 line; after 3 it is 0.16-0.25.
    _run(root, data, spec, tmp_path / "run", "--epochs", "3")
    recs = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert set(recs[0]["train"]) == {"loss", "distill"}  # distillation alone
    student, _ = load_face_model(tmp_path / "run" / "last.pt")
    assert student.cfg.embedding_dim == 24  # taken from the teacher
    paths = [s.path for s in scan_identity_folders(data["train"])]
    t = torch.from_numpy(embed_paths(teacher, paths, resolution=RES))
    after = ((torch.from_numpy(embed_paths(student, paths)) - t) ** 2).sum(1).mean()
    torch.manual_seed(0)
    untrained = FaceEmbedder(student.cfg).eval()
    before = ((torch.from_numpy(embed_paths(untrained, paths)) - t) ** 2).sum(1).mean()
    assert collapse_score(t) > 0.3  # a teacher whose embeddings differ between faces
    assert after < 0.5 * before, (float(before), float(after))
    assert recs[-1]["train"]["loss"] < recs[0]["train"]["loss"]


def test_distillation_mixed_with_triplets(setup, tmp_path):
    root, data, _, spec = setup
    _run(root, data, spec, tmp_path / "mix", "--loss", "distill+semihard", "--epochs", "1")
    rec = json.loads((tmp_path / "mix" / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(rec["train"]) == {"loss", "distill", "triplet"}
    assert rec["train"]["loss"] == pytest.approx(rec["train"]["distill"] + rec["train"]["triplet"], rel=1e-5)


def test_teacher_size_mismatch_and_missing_teacher(setup, tmp_path):
    root, data, _, spec = setup
    with pytest.raises(ValueError, match="24-d"):
        _run(root, data, spec, tmp_path / "bad", "--embedding-dim", "16")
    with pytest.raises(ValueError, match="needs a teacher"):
        train_cli.main(["--config", str(root / "cfg.yaml"), "--data-root", data["train"], "--loss", "distill",
                        "--output-dir", str(tmp_path / "x")])
    with pytest.raises(FileNotFoundError):
        _run(root, data, "torchscript:/nonexistent/teacher.pt", tmp_path / "y")


def test_paper_configs_load():
    for name, alpha, res in (("1.0_160", 1.0, 160), ("1.0_128", 1.0, 128), ("0.75_128", 0.75, 128)):
        cfg = FacesConfig.from_dict(read_yaml_mapping(f"configs/faces/facenet_distill_{name}.yaml"))
        assert (cfg.model.alpha, cfg.model.resolution, cfg.loss.name) == (alpha, res, "distill")
