"""Exact and near-duplicate detection (datasets.dedupe) and the web set read for stage 1 (tasks.finegrained.noisy)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.dedupe import DEFAULT_MAX_DISTANCE, _hash_all, find_duplicates, hamming, phash
from datasets.stanford_dogs import open_finegrained
from datasets.synthetic_finegrained import write_synthetic_dogs
from tasks.finegrained.noisy import noisy_loss, read_web_set

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dogs(tmp_path_factory):
    root = tmp_path_factory.mktemp("web_dogs")
    info = write_synthetic_dogs(root, num_breeds=4, train_per_breed=10, test_per_breed=12, image_size=72, seed=5,
                                web_per_breed=25, web_planted=4)
    return root, info


def _tests(root: Path) -> list[str]:
    return [r.path for r in open_finegrained(root).split("test")]


def test_hamming_matches_a_bit_by_bit_count():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**63, size=(5, 4), dtype=np.uint64)
    b = rng.integers(0, 2**63, size=(3, 4), dtype=np.uint64)
    want = [[sum(bin(int(x) ^ int(y)).count("1") for x, y in zip(ra, rb)) for rb in b] for ra in a]
    assert hamming(a, b).tolist() == want


def test_copies_are_found_and_distinct_images_are_not(tmp_path, dogs):
    root, _ = dogs
    tests = _tests(root)
    src = Image.open(tests[0]).convert("RGB")
    exact = tmp_path / "exact.jpg"
    shutil.copyfile(tests[0], exact)
    small = tmp_path / "small.jpg"
    src.resize((src.width * 3 // 4, src.height * 3 // 4)).save(small, quality=60)
    mirrored = tmp_path / "mirrored.png"
    src.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored)
    other = _tests(root)[5]  # another test image, not a candidate copy of tests[0]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    found, unreadable = find_duplicates([str(exact), str(small), str(mirrored), str(broken)], [tests[0], other])
    got = {f.candidate: (f.kind, f.reference) for f in found}
    assert got == {0: ("exact", 0), 1: ("near", 0), 2: ("near", 0)}
    assert len(unreadable) == 1 and "broken.jpg" in unreadable[0]
    exact_only, _ = find_duplicates([str(exact), str(small)], [tests[0]], max_distance=-1)
    assert [(f.candidate, f.kind) for f in exact_only] == [(0, "exact")]


def test_the_threshold_separates_copies_from_other_images(dogs):
    """Every pair of distinct images of the built-in set lies beyond the threshold; copies within 4 bits."""
    root, info = dogs
    paths = sorted(str(p) for p in (root / "Images").rglob("*.jpg"))
    h = _hash_all(paths, 2, "", False)
    own = np.array([x[1] for x in h])
    mirror = np.array([x[2] for x in h])
    d = np.minimum(hamming(own, own), hamming(own, mirror))
    np.fill_diagonal(d, 10**6)
    assert d.min() > DEFAULT_MAX_DISTANCE  # when written: 36 of 256 bits at the closest
    near = [c for c in info["web"]["planted"] if c["kind"] == "near"]
    for c in near:
        a = phash(Image.open(root / "web" / c["web"]).convert("RGB"))
        b = phash(Image.open(root / "Images" / c["test"]).convert("RGB"))
        b_mirror = phash(Image.open(root / "Images" / c["test"]).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT))
        assert min(hamming(a[None], b[None])[0, 0], hamming(a[None], b_mirror[None])[0, 0]) <= 8


def test_web_set_is_read_in_the_clean_classes_and_loses_its_test_copies(tmp_path, dogs):
    root, info = dogs
    index = open_finegrained(root)
    manifest = info["web"]
    assert manifest["wrong_label_fraction"] >= 0.3
    assert {"Japanese_spaniel", "n02085936"} <= set(manifest["class_folders"])  # breed names and wnids as folders
    web = read_web_set(str(root / "web"), None, index.classes, {"val": [], "test": index.split("test")},
                       max_distance=DEFAULT_MAX_DISTANCE, out_json=tmp_path / "dedupe.json")
    assert (web.listed, web.removed_exact, web.removed_near) == (4 * 25 + 8, 4, 4)
    assert web.removed_by_split == {"val": 0, "test": 8} and len(web.records) == 100
    listed = {Path(r.path).name: r.label for r in web.records}
    for rel, v in manifest["images"].items():
        if "copy_" not in rel:
            assert listed[Path(rel).name] == v["listed"]  # folder named by wnid / breed / folder -> the same class
    saved = json.loads((tmp_path / "dedupe.json").read_text())
    assert {Path(r["copies"]).name for r in saved["removed"]} == {Path(c["test"]).name for c in manifest["planted"]}


def test_unknown_web_class_is_named(tmp_path, dogs):
    root, _ = dogs
    web = tmp_path / "web"
    shutil.copytree(root / "web", web)
    (web / "Labrador").mkdir()
    shutil.copyfile(next((root / "web").rglob("*.jpg")), web / "Labrador" / "x.jpg")
    with pytest.raises(ValueError, match="unknown class 'Labrador'"):
        read_web_set(str(web), None, open_finegrained(root).classes, {"val": []}, max_distance=10)


def _batch(logits: torch.Tensor, targets: torch.Tensor):
    model = torch.nn.Identity()
    return model, {"image": logits, "target": targets}


@pytest.mark.parametrize("kind", ["gce", "bootstrap", "small_loss", "ce"])
def test_noisy_losses_are_finite_and_train(kind):
    torch.manual_seed(0)
    logits = torch.randn(16, 5, requires_grad=True)
    targets = torch.randint(0, 5, (16,))
    model, batch = _batch(logits, targets)
    loss = next(iter(noisy_loss(kind, label_smoothing=0.1)(model, batch, torch.device("cpu")).values()))
    loss.backward()
    assert torch.isfinite(loss) and logits.grad.abs().sum() > 0


def test_noisy_losses_reduce_to_their_definitions():
    torch.manual_seed(1)
    logits = torch.randn(8, 4)
    targets = torch.randint(0, 4, (8,))
    cpu = torch.device("cpu")
    model, batch = _batch(logits, targets)
    ce = torch.nn.functional.cross_entropy(logits, targets, label_smoothing=0.1)
    boot = noisy_loss("bootstrap", label_smoothing=0.1, bootstrap_beta=1.0)(model, batch, cpu)["bootstrap"]
    assert boot == pytest.approx(ce.item(), abs=1e-6)  # beta = 1: the label alone
    gce = noisy_loss("gce", label_smoothing=0.0, gce_q=1.0)(model, batch, cpu)["gce"]
    p_y = logits.softmax(1)[torch.arange(8), targets]
    assert gce == pytest.approx((1 - p_y).mean().item(), abs=1e-6)  # q = 1: mean absolute error


def test_small_loss_selection_leaves_out_the_worst_samples():
    logits = torch.zeros(10, 3)
    logits[:, 0] = 5.0
    targets = torch.zeros(10, dtype=torch.long)
    targets[7:] = 2  # three samples whose label disagrees with a confident prediction: the large losses
    logits.requires_grad_(True)
    model, batch = _batch(logits, targets)
    loss = noisy_loss("small_loss", label_smoothing=0.0, forget_rate=0.3)(model, batch, torch.device("cpu"))
    loss["small_loss"].backward()
    assert logits.grad[7:].abs().sum() == 0 and logits.grad[:7].abs().sum() > 0
