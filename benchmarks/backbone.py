"""CPU latency of our MobileNet v1 (Table 1, 1.0 MobileNet-224) relative to timm's ``mobilenetv1_100``.

``python benchmarks/backbone.py`` (or ``python -m benchmarks.backbone``) prints a markdown table of
latency ratios ours / timm (< 1: ours is faster) for eager PyTorch, channels_last PyTorch and ONNX Runtime
(both models exported the same way), at batch 1 and 32, with ``torch.set_num_threads(2)`` and 2 intra-op
threads in onnxruntime. The PyTorch rows run in this process; the ONNX Runtime rows run each graph in a
worker process of its own (``tasks.export.bench.interleaved``): ORT's and torch's thread pools spin after
a run and slow each other down when they share a process (FIELD_NOTES).

Fairness: both networks are the same architecture (ReLU6, as timm's); ours is loaded with timm's randomly
initialised weights (converted by ``backbone.convert_timm_mobilenetv1``), so both compute the same numbers
and no value-dependent effect (e.g. denormals) can favour either. Measurements interleave the two models
round by round, alternating which goes first, and report the median of the per-round ratios, which cancels
slow drift of a shared machine. This is a CPU benchmark by design (the project's CI machines).
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from tqdm import tqdm

from backbone import convert_timm_mobilenetv1, mobilenet_v1
from backbone.export import check_onnx, export_onnx
from tasks.export.bench import Config, interleaved

MODES = ("eager", "channels_last", "onnxruntime")
EAGER_BUDGET = 1.05  # issue requirement: eager ours/timm <= 1.05


@dataclass
class Measurement:
    mode: str
    batch: int
    ours_ms: float
    timm_ms: float
    ratio: float  # median of per-round ours/timm
    ratio_p25: float
    ratio_p75: float
    rounds: int


def build_models(resolution: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(ours, timm) with identical weights, in eval mode."""
    import timm

    torch.manual_seed(0)
    theirs = timm.create_model("mobilenetv1_100", pretrained=False).eval()
    ours = mobilenet_v1(1.0, act="relu6").eval()
    ours.load_state_dict(convert_timm_mobilenetv1(theirs.state_dict()))
    x = torch.randn(2, 3, resolution, resolution)
    with torch.inference_mode():
        diff = (ours(x) - theirs(x)).abs().max().item()
    if diff > 1e-5:
        raise RuntimeError(f"ours and timm's mobilenetv1_100 disagree on the same weights (max diff {diff:.2e})")
    return ours, theirs


def _node_types(path: Path) -> list[str]:
    import onnx

    return [node.op_type for node in onnx.load(str(path)).graph.node]


def torch_runner(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode():
            return model(x)

    return run


def measure(
    mode: str,
    batch: int,
    ours: Callable,
    theirs: Callable,
    *,
    min_rounds: int,
    max_rounds: int,
    inner: int,
    warmup: int,
    deadline: float,
) -> Measurement:
    """Interleaved rounds (ours then timm, then timm then ours, ...) until ``max_rounds``, or until the
    ``deadline`` (``time.perf_counter()``) once ``min_rounds`` are done."""
    for _ in range(warmup):
        ours()
        theirs()
    t_ours, t_theirs, ratios = [], [], []
    r = 0
    while r < max_rounds and (r < min_rounds or time.perf_counter() < deadline):
        pair = {}
        order = (("ours", ours), ("timm", theirs)) if r % 2 == 0 else (("timm", theirs), ("ours", ours))
        for name, fn in order:
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            pair[name] = (time.perf_counter() - start) / inner
        t_ours.append(pair["ours"])
        t_theirs.append(pair["timm"])
        ratios.append(pair["ours"] / pair["timm"])
        r += 1
    q = np.percentile(ratios, [25, 75])
    return Measurement(
        mode, batch, 1e3 * statistics.median(t_ours), 1e3 * statistics.median(t_theirs),
        statistics.median(ratios), float(q[0]), float(q[1]), r,
    )


def measure_ort(batch: int, paths: dict[str, Path], resolution: int, threads: int, *, rounds: int, inner: int,
                warmup: int) -> Measurement:
    """The ONNX Runtime row: each graph in its own worker process, interleaved rounds (the order alternates),
    ``inner`` calls per graph per round; the ratio is the median of the per-round ratios."""
    configs = [Config(name, "tasks.export.bench:ort_step", batch, resolution, {"path": str(paths[name])})
               for name in ("ours", "timm")]
    res = interleaved(configs, runs=rounds * inner, rounds=rounds, warmup=warmup, threads=threads,
                      say=lambda line: print(line, file=sys.stderr))
    failed = [f"{n}: {r['error']}" for n, r in res.items() if "error" in r]
    if failed:
        raise RuntimeError("ONNX Runtime worker failed: " + "; ".join(failed))
    ratios = [a / b for a, b in zip(res["ours"]["round_medians_ms"], res["timm"]["round_medians_ms"])]
    q = np.percentile(ratios, [25, 75])
    return Measurement("onnxruntime", batch, res["ours"]["median_ms"], res["timm"]["median_ms"],
                       statistics.median(ratios), float(q[0]), float(q[1]), len(ratios))


def markdown_table(rows: Sequence[Measurement]) -> str:
    lines = [
        "| mode | batch | ours (ms) | timm (ms) | ours / timm (median) | IQR of ratio | rounds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in rows:
        lines.append(
            f"| {m.mode} | {m.batch} | {m.ours_ms:.1f} | {m.timm_ms:.1f} | **{m.ratio:.3f}** | "
            f"{m.ratio_p25:.3f}-{m.ratio_p75:.3f} | {m.rounds} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/backbone.py", description=__doc__.split("\n")[0])
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--rounds", type=int, default=60, help="most interleaved rounds at batch 1 (batch >= 8: a sixth)")
    p.add_argument("--min-rounds", type=int, default=6, help="fewest rounds per row, whatever the time budget")
    p.add_argument("--budget-s", type=float, default=150.0,
                   help="seconds of measuring the PyTorch rows, shared among them (ONNX Runtime rows: fixed rounds)")
    p.add_argument("--warmup", type=int, default=10, help="warm-up calls per model at batch 1 (batch >= 8: 1)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problems = [
        f"{flag} {value}"
        for flag, value, ok in (
            ("--threads", args.threads, args.threads >= 1),
            ("--min-rounds", args.min_rounds, args.min_rounds >= 2),
            ("--rounds", args.rounds, args.rounds >= args.min_rounds),
            ("--warmup", args.warmup, args.warmup >= 1),
            ("--resolution", args.resolution, args.resolution >= 32),
            ("--batches", args.batches, all(b >= 1 for b in args.batches)),
        )
        if not ok
    ]
    if problems:
        raise ValueError(
            "invalid arguments: " + ", ".join(problems) + " (need threads >= 1, 2 <= min-rounds <= rounds, "
            "warmup >= 1, resolution >= 32, batches >= 1)"
        )
    import onnxruntime as ort
    import timm

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    ours, theirs = build_models(args.resolution)
    res = args.resolution

    plans = []  # (mode, batch, max rounds, calls per model per round, weight in the time budget)
    for mode in args.modes:
        for b in args.batches:
            large = b >= 8
            plans.append((mode, b, max(args.min_rounds, args.rounds // 6) if large else args.rounds,
                          1 if large else 3, 2.0 if large else 1.0))

    results: list[Measurement] = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx_paths = {}
        same_graph = False
        if "onnxruntime" in args.modes:
            for name, model in (("ours", ours), ("timm", theirs)):
                path = export_onnx(model, Path(tmp) / f"{name}.onnx", res, dynamic_batch=True)
                diff = check_onnx(model, path, res)
                if diff > 1e-4:
                    raise RuntimeError(f"{name} ONNX export differs from PyTorch by {diff:.2e}")
                onnx_paths[name] = path
            same_graph = _node_types(onnx_paths["ours"]) == _node_types(onnx_paths["timm"])
        cl = {n: copy.deepcopy(m).to(memory_format=torch.channels_last) for n, m in (("ours", ours), ("timm", theirs))}
        budget_end = time.perf_counter() + args.budget_s
        for i, (mode, b, max_rounds, inner, weight) in enumerate(tqdm(plans, desc="benchmark rows", file=sys.stderr)):
            torch.manual_seed(b)
            x = torch.randn(b, 3, res, res)
            warmup = args.warmup if b < 8 else 1  # one call builds the oneDNN/ORT kernels for the new shape
            if mode == "onnxruntime":  # in worker processes, a fixed number of rounds (no budget)
                results.append(measure_ort(b, onnx_paths, res, args.threads, rounds=max(args.min_rounds,
                                           max_rounds // 5), inner=inner * 5, warmup=warmup))
                continue
            if mode == "eager":
                fo, ft = torch_runner(ours, x), torch_runner(theirs, x)
            else:
                xc = x.contiguous(memory_format=torch.channels_last)
                fo, ft = torch_runner(cl["ours"], xc), torch_runner(cl["timm"], xc)
            # this row's share of what is left of the budget
            now = time.perf_counter()
            share = weight / sum(p[4] for p in plans[i:] if p[0] != "onnxruntime")
            deadline = now + max(0.0, budget_end - now) * share
            results.append(measure(mode, b, fo, ft, min_rounds=args.min_rounds, max_rounds=max_rounds,
                                   inner=inner, warmup=warmup, deadline=deadline))

    print(
        f"MobileNet v1 1.0-{res}: ours (backbone.mobilenet_v1, act=relu6) vs timm mobilenetv1_100, same weights\n"
        f"torch {torch.__version__}, timm {timm.__version__}, onnxruntime {ort.__version__}, "
        f"python {platform.python_version()}, threads {args.threads}, {platform.machine()}\n"
    )
    print(markdown_table(results))
    eager = [m for m in results if m.mode == "eager"]
    onnx_rows = [m for m in results if m.mode == "onnxruntime"]
    noise = max((abs(m.ratio - 1.0) for m in onnx_rows), default=None)
    print()
    if onnx_rows and same_graph:
        print(
            "noise floor: the two ONNX graphs are identical (node types and order, same weights), so their rows' "
            f"deviation from 1.000 (up to {noise:.3f}) is measurement noise."
        )
    elif onnx_rows:
        print("note: the two ONNX graphs differ, so the ONNX rows are a comparison, not a noise floor.")
    if eager:
        worst = max(eager, key=lambda m: m.ratio)
        if worst.ratio <= EAGER_BUDGET:
            verdict = "PASS"
        elif noise is not None and same_graph and worst.ratio - 1.0 <= noise:
            verdict = "NOT RESOLVED (above the budget but within the noise floor; rerun on a quiet machine)"
        else:
            verdict = "FAIL"
        print(
            f"eager requirement (ours <= {EAGER_BUDGET:.2f} x timm): {verdict}; worst eager ratio {worst.ratio:.3f} "
            f"at batch {worst.batch}"
        )
    print(f"total time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
