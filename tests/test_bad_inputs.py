"""Bad inputs across the commands: each ends in one ``error: ...`` line naming what is wrong, exit status 2.

A table: (command, how to break its input, the fragment the message must contain). Every row runs the
command's ``main`` through the one ending (``run_cli``) the ``python -m`` entry points use.
"""
from __future__ import annotations

import importlib
import json
import struct
import sys
import zlib
from pathlib import Path

import pytest
import torch
import yaml

from datasets.synthetic_shapes import write_shapes_dataset
from tasks.checkpoint import checkpoint_meta, save_checkpoint
from tasks.cli import run_cli
from tasks.detection.build import build_detector
from tasks.faces.model import FaceEmbedder, FaceModelConfig


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    shapes_root, shapes_ann = write_shapes_dataset(root / "shapes", num_images=4, image_size=64, seed=0,
                                                   split_name="train", max_objects=1)
    det = build_detector("ssd300", 6, alpha=0.25, size=64)
    meta = checkpoint_meta("detection", "detector", det.build_args, resolution=64, labels=[f"c{i}" for i in range(6)],
                           label_to_cat_id={str(i): i for i in range(1, 6)})
    save_checkpoint(root / "det.pt", {"model": det.state_dict(), "meta": meta})
    face_cfg = FaceModelConfig(alpha=0.25, resolution=48, embedding_dim=8)
    save_checkpoint(root / "face.pt", {"model": FaceEmbedder(face_cfg).state_dict(),
                                       "meta": checkpoint_meta("faces", "face_embedder", face_cfg.to_dict(),
                                                               resolution=48)})
    (root / "some.json").write_text("{}")
    (root / "broken.jpg").write_bytes(b"this is not a jpeg")
    (root / "empty.jpg").write_bytes(b"")
    (root / "not_json.json").write_text("{ this is not json")
    (root / "unknown_key.yaml").write_text(yaml.safe_dump({"train": {"lr_rate": 0.1}}))
    (root / "wrong_type.yaml").write_text(yaml.safe_dump({"train": {"epochs": "ten"}}))
    (root / "a_file").write_text("x")
    (root / "pairs.txt").write_text("2 300\nAaron 1 2\nBob\n")
    (root / "bomb.png").write_bytes(_png_header_only(30000, 30000))  # 900 M pixels claimed by a tiny file
    (root / "a_folder.jpg").mkdir()
    ann = json.loads(Path(shapes_ann).read_text())
    ann["annotations"][0]["category_id"] = 999
    (root / "unknown_cat.json").write_text(json.dumps(ann))
    return {"root": root, "images": shapes_root, "ann": shapes_ann}


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with no pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _cases():
    # (id, command, argv(files) -> list, fragment(files) -> str)
    return [
        ("predict-not-an-image", "tasks.detection.predict",
         lambda f: ["--checkpoint", str(f["root"] / "det.pt"), str(f["root"] / "broken.jpg")], lambda f: "broken.jpg"),
        ("predict-zero-bytes", "tasks.detection.predict",
         lambda f: ["--checkpoint", str(f["root"] / "det.pt"), str(f["root"] / "empty.jpg")], lambda f: "empty.jpg"),
        ("predict-missing-image", "tasks.detection.predict",
         lambda f: ["--checkpoint", str(f["root"] / "det.pt"), str(f["root"] / "nope.jpg")], lambda f: "nope.jpg"),
        ("predict-decompression-bomb", "tasks.detection.predict",
         lambda f: ["--checkpoint", str(f["root"] / "det.pt"), str(f["root"] / "bomb.png")],
         lambda f: "bomb.png: DecompressionBombError"),
        ("predict-folder-given-as-image", "tasks.detection.predict",
         lambda f: ["--checkpoint", str(f["root"] / "det.pt"), str(f["root"] / "a_folder.jpg")],
         lambda f: "a_folder.jpg"),
        ("predict-folder-given-as-checkpoint", "tasks.detection.predict",
         lambda f: ["--checkpoint", str(f["root"]), str(f["root"] / "broken.jpg")], lambda f: "is a folder"),
        ("evaluate-not-a-checkpoint", "tasks.detection.evaluate",
         lambda f: ["--checkpoint", str(f["root"] / "some.json")], lambda f: "some.json is not a checkpoint"),
        ("evaluate-checkpoint-of-another-task", "tasks.detection.evaluate",
         lambda f: ["--checkpoint", str(f["root"] / "face.pt"), "--data-root", f["images"], "--ann", f["ann"]],
         lambda f: "is a faces checkpoint; this command reads detection"),
        ("evaluate-missing-checkpoint", "tasks.detection.evaluate",
         lambda f: ["--checkpoint", str(f["root"] / "gone.pt")], lambda f: "gone.pt"),
        ("faces-evaluate-malformed-pairs", "tasks.faces.evaluate",
         lambda f: ["--pairs", str(f["root"] / "pairs.txt"), "--data-root", str(f["root"]), "--checkpoint",
                    str(f["root"] / "face.pt")], lambda f: "pairs.txt"),
        ("faces-evaluate-detector-checkpoint", "tasks.faces.evaluate",
         lambda f: ["--pairs", str(f["root"] / "pairs.txt"), "--data-root", str(f["root"]), "--checkpoint",
                    str(f["root"] / "det.pt")], lambda f: "pairs.txt"),
        ("train-missing-config", "tasks.detection.train",
         lambda f: ["--config", str(f["root"] / "missing.yaml")], lambda f: "config file not found"),
        ("train-unknown-config-key", "tasks.detection.train",
         lambda f: ["--config", str(f["root"] / "unknown_key.yaml")], lambda f: "did you mean 'lr'?"),
        ("train-config-value-of-wrong-type", "tasks.detection.train",
         lambda f: ["--config", str(f["root"] / "wrong_type.yaml")], lambda f: "train.epochs='ten': expected an integer"),
        ("train-epochs-zero", "tasks.detection.train", lambda f: ["--epochs", "0"], lambda f: "epochs=0"),
        ("train-annotations-not-json", "tasks.detection.train",
         lambda f: ["--data-root", f["images"], "--ann", str(f["root"] / "not_json.json"), "--epochs", "1"],
         lambda f: "not_json.json"),
        ("train-box-of-unknown-category", "tasks.detection.train",
         lambda f: ["--data-root", f["images"], "--ann", str(f["root"] / "unknown_cat.json"), "--epochs", "1"],
         lambda f: "999"),
        ("train-output-dir-is-a-file", "tasks.detection.train",
         lambda f: ["--data-root", f["images"], "--ann", f["ann"], "--epochs", "1", "--resolution", "64",
                    "--output-dir", str(f["root"] / "a_file")], lambda f: "is a file, not a folder"),
        ("train-annotation-file-is-a-folder", "tasks.detection.train",
         lambda f: ["--data-root", f["images"], "--ann", str(f["root"] / "a_folder.jpg"), "--epochs", "1"],
         lambda f: "a_folder.jpg"),
        ("train-data-root-without-ann", "tasks.detection.train",
         lambda f: ["--data-root", f["images"]], lambda f: "--data-root and --ann go together"),
        ("faces-train-annotation-flag", "tasks.faces.train",
         lambda f: ["--ann", "labels.csv"], lambda f: "takes no annotation file"),
        ("attributes-missing-labels", "tasks.attributes.train",
         lambda f: ["--data-root", str(f["root"])], lambda f: "--ann"),
        ("attributes-missing-label-file", "tasks.attributes.train",
         lambda f: ["--data-root", str(f["root"]), "--ann", str(f["root"] / "labels.csv")], lambda f: "labels.csv"),
        ("distill-missing-teacher-file", "distill.train",
         lambda f: ["--teacher", f"torchscript:{f['root'] / 'teacher.pt'}", "--data-root", f["images"]],
         lambda f: "teacher.pt"),
        ("distill-cache-with-augment", "distill.train",
         lambda f: ["--teacher", "torchscript:t.pt", "--data-root", f["images"], "--cache-teacher", "--augment"],
         lambda f: "--augment"),
        ("coco-eval-missing-ground-truth", "eval.coco",
         lambda f: ["--gt", str(f["root"] / "gt.json"), "--dt", str(f["root"] / "some.json")], lambda f: "gt.json"),
        ("export-weights-not-a-checkpoint", "backbone.export",
         lambda f: ["--alpha", "0.25", "--resolution", "64", "--out", str(f["root"] / "m.onnx"), "--weights",
                    str(f["root"] / "some.json")], lambda f: "some.json"),
    ]


CASES = _cases()


@pytest.mark.parametrize("command,argv,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_exit_2(command, argv, fragment, files, monkeypatch, capsys):
    main = importlib.import_module(command).main
    args = argv(files)
    monkeypatch.setattr(sys, "argv", [command, *args])
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: main(args))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "Warning" not in line]
    assert info.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment(files) in lines[0], err
    assert "Traceback" not in err


def test_device_without_cuda_is_a_user_error(files, monkeypatch, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    main = importlib.import_module("tasks.detection.train").main
    args = ["--data-root", files["images"], "--ann", files["ann"], "--device", "cuda", "--epochs", "1",
            "--output-dir", str(files["root"] / "cuda_run")]
    monkeypatch.setattr(sys, "argv", ["tasks.detection.train", *args])
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: main(args))
    assert info.value.code == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_debug_shows_the_traceback(files, monkeypatch):
    main = importlib.import_module("tasks.detection.evaluate").main
    args = ["--checkpoint", str(files["root"] / "some.json"), "--debug"]
    monkeypatch.setattr(sys, "argv", ["tasks.detection.evaluate", *args])
    with pytest.raises(ValueError, match="not a checkpoint"):
        run_cli(lambda: main(args))
