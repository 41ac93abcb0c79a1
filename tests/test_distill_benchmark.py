"""benchmarks/distill.py: both ratios come out, and the docs section is replaced in place."""

from __future__ import annotations

import torch

from benchmarks import distill as bench


def test_benchmark_smoke_and_docs_section(tmp_path):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = bench.run_benchmark(arch="resnet10t", teacher_size=48, alpha=0.25, resolution=48, batch_size=2,
                                  rounds=2, reps=1)
    finally:
        torch.set_num_threads(old)
    assert res["cache_speedup"] > 1.0  # the teacher forward is strictly extra work
    assert res["teacher_student_time_ratio"] > 0 and res["teacher_mult_adds"] > res["student_mult_adds"]
    md = bench.format_markdown(res, bench._machine())
    assert md.startswith("## Benchmark") and "nproc" in md and "torch" in md
    doc = tmp_path / "distill.md"
    doc.write_text("# Distillation\n\nintro\n\n## Benchmark\n\nold numbers\n\n## Later\n\nkeep me\n")
    bench.write_docs(doc, md)
    text = doc.read_text()
    assert "old numbers" not in text and "keep me" in text and text.count("## Benchmark") == 1
    assert text.index("## Benchmark") < text.index("## Later")
