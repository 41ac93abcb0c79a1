"""Crash consistency of the face gallery: a process killed (SIGKILL) in the middle of a write leaves the
last committed state readable, verifiable and searchable, and the next write carries on."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.synthetic_identities import write_synthetic_faces
from tasks.checkpoint import save_checkpoint
from tasks.faces.index import CRASH_ENV, DB_NAME, FaceIndex
from tasks.faces.model import FaceEmbedder, FaceModelConfig
from tasks.faces.search import main as search_main

ROOT = Path(__file__).resolve().parents[1]
DIM = 8

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")

# A writer that adds vectors in a loop: rows k..k+n-1 per commit, content hashes "h<row>".
WRITER = textwrap.dedent("""
    import sys, numpy as np
    from tasks.faces.index import FaceIndex
    d, start, commits, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    idx = FaceIndex.open(d)
    for c in range(commits):
        k = start + c * per
        rng = np.random.default_rng(k)
        x = rng.normal(size=(per, %d)).astype("float32")
        idx.add(x, [f"id{j %% 5}" for j in range(k, k + per)], [f"/img/{j}.jpg" for j in range(k, k + per)],
                [f"h{j}" for j in range(k, k + per)])
        print("committed", idx.generation, flush=True)
""" % DIM)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"  # a shared 2-core CI box: one thread per process is fastest
    env.update(extra)
    return env


def _vectors(start: int, n: int) -> np.ndarray:
    return np.random.default_rng(start).normal(size=(n, DIM)).astype("float32")


def _gallery(d: Path, n: int = 20, kind: str = "flat") -> None:
    idx = FaceIndex.create(d, dim=DIM, fingerprint="m", index_type=kind)
    idx.add(_vectors(0, n), [f"id{j % 5}" for j in range(n)], [f"/img/{j}.jpg" for j in range(n)],
            [f"h{j}" for j in range(n)])
    idx.close()


def _check_consistent(d: Path) -> FaceIndex:
    idx = FaceIndex.open(d)
    assert idx.verify() == []
    st = idx.stats()
    assert st.problems == [] and st.count == len(idx)
    if len(idx):
        hits = idx.search(_vectors(123, 3), k=2)
        assert all(len(h) == 2 for h in hits)
    return idx


@pytest.mark.parametrize("point, survives, kind", [
    ("index-written", False, "flat"), ("db-written", False, "flat"), ("db-committed", True, "flat"),
    ("db-written", False, "hnsw"), ("db-written", False, "ivf"),
])
def test_kill_at_each_step_of_a_commit(tmp_path, point, survives, kind):
    d = tmp_path / "g"
    _gallery(d, kind=kind)
    proc = subprocess.run([sys.executable, "-c", WRITER, str(d), "20", "1", "10"], env=_env(**{CRASH_ENV: point}),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    idx = _check_consistent(d)
    n = 30 if survives else 20
    assert len(idx) == n
    # the next writer carries on and removes the orphaned files of the dead one
    idx.add(_vectors(30, 10), ["late"] * 10, [f"/img/{j}.jpg" for j in range(30, 40)], [f"h{j}" for j in range(30, 40)])
    assert len(idx) == n + 10 and idx.verify() == []
    leftovers = sorted(p.name for p in d.iterdir() if "faiss" in p.name)
    assert leftovers == [idx._state.index_file]


def test_external_sigkill_at_random_moments(tmp_path):
    d = tmp_path / "g"
    _gallery(d, n=4)
    rng = np.random.default_rng(0)
    start = 4
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(d), str(start), "100000", "3"], env=_env(),
                                stdout=subprocess.PIPE, text=True)
        # wait until it has committed a little, then kill it at an arbitrary moment
        for _ in range(2):
            assert proc.stdout.readline().startswith("committed")
        time.sleep(float(rng.uniform(0, 0.05)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL, "the writer must have been killed mid-way"
        idx = _check_consistent(d)
        n = len(idx)
        assert (n - 4) % 3 == 0 and n >= 4 + 3 * 2 * (round_ + 1)  # whole commits only
        start = n  # rows are numbered by commit; the next round continues after the committed ones
        idx.close()


def test_readers_see_whole_generations_while_a_writer_runs(tmp_path):
    d = tmp_path / "g"
    _gallery(d, n=3)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(d), "3", "40", "3"], env=_env(),
                            stdout=subprocess.DEVNULL)
    try:
        seen = 0
        while proc.poll() is None:
            with FaceIndex.open(d) as idx:  # checksum-verified load of whatever is committed
                assert (len(idx) - 3) % 3 == 0
                seen += 1
        assert proc.returncode == 0 and seen > 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(_check_consistent(d)) == 3 + 40 * 3


def test_killed_cli_build_resumes(tmp_path):
    data = write_synthetic_faces(tmp_path / "data", num_train_identities=2, num_test_identities=4,
                                 images_per_identity=2, test_images_per_identity=3, probe_images_per_identity=0,
                                 image_size=32, num_folds=2, pairs_per_fold=2)
    cfg = FaceModelConfig(alpha=0.25, resolution=32, embedding_dim=8)
    torch.manual_seed(0)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, {"model": FaceEmbedder(cfg).state_dict(), "meta": {"face_model": cfg.to_dict()}})
    idx = tmp_path / "gallery"
    cmd = [sys.executable, "-m", "tasks.faces.search", "build", "--images", data["test"], "--checkpoint", str(ckpt),
           "--index", str(idx), "--device", "cpu", "--commit-every", "2"]
    # killed inside the third commit's transaction: two commits (4 faces) are the last good state
    proc = subprocess.run(cmd, env=_env(**{CRASH_ENV: "db-written:3"}), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    with sqlite3.connect(idx / DB_NAME) as con:
        assert con.execute("SELECT count FROM state").fetchone()[0] == 4
    assert search_main(["stats", "--index", str(idx)]) == 0
    probe = next(Path(data["test"]).rglob("*.jpg"))
    assert search_main(["query", "--index", str(idx), "--device", "cpu", "--json", str(probe)]) == 0
    # the same command again continues where the killed one stopped
    assert search_main(cmd[3:]) == 0
    with FaceIndex.open(idx) as g:
        assert len(g) == 12 and g.verify() == []
