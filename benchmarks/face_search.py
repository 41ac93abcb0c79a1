"""Face-search benchmark: recall@1 and queries/s of IVF and HNSW against exact search, plus embedding
throughput of the face models of Table 14 (MobileNets Section 4.7).

Galleries of clustered 128-d unit vectors stand in for face embeddings: ``N / per_id`` identity centres
on the sphere, each with ``per_id`` noisy "photos"; queries are fresh photos of gallery identities
(the search a face service answers). Like real embeddings, the centres are not isotropic: their
covariance has a power-law spectrum (eigenvalue i ~ i^-0.75, about 41 effective dimensions of 128, in
a random orientation), which puts different people at cosine 0 +- 0.12 (99.9th percentile 0.36) and
photos of one person at about 0.69. ``--isotropic`` draws the centres uniformly on the sphere instead:
the worst case for approximate search, where nothing but the noise separates cells and graph
neighbourhoods. For each gallery size (default 100k and 1M, in one run):

* flat (``IndexFlatIP``): exact; its answers are the ground truth and its speed the baseline;
* ivf (``IndexIVFFlat``, ``nlist`` as ``tasks.faces.index`` chooses it) at several ``nprobe``;
* hnsw (``IndexHNSWFlat``, the gallery's M / efConstruction) at several ``efSearch``;

reporting recall@1 (same top-1 as exact search), queries/s with the whole query batch at once and with
one query at a time, the speed-up over flat, and build time. Then images/s of ``FaceEmbedder`` forward
passes at the Table 14 settings and the embedded default.

Usage:
    python benchmarks/face_search.py [--sizes 100000 1000000] [--queries 2000] [--out results.json]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._machine import cpu_model, load_average  # noqa: E402
from datasets.io import atomic_write_json  # noqa: E402
from tasks.faces.index import HNSW_EF_CONSTRUCTION, HNSW_M, IVF_TRAIN_PER_LIST, ivf_nlist  # noqa: E402

DIM = 128


def clustered(n: int, per_id: int, n_queries: int, noise: float, seed: int, *, isotropic: bool = False,
              power: float = 0.75) -> tuple[np.ndarray, np.ndarray]:
    """Gallery ``[n, 128]`` and queries ``[q, 128]``, unit vectors, generated in chunks to bound memory."""
    rng = np.random.default_rng(seed)
    n_ids = max(1, n // per_id)
    centres = rng.standard_normal((n_ids, DIM), dtype=np.float32)
    if not isotropic:
        scale = np.arange(1, DIM + 1, dtype=np.float32) ** (-power / 2)
        rotation = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0].astype(np.float32)
        centres = (centres * (scale / np.sqrt(np.mean(scale ** 2)))) @ rotation
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # noise per coordinate so that a photo's cosine to its centre is about 1 / sqrt(1 + DIM * noise^2)
    x = np.empty((n, DIM), np.float32)
    for s in range(0, n, 200_000):
        e = min(n, s + 200_000)
        x[s:e] = centres[np.arange(s, e) % n_ids] + noise * rng.standard_normal((e - s, DIM), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = centres[rng.integers(0, n_ids, n_queries)] + noise * rng.standard_normal((n_queries, DIM), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x, q


def timed_search(index: faiss.Index, q: np.ndarray, single: int) -> tuple[np.ndarray, float, float]:
    """Top-1 ids, batched queries/s, and one-at-a-time queries/s (on the first ``single`` queries)."""
    t = time.perf_counter()
    _, ids = index.search(q, 1)
    qps_batch = len(q) / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(single):
        index.search(q[i:i + 1], 1)
    qps_single = single / (time.perf_counter() - t)
    return ids[:, 0], qps_batch, qps_single


def bench_size(n: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    t = time.perf_counter()
    x, q = clustered(n, args.per_id, args.queries, args.noise, seed=n, isotropic=args.isotropic)
    print(f"\n== {n:,} vectors ({n // args.per_id:,} identities), {len(q)} queries; "
          f"data {time.perf_counter() - t:.1f} s", flush=True)

    t = time.perf_counter()
    flat = faiss.IndexFlatIP(DIM)
    flat.add(x)
    build = time.perf_counter() - t
    truth, qps_b, qps_s = timed_search(flat, q, args.single)
    base = {"batch": qps_b, "single": qps_s}
    rows.append({"n": n, "index": "flat", "param": "-", "recall@1": 1.0, "qps_batch": qps_b, "qps_single": qps_s,
                 "speedup_batch": 1.0, "speedup_single": 1.0, "build_s": build})
    print(f"flat                 recall 1.0000  {qps_b:10.0f} q/s batched {qps_s:8.0f} q/s single  build {build:.1f} s",
          flush=True)
    del flat

    def record(kind: str, param: str, index: faiss.Index, build_s: float) -> None:
        ids, qb, qs = timed_search(index, q, args.single)
        rec = float(np.mean(ids == truth))
        rows.append({"n": n, "index": kind, "param": param, "recall@1": rec, "qps_batch": qb, "qps_single": qs,
                     "speedup_batch": qb / base["batch"], "speedup_single": qs / base["single"], "build_s": build_s})
        print(f"{kind:4s} {param:15s} recall {rec:.4f}  {qb:10.0f} q/s batched {qs:8.0f} q/s single  "
              f"x{qb / base['batch']:.1f} / x{qs / base['single']:.1f} over flat  build {build_s:.1f} s", flush=True)

    nlist = ivf_nlist(n)
    t = time.perf_counter()
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(DIM), DIM, nlist, faiss.METRIC_INNER_PRODUCT)
    sample = x[np.sort(np.random.default_rng(0).choice(n, min(n, IVF_TRAIN_PER_LIST * nlist), replace=False))]
    ivf.train(sample)
    ivf.add(x)
    build = time.perf_counter() - t
    for nprobe in args.nprobe:
        ivf.nprobe = nprobe
        record("ivf", f"nlist={nlist},nprobe={nprobe}", ivf, build)
    del ivf

    if n <= args.hnsw_max:
        t = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(DIM, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        hnsw.add(x)
        build = time.perf_counter() - t
        for ef in args.ef_search:
            hnsw.hnsw.efSearch = ef
            record("hnsw", f"M={HNSW_M},ef={ef}", hnsw, build)
        del hnsw
    else:
        print(f"hnsw skipped at {n:,} (--hnsw-max {args.hnsw_max:,})")
    return rows


def bench_embedding(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    from tasks.faces.model import FaceEmbedder, FaceModelConfig

    if args.embed_threads:
        torch.set_num_threads(args.embed_threads)
    rows = []
    print("\n== embedding throughput (forward only, batch %d, %d torch threads)" % (args.embed_batch,
                                                                                   torch.get_num_threads()))
    for alpha, res in ((1.0, 160), (1.0, 128), (0.75, 128), (0.5, 128), (0.25, 64)):
        model = FaceEmbedder(FaceModelConfig(alpha=alpha, resolution=res)).eval()
        x = torch.rand(args.embed_batch, 3, res, res)
        with torch.no_grad():
            model(x)  # warm-up
            t = time.perf_counter()
            for _ in range(args.embed_iters):
                model(x)
            ips = args.embed_batch * args.embed_iters / (time.perf_counter() - t)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        rows.append({"alpha": alpha, "resolution": res, "params_M": params, "images_per_s": ips})
        print(f"alpha {alpha:<4} {res:3d}px  {params:5.2f} M params  {ips:8.1f} images/s", flush=True)
    return rows


def machine() -> dict[str, Any]:
    import torch

    return {"cpu": cpu_model(), "nproc": os.cpu_count(), "faiss_threads": faiss.omp_get_max_threads(),
            "faiss": faiss.__version__, "numpy": np.__version__, "torch": torch.__version__,
            "python": platform.python_version(), "date": datetime.date.today().isoformat(),
            "load_avg": load_average()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--queries", type=int, default=1000, help="batched queries per gallery")
    p.add_argument("--single", type=int, default=50, help="queries timed one at a time")
    p.add_argument("--per-id", type=int, default=10, help="photos per identity in the gallery")
    p.add_argument("--noise", type=float, default=0.06, help="per-coordinate noise around an identity centre")
    p.add_argument("--isotropic", action="store_true", help="identity centres uniform on the sphere (worst case)")
    p.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 48, 64, 128])
    p.add_argument("--ef-search", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    p.add_argument("--hnsw-max", type=int, default=1_000_000, help="largest gallery that gets an HNSW index")
    p.add_argument("--embed-batch", type=int, default=32)
    p.add_argument("--embed-threads", type=int, help="torch threads for the embedding part (default: torch's)")
    p.add_argument("--embed-iters", type=int, default=5)
    p.add_argument("--skip-embedding", action="store_true")
    p.add_argument("--threads", type=int, help="faiss/torch threads (default: all cores)")
    p.add_argument("--out", help="write all results as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        faiss.omp_set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    if args.single > args.queries:
        p.error("--single must be <= --queries")

    info = machine()
    print(f"machine: {info['cpu']}, {info['nproc']} CPUs, faiss {info['faiss']} ({info['faiss_threads']} threads), "
          f"{info['date']}, load {info['load_avg']}")
    t0 = time.perf_counter()
    rows = []
    for n in args.sizes:
        rows += bench_size(n, args)
    emb = [] if args.skip_embedding else bench_embedding(args)
    result = {"machine": info, "settings": {k: v for k, v in vars(args).items() if k != "out"},
              "search": rows, "embedding": emb, "wall_s": time.perf_counter() - t0}
    print(f"\ntotal {result['wall_s']:.0f} s")
    if args.out:
        atomic_write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
