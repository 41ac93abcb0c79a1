"""benchmarks/distill.py: what it computes is right; how fast anything runs is never asserted.

Timings on a shared CPU are noise, so the tests check the arithmetic (on a fake clock), that the two
training variants it compares do the same work apart from the teacher forward, that the result and the
printed table are well formed, and that the docs section is replaced in place.
"""

from __future__ import annotations

import math
import types
from pathlib import Path

import pytest
import torch

from benchmarks import distill as bench

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(alpha=0.25, resolution=48, batch_size=2, rounds=2, reps=1)




@pytest.fixture(scope="module")
def teacher_spec(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small random TorchScript teacher written the way the benchmark writes its default one."""
    return bench._make_teacher(tmp_path_factory.mktemp("teacher"), "resnet10t", 48, 8)


class FakeClock:
    """``perf_counter`` stand-in: time moves only when a timed function says how long it took."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_interleaved_alternates_order_and_takes_medians(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    a_cost, b_cost = iter([3.0, 3.0, 6.0, 6.0, 3.0, 3.0]), iter([1.0, 1.0, 1.0, 1.0, 2.0, 2.0])
    calls = []

    def a() -> None:
        calls.append("a")
        clock.now += next(a_cost)

    def b() -> None:
        calls.append("b")
        clock.now += next(b_cost)

    out = bench._interleaved(a, b, rounds=3, reps=2)
    assert calls == ["a", "a", "b", "b", "b", "b", "a", "a", "a", "a", "b", "b"]  # who goes first alternates
    # per call: a 3, 6, 3 and b 1, 1, 2 -> per-round ratios 3, 6, 1.5
    assert out == {"a_s": 3.0, "b_s": 1.0, "ratio": 3.0, "ratio_min": 1.5, "ratio_max": 6.0}


def test_cached_and_in_loop_steps_train_on_the_same_targets(monkeypatch, teacher_spec):
    """The speed-up compares like with like: every training step, cached or not, sees the same targets."""
    seen: list[torch.Tensor] = []
    real_loss = bench.attribute_distillation_loss

    def spy(student_out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        seen.append(targets.detach().clone())
        return real_loss(student_out, targets)

    monkeypatch.setattr(bench, "attribute_distillation_loss", spy)
    res = bench.run_benchmark(teacher_spec=teacher_spec, **SMALL)
    # one warm-up step of each variant, then rounds x reps timed steps of each
    assert len(seen) == 2 * (1 + SMALL["rounds"] * SMALL["reps"])
    assert seen[0].shape == (SMALL["batch_size"], 8) and torch.isfinite(seen[0]).all()
    for t in seen[1:]:
        assert torch.equal(t, seen[0])  # the teacher is deterministic: a cached output is the in-loop one
    assert res["student"] == f"{SMALL['alpha']} MobileNet-{SMALL['resolution']}, 8 outputs"


def test_main_prints_well_formed_results_and_rewrites_the_docs_section(tmp_path, capsys, teacher_spec):
    doc = tmp_path / "distill.md"
    doc.write_text("# Distillation\n\nintro\n\n## Benchmark\n\nold numbers\n\n## Later\n\nkeep me\n")
    argv = ["--teacher", teacher_spec, "--alpha", "0.25", "--resolution", "48", "--batch-size", "2",
            "--rounds", "2", "--reps", "1", "--threads", "1", "--write-docs", str(doc)]
    res = bench.main(argv)

    assert (res["batch_size"], res["rounds"], res["reps"], res["threads"], res["device"]) == (2, 2, 1, 1, "cpu")
    timings = ("train_in_loop_img_s", "train_cached_img_s", "cache_speedup", "teacher_ms_per_batch",
               "student_ms_per_batch", "teacher_student_time_ratio")
    for key in timings:
        assert isinstance(res[key], float) and math.isfinite(res[key]) and res[key] > 0, key
    for ratio, span in (("cache_speedup", "cache_speedup_range"),
                        ("teacher_student_time_ratio", "teacher_student_time_ratio_range")):
        lo, hi = res[span]
        assert 0 < lo <= res[ratio] <= hi  # a median of the rounds lies within them
    # not timings: the student is a 0.25 MobileNet-48, far cheaper than a ResNet-10 at 48 px
    assert 0 < res["student_mult_adds"] < res["teacher_mult_adds"]
    assert 0 < res["student_params"] < res["teacher_params"]

    out = capsys.readouterr().out
    assert out.startswith("## Benchmark\n") and f"written to {doc}" in out
    assert f"**{res['cache_speedup']:.2f}x**" in out and f"**{res['teacher_student_time_ratio']:.2f}x**" in out
    assert "nproc" in out and f"torch {torch.__version__}" in out and "python -m benchmarks.distill --teacher" in out

    text = doc.read_text()
    assert "old numbers" not in text and "keep me" in text and text.count("## Benchmark") == 1
    assert text.index("intro") < text.index("## Benchmark") < text.index("## Later")
    assert f"**{res['cache_speedup']:.2f}x**" in text


def test_format_markdown_from_fixed_numbers():
    res = {
        "teacher": "T", "student": "S", "batch_size": 4, "rounds": 3, "reps": 2, "device": "cpu", "threads": 1,
        "train_in_loop_img_s": 10.0, "train_cached_img_s": 25.0, "cache_speedup": 2.5,
        "cache_speedup_range": [2.0, 3.0], "teacher_ms_per_batch": 40.0, "student_ms_per_batch": 8.0,
        "teacher_student_time_ratio": 5.0, "teacher_student_time_ratio_range": [4.5, 5.5],
        "teacher_mult_adds": 2_000_000_000, "student_mult_adds": 50_000_000,
        "teacher_params": 11_000_000, "student_params": 470_000,
    }
    machine = {k: k.upper() for k in ("date", "cpu", "nproc", "load", "python", "torch", "torchvision", "timm",
                                      "onnxruntime", "numpy")}
    md = bench.format_markdown(res, machine, command="CMD")
    assert md.startswith("## Benchmark\n\n`CMD` on DATE: CPU, nproc NPROC")
    assert "| student training, teacher in the loop | 10.0 images/s |" in md
    assert "**2.50x** (rounds 2.00-3.00)" in md and "**5.00x** (rounds 4.50-5.50)" in md
    assert "(2000 M Mult-Adds, 11.0 M parameters)" in md and "(50.0 M Mult-Adds, 0.47 M parameters)" in md


def test_write_docs_appends_a_missing_section_then_replaces_it(tmp_path: Path):
    from datasets.io import replace_markdown_section  # the benchmarks' --write-docs

    doc = tmp_path / "distill.md"
    doc.write_text("# Distillation\n\nintro\n")
    replace_markdown_section(doc, "## Benchmark", "## Benchmark\n\nnew\n")
    assert doc.read_text() == "# Distillation\n\nintro\n\n## Benchmark\n\nnew\n"
    doc.write_text(doc.read_text() + "\n## Later\n\nkept\n")
    replace_markdown_section(doc, "## Benchmark", "## Benchmark\n\nnewer\n")
    assert doc.read_text() == "# Distillation\n\nintro\n\n## Benchmark\n\nnewer\n\n## Later\n\nkept\n"
    replace_markdown_section(tmp_path / "new.md", "## Benchmark", "## Benchmark\n\nx\n", title="# T\n")
    assert (tmp_path / "new.md").read_text() == "# T\n\n## Benchmark\n\nx\n"
