"""``python -m tasks.export.bench``: latency and throughput of exported graphs (and of the PyTorch model).

The paper's case for MobileNets is speed at a given accuracy (Figures 4-5); this measures it here:

    python -m tasks.export.bench deploy/model.onnx deploy/model.int8.onnx --batch 1 32 --compare best.pt

Each (runtime, file, batch) is timed in its own subprocess: ONNX Runtime's and torch's thread pools both
spin after a run, and in one process they slow each other down (FIELD_NOTES). Every worker uses
``--threads`` intra-op threads (default 2), runs ``--warmup`` untimed iterations, then ``--runs`` timed ones
on a fixed random batch; the report is the median and p90 latency and images/s. ``--compare`` times the
checkpoint's network in eager PyTorch (the same computation as the graph, BatchNorm not folded) and
prints each graph's speed-up over it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tasks.cli import run_cli

__all__ = ["bench", "main", "graph_input"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def graph_input(path: str | os.PathLike) -> tuple[int | None, int]:
    """(fixed batch or None, resolution) of an exported graph, from its sidecar or its input shape."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    side, shape = path.with_suffix(".json"), None
    if side.is_file() and side != path:
        try:
            shape = json.loads(side.read_text())["input"]["shape"]
        except (ValueError, KeyError, TypeError):  # not an export sidecar: the graph itself says
            shape = None
    if shape is None:
        try:
            dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
        except Exception as e:  # noqa: BLE001 - any parse failure means "not an ONNX file"
            raise ValueError(f"{path} is not a readable ONNX file: {e}") from None
        shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
    if len(shape) != 4 or not isinstance(shape[2], int):
        raise ValueError(f"{path}: expected an NCHW image input, got shape {shape}")
    return (shape[0] if isinstance(shape[0], int) else None), int(shape[2])


def _time(fn: Any, warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return times


def _worker(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement, in this (child) process."""
    x = np.random.default_rng(0).random((args.batch, 3, args.resolution, args.resolution), dtype=np.float32)
    if args.worker == "ort":
        from .verify import session

        sess = session(args.target, threads=args.threads)
        name = sess.get_inputs()[0].name
        times = _time(lambda: sess.run(None, {name: x}), args.warmup, args.runs)
    else:
        import torch

        from tasks.checkpoint import load_model

        from .graph import build_graph

        torch.set_num_threads(args.threads)
        model, meta = load_model(args.target)
        module = build_graph(model, meta, args.resolution).module.eval()
        xt = torch.from_numpy(x)

        def step() -> None:
            with torch.inference_mode():
                module(xt)

        times = _time(step, args.warmup, args.runs)
    return {"times_ms": times}


def _spawn(kind: str, target: str, batch: int, resolution: int, opts: argparse.Namespace) -> list[float]:
    cmd = [sys.executable, "-m", "tasks.export.bench", "--worker", kind, target, "--batch", str(batch),
           "--resolution", str(resolution), "--threads", str(opts.threads), "--warmup", str(opts.warmup),
           "--runs", str(opts.runs)]
    env = dict(os.environ, OMP_NUM_THREADS=str(opts.threads),
               PYTHONPATH=os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(PROJECT_ROOT))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ValueError(f"timing {target} ({kind}, batch {batch}) failed: {tail}")
    return json.loads(lines[-1])["times_ms"]


def _row(runtime: str, target: str, batch: int, times: list[float]) -> dict[str, Any]:
    med = float(np.median(times))
    return {"runtime": runtime, "file": target, "batch": batch, "median_ms": med,
            "p90_ms": float(np.percentile(times, 90)), "images_per_s": batch * 1e3 / med, "runs": len(times)}


def bench(graphs: Sequence[str], *, batches: Sequence[int] = (1,), compare: str | None = None, threads: int = 2,
          warmup: int = 5, runs: int = 20, say: Any = print) -> dict[str, Any]:
    """Time each graph (and ``compare``'s PyTorch network) at each batch, each in its own process.

    Returns:
        ``{"rows": [{runtime, file, batch, median_ms, p90_ms, images_per_s, runs}], "ratios": [...]}``;
        a ratio is PyTorch's median over the graph's at the same batch.
    """
    for name, v, low in (("--threads", threads, 1), ("--warmup", warmup, 0), ("--runs", runs, 1)):
        if v < low:
            raise ValueError(f"{name} must be >= {low}, got {v}")
    if not batches or any(b < 1 for b in batches):
        raise ValueError(f"--batch needs positive batch sizes, got {list(batches)}")
    if compare is not None and not Path(compare).is_file():
        raise FileNotFoundError(f"--compare checkpoint not found: {compare}")
    info = {g: graph_input(g) for g in graphs}
    resolutions = {r for _, r in info.values()}
    if len(resolutions) > 1:
        raise ValueError(f"the graphs take different resolutions {sorted(resolutions)}; time them separately")
    res = resolutions.pop()
    rows, ratios = [], []
    for b in batches:
        torch_row = None
        if compare is not None and any(info[g][0] in (None, b) for g in graphs):
            torch_row = _row("pytorch", compare, b, _spawn("torch", compare, b, res, _opts(threads, warmup, runs)))
            rows.append(torch_row)
        for g in graphs:
            fixed = info[g][0]
            if fixed is not None and fixed != b:
                say(f"  skip {g} at batch {b}: the graph is for batch {fixed}")
                continue
            row = _row("onnxruntime", g, b, _spawn("ort", g, b, res, _opts(threads, warmup, runs)))
            rows.append(row)
            if torch_row is not None:
                ratios.append({"file": g, "batch": b, "speedup_vs_pytorch": torch_row["median_ms"] / row["median_ms"]})
    say(f"{'runtime':<12} {'file':<40} {'batch':>5} {'median ms':>10} {'p90 ms':>9} {'images/s':>9}")
    for r in rows:
        say(f"{r['runtime']:<12} {Path(r['file']).name:<40} {r['batch']:>5} {r['median_ms']:>10.2f} "
            f"{r['p90_ms']:>9.2f} {r['images_per_s']:>9.1f}")
    for r in ratios:
        say(f"  {Path(r['file']).name} at batch {r['batch']}: {r['speedup_vs_pytorch']:.2f}x PyTorch eager's speed")
    say(f"  ({threads} intra-op threads, {warmup} warm-up + {runs} timed runs, each runtime in its own process)")
    return {"rows": rows, "ratios": ratios, "threads": threads, "warmup": warmup, "runs": runs, "resolution": res}


def _opts(threads: int, warmup: int, runs: int) -> argparse.Namespace:
    return argparse.Namespace(threads=threads, warmup=warmup, runs=runs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tasks.export.bench",
                                description="Median / p90 latency and images/s of exported ONNX graphs")
    p.add_argument("graphs", nargs="+", help="the .onnx files (e.g. model.onnx model.int8.onnx)")
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes (default 1)")
    p.add_argument("--compare", help="a checkpoint: also time its PyTorch network and print the ratios")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of every runtime (default 2)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    p.add_argument("--runs", type=int, default=20, help="timed runs (default 20)")
    p.add_argument("--out", help="also write the results as JSON here")
    p.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    p.add_argument("--worker", choices=("ort", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--resolution", type=int, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        args.target, args.batch = args.graphs[0], args.batch[0]
        print(json.dumps(_worker(args)))
        return 0
    if args.out:
        from datasets.io import prepare_output_file

        prepare_output_file(args.out)  # before minutes of timing
    result = bench(args.graphs, batches=args.batch, compare=args.compare, threads=args.threads,
                   warmup=args.warmup, runs=args.runs)
    if args.out:
        from datasets.io import atomic_write_json

        atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    run_cli(main)
