"""A persistent, crash-safe gallery of face embeddings: a faiss index plus SQLite (Section 4.7 use case).

MobileNets Section 4.7 trains a mobile FaceNet; what users then do with the embeddings is nearest-
neighbour search over a gallery of known faces. :class:`FaceIndex` keeps that gallery in a folder:

    <dir>/gallery.sqlite        identity, path, content hash and embedding of every face (the truth),
                                the model fingerprint, index settings, and the committed ``state``
    <dir>/index-<gen>.faiss     the faiss index of generation <gen>, ids = SQLite row ids

Consistency (the index files and the database never disagree):
    * every change is a new *generation*: the new faiss index is written to a temp file, fsynced and
      renamed to ``index-<gen+1>.faiss``; then one SQLite transaction inserts/deletes the rows and
      points ``state`` at the new file with its size and sha256. The SQLite commit is the atomic
      switch; index files no ``state`` refers to are deleted afterwards (and on the next write).
    * a crash (SIGKILL, power loss) before the commit leaves the previous generation intact (the new
      file is an orphan); after it, the new one. Readers verify the file's size and checksum against
      ``state``, so a torn or foreign file is detected instead of silently served.
    * writers hold an exclusive ``fcntl`` lock on ``<dir>/.lock``; readers never block.

Faiss index types (all over inner product of L2-normalised embeddings, i.e. cosine similarity):
    flat  exact search (``IndexFlatIP`` behind ``IndexIDMap2``)
    ivf   ``IndexIVFFlat`` with ``nlist ~ 2 sqrt(N)`` lists, ``nprobe`` probed at search time
    hnsw  ``IndexHNSWFlat`` behind ``IndexIDMap2``; removal rebuilds the graph
    auto  flat below ``AUTO_IVF_MIN`` faces, ivf above; re-chosen (and the index rebuilt from the
          stored embeddings) as the gallery grows, and ivf is retrained when it has grown 4x.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from datasets.io import atomic_path

try:  # POSIX; on other systems writers are not serialised across processes
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "AUTO_IVF_MIN",
    "INDEX_TYPES",
    "AddResult",
    "FaceIndex",
    "FaceIndexError",
    "Hit",
    "IndexCorruptError",
    "IndexStats",
    "ModelMismatchError",
    "choose_index_type",
    "ivf_nlist",
]

FORMAT_VERSION = 1
DB_NAME = "gallery.sqlite"
LOCK_NAME = ".lock"
INDEX_TYPES = ("auto", "flat", "ivf", "hnsw")
AUTO_IVF_MIN = 50_000  # below this an exact scan is fast enough (see docs/faces.md, Benchmark)
IVF_NPROBE = 64  # recall@1 0.98 at 1M clustered vectors, see docs/faces.md (Benchmark)
IVF_TRAIN_PER_LIST = 40  # k-means points per list (faiss wants >= 39)
IVF_RETRAIN_GROWTH = 4.0
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 64


class FaceIndexError(RuntimeError):
    """Base class of gallery errors (a user error on the command line: a wrong or damaged gallery)."""

    user_error = True


class IndexCorruptError(FaceIndexError):
    """The index file and the database disagree (or a file is missing/damaged)."""


class ModelMismatchError(FaceIndexError, ValueError):
    """Embeddings from another model than the one the gallery was built with."""


class _StaleRead(Exception):
    """A hit's row is gone: the loaded generation is older than the database."""


@dataclass(frozen=True)
class Hit:
    """One search result: the gallery face, its identity and the cosine similarity to the query."""

    identity: str
    path: str
    score: float
    id: int

    def to_dict(self) -> dict[str, Any]:
        return {"identity": self.identity, "path": self.path, "score": self.score}


@dataclass
class AddResult:
    """What :meth:`FaceIndex.add` did: new row ids and the inputs skipped as already present."""

    added: list[int] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (path given, path already indexed)
    generation: int = 0


@dataclass
class IndexStats:
    """Summary of a gallery; ``problems`` is empty when verification passed."""

    directory: str
    count: int
    identities: int
    dim: int
    index_type: str
    index_params: dict[str, Any]
    generation: int
    index_file: str
    index_bytes: int
    fingerprint: str
    model: dict[str, Any]
    verified: bool
    problems: list[str]

    def summary(self) -> str:
        status = "OK" if self.verified and not self.problems else ("FAILED" if self.problems else "not checked")
        lines = [
            f"gallery      : {self.directory}",
            f"faces        : {self.count} of {self.identities} identities ({self.dim}-d)",
            f"index        : {self.index_type} {self.index_params} -> {self.index_file} ({self.index_bytes} bytes)",
            f"generation   : {self.generation}",
            f"model        : {self.fingerprint[:16]} {self.model.get('checkpoint', '')}",
            f"verification : {status}",
        ]
        lines += [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# index construction


def choose_index_type(count: int) -> str:
    """The automatic choice: exact search for small galleries, IVF for large ones."""
    return "flat" if count < AUTO_IVF_MIN else "ivf"


def ivf_nlist(count: int) -> int:
    """Number of IVF lists for ``count`` vectors: ~2 sqrt(N), a power of two, >= 39 training points each.

    2 sqrt(N) (2048 lists at 1M) rather than the larger counts used for GPUs keeps k-means training and
    the assignment of new vectors cheap on a CPU; see docs/faces.md (Benchmark) for its recall/speed.
    """
    if count < 39:
        return 1
    target = 2.0 * math.sqrt(count)
    nlist = 2 ** int(round(math.log2(target)))
    return int(max(1, min(nlist, count // 39)))


def _new_index(kind: str, dim: int, vectors: np.ndarray, params: dict[str, Any]) -> faiss.Index:
    """Build an empty (trained, for ivf) index of ``kind``; ``params`` receives its settings."""
    if kind == "flat":
        params.clear()
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if kind == "hnsw":
        m = int(params.get("M", HNSW_M))
        inner = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = int(params.get("efConstruction", HNSW_EF_CONSTRUCTION))
        inner.hnsw.efSearch = int(params.get("efSearch", HNSW_EF_SEARCH))
        params.update(M=m, efConstruction=inner.hnsw.efConstruction, efSearch=inner.hnsw.efSearch)
        return faiss.IndexIDMap2(inner)
    if kind == "ivf":
        n = len(vectors)
        nlist = ivf_nlist(n)
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        if n == 0:
            raise FaceIndexError("an ivf index needs vectors to train on; add faces first or use flat")
        # k-means on at most IVF_TRAIN_PER_LIST points per list is plenty and keeps big rebuilds quick
        rng = np.random.default_rng(0)
        cap = IVF_TRAIN_PER_LIST * nlist
        sample = vectors if n <= cap else vectors[np.sort(rng.choice(n, cap, replace=False))]
        ivf.train(np.ascontiguousarray(sample, dtype=np.float32))
        ivf.nprobe = int(min(params.get("nprobe", IVF_NPROBE), nlist))
        params.update(nlist=nlist, nprobe=ivf.nprobe, trained_on=n)
        return ivf
    raise ValueError(f"index type must be one of {INDEX_TYPES}, got {kind!r}")


def _apply_search_params(index: faiss.Index, kind: str, params: dict[str, Any]) -> None:
    if kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
    elif kind == "hnsw":
        faiss.downcast_index(index.index).hnsw.efSearch = int(params["efSearch"])


def _index_contents(index: faiss.Index, kind: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """All (ids, vectors) stored in ``index``, sorted by id."""
    if kind == "ivf":
        ivf = faiss.extract_index_ivf(index)
        inv = ivf.invlists
        ids, vecs = [np.empty(0, np.int64)], [np.empty((0, dim), np.float32)]
        for lst in range(ivf.nlist):
            n = inv.list_size(lst)
            if n == 0:
                continue
            ids.append(faiss.rev_swig_ptr(inv.get_ids(lst), n).copy())
            codes = faiss.rev_swig_ptr(inv.get_codes(lst), n * inv.code_size).copy()
            vecs.append(codes.view(np.float32).reshape(n, dim))
        all_ids, all_vecs = np.concatenate(ids), np.concatenate(vecs)
    else:
        all_ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        inner = faiss.downcast_index(index.index)
        all_vecs = inner.reconstruct_n(0, inner.ntotal) if inner.ntotal else np.empty((0, dim), np.float32)
    order = np.argsort(all_ids, kind="stable")
    return all_ids[order], all_vecs[order]


# --------------------------------------------------------------------------------------------------
# files


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_index_file(index: faiss.Index, path: Path) -> tuple[str, int]:
    """Write ``index`` to ``path`` atomically (``datasets.io.atomic_path``); return (sha256, size)."""
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
        digest, size = _sha256_file(tmp), os.path.getsize(tmp)
    return digest, size


def _to_blob(v: np.ndarray) -> bytes:
    return np.ascontiguousarray(v, dtype="<f4").tobytes()


def _from_blobs(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    if not blobs:
        return np.empty((0, dim), np.float32)
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dim).astype(np.float32)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state (
    one INTEGER PRIMARY KEY CHECK (one = 0),
    generation INTEGER NOT NULL, index_file TEXT NOT NULL, index_sha256 TEXT NOT NULL,
    index_bytes INTEGER NOT NULL, count INTEGER NOT NULL, index_type TEXT NOT NULL, index_params TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS faces (
    id INTEGER PRIMARY KEY, identity TEXT NOT NULL, path TEXT NOT NULL, sha256 TEXT NOT NULL UNIQUE,
    embedding BLOB NOT NULL, generation INTEGER NOT NULL, added_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS faces_identity ON faces(identity);
CREATE INDEX IF NOT EXISTS faces_path ON faces(path);
"""


@dataclass
class _State:
    generation: int
    index_file: str
    index_sha256: str
    index_bytes: int
    count: int
    index_type: str
    index_params: dict[str, Any]


# --------------------------------------------------------------------------------------------------
# the gallery


class FaceIndex:
    """Gallery of face embeddings; see the module docstring for the on-disk format.

    Use :meth:`create` for a new gallery and :meth:`open` for an existing one. Instances are not
    thread-safe; several processes may read while one writes.
    """

    def __init__(self, directory: Path, conn: sqlite3.Connection, meta: dict[str, Any]):
        self.directory = directory
        self._conn = conn
        self._meta = meta
        self._state: _State | None = None
        self._index: faiss.Index | None = None

    # ---------------------------------------------------------------------------- opening
    @staticmethod
    def _connect(db: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(str(db), isolation_level=None, timeout=60.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    @classmethod
    def create(
        cls,
        directory: str | Path,
        *,
        dim: int,
        fingerprint: str,
        model: dict[str, Any] | None = None,
        index_type: str = "auto",
        index_params: dict[str, Any] | None = None,
    ) -> FaceIndex:
        """Create an empty gallery in ``directory`` (which must not hold one already).

        Args:
            directory: folder to create/use.
            dim: embedding size.
            fingerprint: the embedding model's fingerprint; every later add/search must match it.
            model: plain description of the model (checkpoint path, config) kept for messages.
            index_type: "auto", "flat", "ivf" or "hnsw".
            index_params: overrides such as ``{"nprobe": 64}`` or ``{"M": 48, "efSearch": 128}``.
        """
        if index_type not in INDEX_TYPES:
            raise ValueError(f"index_type must be one of {INDEX_TYPES}, got {index_type!r}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if not isinstance(fingerprint, str) or not fingerprint:
            raise ValueError("fingerprint must be a non-empty string")
        d = Path(directory)
        if (d / DB_NAME).exists():
            raise FileExistsError(f"{d} already holds a face gallery ({DB_NAME}); open it or choose another folder")
        d.mkdir(parents=True, exist_ok=True)
        with _locked(d):
            conn = cls._connect(d / DB_NAME)
            conn.executescript(_SCHEMA)
            meta = {"format_version": FORMAT_VERSION, "dim": dim, "fingerprint": fingerprint,
                    "model": model or {}, "index_type": index_type, "index_params": dict(index_params or {}),
                    "created_at": time.time()}
            # auto and ivf start exact: an ivf index is trained on the first faces added
            kind = "flat" if index_type in ("auto", "ivf") else index_type
            params = dict(index_params or {}) if kind != "flat" else {}
            index = _new_index(kind, dim, np.empty((0, dim), np.float32), params)
            name = f"index-{1:08d}.faiss"
            digest, size = _write_index_file(index, d / name)
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)",
                             [(k, json.dumps(v)) for k, v in meta.items()])
            conn.execute("INSERT INTO state VALUES (0, 1, ?, ?, ?, 0, ?, ?)",
                         (name, digest, size, kind, json.dumps(params)))
            conn.execute("COMMIT")
            self = cls(d, conn, meta)
            self._state = self._read_state()
            self._index = index
            return self

    @classmethod
    def open(cls, directory: str | Path, *, fingerprint: str | None = None, verify_checksum: bool = True) -> FaceIndex:
        """Open an existing gallery and load its committed index.

        Args:
            directory: the gallery folder.
            fingerprint: if given, raise :class:`ModelMismatchError` unless the gallery was built with it.
            verify_checksum: check the index file's sha256 against the database (size is always checked).
        """
        d = Path(directory)
        db = d / DB_NAME
        if not db.is_file():
            raise FileNotFoundError(f"no face gallery in {d} (missing {DB_NAME}); create one with "
                                    "'python -m tasks.faces.search build'")
        conn = cls._connect(db)
        try:
            rows = conn.execute("SELECT key, value FROM meta").fetchall()
        except sqlite3.DatabaseError as e:
            conn.close()
            raise IndexCorruptError(f"{db} is not a face gallery database: {e}") from e
        meta = {k: json.loads(v) for k, v in rows}
        if meta.get("format_version") != FORMAT_VERSION:
            conn.close()
            raise IndexCorruptError(f"{db}: unsupported gallery format {meta.get('format_version')!r}")
        self = cls(d, conn, meta)
        if fingerprint is not None:
            self.check_model(fingerprint)
        self._load(verify_checksum)
        return self

    def close(self) -> None:
        self._conn.close()
        self._index = None

    def __enter__(self) -> FaceIndex:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---------------------------------------------------------------------------- properties
    @property
    def dim(self) -> int:
        return int(self._meta["dim"])

    @property
    def fingerprint(self) -> str:
        return str(self._meta["fingerprint"])

    @property
    def model(self) -> dict[str, Any]:
        return dict(self._meta.get("model") or {})

    @property
    def generation(self) -> int:
        assert self._state is not None
        return self._state.generation

    @property
    def index_type(self) -> str:
        """The faiss index type in use (``auto`` resolved)."""
        assert self._state is not None
        return self._state.index_type

    def __len__(self) -> int:
        assert self._state is not None
        return self._state.count

    def check_model(self, fingerprint: str) -> None:
        """Raise :class:`ModelMismatchError` unless ``fingerprint`` is the gallery's model."""
        if fingerprint != self.fingerprint:
            built = self.model.get("checkpoint", "an unknown checkpoint")
            raise ModelMismatchError(
                f"the face gallery in {self.directory} was built with model {self.fingerprint[:16]} "
                f"({built}), but the embeddings come from model {fingerprint[:16]}; embeddings of different "
                "models are not comparable: use the gallery's model, or rebuild the gallery with this one"
            )

    # ---------------------------------------------------------------------------- state
    def _read_state(self) -> _State:
        row = self._conn.execute(
            "SELECT generation, index_file, index_sha256, index_bytes, count, index_type, index_params "
            "FROM state WHERE one = 0").fetchone()
        if row is None:
            raise IndexCorruptError(f"{self.directory / DB_NAME} has no committed state")
        return _State(int(row[0]), row[1], row[2], int(row[3]), int(row[4]), row[5], json.loads(row[6]))

    def _load(self, verify_checksum: bool = True) -> None:
        """Load the committed generation; retry if a writer replaces it while we read."""
        last_error: Exception | None = None
        for attempt in range(5):
            state = self._read_state()
            path = self.directory / state.index_file
            try:
                if path.stat().st_size != state.index_bytes:
                    raise IndexCorruptError(f"{path} has {path.stat().st_size} bytes, the database says "
                                            f"{state.index_bytes}")
                if verify_checksum and _sha256_file(path) != state.index_sha256:
                    raise IndexCorruptError(f"{path} does not match the checksum recorded in the database")
                index = faiss.read_index(str(path))
            except (FileNotFoundError, IndexCorruptError, RuntimeError) as e:
                last_error = e
                if self._read_state().generation != state.generation:
                    continue  # a writer committed meanwhile: read the new generation
                time.sleep(0.05 * (attempt + 1))
                continue
            if index.ntotal != state.count or index.d != self.dim:
                raise IndexCorruptError(f"{path} holds {index.ntotal} vectors of dim {index.d}; the database "
                                        f"says {state.count} of dim {self.dim}")
            _apply_search_params(index, state.index_type, state.index_params)
            self._state, self._index = state, index
            return
        raise IndexCorruptError(f"cannot load the index of generation {state.generation} in {self.directory}: "
                                f"{last_error}")

    def refresh(self) -> None:
        """Reload if another process committed a newer generation."""
        if self._read_state().generation != self.generation:
            self._load()

    # ---------------------------------------------------------------------------- reading
    def search(self, embeddings: Any, k: int = 5) -> list[list[Hit]]:
        """Nearest gallery faces of each query embedding.

        Args:
            embeddings: ``[Q, D]`` (or ``[D]``) query embeddings of the gallery's model; normalised here.
            k: hits per query.

        Returns:
            For each query, up to ``k`` :class:`Hit` in decreasing similarity.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        q = self._as_matrix(embeddings, "query embeddings")
        try:
            return self._search(q, k)
        except _StaleRead:
            self.refresh()  # a writer removed faces after we loaded: search the new generation
            try:
                return self._search(q, k)
            except _StaleRead as e:
                raise IndexCorruptError(f"index id {e.args[0]} has no row in the database of "
                                        f"{self.directory}") from None

    def _search(self, q: np.ndarray, k: int) -> list[list[Hit]]:
        assert self._index is not None
        if len(self) == 0 or len(q) == 0:
            return [[] for _ in range(len(q))]
        scores, ids = self._index.search(q, min(k, len(self)))
        wanted = sorted({int(i) for i in ids.ravel() if i >= 0})
        rows = {}
        for chunk in range(0, len(wanted), 900):  # SQLite's bound-parameter limit
            part = wanted[chunk:chunk + 900]
            marks = ",".join("?" * len(part))
            for rid, identity, path in self._conn.execute(
                    f"SELECT id, identity, path FROM faces WHERE id IN ({marks})", part):
                rows[rid] = (identity, path)
        out = []
        for srow, irow in zip(scores, ids):
            hits = []
            for s, i in zip(srow, irow):
                if i < 0:
                    continue
                if int(i) not in rows:
                    raise _StaleRead(int(i))
                identity, path = rows[int(i)]
                hits.append(Hit(identity, path, float(s), int(i)))
            out.append(hits)
        return out

    def known_hashes(self, hashes: Sequence[str]) -> dict[str, str]:
        """Map each of ``hashes`` already in the gallery to the path it was indexed under."""
        found: dict[str, str] = {}
        hashes = list(dict.fromkeys(hashes))
        for chunk in range(0, len(hashes), 900):
            part = hashes[chunk:chunk + 900]
            marks = ",".join("?" * len(part))
            found.update(self._conn.execute(f"SELECT sha256, path FROM faces WHERE sha256 IN ({marks})", part))
        return found

    def identities(self) -> dict[str, int]:
        """Faces per identity."""
        return dict(self._conn.execute("SELECT identity, COUNT(*) FROM faces GROUP BY identity ORDER BY identity"))

    def records(self) -> list[tuple[int, str, str, str]]:
        """All ``(id, identity, path, sha256)`` rows, by id."""
        return list(self._conn.execute("SELECT id, identity, path, sha256 FROM faces ORDER BY id"))

    def _as_matrix(self, embeddings: Any, what: str) -> np.ndarray:
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{what} must be [N, {self.dim}], got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{what} contain NaN or inf")
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if np.any(norms == 0):
            raise ValueError(f"{what} contain an all-zero vector")
        return np.ascontiguousarray(x / norms)

    # ---------------------------------------------------------------------------- writing
    def add(
        self,
        embeddings: Any,
        identities: Sequence[str],
        paths: Sequence[str],
        hashes: Sequence[str],
        *,
        fingerprint: str | None = None,
    ) -> AddResult:
        """Add faces in one atomic commit; inputs whose content hash is already present are skipped.

        Args:
            embeddings: ``[N, D]`` embeddings of the gallery's model.
            identities, paths, hashes: per face: identity label, image path, sha256 of the file content.
            fingerprint: the model that produced ``embeddings``; checked when given.

        Returns:
            :class:`AddResult` (ids of the new rows, skipped duplicates, the committed generation).
        """
        if fingerprint is not None:
            self.check_model(fingerprint)
        x = self._as_matrix(embeddings, "embeddings") if len(identities) else np.empty((0, self.dim), np.float32)
        n = len(x)
        if not (len(identities) == len(paths) == len(hashes) == n):
            raise ValueError(f"add: {n} embeddings but {len(identities)} identities, {len(paths)} paths, "
                             f"{len(hashes)} hashes")
        for name, values in (("identity", identities), ("path", paths), ("hash", hashes)):
            for v in values:
                if not isinstance(v, str) or not v:
                    raise ValueError(f"add: every {name} must be a non-empty string, got {v!r}")
        result = AddResult()
        with _locked(self.directory):
            self.refresh()
            known = self.known_hashes(hashes)
            keep, seen = [], {}
            for i, h in enumerate(hashes):
                if h in known:
                    result.duplicates.append((paths[i], known[h]))
                elif h in seen:
                    result.duplicates.append((paths[i], paths[seen[h]]))
                else:
                    seen[h] = i
                    keep.append(i)
            if not keep:
                result.generation = self.generation
                return result
            start = int(self._conn.execute("SELECT COALESCE(MAX(id), 0) FROM faces").fetchone()[0]) + 1
            ids = np.arange(start, start + len(keep), dtype=np.int64)
            new_x = x[keep]
            gen = self.generation + 1
            index, kind, params = self._grown_index(new_x, ids)
            now = time.time()
            rows = [(int(ids[j]), identities[i], paths[i], hashes[i], _to_blob(new_x[j]), gen, now)
                    for j, i in enumerate(keep)]
            self._commit(index, kind, params, gen, insert=rows)
            result.added = ids.tolist()
            result.generation = gen
        return result

    def remove(self, *, identity: str | None = None, path: str | None = None) -> int:
        """Remove every face of ``identity`` and/or with image ``path``; returns how many were removed."""
        if identity is None and path is None:
            raise ValueError("remove needs an identity or a path")
        with _locked(self.directory):
            self.refresh()
            cond, args = [], []
            if identity is not None:
                cond.append("identity = ?")
                args.append(identity)
            if path is not None:
                cond.append("path = ?")
                args.append(path)
            ids = [r[0] for r in self._conn.execute(f"SELECT id FROM faces WHERE {' OR '.join(cond)}", args)]
            if not ids:
                return 0
            gen = self.generation + 1
            remaining = self._conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0] - len(ids)
            index, kind, params = self._rebuilt_index(exclude=set(ids), count=remaining)
            self._commit(index, kind, params, gen, delete=ids)
            return len(ids)

    def rebuild(self, index_type: str | None = None, index_params: dict[str, Any] | None = None) -> None:
        """Rebuild the faiss index from the stored embeddings (optionally switching its type/settings)."""
        if index_type is not None and index_type not in INDEX_TYPES:
            raise ValueError(f"index_type must be one of {INDEX_TYPES}, got {index_type!r}")
        with _locked(self.directory):
            self.refresh()
            if index_type is not None:
                self._meta["index_type"] = index_type
            if index_params is not None:
                self._meta["index_params"] = dict(index_params)
            index, kind, params = self._rebuilt_index(exclude=set(), count=len(self))
            self._commit(index, kind, params, self.generation + 1,
                         meta={"index_type": self._meta["index_type"], "index_params": self._meta["index_params"]})

    def _target_kind(self, count: int) -> str:
        wanted = self._meta["index_type"]
        return choose_index_type(count) if wanted == "auto" else wanted

    def _all_embeddings(self, exclude: set[int]) -> tuple[np.ndarray, np.ndarray]:
        ids, blobs = [], []
        for rid, blob in self._conn.execute("SELECT id, embedding FROM faces ORDER BY id"):
            if rid not in exclude:
                ids.append(rid)
                blobs.append(blob)
        return np.asarray(ids, dtype=np.int64), _from_blobs(blobs, self.dim)

    def _rebuilt_index(self, exclude: set[int], count: int,
                       extra: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[faiss.Index, str, dict]:
        ids, x = self._all_embeddings(exclude)
        if extra is not None:
            ids, x = np.concatenate([ids, extra[1]]), np.concatenate([x, extra[0]])
        kind = self._target_kind(count)
        if kind == "ivf" and len(x) == 0:
            kind = "flat"  # nothing to train on yet
        params = dict(self._meta.get("index_params") or {})
        index = _new_index(kind, self.dim, x, params)
        if len(x):
            index.add_with_ids(np.ascontiguousarray(x), ids)
        return index, kind, params

    def _grown_index(self, new_x: np.ndarray, new_ids: np.ndarray) -> tuple[faiss.Index, str, dict]:
        """The current index plus the new vectors, or a rebuilt one when the type/training must change."""
        assert self._state is not None and self._index is not None
        count = self._state.count + len(new_x)
        kind = self._target_kind(count)
        cur = self._state
        retrain = kind == "ivf" and cur.index_type == "ivf" and \
            count > IVF_RETRAIN_GROWTH * max(1, int(cur.index_params.get("trained_on", 0)))
        if kind != cur.index_type or retrain:
            return self._rebuilt_index(exclude=set(), count=count, extra=(new_x, new_ids))
        # copy, so a failed commit leaves the in-memory index at the committed generation
        index = faiss.clone_index(self._index)
        _apply_search_params(index, kind, cur.index_params)
        index.add_with_ids(np.ascontiguousarray(new_x), new_ids)
        return index, kind, dict(cur.index_params)

    def _commit(self, index: faiss.Index, kind: str, params: dict[str, Any], gen: int, *,
                insert: Sequence[tuple] = (), delete: Sequence[int] = (), meta: dict[str, Any] | None = None) -> None:
        """Write generation ``gen``: index file first, then one SQLite transaction that switches to it."""
        name = f"index-{gen:08d}.faiss"
        digest, size = _write_index_file(index, self.directory / name)
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            (db_gen,) = conn.execute("SELECT generation FROM state").fetchone()
            if db_gen != gen - 1:  # cannot happen while the lock is held
                raise FaceIndexError(f"gallery {self.directory} changed under the writer lock "
                                     f"(generation {db_gen}, expected {gen - 1})")
            if delete:
                conn.executemany("DELETE FROM faces WHERE id = ?", [(int(i),) for i in delete])
            if insert:
                conn.executemany("INSERT INTO faces(id, identity, path, sha256, embedding, generation, added_at) "
                                 "VALUES (?, ?, ?, ?, ?, ?, ?)", insert)
            for k, v in (meta or {}).items():
                conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (k, json.dumps(v)))
            (count,) = conn.execute("SELECT COUNT(*) FROM faces").fetchone()
            if count != index.ntotal:
                raise FaceIndexError(f"internal error: {index.ntotal} vectors for {count} rows")
            conn.execute("UPDATE state SET generation = ?, index_file = ?, index_sha256 = ?, index_bytes = ?, "
                         "count = ?, index_type = ?, index_params = ? WHERE one = 0",
                         (gen, name, digest, size, count, kind, json.dumps(params)))
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.directory / name)
            raise
        self._state = self._read_state()
        self._index = index
        self._collect_garbage()

    def _collect_garbage(self) -> None:
        """Delete index files (and temp files) that the committed state does not name."""
        assert self._state is not None
        for p in self.directory.iterdir():
            orphan = (p.name.startswith("index-") and p.name.endswith(".faiss") and p.name != self._state.index_file)
            temp = p.name.startswith(".index-") and p.name.endswith(".tmp")
            if orphan or temp:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

    # ---------------------------------------------------------------------------- checking
    def verify(self) -> list[str]:
        """Check that the index file and the database agree; returns a list of problems (empty = OK).

        Checks the file's size and sha256 against ``state``, the row count, that the index holds exactly
        the database's ids, and that every stored vector equals the database's embedding.
        """
        problems: list[str] = []
        state = self._read_state()
        path = self.directory / state.index_file
        if not path.is_file():
            return [f"index file {path} named by the database is missing"]
        if path.stat().st_size != state.index_bytes:
            problems.append(f"{path.name}: {path.stat().st_size} bytes, database says {state.index_bytes}")
        if _sha256_file(path) != state.index_sha256:
            problems.append(f"{path.name}: sha256 differs from the database's")
        if problems:
            return problems
        index = faiss.read_index(str(path))
        db_ids, db_x = self._all_embeddings(set())
        if not (index.ntotal == state.count == len(db_ids)):
            problems.append(f"counts differ: index {index.ntotal}, state {state.count}, rows {len(db_ids)}")
        try:
            ids, x = _index_contents(index, state.index_type, self.dim)
        except Exception as e:  # a foreign index type, say
            return problems + [f"cannot read the vectors of {path.name}: {e}"]
        if len(ids) != len(db_ids) or not np.array_equal(ids, db_ids):
            missing = np.setdiff1d(db_ids, ids)[:5].tolist()
            extra = np.setdiff1d(ids, db_ids)[:5].tolist()
            problems.append(f"ids differ: in the database only {missing}..., in the index only {extra}...")
        elif len(ids) and not np.allclose(x, db_x, atol=1e-6):
            bad = int(np.flatnonzero(~np.all(np.isclose(x, db_x, atol=1e-6), axis=1))[0])
            problems.append(f"vector of id {int(ids[bad])} differs between index and database")
        return problems

    def stats(self, verify: bool = True) -> IndexStats:
        """Counts, settings and (with ``verify``) the result of :meth:`verify`."""
        self.refresh()
        problems = self.verify() if verify else []
        state = self._read_state()
        (n_ids,) = self._conn.execute("SELECT COUNT(DISTINCT identity) FROM faces").fetchone()
        return IndexStats(
            directory=str(self.directory), count=state.count, identities=int(n_ids), dim=self.dim,
            index_type=state.index_type, index_params=state.index_params, generation=state.generation,
            index_file=state.index_file, index_bytes=state.index_bytes, fingerprint=self.fingerprint,
            model=self.model, verified=verify, problems=problems,
        )


# --------------------------------------------------------------------------------------------------
# writer lock


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Exclusive writer lock on ``<directory>/.lock`` (released by the OS if the process dies)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

