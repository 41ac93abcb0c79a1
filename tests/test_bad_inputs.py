"""Bad inputs across the commands: each ends in one ``error: ...`` line naming what is wrong, exit status 2.

The table :data:`CASES` holds (id, command, argv, the fragment the message must contain); argv and fragment
are ``str.format`` templates over the files that :func:`build_world` writes once per module (tiny images,
annotation files of every format the suite reads, and tiny checkpoints of every task written through the
real ``checkpoint_meta`` / ``save_checkpoint`` path, never by training). Every row runs the command's
``main`` in this process through the one ending the ``python -m`` entry points use (``run_cli``), which
costs no interpreter start and no second torch import; a few rows at the end run real subprocesses to hold
the exit status and the traceback rule end to end.

After the table: output folders that cannot be written (as root too), odd but valid images, bad files among
good ones with and without ``--skip-bad-images`` (predict and evaluate commands), an image that turns bad while a
training run is under way (detection, and attribute training with a DataLoader worker: skipped, counted and
named in ``summary.json``, or the run stops naming it with the last checkpoint intact), ``--resume`` with other
settings, and writes that fail part-way (a checkpoint, an export, a partition) leaving the previous file whole.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from datasets.faces import write_pairs
from datasets.stanford_dogs import read_stanford_dogs
from datasets.synthetic_dogs import write_mat_list, write_stanford_dogs_layout
from datasets.synthetic_shapes import write_shapes_dataset
from tasks.checkpoint import CHECKPOINT_FORMAT, checkpoint_meta, save_checkpoint
from tasks.classifier import build_classifier, classifier_spec
from tasks.cli import run_cli
from tasks.detection.build import build_detector
from tasks.faces.model import FaceEmbedder, FaceModelConfig
from tasks.geolocation.model import partition_meta
from tasks.geolocation.partition import build_partitions, write_cells_csv

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
RES = 32  # every tiny classifier's input side


# --------------------------------------------------------------------------------------------------
# the files


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with no pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _noise(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _write_images(d: Path) -> None:
    d.mkdir(parents=True)
    _noise((RES, RES), 0).save(d / "good.png")
    (d / "not_image.jpg").write_text("this is not a jpeg")
    (d / "zero.jpg").write_bytes(b"")
    buf = d / "whole.jpg"
    _noise((64, 64), 1).save(buf, quality=90)
    data = buf.read_bytes()
    buf.unlink()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "bomb.png").write_bytes(_png_header_only(30000, 30000))  # 900 M pixels claimed by a tiny file
    grey16 = (np.linspace(0, 65535, RES * RES).reshape(RES, RES)).astype(np.uint16)
    Image.fromarray(grey16).save(d / "grey16.png")
    Image.new("CMYK", (RES, RES), (10, 200, 30, 0)).save(d / "cmyk.jpg")
    (d / "a_folder.jpg").mkdir()


def _write_checkpoints(r: Path, w: dict[str, str]) -> None:
    torch.manual_seed(0)
    cats = sorted(c["id"] for c in json.loads(Path(w["coco"]).read_text())["categories"])
    det = build_detector("ssd300", len(cats) + 1, alpha=0.25, size=64)
    det_meta = checkpoint_meta("detection", "detector", det.build_args, resolution=64,
                               labels=["background"] + [f"c{c}" for c in cats],
                               label_to_cat_id={str(i + 1): c for i, c in enumerate(cats)})
    save_checkpoint(r / "det.pt", {"model": det.state_dict(), "meta": det_meta})
    face_cfg = FaceModelConfig(alpha=0.25, resolution=RES, embedding_dim=8)
    save_checkpoint(r / "face.pt", {"model": FaceEmbedder(face_cfg).state_dict(),
                                    "meta": checkpoint_meta("faces", "face_embedder", face_cfg.to_dict(),
                                                            resolution=RES)})
    dogs = read_stanford_dogs(w["dogs"])
    n = len(dogs.classes)
    spec = classifier_spec(num_outputs=n, alpha=0.25)
    fg_meta = checkpoint_meta("finegrained", "classifier", spec, resolution=RES, labels=dogs.classes.names,
                              output="classes", classes=dogs.classes.as_dict(), crop="none",
                              holdout={"val_fraction": 0.1, "seed": 0})
    save_checkpoint(r / "fg.pt", {"model": build_classifier(**spec).state_dict(), "meta": fg_meta})
    attr_spec = classifier_spec(num_outputs=2, alpha=0.25)
    save_checkpoint(r / "attr.pt", {"model": build_classifier(**attr_spec).state_dict(),
                                    "meta": checkpoint_meta("attributes", "classifier", attr_spec, resolution=RES,
                                                            labels=["smiling", "glasses"], output="attributes")})
    part = build_partitions(*_geo_points(), t_min=0, t_max=(3,), min_level=1, max_level=8)[0]
    geo_spec = classifier_spec(num_outputs=len(part), alpha=0.25)
    geo_meta = checkpoint_meta("geolocation", "classifier", geo_spec, resolution=RES, labels=part.tokens,
                               cells=[partition_meta(part)], num_cells=[len(part)], output="geolocation")
    save_checkpoint(r / "geo.pt", {"model": build_classifier(**geo_spec).state_dict(), "meta": geo_meta})
    write_cells_csv(r / "cells.csv", part)
    # broken ones
    whole = (r / "det.pt").read_bytes()
    (r / "truncated.pt").write_bytes(whole[: len(whole) // 2])  # a run killed while writing without atomic writes
    (r / "zero.pt").write_bytes(b"")
    save_checkpoint(r / "newer.pt", {"model": det.state_dict(), "meta": {**det_meta, "format": CHECKPOINT_FORMAT + 1}})
    save_checkpoint(r / "plain_state.pt", det.state_dict())  # weights without the suite's metadata
    wider = build_detector("ssd300", len(cats) + 1, alpha=0.5, size=64)  # another width's metadata, these weights
    save_checkpoint(r / "other_width.pt", {"model": det.state_dict(),
                                           "meta": {**det_meta, "model": {**det_meta["model"],
                                                                          "args": wider.build_args}}})
    other = FaceModelConfig(alpha=0.25, resolution=RES, embedding_dim=16)
    save_checkpoint(r / "other_face.pt", {"model": FaceEmbedder(other).state_dict(),
                                          "meta": checkpoint_meta("faces", "face_embedder", other.to_dict(),
                                                                  resolution=RES)})
    teacher = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                  torch.nn.Linear(4, 2)).eval()
    torch.jit.save(torch.jit.trace(teacher, torch.zeros(1, 3, RES, RES)), str(r / "teacher.pt"))
    (r / "teacher.yaml").write_text(yaml.safe_dump({"input_size": RES, "mean": [0.5] * 3, "std": [0.5] * 3}))
    torch.save({"model": _Opaque()}, r / "pickled.pt")  # an object weights_only loading refuses
    (r / "some.json").write_text("{}")
    torch.save(build_classifier(**classifier_spec(num_outputs=10, alpha=0.5)).state_dict(), r / "backbone_050.pt")


class _Opaque:
    pass


def _geo_points() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = np.array([[48.85, 2.35], [40.71, -74.0], [-33.87, 151.2], [35.68, 139.7]])
    pts = centres[rng.integers(0, 4, 40)] + rng.normal(0, 0.5, (40, 2))
    return pts[:, 0], pts[:, 1]


def _write_coco(r: Path, w: dict[str, str]) -> None:
    images, ann = write_shapes_dataset(r / "shapes", num_images=4, image_size=64, seed=0, split_name="train",
                                       max_objects=1)
    w["coco_root"], w["coco"] = str(images), str(ann)
    base = json.loads(Path(ann).read_text())

    def variant(name: str, change) -> None:
        data = json.loads(json.dumps(base))
        change(data)
        (r / name).write_text(json.dumps(data))

    (r / "coco_not_json.json").write_text("{ this is not json")
    (r / "coco_a_list.json").write_text("[1, 2, 3]")
    variant("coco_no_images.json", lambda d: d.pop("images"))
    variant("coco_bbox_text.json", lambda d: d["annotations"][0].__setitem__("bbox", "10,10,5,5"))
    variant("coco_unknown_cat.json", lambda d: d["annotations"][0].__setitem__("category_id", 999))
    variant("coco_unknown_image.json", lambda d: d["annotations"][0].__setitem__("image_id", 12345))
    variant("coco_nan_box.json", lambda d: d["annotations"][0].__setitem__("bbox", [1.0, 2.0, float("nan"), 4.0]))
    variant("coco_width_text.json", lambda d: d["images"][0].__setitem__("width", "wide"))
    # detections (eval.coco --dt): one good list, and broken ones
    dets = [{"image_id": base["images"][0]["id"], "category_id": base["categories"][0]["id"],
             "bbox": [1.0, 1.0, 10.0, 10.0], "score": 0.9}]
    (r / "dets.json").write_text(json.dumps(dets))
    (r / "dets_not_list.json").write_text(json.dumps({"image_id": 1}))
    (r / "dets_unknown_image.json").write_text(json.dumps([{**dets[0], "image_id": 777}]))
    (r / "dets_no_score.json").write_text(json.dumps([{k: v for k, v in dets[0].items() if k != "score"}]))
    (r / "dets_nan_score.json").write_text(json.dumps([{**dets[0], "score": float("nan")}]))
    (r / "dets_unknown_cat.json").write_text(json.dumps([{**dets[0], "category_id": 999}]))


def _write_faces(r: Path, w: dict[str, str]) -> None:
    root = r / "faces"
    for k, name in enumerate(("alice", "bob", "carol")):
        (root / name).mkdir(parents=True)
        for i in (1, 2):
            _noise((RES, RES), 10 * k + i).save(root / name / f"{name}_{i:04d}.png")
    w["faces"] = str(root)
    write_pairs(r / "pairs.txt", [([("alice", 1, 2)], [("alice", 1, "bob", 1)]),
                                  ([("bob", 1, 2)], [("bob", 2, "carol", 1)])])
    (r / "pairs_malformed.txt").write_text("2 300\nAaron 1 2\nBob\n")
    (r / "pairs_count.txt").write_text("1\t2\nalice\t1\t2\nalice\t1\tbob\t1\n")
    (r / "pairs_missing_image.txt").write_text("1\t1\nalice\t1\t7\nalice\t1\tbob\t1\n")
    (r / "pairs_not_number.txt").write_text("1\t1\nalice\t1\ttwo\nalice\t1\tbob\t1\n")
    (r / "pairs_binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")


def _write_attributes(r: Path, w: dict[str, str]) -> None:
    root = r / "celeb"
    root.mkdir()
    names = [f"{i:06d}.png" for i in range(1, 7)]
    for k, n in enumerate(names):
        _noise((RES, RES), 100 + k).save(root / n)
    w["celeb"] = str(root)
    rows = [f"{n},{k % 2},{(k // 2) % 2}" for k, n in enumerate(names)]
    (r / "attrs.csv").write_text("image,smiling,glasses\n" + "\n".join(rows) + "\n")
    (r / "attrs_value.csv").write_text("image,smiling,glasses\n000001.png,yes,0\n")
    (r / "attrs_missing_image.csv").write_text("image,smiling,glasses\n" + "\n".join(rows) + "\n999999.png,1,0\n")
    (r / "attrs_header.csv").write_text("image\n000001.png\n")
    (r / "attrs_binary.csv").write_bytes(b"\xff\xfe\x00\x00garbage\x00")
    celeba = ["2", "smiling glasses", "000001.png 1 -1", "000002.png 2 1"]
    (r / "list_attr_bad_value.txt").write_text("\n".join(celeba) + "\n")
    (r / "list_attr_count.txt").write_text("5\nsmiling glasses\n000001.png 1 -1\n")


def _write_dogs(r: Path, w: dict[str, str]) -> None:
    dogs = r / "dogs"
    write_stanford_dogs_layout(dogs, num_breeds=3, images_per_breed=4, train_per_breed=2, size=(40, 32),
                               odd_files=False)
    w["dogs"] = str(dogs)

    def variant(name: str) -> Path:
        d = r / name
        shutil.copytree(dogs, d)
        w[name] = str(d)
        return d

    (variant("dogs_mat_garbage") / "lists" / "train_list.mat").write_bytes(b"MATLAB 5.0 MAT-file, garbage")
    d = variant("dogs_mat_label")
    lst = sorted(p.relative_to(d / "Images").as_posix() for p in (d / "Images").rglob("*.jpg"))
    write_mat_list(d / "lists" / "train_list.mat", lst[:2], [0, 98])
    import scipy.io

    d = variant("dogs_mat_no_labels")
    scipy.io.savemat(d / "lists" / "train_list.mat", {"file_list": np.array([[np.array([lst[0]])]], dtype=object)})
    d = variant("dogs_xml_broken")
    first_ann = sorted(p for p in (d / "Annotation").rglob("*") if p.is_file())[0]
    first_ann.write_text("<annotation><object><bndbox><xmin>1</xmin>")
    w["dogs_xml_file"] = str(first_ann)
    d = variant("dogs_xml_text")
    ann = sorted(p for p in (d / "Annotation").rglob("*") if p.is_file())[0]
    ann.write_text(ann.read_text().replace("<xmin>", "<xmin>left", 1))
    # a class-folder set and a path,label CSV
    folders = r / "folders"
    for k, cls in enumerate(("cat", "dog")):
        (folders / cls).mkdir(parents=True)
        for i in range(3):
            _noise((RES, RES), 200 + 10 * k + i).save(folders / cls / f"{i}.png")
    w["folders"] = str(folders)
    (r / "labels_unknown_class.csv").write_text("path,label\ncat/0.png,cat\ndog/0.png,horse\n")


def _write_geo(r: Path, w: dict[str, str]) -> None:
    root = r / "geo_images"
    root.mkdir()
    lat, lon = _geo_points()
    lines = ["IMG_ID,LAT,LON"]
    for k, (a, b) in enumerate(zip(lat.tolist(), lon.tolist())):
        _noise((RES, RES), 300 + k).save(root / f"{k:03d}.png")
        lines.append(f"{k:03d}.png,{a:.5f},{b:.5f}")
    w["geo_root"] = str(root)
    (r / "geo.csv").write_text("\n".join(lines) + "\n")
    (r / "geo_binary.csv").write_bytes(b"\xff\xfe\x00garbage")
    (r / "geo_no_lat.csv").write_text("IMG_ID,LON\n000.png,2.3\n")
    (r / "geo_lat_text.csv").write_text("IMG_ID,LAT,LON\n000.png,north,2.3\n001.png,48.8,2.3\n")
    (r / "geo_lat_95.csv").write_text("IMG_ID,LAT,LON\n000.png,95.0,2.3\n001.png,48.8,2.3\n")
    (r / "geo_lat_nan.csv").write_text("IMG_ID,LAT,LON\n000.png,nan,2.3\n001.png,48.8,2.3\n")
    (r / "geo_missing_image.csv").write_text("IMG_ID,LAT,LON\n000.png,48.8,2.3\nnowhere.png,48.8,2.3\n")
    (r / "cells_binary.csv").write_bytes(b"\xff\xfe\x00garbage")
    (r / "cells_no_token.csv").write_text("class_label,level,count,lat_mean,lon_mean\n0,3,5,1.0,2.0\n")
    (r / "cells_bad_token.csv").write_text("class_label,token,level,count,lat_mean,lon_mean\n0,zz,3,5,1.0,2.0\n"
                                           "1,zz,3,5,1.0,2.0\n")
    good = (r / "cells.csv").read_text().splitlines()
    head, first, *rest = good
    parts = first.split(",")
    parts[4] = "95.0"  # lat_mean
    (r / "cells_lat_95.csv").write_text("\n".join([head, ",".join(parts), *rest]) + "\n")
    far = build_partitions(np.array([70.0, 70.1, -70.0, -70.1]), np.array([10.0, 10.1, -100.0, -100.1]), t_min=0,
                           t_max=(1,), min_level=1, max_level=4)[0]
    write_cells_csv(r / "cells_elsewhere.csv", far)  # cells where none of the photos are


def build_world(r: Path) -> dict[str, str]:
    """Write every file the table refers to under ``r``; returns the names the templates use."""
    r.mkdir(parents=True, exist_ok=True)
    w: dict[str, str] = {"r": str(r)}
    _write_images(r / "img")
    w["img"] = str(r / "img")
    _write_coco(r, w)
    _write_faces(r, w)
    _write_attributes(r, w)
    _write_dogs(r, w)
    _write_checkpoints(r, w)
    _write_geo(r, w)
    (r / "empty").mkdir()
    (r / "bad_only").mkdir()
    shutil.copy(r / "img" / "not_image.jpg", r / "bad_only" / "x.jpg")
    shutil.copy(r / "img" / "truncated.jpg", r / "bad_only" / "y.jpg")
    (r / "a_folder.onnx").mkdir()
    (r / "a_file").write_text("x")
    from tasks.faces.search import main as search_main

    search_main(["build", "--index", str(r / "gallery_ok"), "--images", w["faces"], "--checkpoint",
                 str(r / "face.pt"), "--device", "cpu"])
    (r / "not_yaml.yaml").write_text("train: [1, 2\n")
    (r / "yaml_list.yaml").write_text("- 1\n- 2\n")
    for name, data in {"unknown_key.yaml": {"train": {"lr_rate": 0.1}},
                       "unknown_section.yaml": {"trian": {"lr": 0.1}},
                       "wrong_type.yaml": {"train": {"epochs": "ten"}},
                       "wrong_type_bool.yaml": {"train": {"amp": "yes"}},
                       "model_unknown.yaml": {"model": {"alpah": 0.5}}}.items():
        (r / name).write_text(yaml.safe_dump(data))
    return w


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    return build_world(tmp_path_factory.mktemp("bad"))


# --------------------------------------------------------------------------------------------------
# the table

DET = "tasks.detection.train"
DET_DATA = "--data-root {coco_root} --ann {coco} --resolution 64 --alpha 0.25 --epochs 1 --output-dir {r}/out_det"
FACES = "tasks.faces.train"
FACES_DATA = "--data-root {faces} --alpha 0.25 --resolution 32 --epochs 1 --output-dir {r}/out_faces"
ATTR = "tasks.attributes.train"
ATTR_DATA = "--data-root {celeb} --ann {r}/attrs.csv --alpha 0.25 --resolution 32 --epochs 1 --output-dir {r}/out_attr"
FG = "tasks.finegrained.train"
FG_DATA = "--alpha 0.25 --resolution 32 --epochs 1 --output-dir {r}/out_fg"
GEO = "tasks.geolocation.train"
GEO_DATA = ("--data-root {geo_root} --ann {r}/geo.csv --t-min 0 --t-max 3 --alpha 0.25 --resolution 32 --epochs 1 "
            "--output-dir {r}/out_geo")
DISTILL = "distill.train"
DISTILL_DATA = "--teacher torchscript:{r}/teacher.pt --data-root {celeb} --output-dir {r}/out_distill"

# (id, command, argv template, fragment template)
CASES: list[tuple[str, str, str, str]] = [
    # ---- paths -----------------------------------------------------------------------------------
    ("det-predict-missing-image", "tasks.detection.predict", "--checkpoint {r}/det.pt {img}/nope.jpg", "nope.jpg"),
    ("det-predict-folder-as-image", "tasks.detection.predict", "--checkpoint {r}/det.pt {img}/a_folder.jpg",
     "a_folder.jpg"),
    ("det-predict-folder-as-checkpoint", "tasks.detection.predict", "--checkpoint {r} {img}/good.png", "is a folder"),
    ("det-predict-out-dir-is-a-file", "tasks.detection.predict",
     "--checkpoint {r}/det.pt {img}/good.png --out-dir {r}/a_file", "a_file is a file, not a folder"),
    ("det-evaluate-missing-checkpoint", "tasks.detection.evaluate", "--checkpoint {r}/gone.pt", "gone.pt"),
    ("det-evaluate-missing-ann", "tasks.detection.evaluate",
     "--checkpoint {r}/det.pt --data-root {coco_root} --ann {r}/gone.json", "gone.json"),
    ("det-evaluate-missing-images", "tasks.detection.evaluate",
     "--checkpoint {r}/det.pt --data-root {r}/empty --ann {coco}", "image file not found"),
    ("det-evaluate-images-root-is-a-file", "tasks.detection.evaluate",
     "--checkpoint {r}/det.pt --data-root {r}/a_file --ann {coco}", "a_file"),
    ("det-evaluate-out-dir-is-a-file", "tasks.detection.evaluate",
     "--checkpoint {r}/det.pt --data-root {coco_root} --ann {coco} --out-dir {r}/a_file",
     "a_file is a file, not a folder"),
    ("det-train-ann-is-a-folder", DET, DET_DATA.replace("{coco}", "{r}/empty"), "empty"),
    ("det-train-output-dir-is-a-file", DET, DET_DATA.replace("{r}/out_det", "{r}/a_file"), "is a file, not a folder"),
    ("faces-train-missing-root", FACES, FACES_DATA.replace("{faces}", "{r}/gone"), "gone"),
    ("faces-train-empty-root", FACES, FACES_DATA.replace("{faces}", "{r}/empty"), "no identity folders"),
    ("faces-train-root-is-a-file", FACES, FACES_DATA.replace("{faces}", "{r}/a_file"), "a_file"),
    ("faces-evaluate-missing-pairs", "tasks.faces.evaluate",
     "--pairs {r}/gone.txt --data-root {faces} --checkpoint {r}/face.pt", "gone.txt"),
    ("faces-evaluate-pairs-is-a-folder", "tasks.faces.evaluate",
     "--pairs {r}/empty --data-root {faces} --checkpoint {r}/face.pt", "empty"),
    ("faces-evaluate-out-dir-is-a-file", "tasks.faces.evaluate",
     "--pairs {r}/pairs.txt --data-root {faces} --checkpoint {r}/face.pt --out-dir {r}/a_file",
     "a_file is a file, not a folder"),
    ("faces-search-build-missing-images", "tasks.faces.search",
     "build --index {r}/gallery --images {r}/gone --checkpoint {r}/face.pt", "gone"),
    ("faces-search-query-missing-index", "tasks.faces.search",
     "query --index {r}/no_gallery --checkpoint {r}/face.pt {img}/good.png", "no_gallery"),
    ("faces-search-index-is-a-file", "tasks.faces.search", "stats --index {r}/a_file", "a_file"),
    ("attr-train-missing-labels-flag", ATTR, "--data-root {celeb}", "--ann"),
    ("attr-train-missing-label-file", ATTR, ATTR_DATA.replace("{r}/attrs.csv", "{r}/gone.csv"), "gone.csv"),
    ("attr-train-label-file-is-a-folder", ATTR, ATTR_DATA.replace("{r}/attrs.csv", "{r}/empty"), "empty"),
    ("attr-train-empty-image-folder", ATTR, ATTR_DATA.replace("{celeb}", "{r}/empty"), "000001.png"),
    ("attr-evaluate-out-dir-is-a-file", "tasks.attributes.evaluate",
     "--checkpoint {r}/attr.pt --data-root {celeb} --ann {r}/attrs.csv --out-dir {r}/a_file",
     "a_file is a file, not a folder"),
    ("distill-missing-teacher-file", DISTILL, DISTILL_DATA.replace("teacher.pt", "gone_teacher.pt"),
     "gone_teacher.pt"),
    ("distill-empty-image-folder", DISTILL, "--teacher torchscript:{r}/teacher.pt --data-root {r}/empty", "empty"),
    ("distill-image-folder-is-a-file", DISTILL, "--teacher torchscript:{r}/teacher.pt --data-root {r}/a_file",
     "a_file"),
    ("fg-train-missing-root", FG, FG_DATA + " --data-root {r}/gone", "gone"),
    ("fg-train-empty-root", FG, FG_DATA + " --data-root {r}/empty", "empty"),
    ("fg-evaluate-out-dir-is-a-file", "tasks.finegrained.evaluate",
     "--checkpoint {r}/fg.pt --data-root {dogs} --out-dir {r}/a_file", "a_file is a file, not a folder"),
    ("fg-predict-missing-image", "tasks.finegrained.predict", "--checkpoint {r}/fg.pt {img}/nope.jpg", "nope.jpg"),
    ("fg-predict-out-dir-is-a-file", "tasks.finegrained.predict",
     "--checkpoint {r}/fg.pt {img}/good.png --out-dir {r}/a_file", "a_file is a file, not a folder"),
    ("geo-partition-missing-csv", "tasks.geolocation.partition", "--ann {r}/gone.csv --out {r}/c.csv", "gone.csv"),
    ("geo-partition-out-is-a-folder", "tasks.geolocation.partition",
     "--ann {r}/geo.csv --out {r}/empty --t-min 0 --t-max 3", "empty"),
    ("geo-train-missing-images", GEO, GEO_DATA.replace("{geo_root}", "{r}/gone"), "gone"),
    ("geo-train-missing-cells", GEO, GEO_DATA + " --cells {r}/gone_cells.csv", "gone_cells.csv"),
    ("geo-evaluate-out-dir-is-a-file", "tasks.geolocation.evaluate",
     "--checkpoint {r}/geo.pt --data-root {geo_root} --ann {r}/geo.csv --out-dir {r}/a_file",
     "a_file is a file, not a folder"),
    ("geo-predict-missing-image", "tasks.geolocation.predict", "--checkpoint {r}/geo.pt {img}/nope.jpg", "nope.jpg"),
    ("geo-predict-out-dir-is-a-file", "tasks.geolocation.predict",
     "--checkpoint {r}/geo.pt {img}/good.png --out-dir {r}/a_file", "a_file is a file, not a folder"),
    ("export-missing-checkpoint", "tasks.export.__main__", "--checkpoint {r}/gone.pt --out {r}/m.onnx", "gone.pt"),
    ("export-out-is-a-folder", "tasks.export.__main__", "--checkpoint {r}/fg.pt --out {r}/a_folder.onnx",
     "a_folder.onnx is a folder"),
    ("export-missing-calib-folder", "tasks.export.__main__",
     "--checkpoint {r}/fg.pt --out {r}/exp/m.onnx --int8 --calib-images {r}/gone", "gone"),
    ("export-empty-calib-folder", "tasks.export.__main__",
     "--checkpoint {r}/fg.pt --out {r}/exp/m.onnx --int8 --calib-images {r}/empty", "empty"),
    ("bench-missing-graph", "tasks.export.bench", "{r}/gone.onnx", "gone.onnx"),
    ("bench-not-a-graph", "tasks.export.bench", "{r}/some.json", "some.json"),
    ("coco-missing-ground-truth", "eval.coco", "--gt {r}/gt.json --dt {r}/dets.json", "gt.json"),
    ("coco-missing-detections", "eval.coco", "--gt {coco} --dt {r}/gone.json", "gone.json"),
    ("backbone-export-out-is-a-folder", "backbone.export",
     "--alpha 0.25 --resolution 32 --num-classes 10 --out {r}/empty", "empty"),
    ("backbone-export-missing-weights", "backbone.export",
     "--alpha 0.25 --resolution 32 --out {r}/m.onnx --weights {r}/gone.pt", "gone.pt"),
    ("coverage-missing-ann", "tasks.detection.coverage", "--data-root {coco_root} --ann {r}/gone.json", "gone.json"),
    ("synthetic-shapes-out-is-a-file", "datasets.synthetic_shapes", "--out {r}/a_file --num-train 1 --num-val 1",
     "a_file"),
    # ---- images ----------------------------------------------------------------------------------
    ("det-predict-not-an-image", "tasks.detection.predict", "--checkpoint {r}/det.pt {img}/not_image.jpg",
     "not_image.jpg"),
    ("det-predict-truncated", "tasks.detection.predict", "--checkpoint {r}/det.pt {img}/truncated.jpg",
     "truncated.jpg"),
    ("det-predict-zero-bytes", "tasks.detection.predict", "--checkpoint {r}/det.pt {img}/zero.jpg", "zero.jpg"),
    ("det-predict-decompression-bomb", "tasks.detection.predict", "--checkpoint {r}/det.pt {img}/bomb.png",
     "bomb.png: DecompressionBombError"),
    ("det-predict-bad-among-good", "tasks.detection.predict",
     "--checkpoint {r}/det.pt {img}/good.png {img}/not_image.jpg {img}/cmyk.jpg", "not_image.jpg"),
    ("fg-predict-bad-among-good", "tasks.finegrained.predict",
     "--checkpoint {r}/fg.pt {img}/good.png {img}/truncated.jpg {img}/grey16.png", "truncated.jpg"),
    ("geo-predict-bad-among-good", "tasks.geolocation.predict",
     "--checkpoint {r}/geo.pt {img}/good.png {img}/zero.jpg", "zero.jpg"),
    ("faces-search-query-not-an-image", "tasks.faces.search",
     "query --index {r}/gallery_ok --checkpoint {r}/face.pt {img}/not_image.jpg", "not_image.jpg"),
    # ---- annotation files ------------------------------------------------------------------------
    ("det-train-ann-not-json", DET, DET_DATA.replace("{coco}", "{r}/coco_not_json.json"), "coco_not_json.json"),
    ("det-train-ann-a-list", DET, DET_DATA.replace("{coco}", "{r}/coco_a_list.json"), "coco_a_list.json"),
    ("det-train-ann-no-images", DET, DET_DATA.replace("{coco}", "{r}/coco_no_images.json"), "'images'"),
    ("det-train-bbox-wrong-type", DET, DET_DATA.replace("{coco}", "{r}/coco_bbox_text.json"), "'bbox'"),
    ("det-train-box-of-unknown-category", DET, DET_DATA.replace("{coco}", "{r}/coco_unknown_cat.json"), "999"),
    ("det-train-box-of-unknown-image", DET, DET_DATA.replace("{coco}", "{r}/coco_unknown_image.json"), "12345"),
    ("det-train-nan-box", DET, DET_DATA.replace("{coco}", "{r}/coco_nan_box.json"), "must be finite"),
    ("det-evaluate-width-wrong-type", "tasks.detection.evaluate",
     "--checkpoint {r}/det.pt --data-root {coco_root} --ann {r}/coco_width_text.json", "'width'"),
    ("coco-dt-not-a-list", "eval.coco", "--gt {coco} --dt {r}/dets_not_list.json", "dets_not_list.json"),
    ("coco-dt-result-for-unknown-image", "eval.coco", "--gt {coco} --dt {r}/dets_unknown_image.json", "777"),
    ("coco-dt-unknown-category", "eval.coco", "--gt {coco} --dt {r}/dets_unknown_cat.json", "999"),
    ("coco-dt-no-score", "eval.coco", "--gt {coco} --dt {r}/dets_no_score.json", "'score'"),
    ("coco-dt-nan-score", "eval.coco", "--gt {coco} --dt {r}/dets_nan_score.json", "score"),
    ("coco-gt-not-json", "eval.coco", "--gt {r}/coco_not_json.json --dt {r}/dets.json", "coco_not_json.json"),
    ("faces-evaluate-malformed-pairs", "tasks.faces.evaluate",
     "--pairs {r}/pairs_malformed.txt --data-root {faces} --checkpoint {r}/face.pt", "pairs_malformed.txt"),
    ("faces-evaluate-pairs-count", "tasks.faces.evaluate",
     "--pairs {r}/pairs_count.txt --data-root {faces} --checkpoint {r}/face.pt", "announces 4 pair lines"),
    ("faces-evaluate-pair-names-missing-image", "tasks.faces.evaluate",
     "--pairs {r}/pairs_missing_image.txt --data-root {faces} --checkpoint {r}/face.pt", "alice_0007"),
    ("faces-evaluate-pair-number-not-integer", "tasks.faces.evaluate",
     "--pairs {r}/pairs_not_number.txt --data-root {faces} --checkpoint {r}/face.pt", "'two'"),
    ("faces-evaluate-pairs-binary", "tasks.faces.evaluate",
     "--pairs {r}/pairs_binary.txt --data-root {faces} --checkpoint {r}/face.pt", "pairs_binary.txt"),
    ("faces-train-val-pairs-malformed", FACES,
     FACES_DATA + " --val-ann {r}/pairs_malformed.txt --val-data-root {faces}",
     "pairs_malformed.txt"),
    ("attr-train-value-not-a-label", ATTR, ATTR_DATA.replace("{r}/attrs.csv", "{r}/attrs_value.csv"), "'yes'"),
    ("attr-train-label-for-missing-image", ATTR, ATTR_DATA.replace("{r}/attrs.csv", "{r}/attrs_missing_image.csv"),
     "999999.png"),
    ("attr-train-header-without-attributes", ATTR, ATTR_DATA.replace("{r}/attrs.csv", "{r}/attrs_header.csv"),
     "at least one attribute"),
    ("attr-train-labels-binary", ATTR, ATTR_DATA.replace("{r}/attrs.csv", "{r}/attrs_binary.csv"), "attrs_binary.csv"),
    ("attr-evaluate-celeba-value", "tasks.attributes.evaluate",
     "--checkpoint {r}/attr.pt --data-root {celeb} --ann {r}/list_attr_bad_value.txt", "value '2'"),
    ("attr-evaluate-celeba-count", "tasks.attributes.evaluate",
     "--checkpoint {r}/attr.pt --data-root {celeb} --ann {r}/list_attr_count.txt", "line 1 says 5 images"),
    ("distill-labels-value", DISTILL,
     "--teacher torchscript:{r}/teacher.pt --data-root {celeb} --ann {r}/attrs_value.csv",
     "'yes'"),
    ("fg-train-mat-garbage", FG, FG_DATA + " --data-root {dogs_mat_garbage}", "train_list.mat"),
    ("fg-train-mat-label-out-of-range", FG, FG_DATA + " --data-root {dogs_mat_label}", "99"),
    ("fg-train-mat-variable-missing", FG, FG_DATA + " --data-root {dogs_mat_no_labels}", "'annotation_list'"),
    ("fg-train-xml-broken", FG, FG_DATA + " --data-root {dogs_xml_broken} --crop box", "not valid XML"),
    ("fg-train-xml-not-a-number", FG, FG_DATA + " --data-root {dogs_xml_text} --crop box", "'left"),
    ("fg-evaluate-unknown-class", "tasks.finegrained.evaluate",
     "--checkpoint {r}/fg.pt --data-root {folders} --ann {r}/labels_unknown_class.csv", "unknown class"),
    ("geo-partition-binary-csv", "tasks.geolocation.partition", "--ann {r}/geo_binary.csv --out {r}/c.csv",
     "geo_binary.csv"),
    ("geo-partition-no-lat-column", "tasks.geolocation.partition", "--ann {r}/geo_no_lat.csv --out {r}/c.csv",
     "latitude column"),
    ("geo-train-lat-not-a-number", GEO, GEO_DATA.replace("geo.csv", "geo_lat_text.csv"), "'north'"),
    ("geo-train-lat-beyond-90", GEO, GEO_DATA.replace("geo.csv", "geo_lat_95.csv"), "95"),
    ("geo-evaluate-lat-nan", "tasks.geolocation.evaluate",
     "--checkpoint {r}/geo.pt --data-root {geo_root} --ann {r}/geo_lat_nan.csv", "'nan'"),
    ("geo-evaluate-missing-image", "tasks.geolocation.evaluate",
     "--checkpoint {r}/geo.pt --data-root {geo_root} --ann {r}/geo_missing_image.csv", "nowhere.png"),
    ("geo-train-cells-binary", GEO, GEO_DATA + " --cells {r}/cells_binary.csv", "cells_binary.csv"),
    ("geo-train-cells-no-token", GEO, GEO_DATA + " --cells {r}/cells_no_token.csv", "missing column(s) token"),
    ("geo-train-cells-bad-token", GEO, GEO_DATA + " --cells {r}/cells_bad_token.csv", "'token'"),
    ("geo-train-cells-lat-beyond-90", GEO, GEO_DATA + " --cells {r}/cells_lat_95.csv", "'lat_mean'"),
    # ---- checkpoints -----------------------------------------------------------------------------
    ("det-evaluate-not-a-checkpoint", "tasks.detection.evaluate", "--checkpoint {r}/some.json",
     "some.json is not a checkpoint"),
    ("det-evaluate-checkpoint-of-another-task", "tasks.detection.evaluate",
     "--checkpoint {r}/face.pt --data-root {coco_root} --ann {coco}",
     "is a faces checkpoint; this command reads detection"),
    ("det-evaluate-truncated-checkpoint", "tasks.detection.evaluate", "--checkpoint {r}/truncated.pt",
     "truncated.pt"),
    ("det-predict-zero-byte-checkpoint", "tasks.detection.predict", "--checkpoint {r}/zero.pt {img}/good.png",
     "zero.pt"),
    ("det-predict-newer-format", "tasks.detection.predict", "--checkpoint {r}/newer.pt {img}/good.png",
     f"checkpoint format {CHECKPOINT_FORMAT + 1}"),
    ("det-predict-plain-state-dict", "tasks.detection.predict", "--checkpoint {r}/plain_state.pt {img}/good.png",
     "not a model checkpoint of this suite"),
    ("det-predict-other-width", "tasks.detection.predict", "--checkpoint {r}/other_width.pt {img}/good.png",
     "weights do not fit the model"),
    ("det-predict-pickled-object", "tasks.detection.predict", "--checkpoint {r}/pickled.pt {img}/good.png",
     "weights_only"),
    ("faces-evaluate-detector-checkpoint", "tasks.faces.evaluate",
     "--pairs {r}/pairs.txt --data-root {faces} --checkpoint {r}/det.pt", "is a detection checkpoint"),
    ("faces-search-build-detector-checkpoint", "tasks.faces.search",
     "build --index {r}/gallery_det --images {faces} --checkpoint {r}/det.pt", "is a detection checkpoint"),
    ("attr-evaluate-finegrained-checkpoint", "tasks.attributes.evaluate",
     "--checkpoint {r}/fg.pt --data-root {celeb} --ann {r}/attrs.csv", "is a finegrained checkpoint"),
    ("attr-evaluate-truncated", "tasks.attributes.evaluate",
     "--checkpoint {r}/truncated.pt --data-root {celeb} --ann {r}/attrs.csv", "truncated.pt"),
    ("fg-evaluate-geo-checkpoint", "tasks.finegrained.evaluate", "--checkpoint {r}/geo.pt --data-root {dogs}",
     "is a geolocation checkpoint"),
    ("fg-predict-not-a-checkpoint", "tasks.finegrained.predict", "--checkpoint {r}/some.json {img}/good.png",
     "some.json is not a checkpoint"),
    ("geo-evaluate-finegrained-checkpoint", "tasks.geolocation.evaluate",
     "--checkpoint {r}/fg.pt --data-root {geo_root} --ann {r}/geo.csv", "is a finegrained checkpoint"),
    ("geo-predict-newer-format", "tasks.geolocation.predict", "--checkpoint {r}/newer.pt {img}/good.png",
     "checkpoint format"),
    ("export-not-a-checkpoint", "tasks.export.__main__", "--checkpoint {r}/some.json --out {r}/m.onnx",
     "not a checkpoint"),
    ("export-truncated-checkpoint", "tasks.export.__main__", "--checkpoint {r}/truncated.pt --out {r}/m.onnx",
     "truncated.pt"),
    ("bench-compare-not-a-checkpoint", "tasks.export.bench", "{r}/gone.onnx --compare {r}/some.json", "gone.onnx"),
    ("backbone-export-weights-not-a-checkpoint", "backbone.export",
     "--alpha 0.25 --resolution 32 --out {r}/m.onnx --weights {r}/some.json", "some.json"),
    ("backbone-export-weights-of-another-width", "backbone.export",
     "--alpha 0.25 --resolution 32 --num-classes 10 --out {r}/m.onnx --weights {r}/backbone_050.pt",
     "weights do not fit this model"),
    ("det-train-pretrained-of-another-width", DET, DET_DATA + " --pretrained-backbone {r}/backbone_050.pt",
     "weights do not fit this model"),
    ("det-train-resume-not-a-checkpoint", DET, DET_DATA + " --resume {r}/some.json", "some.json"),
    ("det-train-resume-of-another-task", DET, DET_DATA + " --resume {r}/face.pt", "face.pt"),
    ("attr-train-resume-truncated", ATTR, ATTR_DATA + " --resume {r}/truncated.pt", "truncated.pt"),
    ("geo-train-resume-missing", GEO, GEO_DATA + " --resume {r}/gone.pt", "gone.pt"),
    ("fg-train-resume-missing", FG, FG_DATA + " --data-root {dogs} --resume {r}/gone.pt", "gone.pt"),
    ("faces-search-add-other-model", "tasks.faces.search",
     "add --index {r}/gallery_ok --checkpoint {r}/other_face.pt {img}/good.png",
     "embeddings of different models are not comparable"),
    # ---- configs ---------------------------------------------------------------------------------
    ("det-train-missing-config", DET, "--config {r}/missing.yaml", "config file not found"),
    ("det-train-config-is-a-folder", DET, "--config {r}/empty", "is a folder"),
    ("det-train-config-not-yaml", DET, "--config {r}/not_yaml.yaml", "not valid YAML"),
    ("det-train-config-a-list", DET, "--config {r}/yaml_list.yaml", "expected a mapping"),
    ("det-train-unknown-config-key", DET, "--config {r}/unknown_key.yaml", "did you mean 'lr'?"),
    ("det-train-unknown-section", DET, "--config {r}/unknown_section.yaml", "did you mean 'train'?"),
    ("det-train-config-value-of-wrong-type", DET, "--config {r}/wrong_type.yaml",
     "train.epochs='ten': expected an integer"),
    ("det-train-epochs-zero", DET, "--epochs 0", "epochs=0"),
    ("det-train-data-root-without-ann", DET, "--data-root {coco_root}", "--data-root and --ann go together"),
    ("det-train-val-without-train", DET, "--val-data-root {coco_root} --val-ann {coco}", "need --data-root"),
    ("faces-train-unknown-key", FACES, "--config {r}/model_unknown.yaml", "did you mean 'alpha'?"),
    ("faces-train-wrong-type", FACES, "--config {r}/wrong_type_bool.yaml", "expected true or false"),
    ("faces-train-annotation-flag", FACES, "--ann labels.csv", "takes no annotation file"),
    ("attr-train-unknown-key", ATTR, "--config {r}/unknown_key.yaml", "did you mean 'lr'?"),
    ("attr-train-val-root-without-val-ann", ATTR, "--data-root {celeb} --ann {r}/attrs.csv --val-data-root {celeb}",
     "needs data.val_ann"),
    ("distill-unknown-key", DISTILL, "--config {r}/unknown_key.yaml", "did you mean 'lr'?"),
    ("distill-cache-with-augment", DISTILL, DISTILL_DATA + " --cache-teacher --augment", "--augment"),
    ("distill-hint-with-cache", DISTILL, DISTILL_DATA + " --cache-teacher --hint conv11:2", "--hint"),
    ("fg-train-unknown-key", FG, "--config {r}/model_unknown.yaml", "did you mean 'alpha'?"),
    ("fg-train-val-without-data-root", FG, "--val-data-root {folders}", "need data.root"),
    ("fg-train-val-fraction-out-of-range", FG, FG_DATA + " --data-root {dogs} --val-fraction 1.5", "val_fraction"),
    ("geo-train-unknown-key", GEO, "--config {r}/unknown_key.yaml", "did you mean 'lr'?"),
    ("geo-train-data-root-without-ann", GEO, "--data-root {geo_root}", "required together"),
    ("geo-train-wrong-type", GEO, "--config {r}/wrong_type.yaml", "expected an integer"),
    ("geo-partition-t-max-below-t-min", "tasks.geolocation.partition",
     "--ann {r}/geo.csv --out {r}/c.csv --t-min 10 --t-max 5", "t_max"),
    ("export-int8-without-calibration", "tasks.export.__main__", "--checkpoint {r}/fg.pt --out {r}/m.onnx --int8",
     "--int8 needs --calib-images"),
    ("export-bad-batch", "tasks.export.__main__", "--checkpoint {r}/fg.pt --out {r}/m.onnx --batch many", "--batch"),
    ("export-no-output", "tasks.export.__main__", "--checkpoint {r}/fg.pt", "give --out"),
    ("det-evaluate-ann-without-root", "tasks.detection.evaluate", "--checkpoint {r}/det.pt --ann {coco}",
     "--data-root and --ann go together"),
    ("det-predict-score-thresh", "tasks.detection.predict", "--checkpoint {r}/det.pt {img}/good.png --score-thresh 2",
     "--score-thresh"),
    ("fg-predict-top-k-zero", "tasks.finegrained.predict", "--checkpoint {r}/fg.pt {img}/good.png --top-k 0",
     "--top-k"),
    ("attr-evaluate-nothing-to-score", "tasks.attributes.evaluate", "--data-root {celeb} --ann {r}/attrs.csv",
     "give at least one --checkpoint"),
    ("faces-search-remove-nothing", "tasks.faces.search", "remove --index {r}/gallery_ok", "--identity"),
    ("det-profile-unknown-backbone", "tasks.detection.profile", "--backbone not_a_net", "not_a_net"),
    ("det-profile-bad-alpha", "tasks.detection.profile", "--alpha 0", "alpha"),
    ("fg-profile-no-classes", "tasks.finegrained.profile", "--num-classes 0", "num-classes"),
    ("geo-profile-missing-config", "tasks.geolocation.profile", "--config {r}/missing.yaml", "missing.yaml"),
    ("geo-profile-one-cell", "tasks.geolocation.profile", "--cells 1", "--cells"),
    ("synthetic-identities-out-is-a-file", "datasets.synthetic_identities", "--out {r}/a_file", "a_file"),
    ("synthetic-faces-cache-is-a-file", "datasets.synthetic_faces", "--cache-dir {r}/a_file --num-labeled 1 "
     "--num-unlabeled 1 --num-val 1", "a_file"),
    ("synthetic-geotagged-no-images", "datasets.synthetic_geotagged", "--num-train 0", "num_train"),
    ("faces-search-build-index-is-a-file", "tasks.faces.search",
     "build --index {r}/a_file --images {faces} --checkpoint {r}/face.pt", "a_file"),
    ("faces-search-query-k-zero", "tasks.faces.search",
     "query --index {r}/gallery_ok --checkpoint {r}/face.pt {img}/good.png -k 0", "-k"),
    ("export-calib-all-bad", "tasks.export.__main__",
     "--checkpoint {r}/fg.pt --out {r}/exp2/m.onnx --int8 --calib-images {r}/bad_only", "bad_only"),
    ("distill-teacher-unknown-timm", DISTILL, "--teacher timm:not_a_net --data-root {celeb}", "not_a_net"),
    ("distill-teacher-not-torchscript", DISTILL, "--teacher torchscript:{r}/det.pt --data-root {celeb}", "det.pt"),
    ("distill-teacher-onnx-not-a-graph", DISTILL, "--teacher onnx:{r}/some.json --data-root {celeb}", "some.json"),
    ("distill-teacher-unknown-kind", DISTILL, "--teacher pickle:{r}/det.pt --data-root {celeb}", "pickle"),
    ("attr-evaluate-teacher-not-torchscript", "tasks.attributes.evaluate",
     "--teacher torchscript:{r}/det.pt --data-root {celeb} --ann {r}/attrs.csv", "det.pt"),
    ("fg-evaluate-unknown-split", "tasks.finegrained.evaluate", "--checkpoint {r}/fg.pt --data-root {dogs} --split dev",
     "dev"),
    ("geo-train-cells-of-elsewhere", GEO, GEO_DATA + " --cells {r}/cells_elsewhere.csv", "cells_elsewhere.csv"),
    ("det-train-arch-at-tiny-size", DET, DET_DATA + " --arch faster_rcnn600 --resolution 8", "8"),
    ("det-train-batch-size-zero", DET, DET_DATA + " --batch-size 0", "batch_size"),
    ("faces-train-threads-zero", FACES, FACES_DATA + " --threads 0", "--threads"),
    ("faces-train-teacher-missing", FACES, FACES_DATA + " --teacher torchscript:{r}/gone_teacher.pt",
     "gone_teacher.pt"),
    ("coco-segm-without-masks", "eval.coco", "--gt {coco} --dt {r}/dets.json --iou-type segm", "segm"),
    # ---- devices ---------------------------------------------------------------------------------
    ("det-train-device-mps", DET, DET_DATA + " --device mps", "mps"),
    ("det-evaluate-device-nonsense", "tasks.detection.evaluate", "--checkpoint {r}/det.pt --device gpu0", "gpu0"),
    ("fg-predict-device-mps", "tasks.finegrained.predict", "--checkpoint {r}/fg.pt {img}/good.png --device mps",
     "mps"),
    ("export-device-mps", "tasks.export.__main__", "--checkpoint {r}/fg.pt --out {r}/m.onnx --device mps", "mps"),
]

# Rows that need a machine without CUDA (the suite's CI); on a GPU machine they are skipped.
NO_CUDA_CASES: list[tuple[str, str, str, str]] = [
    ("det-train-device-cuda", DET, DET_DATA + " --device cuda", "CUDA is not available"),
    ("det-predict-device-cuda", "tasks.detection.predict", "--checkpoint {r}/det.pt {img}/good.png --device cuda",
     "CUDA is not available"),
    ("faces-evaluate-device-cuda", "tasks.faces.evaluate",
     "--pairs {r}/pairs.txt --data-root {faces} --checkpoint {r}/face.pt --device cuda", "CUDA is not available"),
    ("attr-train-device-cuda", ATTR, ATTR_DATA + " --device cuda", "CUDA is not available"),
    ("geo-evaluate-device-cuda", "tasks.geolocation.evaluate",
     "--checkpoint {r}/geo.pt --data-root {geo_root} --ann {r}/geo.csv --device cuda", "CUDA is not available"),
    ("export-device-cuda", "tasks.export.__main__", "--checkpoint {r}/fg.pt --out {r}/m.onnx --device cuda",
     "CUDA is not available"),
    ("distill-device-cuda", DISTILL, DISTILL_DATA + " --device cuda", "CUDA is not available"),
    ("faces-search-device-cuda", "tasks.faces.search",
     "query --index {r}/gallery_ok --checkpoint {r}/face.pt {img}/good.png --device cuda", "CUDA is not available"),
]


def run_command(command: str, argv: str, world: dict[str, str], monkeypatch, capsys) -> tuple[int, str]:
    """Run ``command``'s ``main`` with ``argv`` (a template over ``world``) through ``run_cli``.

    Returns:
        (exit status, stderr).
    """
    args = shlex.split(argv.format(**world))
    main = importlib.import_module(command).main
    monkeypatch.setattr(sys, "argv", [command, *args])
    capsys.readouterr()
    try:
        run_cli(lambda: main(args))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    return code, capsys.readouterr().err


_PROGRESS_BAR = re.compile(r"\|\s*\d+/\d+ \[")  # a tqdm bar on stderr: "desc: 40%|####  | 2/5 [00:01<..."


def error_lines(err: str) -> list[str]:
    """The lines of ``err`` that are not progress bars or Python warnings."""
    return [line for line in err.replace("\r", "\n").splitlines()
            if line.strip() and not _PROGRESS_BAR.search(line) and "Warning" not in line and "warn(" not in line]


def _check_one_error_line(code: int, err: str, fragment: str) -> None:
    lines = error_lines(err)
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("command,argv,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_exit_2(command, argv, fragment, world, monkeypatch, capsys):
    monkeypatch.chdir(world["r"])  # nothing a row might write lands in the checkout
    code, err = run_command(command, argv, world, monkeypatch, capsys)
    _check_one_error_line(code, err, fragment.format(**world))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command,argv,fragment", [c[1:] for c in NO_CUDA_CASES], ids=[c[0] for c in NO_CUDA_CASES])
def test_device_cuda_without_cuda(command, argv, fragment, world, monkeypatch, capsys):
    monkeypatch.chdir(world["r"])
    code, err = run_command(command, argv, world, monkeypatch, capsys)
    _check_one_error_line(code, err, fragment.format(**world))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (checks a GPU index beyond this machine's)")
def test_device_index_beyond_the_gpus(world, monkeypatch, capsys):
    argv = f"--checkpoint {{r}}/det.pt {{img}}/good.png --device cuda:{torch.cuda.device_count()}"
    code, err = run_command("tasks.detection.predict", argv, world, monkeypatch, capsys)
    _check_one_error_line(code, err, f"this machine has {torch.cuda.device_count()} CUDA device(s)")


def test_debug_shows_the_traceback(world, monkeypatch):
    main = importlib.import_module("tasks.detection.evaluate").main
    args = ["--checkpoint", str(Path(world["r"]) / "some.json"), "--debug"]
    monkeypatch.setattr(sys, "argv", ["tasks.detection.evaluate", *args])
    with pytest.raises(ValueError, match="not a checkpoint"):
        run_cli(lambda: main(args))


# --------------------------------------------------------------------------------------------------
# an output folder that cannot be written


@pytest.fixture
def unwritable(tmp_path):
    """A folder no file can be created in. Permission bits stop everyone but root; as root (containers,
    CI images) a kernel filesystem that refuses new entries stands in, else the test is skipped."""
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        yield locked
        locked.chmod(0o700)
        return
    probe = Path("/sys/mobilenet-suite-write-probe")
    try:
        probe.mkdir()
    except OSError:
        yield Path("/sys")
        return
    probe.rmdir()
    pytest.skip("running as root: permission bits do not stop writes, and /sys accepts new entries here")


UNWRITABLE_CASES = [
    ("det-train", DET, DET_DATA.replace("{r}/out_det", "{locked}"), "--output-dir {locked} is not writable"),
    ("det-predict", "tasks.detection.predict", "--checkpoint {r}/det.pt {img}/good.png --out-dir {locked}",
     "--out-dir {locked} is not writable"),
    ("fg-evaluate", "tasks.finegrained.evaluate", "--checkpoint {r}/fg.pt --data-root {dogs} --out-dir {locked}",
     "--out-dir {locked} is not writable"),
    ("export", "tasks.export.__main__", "--checkpoint {r}/fg.pt --out {locked}/m.onnx", "is not writable"),
    ("partition", "tasks.geolocation.partition", "--ann {r}/geo.csv --out {locked}/cells.csv --t-min 0 --t-max 3",
     "is not writable"),
    ("coco-stats", "eval.coco", "--gt {coco} --dt {r}/dets.json --out {locked}/stats.json", "is not writable"),
]


@pytest.mark.parametrize("command,argv,fragment", [c[1:] for c in UNWRITABLE_CASES],
                         ids=[c[0] for c in UNWRITABLE_CASES])
def test_output_folder_that_cannot_be_written(command, argv, fragment, world, unwritable, monkeypatch, capsys):
    here = {**world, "locked": str(unwritable)}
    monkeypatch.chdir(world["r"])
    code, err = run_command(command, argv, here, monkeypatch, capsys)
    _check_one_error_line(code, err, fragment.format(**here))


# --------------------------------------------------------------------------------------------------
# odd but valid images work; bad ones among good ones are skipped and counted with --skip-bad-images


def test_16bit_and_cmyk_images_are_predicted(world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(world["r"])
    argv = "--checkpoint {r}/det.pt {img}/grey16.png {img}/cmyk.jpg --out-dir " + str(tmp_path)
    code, err = run_command("tasks.detection.predict", argv, world, monkeypatch, capsys)
    assert code == 0, err
    records = json.loads((tmp_path / "detections.json").read_text())
    assert [(Path(r["image"]).name, r["width"], r["height"]) for r in records] == [("grey16.png", RES, RES),
                                                                                  ("cmyk.jpg", RES, RES)]


BAD_FILES = ("not_image.jpg", "truncated.jpg", "zero.jpg", "bomb.png", "nope.jpg")
PREDICTORS = [("tasks.detection.predict", "det.pt", "detections.json"),
              ("tasks.finegrained.predict", "fg.pt", "predictions.json"),
              ("tasks.geolocation.predict", "geo.pt", "predictions.json")]


@pytest.mark.parametrize("command,checkpoint,written", PREDICTORS, ids=[p[0].split(".")[1] for p in PREDICTORS])
def test_skip_bad_images_among_good_ones(command, checkpoint, written, world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(world["r"])
    files = ["{img}/good.png", *(f"{{img}}/{name}" for name in BAD_FILES), "{img}/cmyk.jpg"]
    argv = f"--checkpoint {{r}}/{checkpoint} {' '.join(files)} --out-dir {tmp_path}"
    code, err = run_command(command, argv, world, monkeypatch, capsys)  # without the flag: stops at a bad file
    _check_one_error_line(code, err, "error: ")
    assert any(name in err for name in BAD_FILES), err
    assert not (tmp_path / written).exists()
    code, err = run_command(command, argv + " --skip-bad-images", world, monkeypatch, capsys)
    assert code == 0, err
    report = [line for line in error_lines(err) if line.startswith("skipped ")]
    assert len(report) == 1 and report[0].startswith(f"skipped {len(BAD_FILES)} bad image(s): "), err
    assert all(name in report[0] for name in BAD_FILES), report
    kept = json.loads((tmp_path / written).read_text())
    assert [Path(r["image"]).name for r in kept] == ["good.png", "cmyk.jpg"]


def test_skip_bad_images_in_an_evaluation_set(world, tmp_path, monkeypatch, capsys):
    """A corrupt image in a COCO split and in a geotagged list: stops naming it, or is skipped and counted."""
    images, ann, files = _copy_coco(world, tmp_path / "coco")
    _spoil(files[0])
    argv = f"--checkpoint {{r}}/det.pt --data-root {images} --ann {ann} --workers 0 --out-dir {tmp_path / 'det'}"
    code, err = run_command("tasks.detection.evaluate", argv, world, monkeypatch, capsys)
    _check_one_error_line(code, err, f"cannot decode image {files[0]}")
    code, err = run_command("tasks.detection.evaluate", argv + " --skip-bad-images", world, monkeypatch, capsys)
    assert code == 0, err
    assert any(line.startswith("skipped 1 bad image(s): ") and files[0] in line for line in error_lines(err)), err

    geo = tmp_path / "geo"
    shutil.copytree(world["geo_root"], geo)
    _spoil(geo / "004.png")
    argv = f"--checkpoint {{r}}/geo.pt --data-root {geo} --ann {{r}}/geo.csv --out-dir {tmp_path / 'geo_out'}"
    code, err = run_command("tasks.geolocation.evaluate", argv, world, monkeypatch, capsys)
    _check_one_error_line(code, err, f"cannot decode image {geo / '004.png'}")
    code, err = run_command("tasks.geolocation.evaluate", argv + " --skip-bad-images", world, monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "geo_out" / "summary.json").read_text())
    assert summary["bad_images_skipped"] == 1 and str(geo / "004.png") in summary["bad_images"][0]


RESUMED = [("finegrained", FG, "--data-root {dogs} --alpha 0.25 --resolution 32 --device cpu"),
           ("geolocation", GEO, "--data-root {geo_root} --ann {r}/geo.csv --t-min 0 --t-max 3 --alpha 0.25 "
                                "--resolution 32 --batch-size 8 --device cpu")]


@pytest.mark.parametrize("command,argv", [r[1:] for r in RESUMED], ids=[r[0] for r in RESUMED])
def test_resume_with_other_settings_is_refused_unless_anyway(command, argv, world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    base = f"{argv} --output-dir {out}"
    code, err = run_command(command, base + " --epochs 1", world, monkeypatch, capsys)
    assert code == 0, err
    resume = f"{base} --epochs 2 --lr 0.5 --resume {out / 'last.pt'}"
    code, err = run_command(command, resume, world, monkeypatch, capsys)
    _check_one_error_line(code, err, "differs from the checkpoint's in train.lr: 0.01 -> 0.5")
    code, err = run_command(command, resume + " --resume-anyway", world, monkeypatch, capsys)
    assert code == 0, err
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


# --------------------------------------------------------------------------------------------------
# a file that turns bad while training runs (it changed after the scan)


def _spoil(path: str | Path) -> None:
    Path(path).write_bytes(b"\xff\xd8 no longer a JPEG")


def _copy_coco(world: dict[str, str], dest: Path) -> tuple[str, str, list[str]]:
    images = dest / "images"
    shutil.copytree(world["coco_root"], images)
    return str(images), world["coco"], sorted(str(p) for p in images.iterdir())


def _train(command: str, argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    main = importlib.import_module(command).main
    monkeypatch.setattr(sys, "argv", [command, *argv])
    capsys.readouterr()
    try:
        run_cli(lambda: main(argv))
        return 0, capsys.readouterr().err
    except SystemExit as e:
        return int(e.code), capsys.readouterr().err


def _spoil_after_scan(monkeypatch, cls: type, victim: str) -> None:
    """``cls.scan_images`` runs as usual, then ``victim`` is overwritten with bytes no decoder takes."""
    scan = cls.scan_images

    def scan_then_spoil(self, *args, **kwargs):
        out = scan(self, *args, **kwargs)
        if victim in getattr(self, "skipped").paths:
            _spoil(victim)
        return out

    monkeypatch.setattr(cls, "scan_images", scan_then_spoil)


def _spoil_after_first_checkpoint(monkeypatch, victim: str) -> None:
    import tasks.engine

    save = tasks.engine.save_checkpoint

    def save_then_spoil(path, obj):
        out = save(path, obj)
        if Path(path).name == "last.pt":
            _spoil(victim)
        return out

    monkeypatch.setattr(tasks.engine, "save_checkpoint", save_then_spoil)


TINY_DET = ["--resolution", "64", "--alpha", "0.25", "--batch-size", "4", "--device", "cpu"]
TINY_ATTR = ["--resolution", "32", "--alpha", "0.25", "--batch-size", "5", "--device", "cpu"]


def test_detection_image_spoiled_mid_run_is_skipped_counted_and_named(world, tmp_path, monkeypatch, capsys):
    from datasets.coco import CocoDetection

    images, ann, files = _copy_coco(world, tmp_path)
    _spoil_after_scan(monkeypatch, CocoDetection, files[1])
    out = tmp_path / "run"
    argv = ["--data-root", images, "--ann", ann, "--epochs", "1", "--skip-bad-images", "--output-dir", str(out),
            *TINY_DET]
    code, err = _train("tasks.detection.train", argv, monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bad_images_skipped"] == 1
    assert len(summary["bad_images"]) == 1 and files[1] in summary["bad_images"][0]


def test_detection_image_spoiled_mid_run_stops_naming_it(world, tmp_path, monkeypatch, capsys):
    from tasks.checkpoint import load_checkpoint

    images, ann, files = _copy_coco(world, tmp_path)
    _spoil_after_first_checkpoint(monkeypatch, files[2])
    out = tmp_path / "run"
    argv = ["--data-root", images, "--ann", ann, "--epochs", "2", "--workers", "0", "--output-dir", str(out), *TINY_DET]
    code, err = _train("tasks.detection.train", argv, monkeypatch, capsys)
    _check_one_error_line(code, err, f"cannot decode image {files[2]}")
    assert load_checkpoint(out / "last.pt")["epoch"] == 1  # the last good checkpoint, readable
    assert not (out / "summary.json").exists()


@pytest.mark.parametrize("workers", [0, 1])
def test_classifier_image_spoiled_mid_run_skipped_or_named(workers, world, tmp_path, monkeypatch, capsys):
    """Attribute training (an ImageFiles task); with a DataLoader worker the skip is met in that process."""
    from datasets.images import ImageFiles

    images = tmp_path / "celeb"
    shutil.copytree(world["celeb"], images)
    victim = str(images / "000003.png")
    base = ["--data-root", str(images), "--ann", str(Path(world["r"]) / "attrs.csv"), "--epochs", "2",
            "--workers", str(workers), *TINY_ATTR]
    with monkeypatch.context() as m:
        _spoil_after_scan(m, ImageFiles, victim)
        out = tmp_path / "skip"
        code, err = _train("tasks.attributes.train", [*base, "--skip-bad-images", "--output-dir", str(out)], m, capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bad_images_skipped"] == 1 and victim in summary["bad_images"][0], summary["bad_images"]

    shutil.copy(Path(world["celeb"]) / "000003.png", victim)
    with monkeypatch.context() as m:
        _spoil_after_first_checkpoint(m, victim)
        out = tmp_path / "stop"
        code, err = _train("tasks.attributes.train", [*base, "--output-dir", str(out)], m, capsys)
    _check_one_error_line(code, err, f"cannot decode image {victim}")


def test_skipped_images_seen_by_workers_reach_the_main_process(world, tmp_path):
    from torch.utils.data import DataLoader

    from datasets.images import ImageFiles, build_image_transform

    folder = tmp_path / "imgs"
    shutil.copytree(world["celeb"], folder)
    ds = ImageFiles.from_folder(folder, build_image_transform(RES), skip_bad_images=True)
    assert ds.scan_images() == [] and ds.skipped.files() == []
    _spoil(folder / "000002.png")
    _spoil(folder / "000005.png")
    served = [int(i) for b in DataLoader(ds, batch_size=2, num_workers=2) for i in b["index"]]
    assert len(served) == len(ds) and 1 not in served and 4 not in served
    assert [f.split()[3] for f in ds.skipped.files()] == [str(folder / "000002.png"), str(folder / "000005.png")]


# --------------------------------------------------------------------------------------------------
# nothing half-written: a write that fails part-way leaves the previous file whole


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".") and (".tmp" in p.name or "tmpdir" in p.name)]


def _disk_full() -> OSError:
    import errno

    return OSError(errno.ENOSPC, "No space left on device")


def test_checkpoint_write_failing_part_way_keeps_the_last_one(world, tmp_path, monkeypatch, capsys):
    from tasks.checkpoint import load_checkpoint

    real_save, calls = torch.save, []

    def torn_save(obj, f, *args, **kwargs):  # the third checkpoint (epoch 2's last.pt) dies half-written
        calls.append(1)
        if len(calls) < 3:
            return real_save(obj, f, *args, **kwargs)
        import io

        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise _disk_full()

    out = tmp_path / "run"
    monkeypatch.setattr(torch, "save", torn_save)
    argv = ["--data-root", world["celeb"], "--ann", str(Path(world["r"]) / "attrs.csv"), "--epochs", "2",
            "--output-dir", str(out), *TINY_ATTR]
    code, err = _train("tasks.attributes.train", argv, monkeypatch, capsys)
    _check_one_error_line(code, err, "No space left on device")
    monkeypatch.undo()
    assert len(calls) == 3
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert _no_temp_files(out)


def _torn_fsync(monkeypatch) -> None:
    """The next atomic write gets its bytes into the temp file, torn to half, and then the disk is full."""
    import datasets.io

    def torn(path):
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])
        raise _disk_full()

    monkeypatch.setattr(datasets.io, "_fsync_file", torn)


def test_export_failing_part_way_keeps_the_previous_graph(world, tmp_path, monkeypatch, capsys):
    import onnx

    out = tmp_path / "deploy" / "m.onnx"
    argv = f"--checkpoint {{r}}/fg.pt --out {out}"
    code, err = run_command("tasks.export.__main__", argv, world, monkeypatch, capsys)
    assert code == 0, err
    before = out.read_bytes()
    _torn_fsync(monkeypatch)
    code, err = run_command("tasks.export.__main__", argv + " --resolution 48", world, monkeypatch, capsys)
    _check_one_error_line(code, err, "No space left on device")
    assert out.read_bytes() == before
    onnx.checker.check_model(str(out))
    assert _no_temp_files(out.parent)


def test_partition_failing_part_way_keeps_the_previous_cells(world, tmp_path, monkeypatch, capsys):
    from tasks.geolocation.partition import read_cells_csv

    out = tmp_path / "cells.csv"
    argv = f"--ann {{r}}/geo.csv --out {out} --t-min 0"
    code, err = run_command("tasks.geolocation.partition", argv + " --t-max 3", world, monkeypatch, capsys)
    assert code == 0, err
    before = out.read_bytes()
    _torn_fsync(monkeypatch)
    code, err = run_command("tasks.geolocation.partition", argv + " --t-max 5", world, monkeypatch, capsys)
    _check_one_error_line(code, err, "No space left on device")
    assert out.read_bytes() == before and len(read_cells_csv(out)) > 1
    assert _no_temp_files(tmp_path)


# --------------------------------------------------------------------------------------------------
# end to end: real processes, real exit statuses


SUBPROCESS_CASES = [
    ("predict-not-an-image", ["tasks.detection.predict", "--checkpoint", "{r}/det.pt", "{img}/not_image.jpg"], 2,
     "not_image.jpg"),
    ("coco-result-for-unknown-image", ["eval.coco", "--gt", "{coco}", "--dt", "{r}/dets_unknown_image.json"], 2, "777"),
    ("debug-shows-the-traceback", ["tasks.detection.predict", "--checkpoint", "{r}/det.pt", "{img}/not_image.jpg",
                                   "--debug"], 1, "Traceback"),
]


@pytest.mark.parametrize("argv,status,fragment", [c[1:] for c in SUBPROCESS_CASES],
                         ids=[c[0] for c in SUBPROCESS_CASES])
def test_exit_status_of_a_real_process(argv, status, fragment, world):
    args = [a.format(**world) for a in argv]
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == status, proc.stderr[-3000:]
    assert fragment in proc.stderr
    if status == 2:
        lines = error_lines(proc.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
