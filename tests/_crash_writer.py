"""Child process of tests/test_face_search_crash.py: a gallery writer stopped at an exact step of a commit.

The product code carries no fault-injection hooks. This script wraps steps of ``tasks.faces.index`` in
its own process before it runs a writer, so the kill lands at a chosen place in the code instead of at
a moment in time:

    python tests/_crash_writer.py POINT NTH MODE add DIR START COMMITS PER
    python tests/_crash_writer.py POINT NTH MODE remove DIR IDENTITY
    python tests/_crash_writer.py POINT NTH MODE rebuild DIR INDEX_TYPE
    python tests/_crash_writer.py POINT NTH MODE cli ARG...        (``python -m tasks.faces.search ARG...``)

POINT is one of :data:`POINTS` (or ``-`` for a writer without a trap); it fires inside the NTH call
(1-based) of ``FaceIndex._commit`` in this process. MODE ``kill``: the process SIGKILLs itself there.
MODE ``pause``: it prints ``paused at POINT`` and waits for the parent, which inspects the gallery and
then kills it from outside.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from tasks.faces import index as index_mod
from tasks.faces.index import FaceIndex

DIM = 8
POINTS = {
    "tmp-torn": "the new index's temp file is half written (a torn write), not yet fsynced or renamed",
    "file-renamed": "the new index file is in place under its final name, no database row names it yet",
    "rows-written": "rows and state are written inside the open SQLite transaction, COMMIT not yet run",
    "committed": "COMMIT has returned; the in-memory switch and the removal of old files have not run",
}


def rows(start: int, n: int) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """Embeddings, identities, paths and content hashes of rows ``start .. start+n-1``.

    Row ``j`` has hash ``h<j>``, so the test can name exactly which rows a gallery must hold.
    """
    x = np.random.default_rng(start).normal(size=(n, DIM)).astype("float32")
    js = range(start, start + n)
    return x, [f"id{j % 5}" for j in js], [f"/img/{j}.jpg" for j in js], [f"h{j}" for j in js]


class _Trap:
    """Counts commits and stops the process at ``point`` inside commit number ``nth``."""

    def __init__(self, point: str, nth: int, mode: str) -> None:
        if point not in POINTS:
            raise SystemExit(f"unknown point {point!r}; choose from {sorted(POINTS)}")
        if mode not in ("kill", "pause"):
            raise SystemExit(f"unknown mode {mode!r}")
        self.point, self.nth, self.mode = point, nth, mode
        self.commits = 0
        self.armed = False

    def hit(self, point: str) -> None:
        if not (self.armed and point == self.point):
            return
        if self.mode == "pause":
            print(f"paused at {point}", flush=True)
            sys.stdin.readline()  # the parent SIGKILLs us while we wait here
            os._exit(3)  # reached only if the parent let us go: the test sees a clean exit and fails
        os.kill(os.getpid(), signal.SIGKILL)


class _WatchedConnection:
    """A sqlite3 connection that reports to the trap just before and just after each COMMIT."""

    def __init__(self, conn: sqlite3.Connection, trap: _Trap) -> None:
        self._conn, self._trap = conn, trap

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT":
            self._trap.hit("rows-written")
        cur = self._conn.execute(sql, *args)
        if sql == "COMMIT":
            self._trap.hit("committed")
        return cur


def install(trap: _Trap) -> None:
    """Wrap the commit, the index-file write and the database connection of ``tasks.faces.index``."""
    real_commit = FaceIndex._commit
    real_connect = FaceIndex._connect
    real_write_file = index_mod._write_index_file
    real_write_index = faiss.write_index

    def commit(self: FaceIndex, *args: Any, **kwargs: Any) -> None:
        trap.commits += 1
        trap.armed = trap.commits == trap.nth
        try:
            real_commit(self, *args, **kwargs)
        finally:
            trap.armed = False

    def connect(db: Path) -> _WatchedConnection:
        return _WatchedConnection(real_connect(db), trap)

    def write_index(index: faiss.Index, path: str) -> None:
        real_write_index(index, path)
        if trap.armed and trap.point == "tmp-torn":
            os.truncate(path, os.path.getsize(path) // 2)
            trap.hit("tmp-torn")

    def write_file(index: faiss.Index, path: Path) -> tuple[str, int]:
        out = real_write_file(index, path)
        trap.hit("file-renamed")
        return out

    FaceIndex._commit = commit  # type: ignore[method-assign]
    FaceIndex._connect = staticmethod(connect)  # type: ignore[method-assign,assignment]
    index_mod._write_index_file = write_file
    faiss.write_index = write_index


def main(argv: list[str]) -> int:
    point, nth, mode, op, *rest = argv
    if point != "-":
        install(_Trap(point, int(nth), mode))
    if op == "cli":
        from tasks.cli import run_cli
        from tasks.faces.search import main as search_main

        sys.argv = ["tasks.faces.search", *rest]
        try:
            run_cli(search_main)
        except SystemExit as e:
            return int(e.code or 0)
        return 0
    idx = FaceIndex.open(rest[0])
    if op == "add":
        start, commits, per = (int(v) for v in rest[1:4])
        for c in range(commits):
            idx.add(*rows(start + c * per, per))
            print("committed", idx.generation, flush=True)
    elif op == "remove":
        print("removed", idx.remove(identity=rest[1]), flush=True)
    elif op == "rebuild":
        idx.rebuild(index_type=rest[1])
        print("rebuilt", idx.generation, flush=True)
    else:
        raise SystemExit(f"unknown operation {op!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
