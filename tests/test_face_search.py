"""Face gallery (tasks/faces/index.py) and its CLI (tasks/faces/search.py): exactness, persistence,
duplicates, removal, model fingerprints, corruption detection."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from datasets.synthetic_identities import write_synthetic_faces
from tasks.checkpoint import save_checkpoint
from tasks.faces.index import FaceIndex, IndexCorruptError, ModelMismatchError, choose_index_type, ivf_nlist
from tasks.faces.model import FaceEmbedder, FaceModelConfig
from tasks.faces.search import main as search_main

DIM = 16


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # the CI machine is a shared 2-core box; one thread is faster there and keeps timings stable
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _clustered(n_ids=40, per_id=5, dim=DIM, seed=0, noise=0.35):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, dim))
    x = np.repeat(centres, per_id, axis=0) + noise * rng.normal(size=(n_ids * per_id, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [f"id{i:03d}" for i in range(n_ids) for _ in range(per_id)]
    return x.astype(np.float32), ids, centres


def _fill(index, x, ids, start=0):
    n = len(x)
    rows = range(start, start + n)
    return index.add(x, ids, [f"/g/{i}.jpg" for i in rows], [f"h{i}" for i in rows])


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_search_matches_brute_force(tmp_path, kind):
    x, ids, _ = _clustered(n_ids=60, per_id=10)
    idx = FaceIndex.create(tmp_path / "g", dim=DIM, fingerprint="m1", index_type=kind)
    _fill(idx, x, ids)
    assert idx.index_type == kind and len(idx) == len(x)
    q = x[::7] + 0.05 * np.random.default_rng(1).normal(size=x[::7].shape).astype(np.float32)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    exact = np.argsort(-(qn @ x.T), axis=1)[:, :5]
    hits = idx.search(q, k=5)
    top1 = np.array([h[0].id - 1 for h in hits])  # row ids start at 1, in insertion order
    recall = np.mean(top1 == exact[:, 0])
    if kind == "flat":
        assert recall == 1.0
        for h, e, qq in zip(hits, exact, qn):
            assert [r.id - 1 for r in h] == e.tolist()
            np.testing.assert_allclose([r.score for r in h], qq @ x[e].T, rtol=1e-5, atol=1e-5)
    else:
        assert recall >= 0.9
    assert hits[0][0].identity == ids[hits[0][0].id - 1]


def test_persistence_round_trip(tmp_path):
    x, ids, _ = _clustered()
    d = tmp_path / "g"
    with FaceIndex.create(d, dim=DIM, fingerprint="m1", model={"checkpoint": "/c.pt"}) as idx:
        _fill(idx, x, ids)
        before = idx.search(x[:10], k=3)
        gen = idx.generation
    with FaceIndex.open(d, fingerprint="m1") as again:
        assert len(again) == len(x) and again.generation == gen
        assert again.search(x[:10], k=3) == before
        assert again.model == {"checkpoint": "/c.pt"}
        st = again.stats()
        assert st.verified and st.problems == [] and st.identities == len(set(ids))


def test_duplicates_are_not_indexed_twice(tmp_path):
    x, ids, _ = _clustered(n_ids=5, per_id=2)
    idx = FaceIndex.create(tmp_path / "g", dim=DIM, fingerprint="m1")
    r1 = _fill(idx, x, ids)
    assert len(r1.added) == 10
    r2 = idx.add(x[:3], ids[:3], ["/other/a.jpg", "/other/b.jpg", "/other/c.jpg"], ["h0", "h1", "new"])
    assert len(r2.added) == 1 and [d[1] for d in r2.duplicates] == ["/g/0.jpg", "/g/1.jpg"]
    r3 = idx.add(x[:2], ids[:2], ["/p.jpg", "/q.jpg"], ["same", "same"])  # twice within one call
    assert len(r3.added) == 1 and len(r3.duplicates) == 1
    assert len(idx) == 12 and idx.verify() == []


def test_remove_by_identity_and_path(tmp_path):
    x, ids, _ = _clustered(n_ids=10, per_id=4)
    for kind in ("flat", "hnsw", "ivf"):
        idx = FaceIndex.create(tmp_path / kind, dim=DIM, fingerprint="m1", index_type=kind)
        _fill(idx, x, ids)
        assert idx.remove(identity="id003") == 4
        assert idx.remove(path="/g/0.jpg") == 1
        assert idx.remove(identity="nobody") == 0
        assert len(idx) == 35 and idx.verify() == []
        found = {h.identity for hs in idx.search(x, k=3) for h in hs}
        assert "id003" not in found
        with pytest.raises(ValueError):
            idx.remove()


def test_auto_type_switches_with_size(tmp_path, monkeypatch):
    import tasks.faces.index as index_mod

    monkeypatch.setattr(index_mod, "AUTO_IVF_MIN", 100)
    assert index_mod.choose_index_type(99) == "flat" and index_mod.choose_index_type(100) == "ivf"
    x, ids, _ = _clustered(n_ids=30, per_id=5)
    idx = FaceIndex.create(tmp_path / "g", dim=DIM, fingerprint="m1")  # auto
    _fill(idx, x[:50], ids[:50])
    assert idx.index_type == "flat"
    _fill(idx, x[50:], ids[50:], start=50)
    assert idx.index_type == "ivf" and len(idx) == 150 and idx.verify() == []
    assert FaceIndex.open(tmp_path / "g").index_type == "ivf"


def test_defaults_for_sizes():
    assert choose_index_type(10) == "flat" and choose_index_type(1_000_000) == "ivf"
    assert ivf_nlist(10) == 1 and ivf_nlist(1_000_000) == 2048 and ivf_nlist(100_000) == 512


def test_model_mismatch_is_refused(tmp_path):
    x, ids, _ = _clustered(n_ids=3, per_id=2)
    idx = FaceIndex.create(tmp_path / "g", dim=DIM, fingerprint="model-a", model={"checkpoint": "a.pt"})
    with pytest.raises(ModelMismatchError, match="different models"):
        idx.add(x, ids, [f"{i}" for i in range(6)], [f"{i}" for i in range(6)], fingerprint="model-b")
    with pytest.raises(ModelMismatchError, match="a.pt"):
        FaceIndex.open(tmp_path / "g", fingerprint="model-b")


def test_bad_inputs(tmp_path):
    idx = FaceIndex.create(tmp_path / "g", dim=DIM, fingerprint="m")
    with pytest.raises(ValueError, match=r"\[N, 16\]"):
        idx.search(np.zeros((2, 8)))
    with pytest.raises(ValueError, match="all-zero"):
        idx.add(np.zeros((1, DIM)), ["a"], ["p"], ["h"])
    with pytest.raises(ValueError, match="2 identities"):
        idx.add(np.ones((1, DIM)), ["a", "b"], ["p"], ["h"])
    with pytest.raises(FileExistsError):
        FaceIndex.create(tmp_path / "g", dim=DIM, fingerprint="m")
    with pytest.raises(FileNotFoundError):
        FaceIndex.open(tmp_path / "nothing")
    assert idx.search(np.ones((2, DIM)), k=3) == [[], []]


def test_tampered_index_file_is_detected(tmp_path):
    x, ids, _ = _clustered(n_ids=5, per_id=2)
    d = tmp_path / "g"
    idx = FaceIndex.create(d, dim=DIM, fingerprint="m")
    _fill(idx, x, ids)
    name = [p for p in os.listdir(d) if p.endswith(".faiss")]
    assert len(name) == 1  # older generations are cleaned up
    path = d / name[0]
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(data))
    problems = idx.verify()
    assert problems and "sha256" in problems[0]
    with pytest.raises(IndexCorruptError, match="checksum"):
        FaceIndex.open(d)


# --------------------------------------------------------------------------------------------------
# CLI on a tiny synthetic gallery with an untrained model (the learning test covers accuracy)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    data = write_synthetic_faces(root / "data", num_train_identities=2, num_test_identities=4,
                                 images_per_identity=2, test_images_per_identity=3, probe_images_per_identity=1,
                                 image_size=40, num_folds=2, pairs_per_fold=2)
    ckpts = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        cfg = FaceModelConfig(alpha=0.25, resolution=32, embedding_dim=16)
        m = FaceEmbedder(cfg)
        path = root / f"model{seed}.pt"
        save_checkpoint(path, {"model": m.state_dict(), "meta": {"face_model": cfg.to_dict()}})
        ckpts.append(str(path))
    return data, ckpts


def test_cli_build_add_query_remove_stats(tiny, tmp_path, capsys):
    data, (ckpt, other) = tiny
    idx = str(tmp_path / "gallery")
    assert search_main(["build", "--images", data["test"], "--checkpoint", ckpt, "--index", idx, "--device", "cpu",
                        "--commit-every", "5"]) == 0
    out = capsys.readouterr().out
    assert "added 12 face(s) in 3 commit(s)" in out
    with FaceIndex.open(idx) as g:
        assert len(g) == 12 and g.identities() == {f"heldout_{i:05d}": 3 for i in range(1, 5)}

    # add: new files once, the same content again is skipped
    probe = sorted(str(p) for p in __import__("pathlib").Path(data["probe"]).rglob("*.jpg"))
    assert search_main(["add", "--index", idx, "--device", "cpu", "--identity", "newbie", probe[0]]) == 0
    assert search_main(["add", "--index", idx, "--device", "cpu", "--images", data["test"]]) == 0
    out = capsys.readouterr().out
    assert "added 1 face(s)" in out and "added 0 face(s) in 0 commit(s), skipped 12 already indexed" in out

    # query --json: one object per query image
    assert search_main(["query", "--index", idx, "--device", "cpu", "-k", "3", "--json", *probe[:2]]) == 0
    lines = [json.loads(s) for s in capsys.readouterr().out.strip().splitlines()]
    assert [r["query"] for r in lines] == probe[:2]
    assert all(len(r["hits"]) == 3 and set(r["hits"][0]) == {"identity", "path", "score"} for r in lines)
    assert lines[0]["hits"][0]["identity"] == "newbie" and lines[0]["hits"][0]["score"] == pytest.approx(1, abs=1e-4)

    # a query with another model is refused with a clear error
    with pytest.raises(ModelMismatchError, match="not comparable"):
        search_main(["query", "--index", idx, "--device", "cpu", "--checkpoint", other, probe[0]])

    assert search_main(["remove", "--index", idx, "--identity", "newbie"]) == 0
    assert search_main(["stats", "--index", idx]) == 0
    out = capsys.readouterr().out
    assert "faces        : 12 of 4 identities" in out and "verification : OK" in out


def test_cli_build_missing_images_folder(tiny, tmp_path):
    _, (ckpt, _) = tiny
    with pytest.raises(FileNotFoundError):
        search_main(["build", "--images", str(tmp_path / "nope"), "--checkpoint", ckpt, "--index", str(tmp_path / "g")])
