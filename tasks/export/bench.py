"""``python -m tasks.export.bench``: latency and throughput of exported graphs (and of the PyTorch model).

The paper's case for MobileNets is speed at a given accuracy (Figures 4-5); this measures it here:

    python -m tasks.export.bench deploy/model.onnx deploy/model.int8.onnx --batch 1 32 --compare best.pt

Each (runtime, file, batch) is timed in its own subprocess: ONNX Runtime's and torch's thread pools both
spin after a run, and in one process they slow each other down (FIELD_NOTES). Every worker uses
``--threads`` intra-op threads (default 2) and runs ``--warmup`` untimed iterations; then the workers of
one batch size take turns, ``--rounds`` rounds of round-robin (the order rotates every round), so slow
drift of a shared machine reaches every configuration alike; ``--runs`` timed runs per configuration in
all, on a fixed random batch. The report is the median and p90 latency and images/s. ``--compare`` times
the checkpoint's network in eager PyTorch (the same computation as the graph, BatchNorm not folded) and
prints each graph's speed-up over it.

The same machinery serves ``benchmarks/deploy.py`` and ``benchmarks/backbone.py``: a :class:`Config` names
a factory (``"module:function"``) that builds a zero-argument step inside the worker process, and
:func:`interleaved` times a list of them. Built-in factories: :func:`ort_step` (an ONNX file in ONNX
Runtime), :func:`openvino_step` (the same in OpenVINO, ``--runtime openvino``, when it is installed) and
:func:`torch_step` (a checkpoint's network in PyTorch: eager, channels_last or ``torch.compile``).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tasks.cli import run_cli

__all__ = ["Config", "RUNTIMES", "WorkerError", "bench", "graph_input", "interleaved", "main", "openvino_step",
           "ort_step", "random_batch",
           "summarize", "torch_module_step", "torch_step"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TAG = "@bench "  # protocol lines of a worker start with this; anything else a library prints is ignored
TORCH_MODES = ("eager", "channels_last", "compile")


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


@dataclass
class Config:
    """One configuration to time, built in its own process.

    Attributes:
        name: its label in the results.
        factory: ``"module:function"``; called in the worker as ``function(batch=, resolution=, threads=,
            **kwargs)``, it returns the zero-argument step to time.
        kwargs: JSON-able keyword arguments of the factory.
        batch, resolution: the input batch ``[batch, 3, resolution, resolution]``.
    """

    name: str
    factory: str
    batch: int
    resolution: int
    kwargs: dict[str, Any] = field(default_factory=dict)


class WorkerError(RuntimeError):
    """A worker that could not build or run its configuration (the message ends with its last stderr line)."""


def random_batch(batch: int, resolution: int) -> np.ndarray:
    """The fixed input every worker times: float32 ``[batch, 3, R, R]`` in [0, 1), seed 0."""
    return np.random.default_rng(0).random((batch, 3, resolution, resolution), dtype=np.float32)


def ort_step(*, path: str, batch: int, resolution: int, threads: int) -> Callable[[], Any]:
    """ONNX Runtime (CPU) on ``path`` with ``threads`` intra-op threads (the worker never loads torch)."""
    from .runtime import session

    sess = session(path, threads=threads)
    feed = {sess.get_inputs()[0].name: random_batch(batch, resolution)}
    return lambda: sess.run(None, feed)


def openvino_step(*, path: str, batch: int, resolution: int, threads: int) -> Callable[[], Any]:
    """OpenVINO (CPU) on an ONNX file: input reshaped to the static batch, one stream, ``threads`` threads,
    f32 inference precision (OpenVINO would otherwise run an "fp32" graph in bf16 on CPUs with bf16). Its
    int8 kernels take the default uint8 activations; a graph exported with ``--int8-activations int8`` (S8S8)
    ran about 4x slower there (Intel Xeon, 2026.4)."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(path)
    model.reshape({model.inputs[0].get_any_name(): [batch, 3, resolution, resolution]})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
                                                 "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    x = random_batch(batch, resolution)
    return lambda: request.infer({0: x})


RUNTIMES = {"onnxruntime": "ort_step", "openvino": "openvino_step"}


def torch_module_step(module: Any, batch: int, resolution: int, threads: int, mode: str = "eager") -> Callable[[], Any]:
    """A PyTorch module on the fixed batch: ``eager`` (inference mode), ``channels_last`` (module and input
    in NHWC) or ``compile`` (``torch.compile``, inductor, with freezing, under ``torch.no_grad``)."""
    import torch

    if mode not in TORCH_MODES:
        raise ValueError(f"torch mode must be one of {TORCH_MODES}, got {mode!r}")
    torch.set_num_threads(threads)
    module = module.eval()
    x = torch.from_numpy(random_batch(batch, resolution))
    if mode == "channels_last":
        module = module.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if mode == "compile":
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # weights become constants: BN folded, layouts chosen once
        compiled = torch.compile(module, backend="inductor")

        def step() -> Any:
            with torch.no_grad():
                return compiled(x)

        return step

    def eager() -> Any:
        with torch.inference_mode():
            return module(x)

    return eager


def torch_step(*, checkpoint: str, batch: int, resolution: int, threads: int, mode: str = "eager") -> Callable[[], Any]:
    """A checkpoint's network as ``tasks.export`` traces it (``graph.build_graph``, BatchNorm not folded)."""
    from tasks.checkpoint import load_model

    from .graph import build_graph

    model, meta = load_model(checkpoint)
    return torch_module_step(build_graph(model, meta, resolution).module, batch, resolution, threads, mode)


def _serve(spec: dict[str, Any]) -> int:
    """The worker: build the step, warm up, then time ``{"runs": n}`` requests from stdin until EOF."""
    def say(obj: dict[str, Any]) -> None:
        sys.stdout.write(TAG + json.dumps(obj) + "\n")
        sys.stdout.flush()

    module_name, func_name = spec["factory"].split(":")
    start = time.perf_counter()
    step = getattr(importlib.import_module(module_name), func_name)(
        batch=spec["batch"], resolution=spec["resolution"], threads=spec["threads"], **spec["kwargs"])
    for _ in range(spec["warmup"]):
        step()
    say({"ready": True, "build_s": time.perf_counter() - start})
    for line in sys.stdin:
        request = json.loads(line)
        times = []
        for _ in range(int(request["runs"])):
            t = time.perf_counter()
            step()
            times.append((time.perf_counter() - t) * 1e3)
        say({"times_ms": times})
    return 0


class Worker:
    """One configuration's process: started, built and warmed up, then timed on request."""

    def __init__(self, config: Config, *, threads: int, warmup: int) -> None:
        self.config = config
        spec = {**asdict(config), "threads": threads, "warmup": warmup}
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                   PYTHONPATH=os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "tasks.export.bench", "--serve", json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
                                     env=env, cwd=str(PROJECT_ROOT))

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(TAG):
                return json.loads(line[len(TAG):])
        self.proc.wait()
        self.stderr.seek(0)
        tail = [ln for ln in self.stderr.read().strip().splitlines() if ln.strip()] or ["no output"]
        raise WorkerError(f"{self.config.name} (batch {self.config.batch}) failed, exit {self.proc.returncode}: "
                          f"{tail[-1].strip()}")

    def ready(self) -> float:
        """Seconds the worker took to build and warm up."""
        return float(self._read()["build_s"])

    def run(self, runs: int) -> list[float]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"runs": runs}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # the process died: _read reports why
        return self._read()["times_ms"]

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


def _per_round(runs: int, rounds: int) -> list[int]:
    rounds = max(1, min(rounds, runs))
    return [runs // rounds + (1 if r < runs % rounds else 0) for r in range(rounds)]


def summarize(times: Sequence[float]) -> dict[str, Any]:
    """Median, p90 (ms) and count of a list of latencies."""
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)), "runs": len(times)}


def interleaved(configs: Sequence[Config], *, runs: int, rounds: int = 5, warmup: int = 5, threads: int = 2,
                settle_s: float = 0.1, say: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Time ``configs``, each in its own process, in interleaved rounds.

    The workers are started and warmed up one after the other; then ``rounds`` rounds in which each worker
    in turn (the order rotated by one every round) runs its share of ``runs`` timed iterations while the
    others wait, with ``settle_s`` between turns so the last worker's spinning threads have gone to sleep.

    Returns:
        name -> ``{"times_ms", "round_medians_ms", "median_ms", "p90_ms", "runs", "build_s"}``, or
        ``{"error": message}`` for a configuration whose worker failed (the others still run).
    """
    if len({c.name for c in configs}) != len(configs):
        raise ValueError(f"configuration names repeat: {[c.name for c in configs]}")
    out: dict[str, dict[str, Any]] = {}
    workers: dict[str, Worker] = {}
    try:
        for c in configs:
            w = Worker(c, threads=threads, warmup=warmup)
            try:
                out[c.name] = {"times_ms": [], "round_medians_ms": [], "build_s": w.ready()}
                workers[c.name] = w
            except WorkerError as e:
                w.close()
                out[c.name] = {"error": str(e)}
                say(f"  {e}")
        for r, n in enumerate(_per_round(runs, rounds)):
            live = [name for name in workers]
            for name in live[r % max(len(live), 1):] + live[:r % max(len(live), 1)]:
                try:
                    times = workers[name].run(n)
                    out[name]["times_ms"] += times
                    out[name]["round_medians_ms"].append(float(np.median(times)))
                except WorkerError as e:
                    workers.pop(name).close()
                    out[name] = {"error": str(e)}
                    say(f"  {e}")
                time.sleep(settle_s)
    finally:
        for w in workers.values():
            w.close()
    for name, res in out.items():
        if "error" not in res:
            res.update(summarize(res["times_ms"]))
    return out


def _row(runtime: str, target: str, batch: int, result: dict[str, Any]) -> dict[str, Any]:
    if "error" in result:
        raise ValueError(f"timing {target} ({runtime}, batch {batch}) failed: {result['error']}")
    return {"runtime": runtime, "file": target, "batch": batch, "median_ms": result["median_ms"],
            "p90_ms": result["p90_ms"], "images_per_s": batch * 1e3 / result["median_ms"], "runs": result["runs"]}


def bench(graphs: Sequence[str], *, batches: Sequence[int] = (1,), compare: str | None = None, threads: int = 2,
          warmup: int = 5, runs: int = 20, rounds: int = 5, runtimes: Sequence[str] = ("onnxruntime",),
          say: Any = print) -> dict[str, Any]:
    """Time each graph in each of ``runtimes`` (and ``compare``'s PyTorch network) at each batch, each in its
    own process, the configurations of one batch in interleaved rounds (:func:`interleaved`).

    Returns:
        ``{"rows": [{runtime, file, batch, median_ms, p90_ms, images_per_s, runs}], "ratios": [...]}``;
        a ratio is PyTorch's median over the graph's at the same batch.
    """
    for name, v, low in (("--threads", threads, 1), ("--warmup", warmup, 0), ("--runs", runs, 1),
                         ("--rounds", rounds, 1)):
        if v < low:
            raise ValueError(f"{name} must be >= {low}, got {v}")
    if not batches or any(b < 1 for b in batches):
        raise ValueError(f"--batch needs positive batch sizes, got {list(batches)}")
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown or not runtimes:
        raise ValueError(f"--runtime must be among {', '.join(RUNTIMES)}, got {list(runtimes)}")
    if "openvino" in runtimes:
        try:
            import openvino  # noqa: F401
        except ImportError:
            raise ValueError("--runtime openvino: OpenVINO is not installed (pip install openvino, or "
                             "pip install -e '.[openvino]')") from None
    if compare is not None and not Path(compare).is_file():
        raise FileNotFoundError(f"--compare checkpoint not found: {compare}")
    info = {g: graph_input(g) for g in graphs}
    resolutions = {r for _, r in info.values()}
    if len(resolutions) > 1:
        raise ValueError(f"the graphs take different resolutions {sorted(resolutions)}; time them separately")
    res = resolutions.pop()
    rows, ratios = [], []
    runtime_of: dict[str, str] = {}
    for b in batches:
        todo = []
        for g in dict.fromkeys(graphs):
            fixed = info[g][0]
            if fixed is not None and fixed != b:
                say(f"  skip {g} at batch {b}: the graph is for batch {fixed}")
                continue
            for rt in dict.fromkeys(runtimes):
                runtime_of[f"{rt} {g}"] = rt
                todo.append(Config(f"{rt} {g}", f"{__name__}:{RUNTIMES[rt]}", b, res, {"path": str(g)}))
        if not todo:
            continue
        if compare is not None:
            todo.insert(0, Config("pytorch", f"{__name__}:torch_step", b, res, {"checkpoint": str(compare)}))
        result = interleaved(todo, runs=runs, rounds=rounds, warmup=warmup, threads=threads, say=say)
        torch_row = _row("pytorch", str(compare), b, result["pytorch"]) if compare is not None else None
        if torch_row is not None:
            rows.append(torch_row)
        for c in todo[1 if compare is not None else 0:]:
            row = _row(runtime_of[c.name], c.kwargs["path"], b, result[c.name])
            rows.append(row)
            if torch_row is not None:
                ratios.append({"file": row["file"], "batch": b,
                               "speedup_vs_pytorch": torch_row["median_ms"] / row["median_ms"]})
    say(f"{'runtime':<12} {'file':<40} {'batch':>5} {'median ms':>10} {'p90 ms':>9} {'images/s':>9}")
    for r in rows:
        say(f"{r['runtime']:<12} {Path(r['file']).name:<40} {r['batch']:>5} {r['median_ms']:>10.2f} "
            f"{r['p90_ms']:>9.2f} {r['images_per_s']:>9.1f}")
    for r in ratios:
        say(f"  {Path(r['file']).name} at batch {r['batch']}: {r['speedup_vs_pytorch']:.2f}x PyTorch eager's speed")
    say(f"  ({threads} intra-op threads, {warmup} warm-up + {runs} timed runs in {rounds} interleaved rounds, "
        "each runtime in its own process)")
    return {"rows": rows, "ratios": ratios, "threads": threads, "warmup": warmup, "runs": runs, "rounds": rounds,
            "resolution": res}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tasks.export.bench",
                                description="Median / p90 latency and images/s of exported ONNX graphs")
    p.add_argument("graphs", nargs="*", help="the .onnx files (e.g. model.onnx model.int8.onnx)")
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes (default 1)")
    p.add_argument("--compare", help="a checkpoint: also time its PyTorch network and print the ratios")
    p.add_argument("--runtime", nargs="+", default=["onnxruntime"], choices=list(RUNTIMES),
                   help="runtimes to time each graph in (default onnxruntime; openvino needs the optional extra: "
                        "pip install -e '.[openvino]')")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of every runtime (default 2)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    p.add_argument("--runs", type=int, default=20, help="timed runs of each configuration (default 20)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds the runs are spread over (default 5)")
    p.add_argument("--out", help="also write the results as JSON here")
    p.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    p.add_argument("--serve", help=argparse.SUPPRESS)  # a worker process (see Worker)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.serve:
        return _serve(json.loads(args.serve))
    if not args.graphs:
        raise ValueError("give at least one .onnx file")
    if args.out:
        from datasets.io import prepare_output_file

        prepare_output_file(args.out)  # before minutes of timing
    result = bench(args.graphs, batches=args.batch, compare=args.compare, threads=args.threads,
                   warmup=args.warmup, runs=args.runs, rounds=args.rounds, runtimes=args.runtime)
    if args.out:
        from datasets.io import atomic_write_json

        atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    run_cli(main)
