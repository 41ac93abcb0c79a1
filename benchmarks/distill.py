"""Distillation cost: the teacher in the training loop vs ``--cache-teacher``, and teacher vs student inference.

``python -m benchmarks.distill`` measures, in one run, with the embedded default's shapes (a timm
ResNet-18 teacher at 80 px frozen as TorchScript, a 0.5 MobileNet-128 student with 8 attribute
outputs; weights are random, which does not change the cost):

* student training throughput (images/s of a full step: forward, loss, backward, optimiser) with the
  teacher in the loop (resize + re-normalise + teacher forward on every batch) and with cached
  teacher outputs, and their ratio, which is the speed-up ``--cache-teacher`` gives;
* inference time per batch of the teacher (including the conversion of the student's batch) and of
  the student, and their ratio.

Batches are random tensors held in memory, so image decoding does not blur the comparison. The two
variants of each pair are timed in interleaved rounds (alternating which goes first) and the median
of the per-round ratios is reported, which cancels slow drift of a shared machine. ``--write-docs``
puts the results, with the machine (lscpu, nproc), date and versions, under the "Benchmark" heading
of ``docs/distill.md``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import yaml

from benchmarks._machine import cpu_count, cpu_model, load_text, timestamp, versions
from distill.losses import attribute_distillation_loss
from tasks.classifier import build_classifier
from distill.teachers import load_teacher
from datasets.images import IMAGENET_MEAN, IMAGENET_STD
from datasets.io import replace_markdown_section

__all__ = ["main", "run_benchmark"]


def _make_teacher(folder: Path, arch: str, size: int, outputs: int) -> str:
    import timm

    torch.manual_seed(0)
    net = timm.create_model(arch, num_classes=outputs).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, size, size)), str(folder / "teacher.pt"))
    (folder / "teacher.yaml").write_text(yaml.safe_dump({"input_size": size, "mean": [0.5] * 3, "std": [0.5] * 3}))
    return f"torchscript:{folder / 'teacher.pt'}"


def _interleaved(a: Callable[[], None], b: Callable[[], None], rounds: int, reps: int) -> dict[str, float]:
    """Median seconds per call of a and b, and the median of per-round a/b ratios."""
    ta, tb, ratios = [], [], []
    for r in range(rounds):
        order = (a, b) if r % 2 == 0 else (b, a)
        times = {}
        for fn in order:
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            times[fn] = (time.perf_counter() - t0) / reps
        ta.append(times[a])
        tb.append(times[b])
        ratios.append(times[a] / times[b])
    return {"a_s": statistics.median(ta), "b_s": statistics.median(tb), "ratio": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios)}


def run_benchmark(*, teacher_spec: str | None = None, arch: str = "resnet18", teacher_size: int = 80,
                  alpha: float = 0.5, resolution: int = 128, outputs: int = 8, batch_size: int = 16,
                  rounds: int = 5, reps: int = 3, device: str = "cpu") -> dict[str, Any]:
    """Run both comparisons; returns a dict of the numbers (see the module docstring)."""
    dev = torch.device(device)
    with tempfile.TemporaryDirectory() as tmp:
        spec = teacher_spec or _make_teacher(Path(tmp), arch, teacher_size, outputs)
        teacher = load_teacher(spec, task="attributes", device=dev)
        torch.manual_seed(0)
        images = torch.randn(batch_size, 3, resolution, resolution, device=dev)
        width = teacher(images[:2], mean=IMAGENET_MEAN, std=IMAGENET_STD).shape[1]
        student = build_classifier(num_outputs=width, alpha=alpha).to(dev)
        opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
        cached = teacher(images, mean=IMAGENET_MEAN, std=IMAGENET_STD)

        def step(targets: Callable[[], torch.Tensor]) -> None:
            student.train()
            loss = attribute_distillation_loss(student(images), targets())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def in_loop() -> None:
            step(lambda: teacher(images, mean=IMAGENET_MEAN, std=IMAGENET_STD))

        def from_cache() -> None:
            step(lambda: cached)

        def teacher_infer() -> None:
            teacher(images, mean=IMAGENET_MEAN, std=IMAGENET_STD)

        @torch.no_grad()
        def student_infer() -> None:
            student.eval()
            student(images)

        for fn in (in_loop, from_cache, teacher_infer, student_infer):  # warm-up
            fn()
        train = _interleaved(in_loop, from_cache, rounds, reps)
        infer = _interleaved(teacher_infer, student_infer, rounds, reps)
        from distill.cost import student_cost

        s_ma, s_params = student_cost(student, resolution)
        result = {
            "teacher": spec if teacher_spec else f"timm {arch} @ {teacher_size} px, TorchScript (random weights)",
            "student": f"{alpha} MobileNet-{resolution}, {width} outputs",
            "batch_size": batch_size, "rounds": rounds, "reps": reps, "device": str(dev),
            "threads": torch.get_num_threads(),
            "train_in_loop_img_s": batch_size / train["a_s"],
            "train_cached_img_s": batch_size / train["b_s"],
            "cache_speedup": train["ratio"], "cache_speedup_range": [train["ratio_min"], train["ratio_max"]],
            "teacher_ms_per_batch": 1e3 * infer["a_s"], "student_ms_per_batch": 1e3 * infer["b_s"],
            "teacher_student_time_ratio": infer["ratio"],
            "teacher_student_time_ratio_range": [infer["ratio_min"], infer["ratio_max"]],
            "teacher_mult_adds": teacher.mult_adds(), "student_mult_adds": s_ma,
            "teacher_params": teacher.num_parameters(), "student_params": s_params,
        }
    return result


def _machine() -> dict[str, str]:
    return {"date": timestamp(), "cpu": cpu_model(), "nproc": str(cpu_count()), "load": load_text(),
            "python": platform.python_version(),
            **versions("torch", "torchvision", "timm", "onnxruntime", "numpy")}


def format_markdown(res: dict[str, Any], machine: dict[str, str],
                    command: str = "python -m benchmarks.distill") -> str:
    lo, hi = res["cache_speedup_range"]
    tlo, thi = res["teacher_student_time_ratio_range"]
    return "\n".join([
        "## Benchmark",
        "",
        f"`{command}` on {machine['date']}: {machine['cpu']}, nproc {machine['nproc']}, "
        f"torch threads: {res['threads']}, load average {machine['load']} (1/5/15 min; the machine is shared, "
        "so absolute numbers are noisy; the ratios come from interleaved rounds and are steadier). "
        f"Python {machine['python']}, torch {machine['torch']}, torchvision {machine['torchvision']}, "
        f"timm {machine['timm']}, onnxruntime {machine['onnxruntime']}, numpy {machine['numpy']}.",
        "",
        f"Teacher: {res['teacher']} ({res['teacher_mult_adds'] / 1e6:.0f} M Mult-Adds, "
        f"{res['teacher_params'] / 1e6:.1f} M parameters). Student: {res['student']} "
        f"({res['student_mult_adds'] / 1e6:.1f} M Mult-Adds, {res['student_params'] / 1e6:.2f} M parameters). "
        f"Batch {res['batch_size']}, {res['rounds']} rounds x {res['reps']} repetitions, {res['device']}.",
        "",
        "| measurement | value |",
        "|---|---|",
        f"| student training, teacher in the loop | {res['train_in_loop_img_s']:.1f} images/s |",
        f"| student training, `--cache-teacher` | {res['train_cached_img_s']:.1f} images/s |",
        f"| **speed-up of `--cache-teacher`** (in-loop step time / cached step time) | "
        f"**{res['cache_speedup']:.2f}x** (rounds {lo:.2f}-{hi:.2f}) |",
        f"| teacher inference (incl. resize + re-normalisation) | {res['teacher_ms_per_batch']:.1f} ms / batch |",
        f"| student inference | {res['student_ms_per_batch']:.1f} ms / batch |",
        f"| **teacher / student inference time** | **{res['teacher_student_time_ratio']:.2f}x** "
        f"(rounds {tlo:.2f}-{thi:.2f}) |",
        "",
    ])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default=None, help="teacher spec (default: a random timm ResNet-18 @ 80 px)")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--write-docs", nargs="?", const="docs/distill.md", default=None,
                   help="write the results into this markdown file's Benchmark section")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run_benchmark(teacher_spec=args.teacher, alpha=args.alpha, resolution=args.resolution,
                        batch_size=args.batch_size, rounds=args.rounds, reps=args.reps, device=args.device)
    command = " ".join(["python -m benchmarks.distill", *(argv if argv is not None else sys.argv[1:])])
    md = format_markdown(res, _machine(), command)
    print(md)
    if args.write_docs:
        replace_markdown_section(args.write_docs, "## Benchmark", md, title="# Distillation\n")
        print(f"written to {args.write_docs}")
    return res


if __name__ == "__main__":
    main()
