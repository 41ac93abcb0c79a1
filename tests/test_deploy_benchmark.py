"""benchmarks/deploy.py and its per-process timer: the smallest end-to-end run, a failing worker, the floor.

No number here is a measurement (CI machines are shared): the tests check that every piece runs and that
the arithmetic is right, so the benchmark the lead times cannot rot.
"""
import json
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import deploy  # noqa: E402
from tasks.export.bench import Config, interleaved  # noqa: E402


def test_quick_minimal_run_and_a_failing_worker(tmp_path, capsys):
    out = tmp_path / "bench"
    assert deploy.main(["--quick", "--models", "classifier", "--configs", "timm_eager", "ort_int8", "--batches", "1",
                        "--no-grid", "--resolution", "32", "--calib-count", "2", "--clock-ghz", "3",
                        "--flop-per-cycle", "64", "--keep-models", "--out-dir", str(out)]) == 0
    text = capsys.readouterr().out
    result = json.loads((out / "deploy.json").read_text())
    rows = {r["config"]: r for r in result["rows"]}
    assert set(rows) == {"timm_eager", "ort_int8"} and all("error" not in r for r in rows.values())
    for r in rows.values():  # 2 rounds x 3 calls, each configuration in its own process
        assert r["runs"] == 6 and r["p90_ms"] >= r["median_ms"] > 0 and r["reference"] == "timm_eager"
    assert rows["timm_eager"]["ratio"] == 1.0
    assert rows["ort_int8"]["ratio"] == pytest.approx(rows["ort_int8"]["median_ms"] / rows["timm_eager"]["median_ms"])
    # per round: each round's median over timm's in the same round
    i8, ref = rows["ort_int8"], rows["timm_eager"]
    assert i8["round_ratios"] == pytest.approx([a / b for a, b in zip(i8["round_medians_ms"], ref["round_medians_ms"])])
    assert len(i8["round_ratios"]) == 2 and ref["round_ratios"] == [1.0, 1.0]
    # the floor of 1.0 MobileNet-32 at batch 1: Mult-Adds x 2 / (2 cores x 64 FLOP x 3 GHz)
    ma = result["graphs"]["classifier"]["mult_adds"]
    assert result["floor"]["classifier"]["1"] == pytest.approx(ma * 2 / (2 * 64 * 3e9) * 1e3)
    assert result["floor"]["peak_source"] == "assumed" and result["floor"]["probes"] == []  # given: no probe
    targets = {t["target"]: t for t in result["targets"]}
    assert targets["batch 1: ort_int8 <= 0.12x timm eager"]["status"] in ("PASS", "MISS")
    assert "rounds within" in targets["batch 1: ort_int8 <= 0.12x timm eager"]["note"]
    assert targets["batch 32: ort_int8 <= 0.08x timm eager"]["status"] == "n/a"  # batch 32 not timed
    assert "quick run: not a measurement" in text and "| 1 | ort_int8 |" in (out / "deploy.md").read_text()

    # a worker that cannot build its step is reported; the others are still timed, round by round
    good = Config("ort", "tasks.export.bench:ort_step", 1, 32, {"path": str(out / "models/classifier/model.int8.onnx")})
    bad = Config("bad", "tasks.export.bench:ort_step", 1, 32, {"path": str(tmp_path / "missing.onnx")})
    res = interleaved([bad, good], runs=3, rounds=2, warmup=0, threads=1, say=lambda s: None)
    assert "missing.onnx" in res["bad"]["error"]
    assert res["ort"]["runs"] == 3 and len(res["ort"]["round_medians_ms"]) == 2


def test_flop_per_cycle_assumptions_and_floor():
    zen4 = {"vendor": "AuthenticAMD", "family": 25, "flags": ["avx2", "fma", "avx512f"]}
    zen5 = {"vendor": "AuthenticAMD", "family": 26, "flags": ["avx2", "fma", "avx512f"]}
    intel = {"vendor": "GenuineIntel", "family": 6, "flags": ["avx2", "fma", "avx512f", "avx512_vnni"]}
    assert deploy.fp32_flop_per_cycle(zen4)[0] == 32 and deploy.fp32_flop_per_cycle(zen5)[0] == 64
    assert deploy.fp32_flop_per_cycle(intel)[0] == 64
    assert deploy.fp32_flop_per_cycle({"flags": ["avx2", "fma"]})[0] == 32
    assert "assumed" in deploy.fp32_flop_per_cycle(intel)[1]
    # 569 M Mult-Adds, batch 32, 2 cores x 64 FLOP x 2.5 GHz: 36.4 GFLOP / 320 GFLOP/s = 113.8 ms
    assert deploy.arithmetic_floor_ms(568_748_000, 32, 2, 64, 2.5) == pytest.approx(113.75, rel=1e-3)


def test_measured_fp32_peak_and_the_floor_it_sets():
    info = deploy.cpu_info()
    value, why = deploy.measure_fp32_peak_gflops(1, info, 0.2)
    if value is None:
        pytest.skip(why)  # not x86, no C compiler, no FMA
    ghz, _ = deploy.measure_clock_ghz(1, 0.2)
    # one core: a vector FMA unit does 8-64 fp32 FLOP per cycle; a shared CI host may give it less than its clock
    assert 1.0 < value / ghz < 130 and "FMAs on 1 cores" in why
    fl = deploy.floor_summary(2, 64, "assumed", 2.0, "given", [(200.0, "before: x"), (None, "after: y"),
                                                                 (250.0, "after: z")])
    assert fl["peak_gflops"] == 250.0 and fl["peak_source"] == "measured" and fl["assumed_gflops"] == 256.0
    assert "62.5 FLOP per cycle" in fl["peak_how"]  # 250 GFLOP/s / (2 cores x 2.0 GHz)
    assert deploy.floor_ms(568_748_000, 32, 250.0) == pytest.approx(145.6, rel=1e-3)
    none = deploy.floor_summary(2, 32, "assumed", 3.0, "given", [(None, "before: not measured (no cc)")])
    assert none["peak_source"] == "assumed" and none["peak_gflops"] == 192.0 and "no cc" in none["peak_how"]


def test_accuracy_csv_and_figure(tmp_path):
    csv = tmp_path / "acc.csv"
    csv.write_text("alpha,resolution,top1\n1.0,224,70.6\n0.25,128,0.415\n")
    acc = deploy.read_accuracy_csv(str(csv))
    assert acc == {(1.0, 224): pytest.approx(0.706), (0.25, 128): pytest.approx(0.415)}
    grid = [{"alpha": 1.0, "resolution": 224, "mult_adds": 569e6, "params": 4.2e6, "fp32_ms": 3.0, "int8_ms": 1.3},
            {"alpha": 0.25, "resolution": 128, "mult_adds": 14e6, "params": 0.47e6, "fp32_ms": 0.3, "int8_ms": None}]
    png = deploy.plot_figures45(grid, tmp_path / "f.png", "test machine", acc, "top-1 (made up)")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "bad.csv").write_text("alpha,res\n1,224\n")
    with pytest.raises(ValueError, match="alpha,resolution,top1"):
        deploy.read_accuracy_csv(str(tmp_path / "bad.csv"))


def test_short_training_writes_the_accuracy_axis_and_reuses_finished_runs(tmp_path, monkeypatch):
    """The accuracy panels' numbers come from tasks.finegrained.train runs (one process each), read back from
    their summary.json; a second call reuses them instead of training again."""
    monkeypatch.setenv("MOBILENET_SUITE_CACHE", str(tmp_path / "cache"))
    lines: list[str] = []
    csv_path, label = deploy.train_grid_accuracy(deploy.QUICK_GRID, tmp_path / "out", 1, True, lines.append)
    assert "synthetic" in label and "1 epochs" in label
    acc = deploy.read_accuracy_csv(str(csv_path))
    assert set(acc) == set(deploy.QUICK_GRID) and all(0.0 <= v <= 1.0 for v in acc.values())
    rows = csv_path.read_text().splitlines()
    assert rows[0].split(",")[:3] == ["alpha", "resolution", "top1"] and len(rows) == 3
    for alpha, res in deploy.QUICK_GRID:  # the number in the CSV is the test top-1 the training reported
        run = next((tmp_path / "out" / "accuracy").glob(f"*/{alpha:g}-{res}"))
        summary = json.loads((run / "summary.json").read_text())
        assert summary["evaluated_on"] == "test" and summary["selected_by"]["split"] == "val"
        assert acc[(alpha, res)] == pytest.approx(summary["metrics"]["top1"], abs=1e-4)
        model = yaml.safe_load((run / "config.yaml").read_text())["model"]  # the run trained that grid point
        assert (model["alpha"], model["resolution"]) == (alpha, res)
    lines.clear()
    deploy.train_grid_accuracy(deploy.QUICK_GRID, tmp_path / "out", 1, True, lines.append)
    assert sum("reused" in line for line in lines) == len(deploy.QUICK_GRID)
