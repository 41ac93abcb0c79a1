"""Crash consistency of the face gallery: a process killed (SIGKILL) in the middle of a write leaves the
last committed state readable, verifiable and searchable, and the next write carries on.

The writer runs in a child process (``tests/_crash_writer.py``) that wraps one step of a commit and
dies there, so every kill lands at a chosen place in the code, never at a moment in time.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _crash_writer import POINTS, rows
from datasets.synthetic_identities import write_synthetic_faces
from tasks.checkpoint import save_checkpoint
from tasks.faces.index import DB_NAME, FaceIndex
from tasks.faces.model import FaceEmbedder, FaceModelConfig
from tasks.faces.search import main as search_main

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("_crash_writer.py")

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"  # a shared 2-core CI box: one thread per process is fastest
    return env


def _child(point: str, nth: int, mode: str, *args: str) -> list[str]:
    return [sys.executable, str(CHILD), point, str(nth), mode, *args]


def _run_killed(point: str, nth: int, *args: str, timeout: int = 120) -> None:
    """Run the child writer and require that it died by SIGKILL."""
    proc = subprocess.run(_child(point, nth, "kill", *args), env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == -signal.SIGKILL, f"rc {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"


def _gallery(d: Path, n: int = 20, kind: str = "flat") -> None:
    """A gallery holding rows 0..n-1 in generation 2 (generation 1 is the empty one of ``create``)."""
    with FaceIndex.create(d, dim=8, fingerprint="m", index_type=kind) as idx:
        idx.add(*rows(0, n))


def _hashes(lo: int, hi: int) -> set[str]:
    return {f"h{j}" for j in range(lo, hi)}


def _index_files(d: Path) -> list[str]:
    """Index files and index temp files in the gallery folder, normalised so temp names compare."""
    out = []
    for p in d.iterdir():
        if p.name.startswith(".index-") and p.name.endswith(".tmp"):
            out.append(p.name.split(".faiss.")[0][1:] + ".faiss.tmp")
        elif p.name.startswith("index-"):
            out.append(p.name)
    return sorted(out)


def _check_consistent(d: Path) -> FaceIndex:
    """Open (checksum-verified), verify and search the gallery; returns it open."""
    idx = FaceIndex.open(d)
    assert idx.verify() == []
    st = idx.stats()
    assert st.problems == [] and st.count == len(idx) == len(idx.records())
    if len(idx):
        hits = idx.search(rows(123, 3)[0], k=2)
        assert all(len(h) == 2 for h in hits)
    return idx


def _carries_on(idx: FaceIndex, start: int) -> None:
    """The next writer commits on top and removes what the dead one left behind."""
    n = len(idx)
    idx.add(*rows(start, 10))
    assert len(idx) == n + 10 and idx.verify() == []
    assert _index_files(idx.directory) == [idx._state.index_file]


def _gen(n: int) -> str:
    return f"index-{n:08d}.faiss"


# What each point leaves on disk when the writer dies in the commit of generation `new` (old = new - 1).
def _files_left(point: str, new: int) -> list[str]:
    if point == "tmp-torn":
        return sorted([_gen(new - 1), _gen(new) + ".tmp"])
    return [_gen(new - 1), _gen(new)]  # an orphan (not yet named) or the old one (not yet removed)


# ------------------------------------------------------------------------------------------ mid-add


@pytest.mark.parametrize("point, survives, kind", [
    ("tmp-torn", False, "flat"), ("file-renamed", False, "flat"), ("rows-written", False, "flat"),
    ("committed", True, "flat"),
    ("rows-written", False, "hnsw"), ("rows-written", False, "ivf"), ("committed", True, "ivf"),
])
def test_kill_mid_add(tmp_path, point, survives, kind):
    d = tmp_path / "g"
    _gallery(d, kind=kind)
    # three commits of rows 20.., killed inside the second: the first one (rows 20..29) is committed
    _run_killed(point, 2, "add", str(d), "20", "3", "10")
    assert _index_files(d) == _files_left(point, new=4)  # the kill happened exactly where it was aimed
    idx = _check_consistent(d)
    expected = _hashes(0, 40 if survives else 30)
    assert {r[3] for r in idx.records()} == expected
    assert idx.generation == (4 if survives else 3) and idx.index_type == kind
    _carries_on(idx, 50)
    idx.close()


# ------------------------------------------------------------------------------ mid-remove / rebuild


@pytest.mark.parametrize("point, survives", [("rows-written", False), ("committed", True)])
def test_kill_mid_remove(tmp_path, point, survives):
    d = tmp_path / "g"
    _gallery(d)
    _run_killed(point, 1, "remove", str(d), "id3")
    assert _index_files(d) == _files_left(point, new=3)
    idx = _check_consistent(d)
    removed = {f"h{j}" for j in (3, 8, 13, 18)}  # rows of identity id3 (j % 5 == 3)
    assert {r[3] for r in idx.records()} == (_hashes(0, 20) - removed if survives else _hashes(0, 20))
    _carries_on(idx, 20)
    idx.close()


@pytest.mark.parametrize("point, survives", [("tmp-torn", False), ("rows-written", False), ("committed", True)])
def test_kill_mid_rebuild(tmp_path, point, survives):
    d = tmp_path / "g"
    _gallery(d)
    _run_killed(point, 1, "rebuild", str(d), "hnsw")
    idx = _check_consistent(d)
    assert idx.index_type == ("hnsw" if survives else "flat")
    assert {r[3] for r in idx.records()} == _hashes(0, 20)
    _carries_on(idx, 20)
    idx.close()


# --------------------------------------------------------------- killed from outside, at a fixed point


@pytest.mark.parametrize("point", list(POINTS))
def test_reader_while_writer_is_stopped_mid_commit_then_killed_from_outside(tmp_path, point):
    d = tmp_path / "g"
    _gallery(d)
    survives = point == "committed"
    with open(tmp_path / "stderr.txt", "w+") as err, subprocess.Popen(
            _child(point, 2, "pause", "add", str(d), "20", "3", "10"), env=_env(), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=err, text=True) as proc:
        try:
            assert proc.stdout.readline() == "committed 3\n", (tmp_path / "stderr.txt").read_text()
            assert proc.stdout.readline() == f"paused at {point}\n", (tmp_path / "stderr.txt").read_text()
            # the writer sits inside its commit, holding the writer lock (and, at rows-written, an open
            # transaction); a reader is not blocked and sees exactly the last committed generation
            with FaceIndex.open(d) as reader:
                assert reader.verify() == []
                assert {r[3] for r in reader.records()} == _hashes(0, 40 if survives else 30)
                assert len(reader.search(rows(7, 1)[0], k=3)[0]) == 3
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.returncode is None:  # a failed assertion above: do not leave the writer waiting
                proc.kill()
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    idx = _check_consistent(d)
    assert {r[3] for r in idx.records()} == _hashes(0, 40 if survives else 30)
    _carries_on(idx, 50)
    idx.close()


def test_readers_see_whole_generations_while_a_writer_runs(tmp_path):
    d = tmp_path / "g"
    _gallery(d, n=3)
    proc = subprocess.Popen(_child("-", 0, "kill", "add", str(d), "3", "40", "3"), env=_env(),
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


# ------------------------------------------------------------------------------------------ mid-build


@pytest.mark.parametrize("point, committed_faces", [("rows-written", 4), ("committed", 6)])
def test_killed_cli_build_resumes(tmp_path, point, committed_faces):
    data = write_synthetic_faces(tmp_path / "data", num_train_identities=2, num_test_identities=4,
                                 images_per_identity=2, test_images_per_identity=3, probe_images_per_identity=0,
                                 image_size=32, num_folds=2, pairs_per_fold=2)
    cfg = FaceModelConfig(alpha=0.25, resolution=32, embedding_dim=8)
    torch.manual_seed(0)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, {"model": FaceEmbedder(cfg).state_dict(), "meta": {"face_model": cfg.to_dict()}})
    idx = tmp_path / "gallery"
    args = ["build", "--images", data["test"], "--checkpoint", str(ckpt), "--index", str(idx), "--device", "cpu",
            "--commit-every", "2"]
    # 12 faces, 2 per commit; killed inside the third commit
    _run_killed(point, 3, "cli", *args, timeout=300)
    with sqlite3.connect(idx / DB_NAME) as con:
        assert con.execute("SELECT count FROM state").fetchone()[0] == committed_faces
    assert search_main(["stats", "--index", str(idx)]) == 0
    probe = next(Path(data["test"]).rglob("*.jpg"))
    assert search_main(["query", "--index", str(idx), "--device", "cpu", "--json", str(probe)]) == 0
    # the same command again continues where the killed one stopped
    assert search_main(args) == 0
    with FaceIndex.open(idx) as g:
        assert len(g) == 12 and g.verify() == []
        assert len({r[3] for r in g.records()}) == 12
        assert _index_files(idx) == [g._state.index_file]
