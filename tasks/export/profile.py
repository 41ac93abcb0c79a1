"""``python -m tasks.export.profile``: where an exported graph's time goes in ONNX Runtime, per operator.

    python -m tasks.export.profile deploy/model.int8.onnx --batch 32

ONNX Runtime's own profiler (``SessionOptions.enable_profiling``) records every kernel of ``--runs`` runs on
a fixed random batch after ``--warmup`` untimed ones, with ``--threads`` intra-op threads, in this process
alone (torch is not loaded; FIELD_NOTES: two thread pools in one process slow each other down). Printed:
the median wall time of a run, each operator type's kernel time (the sum over its nodes of each node's
median) with its share, and the ``--top`` slowest nodes; ``--out`` writes the same as JSON.

Nodes are those of ONNX Runtime's optimised graph, which is what runs: an int8 graph's fused convolutions
appear as ``QLinearConv``; a convolution left in fp32 between QuantizeLinear and DequantizeLinear shows as
``Conv`` beside ``DequantizeLinear`` rows (how the S8S8 SSD graph's branching convolutions were found,
``tasks.export.core.INT8_ACTIVATIONS``); ``ReorderOutput`` / ``Transpose`` rows are layout changes, e.g.
where the fp32 stem hands over to int8.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tasks.cli import run_cli

from .bench import graph_input, random_batch
from .runtime import session

__all__ = ["format_profile", "main", "profile_graph"]

KERNEL = "_kernel_time"


def _positive(name: str, value: int, least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name}={value!r} must be an integer >= {least}")
    return value


def profile_graph(path: str | os.PathLike, *, batch: int = 1, threads: int = 2, runs: int = 20, warmup: int = 5,
                  top: int = 10) -> dict[str, Any]:
    """Profile ``path`` in ONNX Runtime (CPU) on a random ``[batch, 3, R, R]`` batch.

    Returns:
        ``{"graph", "batch", "threads", "runs", "wall_ms_median", "kernel_ms", "op_types": [{"op_type",
        "nodes", "ms", "share"}...] (slowest first), "top_nodes": [{"node", "op_type", "ms"}...]}``; times are
        per run, kernel times the median over the timed runs.
    """
    for name, value, least in (("batch", batch, 1), ("threads", threads, 1), ("runs", runs, 1),
                               ("warmup", warmup, 0), ("top", top, 1)):
        _positive(name, value, least)
    fixed, resolution = graph_input(path)
    if fixed is not None and fixed != batch:
        raise ValueError(f"{path} was exported for batch {fixed} (--batch {fixed}); got --batch {batch}")
    with tempfile.TemporaryDirectory(prefix="ort-profile-") as tmp:
        sess = session(path, threads, profile_prefix=str(Path(tmp) / "profile"))
        feed = {sess.get_inputs()[0].name: random_batch(batch, resolution)}
        wall = []
        for i in range(warmup + runs):
            start = time.perf_counter()
            sess.run(None, feed)
            if i >= warmup:
                wall.append((time.perf_counter() - start) * 1e3)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_node: dict[str, list[float]] = defaultdict(list)
    op_of: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith(KERNEL):
            node = e["name"][: -len(KERNEL)]
            per_node[node].append(float(e["dur"]) / 1e3)  # microseconds -> ms
            op_of[node] = str(e.get("args", {}).get("op_name", "?"))
    if not per_node:
        raise RuntimeError(f"ONNX Runtime's profiler recorded no kernels for {path}")
    node_ms = {n: float(np.median(d[-runs:])) for n, d in per_node.items()}  # the timed runs are the last ones
    by_type: dict[str, list[float]] = defaultdict(list)
    for n, ms in node_ms.items():
        by_type[op_of[n]].append(ms)
    total = sum(node_ms.values())
    op_types = sorted(({"op_type": t, "nodes": len(v), "ms": sum(v), "share": sum(v) / total if total else 0.0}
                       for t, v in by_type.items()), key=lambda r: -r["ms"])
    slowest = sorted(node_ms.items(), key=lambda kv: -kv[1])[:top]
    return {"graph": str(path), "batch": batch, "threads": threads, "runs": runs,
            "wall_ms_median": float(np.median(wall)), "kernel_ms": total, "op_types": op_types,
            "top_nodes": [{"node": n, "op_type": op_of[n], "ms": ms} for n, ms in slowest]}


def format_profile(result: dict[str, Any]) -> str:
    """The profile as the text the command prints."""
    lines = [f"{result['graph']}, batch {result['batch']}, {result['threads']} threads, {result['runs']} runs: "
             f"wall median {result['wall_ms_median']:.2f} ms, kernels {result['kernel_ms']:.2f} ms",
             f"{'operator':28s} {'nodes':>5s} {'ms':>9s} {'share':>6s}"]
    lines += [f"{r['op_type']:28s} {r['nodes']:5d} {r['ms']:9.3f} {r['share']:6.1%}" for r in result["op_types"]]
    lines.append(f"slowest {len(result['top_nodes'])} nodes:")
    lines += [f"  {r['ms']:8.3f} ms  {r['op_type']:20s} {r['node']}" for r in result["top_nodes"]]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tasks.export.profile",
                                description="Kernel time per operator of an exported graph in ONNX Runtime")
    p.add_argument("graph", help="the .onnx file (e.g. model.int8.onnx)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    p.add_argument("--runs", type=int, default=20, help="profiled runs (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    p.add_argument("--top", type=int, default=10, help="slowest nodes to list (default 10)")
    p.add_argument("--out", help="also write the profile as JSON here")
    p.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.out:
        from datasets.io import prepare_output_file

        prepare_output_file(args.out)
    result = profile_graph(args.graph, batch=args.batch, threads=args.threads, runs=args.runs,
                           warmup=args.warmup, top=args.top)
    print(format_profile(result))
    if args.out:
        from datasets.io import atomic_write_json

        atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    run_cli(main)
