"""datasets.io (atomic files and folders) and datasets.cache (ensure_cached): all-or-nothing, concurrent-safe."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from datasets import cache
from datasets.cache import MARKER, build_once, ensure_cached, is_complete
from datasets.io import atomic_dir, atomic_path, atomic_write, atomic_write_json, atomic_write_text, remove_dir


class _Boom(Exception):
    pass


def test_atomic_write_bytes_text_writer_and_json(tmp_path):
    assert atomic_write(tmp_path / "a" / "b.bin", b"\x00\x01") == tmp_path / "a" / "b.bin"  # parents created
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
    atomic_write(tmp_path / "w.txt", lambda f: f.write("from a writer"), "w")
    assert (tmp_path / "w.txt").read_text() == "from a writer"
    atomic_write_text(tmp_path / "t.txt", "h\u00e9llo")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "h\u00e9llo"
    atomic_write_json(tmp_path / "j.json", {"x": [1, 2]})
    assert json.loads((tmp_path / "j.json").read_text()) == {"x": [1, 2]}
    atomic_write_json(tmp_path / "c.json", {"x": [1, 2]}, indent=None)
    assert (tmp_path / "c.json").read_text() == '{"x":[1,2]}'
    with pytest.raises(ValueError, match="mode"):
        atomic_write(tmp_path / "x", b"", "ab")


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")

    def half_then_fail(f):
        f.write("new, but only ha")
        raise _Boom

    with pytest.raises(_Boom):
        atomic_write(path, half_then_fail, "w")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_files_get_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "f.txt").st_mode) == 0o644


def test_atomic_path_for_writers_that_take_a_file_name(tmp_path):
    path = tmp_path / "model.onnx"
    with atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".model.onnx.") and tmp.exists()
        tmp.write_bytes(b"graph")
        assert not path.exists()  # nothing under the real name until the block ends
    assert path.read_bytes() == b"graph"
    with pytest.raises(_Boom):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"broken")
            raise _Boom
    assert path.read_bytes() == b"graph" and os.listdir(tmp_path) == ["model.onnx"]


def test_atomic_dir_all_or_nothing(tmp_path):
    final = tmp_path / "set"
    with pytest.raises(_Boom):
        with atomic_dir(final) as tmp:
            (tmp / "a.txt").write_text("1")
            raise _Boom
    assert os.listdir(tmp_path) == []
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("1")
        assert not final.exists()
    assert (final / "a.txt").read_text() == "1"
    with pytest.raises(FileExistsError):  # never merged into, never silently replaced
        with atomic_dir(final) as tmp:
            (tmp / "b.txt").write_text("2")
    assert sorted(os.listdir(final)) == ["a.txt"] and os.listdir(tmp_path) == ["set"]
    remove_dir(final)
    assert os.listdir(tmp_path) == []
    remove_dir(final)  # already gone: nothing to do


def _count_writer(calls: list, content: str = "data"):
    def writer(tmp: Path) -> None:
        calls.append(tmp)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "f.txt").write_text(content)
    return writer


def _visible(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if not n.endswith(".lock"))


def test_ensure_cached_builds_once_and_keys_by_params_and_version(tmp_path):
    calls: list = []
    a = ensure_cached("toy", {"n": 3, "size": [4, 4]}, _count_writer(calls), version=1, cache_dir=tmp_path)
    assert a.parent == tmp_path and a.name.startswith("toy-v1-")
    assert (a / "sub" / "f.txt").read_text() == "data"
    assert is_complete(a, {"name": "toy", "version": 1, "params": {"n": 3, "size": (4, 4)}})  # tuple == list
    assert json.loads((a / MARKER).read_text())["params"] == {"n": 3, "size": [4, 4]}
    assert ensure_cached("toy", {"size": [4, 4], "n": 3}, _count_writer(calls), version=1, cache_dir=tmp_path) == a
    assert len(calls) == 1  # key order does not matter; the second call reused the build
    b = ensure_cached("toy", {"n": 4, "size": [4, 4]}, _count_writer(calls), version=1, cache_dir=tmp_path)
    c = ensure_cached("toy", {"n": 3, "size": [4, 4]}, _count_writer(calls), version=2, cache_dir=tmp_path)
    d = ensure_cached("other", {"n": 3, "size": [4, 4]}, _count_writer(calls), version=1, cache_dir=tmp_path)
    assert len({a, b, c, d}) == 4 and len(calls) == 4
    assert _visible(tmp_path) == sorted(p.name for p in (a, b, c, d))  # no temp folders left
    with pytest.raises(ValueError, match="name"):
        ensure_cached("../up", {}, _count_writer(calls), version=1, cache_dir=tmp_path)


def test_ensure_cached_uses_the_cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILENET_SUITE_CACHE", str(tmp_path / "env"))
    root = ensure_cached("toy", {"n": 1}, _count_writer([]), version=1)
    assert root.parent == tmp_path / "env"


def test_failed_build_leaves_nothing_and_next_call_builds(tmp_path):
    def failing(tmp: Path) -> None:
        (tmp / "half.txt").write_text("x")
        raise _Boom

    with pytest.raises(_Boom):
        ensure_cached("toy", {"n": 1}, failing, version=1, cache_dir=tmp_path)
    assert _visible(tmp_path) == []
    calls: list = []
    root = ensure_cached("toy", {"n": 1}, _count_writer(calls), version=1, cache_dir=tmp_path)
    assert len(calls) == 1 and (root / "sub" / "f.txt").is_file()


def test_incomplete_or_stale_folder_is_rebuilt_whole(tmp_path):
    calls: list = []
    root = ensure_cached("toy", {"n": 1}, _count_writer(calls), version=1, cache_dir=tmp_path)
    (root / MARKER).unlink()  # as if interrupted before the marker
    (root / "leftover.txt").write_text("from an older run")
    assert ensure_cached("toy", {"n": 1}, _count_writer(calls), version=1, cache_dir=tmp_path) == root
    assert len(calls) == 2 and not (root / "leftover.txt").exists() and (root / MARKER).is_file()
    assert _visible(tmp_path) == [root.name]


def test_build_once_force_and_foreign_marker(tmp_path):
    calls: list = []
    root = tmp_path / "out"
    build_once(root, {"k": 1}, _count_writer(calls, "first"))
    build_once(root, {"k": 1}, _count_writer(calls, "second"))
    assert (root / "sub" / "f.txt").read_text() == "first"
    build_once(root, {"k": 2}, _count_writer(calls, "third"))  # other parameters: rebuilt
    assert (root / "sub" / "f.txt").read_text() == "third"
    build_once(root, {"k": 2}, _count_writer(calls, "fourth"), force=True)
    assert (root / "sub" / "f.txt").read_text() == "fourth" and len(calls) == 3


def test_concurrent_callers_build_once_and_agree(tmp_path, monkeypatch):
    """Threads stand in for processes: flock locks belong to the open file, so they exclude each other too."""
    calls: list = []
    started, release, second_looked = threading.Event(), threading.Event(), threading.Event()

    def slow_writer(tmp: Path) -> None:
        calls.append(tmp)
        started.set()
        release.wait(timeout=30)  # hold the first build open until the second caller has looked
        (tmp / "f.txt").write_text("done")

    real_is_complete = cache.is_complete

    def spy(root, marker):
        found = real_is_complete(root, marker)
        if threading.current_thread() is second:
            second_looked.set()  # it found no build and goes on to wait for (or start) one
        return found

    monkeypatch.setattr(cache, "is_complete", spy)
    results: list = []

    def call() -> None:
        results.append(ensure_cached("toy", {"n": 1}, slow_writer, version=1, cache_dir=tmp_path))

    first, second = threading.Thread(target=call), threading.Thread(target=call)
    first.start()
    assert started.wait(timeout=30)
    second.start()
    assert second_looked.wait(timeout=30)
    release.set()
    first.join(timeout=30)
    second.join(timeout=30)
    assert len(calls) == 1, "the waiting caller must reuse the first build, not write its own"
    assert len(results) == 2 and results[0] == results[1]
    assert (results[0] / "f.txt").read_text() == "done"
    assert _visible(tmp_path) == [results[0].name]
