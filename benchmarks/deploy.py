"""The deploy path on this CPU: every runtime of 1.0 MobileNet-224 and SSD 300, against timm and the floor.

MobileNets are built for "the latency and size of the model" (paper, Section 3 and Figures 4-5). In one run,
``python benchmarks/deploy.py`` times, for 1.0 MobileNet-224 (the classifier, 1000 classes) and SSD 300 (the
project's detector, 1.0 MobileNet, 91 classes, box decoding and NMS included), at batch 1 and 32 with 2
threads:

* ``timm_eager``: ``timm.create_model('mobilenetv1_100')`` in eager PyTorch (the classifier's reference; timm
  has no SSD, so SSD's reference is ``ours_eager``);
* ``ours_eager``, ``ours_channels_last``, ``ours_compile``: our network as ``tasks.export`` traces it (BN not
  folded), eager, NHWC, and ``torch.compile`` (inductor, ``torch._inductor.config.freezing = True``, under
  ``torch.no_grad``);
* ``ort_fp32``, ``ort_int8``: ONNX Runtime on the graphs ``tasks.export.export_checkpoint`` writes (BN folded;
  int8: static QDQ, per-channel weights, calibrated on a few synthetic images);
* ``openvino_fp32``, ``openvino_int8``: OpenVINO on the same fp32 and int8 ONNX files (the int8 one with the
  default uint8 activations, QDQ U8S8; OpenVINO's CPU plugin ran an S8S8 graph about 4x slower on an Intel
  Xeon), when ``import openvino`` works (not a dependency of the suite; skipped
  otherwise). The input is reshaped to the static batch and
  ``INFERENCE_PRECISION_HINT`` is ``f32`` (OpenVINO would otherwise run "fp32" in bf16 on CPUs with bf16).

Every configuration runs in its own worker process (``tasks.export.bench.interleaved``: torch's and ONNX
Runtime's thread pools never share a process); the workers of one (model, batch) take turns in interleaved
rounds, and each row is the median and p90 over all rounds, with its ratio to the reference's median.

Then the targets of issue 12 as PASS / MISS lines (1.0 MobileNet-224, ONNX Runtime): at batch 1 int8 <= 0.12x
and fp32 <= 0.27x timm eager; at batch 32 int8 <= 0.08x timm eager and fp32 within 1.5x of the arithmetic
floor. The floor is Mult-Adds (``backbone.profile.count_mult_adds``) x 2 FLOP x batch / the CPU's fp32 peak,
and the peak is measured (:func:`measure_fp32_peak_gflops`: independent chains of packed FMAs, 512-bit with
AVX-512, in inline assembly compiled with the system C compiler, on every core at once, before and after the
timing; the larger is the peak). Beside it the run prints the assumed peak, cores x FLOP per cycle x clock:
FLOP per cycle is not visible to software, so it is assumed from the CPU's vendor, family and flags
(:func:`fp32_flop_per_cycle`; ``--flop-per-cycle`` overrides it), and the clock is measured
(:func:`measure_clock_ghz`: a chain of dependent integer adds, one per cycle, on every core at once), else read
from ``/proc/cpuinfo`` (``--clock-ghz`` overrides it). The two differ where 512-bit FMAs run below the clock of
integer code (AVX-512 frequency licences; a hypervisor's host): on a 2-core Intel Xeon VM the FMA pipes gave
about 47-55 FLOP per cycle of the integer clock against 64 assumed. Either override makes the assumed peak the
floor (no probe runs).

Last, the measured Figures 4-5: the 16 MobileNets alpha (1, 0.75, 0.5, 0.25) x resolution (224, 192, 160,
128), ONNX Runtime fp32 and int8 at batch 1, latency against Mult-Adds, as ``figures45.png``. With no
ImageNet at hand, the accuracy axis comes from a short training on synthetic data, and the plot says so: before
any timing, each of the 16 models trains from scratch on a small built-in fine-grained set
(``datasets.synthetic_finegrained``: 6 look-alike breeds, 256-pixel images, so that resolution matters), with
``python -m tasks.finegrained.train`` in its own process, for ``--accuracy-epochs`` epochs (default 6); its
test top-1 (best epoch chosen on the validation tenth) goes to ``accuracy.csv`` and becomes two more panels,
accuracy against Mult-Adds (the paper's Figure 4 axes) and against measured latency. The runs are cached in
``OUT_DIR/accuracy/`` (an interrupted benchmark keeps the finished ones and resumes the one it stopped in);
``--accuracy-csv`` gives the numbers instead (``alpha,resolution,top1``, e.g. a real ImageNet evaluation, with
``--accuracy-label``), and ``--no-accuracy`` skips them.

Weights of the timed models are random (timm's initialisation, shared by timm's model and ours; SSD's class heads get a
background prior so that about ``--ssd-candidates`` (anchor, class) pairs per image pass the 0.01 score
threshold, as in a trained detector, instead of nearly all 1917 x 90). Results: ``deploy.json`` (everything,
with the machine and date) and ``deploy.md`` (tables to paste into docs/benchmarks.md) in ``--out-dir``.
``--quick`` is a smoke run (few rounds and calls, 2 grid points): its numbers are not measurements.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Sequence

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from backbone.profile import count_mult_adds
from datasets.io import atomic_write_json, atomic_write_text
from tasks.checkpoint import checkpoint_meta, save_checkpoint
from tasks.classifier import IMAGENET_MEAN, IMAGENET_STD, build_classifier, classifier_spec
from tasks.export import export_checkpoint
from tasks.export.bench import Config, interleaved

__all__ = ["CONFIGS", "GRID", "arithmetic_floor_ms", "build_parser", "cpu_info", "floor_ms", "fp32_flop_per_cycle",
           "main", "measure_clock_ghz", "measure_fp32_peak_gflops"]

MODELS = ("classifier", "ssd")
CONFIGS = ("timm_eager", "ours_eager", "ours_channels_last", "ours_compile", "ort_fp32", "ort_int8",
           "openvino_fp32", "openvino_int8")
GRID = [(a, r) for a in (1.0, 0.75, 0.5, 0.25) for r in (224, 192, 160, 128)]
QUICK_GRID = [(0.25, 128), (0.5, 160)]
SSD_CLASSES = 91
FACTORIES = "benchmarks._deploy_steps"  # timm_step: built inside the worker processes
FLOOR_SLACK = 1.5
# (batch, configuration, largest median / timm eager's): issue 12, item 5
RATIO_TARGETS = [(1, "ort_int8", 0.12), (1, "ort_fp32", 0.27), (32, "ort_int8", 0.08)]


# --------------------------------------------------------------------------------------------------
# the CPU and its arithmetic floor


def cpu_info() -> dict[str, Any]:
    """Vendor, model name, family, the SIMD flags that matter, logical CPUs, the clock /proc/cpuinfo states."""
    info: dict[str, Any] = {"machine": platform.machine(), "logical_cpus": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    first = text.split("\n\n")[0]
    fields = dict((k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in first.splitlines()) if k.strip())
    flags = set(fields.get("flags", "").split())
    info.update(vendor=fields.get("vendor_id"), model_name=fields.get("model name"),
                family=int(fields["cpu family"]) if fields.get("cpu family", "").isdigit() else None,
                flags=sorted(flags & {"avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile"}),
                cpuinfo_mhz=float(fields["cpu MHz"]) if re.fullmatch(r"[\d.]+", fields.get("cpu MHz", "")) else None)
    return info


def fp32_flop_per_cycle(info: dict[str, Any]) -> tuple[int, str]:
    """Peak fp32 FLOP per cycle per core (FMA = 2 FLOP) and the assumption behind it.

    The number of FMA units is not visible to software, so it is assumed from the flags and the vendor.
    """
    flags, vendor, family = set(info.get("flags", [])), info.get("vendor"), info.get("family")
    if "avx512f" in flags:
        if vendor == "AuthenticAMD" and family is not None and family < 26:
            return 32, ("AMD Zen 4 (family 25) runs AVX-512 on 256-bit datapaths: 2 FMA pipes x 8 fp32 lanes "
                        "x 2 FLOP = 32 FLOP/cycle/core (assumed)")
        who = "AMD Zen 5 (family 26+)" if vendor == "AuthenticAMD" else "Intel with AVX-512"
        return 64, (f"{who}: 2 FMA units x 16 fp32 lanes (512 bit) x 2 FLOP = 64 FLOP/cycle/core (assumed; "
                    "a part with one 512-bit FMA unit would halve it)")
    if {"avx2", "fma"} <= flags:
        return 32, "AVX2 + FMA: 2 FMA units x 8 fp32 lanes x 2 FLOP = 32 FLOP/cycle/core (assumed)"
    return 16, "no AVX2/FMA flags: 16 FLOP/cycle/core assumed"


_CLOCK_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
/* CPU time of this thread: time the scheduler gives to other processes does not count */
static double now(void) { struct timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
int main(int argc, char **argv) {
    double seconds = atof(argv[1]);
    unsigned long x = 0, n = 0, step = (unsigned long)argc;  /* a value the compiler cannot fold */
    double start = now(), warm = start + seconds / 2, end = start + seconds, t0 = 0;
    unsigned long n0 = 0;
    for (;;) {
        for (int i = 0; i < 1000; i++)  /* 32 dependent adds: 32 cycles (1-cycle latency each) */
            __asm__ volatile(  /* register + register: an add of an immediate can be folded away at rename */
                "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
                "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
                "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
                "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
                "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t" : "+r"(x) : "r"(step));
        n += 1000;
        double t = now();
        if (t0 == 0 && t >= warm) { t0 = t; n0 = n; }
        if (t >= end) { printf("%.4f\n", (n - n0) * 32.0 / (t - t0) / 1e9); return x == 0; }
    }
}
"""


def _run_probe(code: str, cores: int, seconds: float) -> tuple[list[float], str | None]:
    """Compile the C ``code`` with the system compiler and run one copy per core at once: the number each
    printed, or ([], why not) unless every copy printed one."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return [], f"not measured (the probe is x86 assembly, this is {platform.machine()})"
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return [], "not measured (no C compiler on PATH)"
    with tempfile.TemporaryDirectory(prefix="probe-") as tmp:
        src, exe = Path(tmp) / "probe.c", Path(tmp) / "probe"
        src.write_text(code)
        built = subprocess.run([cc, "-O1", "-o", str(exe), str(src)], capture_output=True, text=True)
        if built.returncode != 0:
            return [], f"not measured ({cc} failed: {(built.stderr.strip().splitlines() or ['?'])[-1]})"
        procs = [subprocess.Popen([str(exe), str(seconds)], stdout=subprocess.PIPE, text=True) for _ in range(cores)]
        values = []
        for proc in procs:
            out, _ = proc.communicate()
            try:
                values.append(float(out.strip()))
            except ValueError:
                pass
    if len(values) != cores:
        return [], f"not measured ({cores - len(values)} of {cores} probe copies printed nothing)"
    return values, None


def measure_clock_ghz(cores: int, seconds: float = 1.0) -> tuple[float | None, str]:
    """The clock under load on ``cores`` cores at once (median of the copies), or None and why not.

    A chain of dependent 64-bit adds retires one per cycle on every x86 core of the last 20 years, so adds
    per second is the clock; the first half of ``seconds`` lets the clock settle (turbo, frequency scaling).
    """
    values, why = _run_probe(_CLOCK_C, cores, seconds)
    if why:
        return None, why
    return float(np.median(values)), (f"measured: dependent integer adds (1/cycle) on {cores} cores at once, "
                                      f"{', '.join(f'{v:.2f}' for v in values)} GHz")


_FMA_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
#define FMA(i) "vfmadd231ps %%REG14, %%REG15, %%REG" #i "\n\t"
#define ZERO(i) "vxorps %%xmm" #i ", %%xmm" #i ", %%xmm" #i "\n\t"
int main(int argc, char **argv) {
    double seconds = atof(argv[1]);
    unsigned long n = 0, n0 = 0;
    double start = now(), warm = start + seconds / 2, end = start + seconds, t0 = 0;
    for (;;) {
        /* zeros everywhere (0 x 0 + 0): no denormal operand can slow an FMA down */
        __asm__ volatile(ZERO(0) ZERO(1) ZERO(2) ZERO(3) ZERO(4) ZERO(5) ZERO(6) ZERO(7) ZERO(8) ZERO(9) ZERO(10)
                         ZERO(11) ZERO(12) ZERO(13) ZERO(14) ZERO(15) ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4",
                         "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
        for (int i = 0; i < 1000; i++)  /* 14 independent accumulators: enough to cover 2 pipes x 4-5 cycles */
            __asm__ volatile(FMA(0) FMA(1) FMA(2) FMA(3) FMA(4) FMA(5) FMA(6) FMA(7) FMA(8) FMA(9) FMA(10)
                             FMA(11) FMA(12) FMA(13) ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6",
                             "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13");
        n += 1000;
        double t = now();
        if (t0 == 0 && t >= warm) { t0 = t; n0 = n; }
        if (t >= end) { printf("%.4f\n", (n - n0) * 14.0 * LANES * 2 / (t - t0) / 1e9); return 0; }
    }
}
"""


def measure_fp32_peak_gflops(cores: int, info: dict[str, Any], seconds: float = 1.0) -> tuple[float | None, str]:
    """The fp32 FLOP/s the CPU sustains on ``cores`` cores at once (sum of the copies), or None and why not.

    Each copy runs 14 independent chains of packed FMAs (512-bit with AVX-512, else 256-bit with FMA) in inline
    assembly, timed on its own thread's CPU time: FLOP/s the FMA pipes deliver at the clock they actually run at
    under that load, which with AVX-512 can be below the clock of integer code (frequency licences, hypervisors).
    """
    flags = set(info.get("flags", []))
    if "avx512f" in flags:
        reg, lanes, what = "zmm", 16, "512-bit"
    elif {"avx2", "fma"} <= flags:
        reg, lanes, what = "ymm", 8, "256-bit"
    else:
        return None, "not measured (no AVX-512 or FMA flag)"
    values, why = _run_probe(_FMA_C.replace("%%REG", f"%%{reg}").replace("LANES", str(lanes)), cores, seconds)
    if why:
        return None, why
    return float(sum(values)), (f"measured: {what} FMAs on {cores} cores at once, "
                                f"{', '.join(f'{v:.1f}' for v in values)} GFLOP/s")


def floor_ms(mult_adds: int, batch: int, gflops: float) -> float:
    """The time ``batch`` images take at ``gflops`` fp32 GFLOP/s: Mult-Adds x 2 FLOP x batch / FLOP/s."""
    return mult_adds * 2.0 * batch / (gflops * 1e9) * 1e3


def arithmetic_floor_ms(mult_adds: int, batch: int, cores: int, flop_per_cycle: float, ghz: float) -> float:
    """The time ``batch`` images take at the CPU's peak: Mult-Adds x 2 FLOP x batch / peak FLOP/s."""
    return mult_adds * 2.0 * batch / (cores * flop_per_cycle * ghz * 1e9) * 1e3


def floor_summary(cores: int, fpc: float, assumption: str, ghz: float, how: str,
                  peaks: Sequence[tuple[float | None, str]]) -> dict[str, Any]:
    """The peak the floor is computed at: the best measured FMA rate, else cores x FLOP/cycle x clock.

    The measured peak is what the FMA pipes deliver on this machine (the larger of the probes before and after
    the timing: a peak is the best the cores do, and a shared host lowers some probes); the assumed one stays
    beside it (``assumed``), with the FLOP/cycle assumption and the clock measurement.
    """
    assumed = cores * fpc * ghz
    measured = [(v, why) for v, why in peaks if v]
    best = max(measured, default=None, key=lambda m: m[0])
    out: dict[str, Any] = {"cores": cores, "flop_per_cycle": fpc, "flop_assumption": assumption, "ghz": ghz,
                           "clock_how": how, "assumed_gflops": assumed, "probes": [why for _, why in peaks],
                           "assumed": {}}
    if best is None:
        out.update(peak_gflops=assumed, peak_source="assumed",
                   peak_how=f"{cores} cores x {fpc:g} FLOP/cycle x {ghz:.2f} GHz"
                   + (f" (FMA probe: {peaks[0][1]})" if peaks else ""))
    else:
        out.update(peak_gflops=best[0], peak_source="measured",
                   peak_how=f"{best[1]}; {best[0] / (cores * ghz):.1f} FLOP per cycle of the {ghz:.2f} GHz clock "
                   f"per core, against {fpc:g} assumed ({assumed:.0f} GFLOP/s)")
    return out


# --------------------------------------------------------------------------------------------------
# models and graphs


def write_calibration_images(folder: Path, count: int, size: int = 320) -> Path:
    """Smooth random colour fields (noise upsampled), so activations are image-like rather than white noise."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((size, size), Image.BICUBIC)
        noise = rng.normal(0, 12, (size, size, 3))
        Image.fromarray(np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8)).save(
            folder / f"calib_{i:03d}.png")
    return folder


def _export(ckpt: Path, out: Path, calib: Path, calib_count: int, say: Callable[[str], None]) -> dict[str, Any]:
    report = export_checkpoint(ckpt, out, int8=True, calib_images=calib, calib_count=calib_count,
                               say=lambda line: say("    " + line.strip()))
    if not report["ok"]:
        say(f"    warning: {out} differs from PyTorch by {report['parity_fp32_vs_torch']['max_abs_diff']:.2e}")
    return report


def build_classifier_graphs(work: Path, resolution: int, calib: Path, calib_count: int,
                            say: Callable[[str], None]) -> dict[str, Any]:
    """timm's random ``mobilenetv1_100`` weights, saved for timm, and the same weights in our classifier:
    its checkpoint, fp32 and int8 graphs, Mult-Adds."""
    import timm

    from backbone import convert_timm_mobilenetv1

    torch.manual_seed(0)
    theirs = timm.create_model("mobilenetv1_100", pretrained=False).eval()
    torch.save(theirs.state_dict(), work / "timm_mobilenetv1_100.pt")
    ours = build_classifier(num_outputs=1000, alpha=1.0).eval()
    ours.load_state_dict(convert_timm_mobilenetv1(theirs.state_dict()))
    meta = checkpoint_meta("finegrained", "classifier", classifier_spec(num_outputs=1000, alpha=1.0),
                           resolution=resolution, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    save_checkpoint(work / "classifier.pt", {"model": ours.state_dict(), "meta": meta})
    say(f"  1.0 MobileNet-{resolution}: export + int8 calibration")
    _export(work / "classifier.pt", work / "classifier" / "model.onnx", calib, calib_count, say)
    prof = count_mult_adds(ours, torch.zeros(1, 3, resolution, resolution))
    return {"checkpoint": str(work / "classifier.pt"), "timm_weights": str(work / "timm_mobilenetv1_100.pt"),
            "fp32": str(work / "classifier" / "model.onnx"), "int8": str(work / "classifier" / "model.int8.onnx"),
            "resolution": resolution, "mult_adds": prof.mult_adds, "params": prof.params}


def background_prior(ssd: torch.nn.Module, resolution: int, candidates: int) -> float:
    """Raise the random class heads' background bias so that about ``candidates`` (anchor, class) pairs per
    image score above the detector's score threshold (a trained detector is mostly background); returns the
    bias added."""
    from torch.nn import functional as F

    x = torch.rand(2, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor(ssd.transform.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(ssd.transform.image_std).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = ssd.head(list(ssd.backbone((x - mean) / std).values()))["cls_logits"]  # [N, A, C]
    thresh = float(ssd.score_thresh)

    def passing(b: float) -> float:
        shifted = logits.clone()
        shifted[..., 0] += b
        return float((F.softmax(shifted, -1)[..., 1:] > thresh).sum()) / len(x)

    lo, hi = 0.0, 40.0
    for _ in range(40):  # passing() falls as the background bias grows
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if passing(mid) > candidates else (lo, mid)
    bias = (lo + hi) / 2
    c = logits.shape[-1]
    with torch.no_grad():
        for predictor in ssd.head.classification_head.module_list:
            conv = [m for m in predictor.modules() if isinstance(m, torch.nn.Conv2d)][-1]
            conv.bias[0::c] += bias
    return bias


def build_ssd_graphs(work: Path, calib: Path, calib_count: int, candidates: int,
                     say: Callable[[str], None]) -> dict[str, Any]:
    """SSD 300 (1.0 MobileNet, 91 classes, random weights with a background prior): checkpoint, graphs,
    Mult-Adds (network only: decoding and NMS cost no Mult-Adds)."""
    from tasks.detection.build import build_detector
    from tasks.export.graph import build_graph

    torch.manual_seed(0)
    det = build_detector("ssd300", SSD_CLASSES, alpha=1.0).eval()
    size = int(det.input_spec["size"])
    bias = background_prior(det, size, candidates)
    meta = checkpoint_meta("detection", "detector", det.build_args, resolution=size,
                           labels=["__background__"] + [str(i) for i in range(1, SSD_CLASSES)],
                           label_to_cat_id={str(i): i for i in range(1, SSD_CLASSES)})
    save_checkpoint(work / "ssd.pt", {"model": det.state_dict(), "meta": meta})
    say(f"  SSD 300: export + int8 calibration (background bias +{bias:.2f}: ~{candidates} candidates per image)")
    _export(work / "ssd.pt", work / "ssd" / "model.onnx", calib, calib_count, say)
    prof = count_mult_adds(build_graph(det, meta, size).module, torch.zeros(1, 3, size, size))
    return {"checkpoint": str(work / "ssd.pt"), "fp32": str(work / "ssd" / "model.onnx"),
            "int8": str(work / "ssd" / "model.int8.onnx"),
            "resolution": size, "mult_adds": prof.mult_adds,
            "params": prof.params, "background_bias": bias, "candidates_per_image": candidates}


def openvino_version() -> str | None:
    try:
        import openvino
    except ImportError:
        return None
    return str(openvino.__version__)


def configs_for(model: str, g: dict[str, Any], batch: int, wanted: Sequence[str], openvino: bool) -> list[Config]:
    res, mod = g["resolution"], "tasks.export.bench"
    table = {
        "timm_eager": (f"{FACTORIES}:timm_step", {"weights": g.get("timm_weights")}),
        "ours_eager": (f"{mod}:torch_step", {"checkpoint": g["checkpoint"], "mode": "eager"}),
        "ours_channels_last": (f"{mod}:torch_step", {"checkpoint": g["checkpoint"], "mode": "channels_last"}),
        "ours_compile": (f"{mod}:torch_step", {"checkpoint": g["checkpoint"], "mode": "compile"}),
        "ort_fp32": (f"{mod}:ort_step", {"path": g["fp32"]}),
        "ort_int8": (f"{mod}:ort_step", {"path": g["int8"]}),
        "openvino_fp32": (f"{mod}:openvino_step", {"path": g["fp32"]}),
        "openvino_int8": (f"{mod}:openvino_step", {"path": g["int8"]}),
    }
    out = []
    for name in wanted:
        if name == "timm_eager" and model != "classifier":
            continue  # timm has no SSD
        if name.startswith("openvino") and not openvino:
            continue
        factory, kwargs = table[name]
        out.append(Config(name, factory, batch, res, kwargs))
    return out


# --------------------------------------------------------------------------------------------------
# the run


def _plan(args: argparse.Namespace, batch: int) -> tuple[int, int]:
    """(timed calls per configuration per round, warm-up calls) at ``batch``."""
    if batch >= 8:
        return max(1, args.calls // 10), max(1, args.warmup // 5)
    return args.calls, args.warmup


def time_model(model: str, g: dict[str, Any], args: argparse.Namespace, openvino: bool,
               say: Callable[[str], None]) -> list[dict[str, Any]]:
    rows = []
    ref_name = "timm_eager" if model == "classifier" else "ours_eager"
    for b in args.batches:
        calls, warmup = _plan(args, b)
        configs = configs_for(model, g, b, args.configs, openvino)
        say(f"  {model} batch {b}: {len(configs)} configurations x {args.rounds} rounds x {calls} calls")
        res = interleaved(configs, runs=calls * args.rounds, rounds=args.rounds, warmup=warmup, threads=args.threads,
                          say=say)
        ref = res.get(ref_name, {}).get("median_ms")
        ref_rounds = res.get(ref_name, {}).get("round_medians_ms", [])
        for c in configs:
            r = res[c.name]
            row: dict[str, Any] = {"model": model, "batch": b, "config": c.name}
            if "error" in r:
                row["error"] = r["error"]
            else:
                row.update(median_ms=r["median_ms"], p90_ms=r["p90_ms"], runs=r["runs"],
                           images_per_s=b * 1e3 / r["median_ms"], build_s=round(r["build_s"], 1),
                           reference=ref_name, ratio=(r["median_ms"] / ref) if ref else None,
                           round_medians_ms=r["round_medians_ms"])
                if ref and len(ref_rounds) == len(r["round_medians_ms"]):  # round by round: the host's drift cancels
                    row["round_ratios"] = [m / rm for m, rm in zip(r["round_medians_ms"], ref_rounds)]
            rows.append(row)
    return rows


def time_grid(points: Sequence[tuple[float, int]], work: Path, calib: Path, calib_count: int,
              args: argparse.Namespace, say: Callable[[str], None]) -> list[dict[str, Any]]:
    """The Figures 4-5 grid: each (alpha, resolution) exported, then ORT fp32 and int8 at batch 1, the
    models of one alpha timed together in interleaved rounds."""
    graphs = {}
    for alpha, res in points:
        torch.manual_seed(0)
        model = build_classifier(num_outputs=1000, alpha=alpha).eval()
        tag = f"{alpha:g}-{res}"
        meta = checkpoint_meta("finegrained", "classifier", classifier_spec(num_outputs=1000, alpha=alpha),
                               resolution=res, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        save_checkpoint(work / f"grid_{tag}.pt", {"model": model.state_dict(), "meta": meta})
        say(f"  grid {alpha:g} MobileNet-{res}: export + int8 calibration")
        _export(work / f"grid_{tag}.pt", work / f"grid_{tag}" / "model.onnx", calib, calib_count, say)
        prof = count_mult_adds(model, torch.zeros(1, 3, res, res))
        graphs[(alpha, res)] = {"fp32": str(work / f"grid_{tag}" / "model.onnx"),
                                "int8": str(work / f"grid_{tag}" / "model.int8.onnx"),
                                "mult_adds": prof.mult_adds, "params": prof.params}
    calls, warmup = _plan(args, 1)
    rows = []
    for alpha in dict.fromkeys(a for a, _ in points):
        configs = [Config(f"{alpha:g}-{res} {prec}", "tasks.export.bench:ort_step", 1, res,
                          {"path": graphs[(alpha, res)][prec]})
                   for a, res in points if a == alpha for prec in ("fp32", "int8")]
        say(f"  grid alpha {alpha:g}: {len(configs)} graphs x {args.rounds} rounds x {calls} calls")
        res_ = interleaved(configs, runs=calls * args.rounds, rounds=args.rounds, warmup=warmup,
                           threads=args.threads, say=say)
        for a, res in points:
            if a != alpha:
                continue
            row: dict[str, Any] = {"alpha": alpha, "resolution": res, "mult_adds": graphs[(alpha, res)]["mult_adds"],
                                   "params": graphs[(alpha, res)]["params"]}
            for prec in ("fp32", "int8"):
                r = res_[f"{alpha:g}-{res} {prec}"]
                row[f"{prec}_ms"] = r.get("median_ms")
                row[f"{prec}_p90_ms"] = r.get("p90_ms")
                if "error" in r:
                    row[f"{prec}_error"] = r["error"]
            rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------
# the accuracy axis: a short training of every grid model on synthetic data

SHORT_TRAINING = {  # tasks.finegrained.train's config keys; alpha, resolution and epochs are set per run
    "model": {"backbone": "mobilenet_v1"},
    "data": {"synthetic": {"num_breeds": 6, "train_per_breed": 40, "test_per_breed": 30, "image_size": 256,
                           "seed": 0, "web_per_breed": 0},
             "val_fraction": 0.1, "augment": True, "crop_scale": [0.6, 1.0], "jitter": 0.2, "eval_batch_size": 64},
    "loss": {"label_smoothing": 0.1},
    "noisy": {"epochs": 0, "compare_clean_only": False},
    "train": {"batch_size": 16, "optimizer": "adamw", "lr": 0.01, "weight_decay": 0.0001, "schedule": "cosine",
              "warmup_iters": 5, "seed": 0},
}
QUICK_TRAINING = {"data": {"synthetic": {"num_breeds": 4, "train_per_breed": 10, "test_per_breed": 4,
                                         "image_size": 160}}}
ACCURACY_LABEL = "test top-1, {epochs} epochs from scratch on synthetic dogs ({breeds} breeds)"


def train_grid_accuracy(points: Sequence[tuple[float, int]], out: Path, epochs: int, quick: bool,
                        say: Callable[[str], None], device: str = "cpu") -> tuple[Path, str]:
    """Train every (alpha, resolution) of ``points`` with :data:`SHORT_TRAINING` for ``epochs`` epochs, one
    ``tasks.finegrained.train`` process at a time; write ``out/accuracy.csv``. A run whose ``summary.json``
    exists under the same settings is reused, one with only ``last.pt`` (interrupted) resumes
    from it. Returns the CSV and the label of its accuracy axis."""
    import hashlib

    import yaml

    from tasks.config import deep_merge

    cfg = deep_merge(SHORT_TRAINING, QUICK_TRAINING) if quick else json.loads(json.dumps(SHORT_TRAINING))
    cfg["train"]["epochs"] = epochs
    text = yaml.safe_dump(cfg, sort_keys=True)
    key = hashlib.sha256(text.encode()).hexdigest()[:10]
    root = out / "accuracy" / key
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.yaml"
    atomic_write_text(config, "# benchmarks/deploy.py: the short training behind figures45.png's accuracy\n" + text)
    label = ACCURACY_LABEL.format(epochs=epochs, breeds=cfg["data"]["synthetic"]["num_breeds"])
    say(f"accuracy axis: {len(points)} models, {epochs} epochs each on synthetic data ({root})")
    rows = []
    for i, (alpha, res) in enumerate(points, start=1):
        run = root / f"{alpha:g}-{res}"
        summary = run / "summary.json"
        t = time.perf_counter()
        if summary.is_file():
            how = "reused"
        else:
            cmd = [sys.executable, "-m", "tasks.finegrained.train", "--config", str(config), "--alpha", str(alpha),
                   "--resolution", str(res), "--output-dir", str(run), "--device", device]
            if (run / "last.pt").is_file():  # interrupted: continue where it stopped
                cmd += ["--resume", str(run / "last.pt")]
            res_ = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
            if res_.returncode != 0:
                raise RuntimeError(f"short training of {alpha:g} MobileNet-{res} failed ({' '.join(cmd)}):\n"
                                   f"{res_.stderr[-3000:]}")
            how = f"{time.perf_counter() - t:.0f} s"
        s = json.loads(summary.read_text())
        m = s["metrics"]
        rows.append({"alpha": alpha, "resolution": res, "top1": m["top1"], "val_top1": m["val_top1"],
                     "chance_top1": m["chance_top1"], "best_epoch": s["selected_by"]["epoch"], "epochs": epochs})
        say(f"  [{i}/{len(points)}] {alpha:g} MobileNet-{res}: test top-1 {100 * m['top1']:.1f}% "
            f"(val {100 * m['val_top1']:.1f}%, chance {100 * m['chance_top1']:.1f}%; {how})")
    path = out / "accuracy.csv"
    lines = [",".join(rows[0])] + [",".join(f"{v:.4f}" if isinstance(v, float) and k != "alpha" else f"{v:g}"
                                            if isinstance(v, float) else str(v) for k, v in r.items()) for r in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path, label


def read_accuracy_csv(path: str) -> dict[tuple[float, int], float]:
    """``alpha,resolution,top1`` rows (top-1 as a fraction or in percent) -> {(alpha, resolution): fraction}."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--accuracy-csv not found: {path}")
    out = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = {"alpha", "resolution", "top1"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"--accuracy-csv {path}: needs the columns alpha,resolution,top1 (missing "
                             f"{sorted(missing)})")
        for lineno, row in enumerate(reader, start=2):
            try:
                key = (float(row["alpha"]), int(row["resolution"]))
                top1 = float(row["top1"])
            except (TypeError, ValueError):
                raise ValueError(f"--accuracy-csv {path}, line {lineno}: alpha, resolution and top1 must be "
                                 f"numbers, got {row}") from None
            out[key] = top1 / 100.0 if top1 > 1.0 else top1
    return out


def _plain_log(ax: Any, which: str) -> None:
    """A log axis labelled 20, 50, 100, ... instead of 2x10^1 (the minor ticks stay, unlabelled)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def plot_figures45(grid: Sequence[dict[str, Any]], path: Path, machine: str, accuracy: dict | None = None,
                   accuracy_label: str = "top-1") -> Path:
    """Latency (ORT fp32, int8, batch 1) against Mult-Adds; with ``accuracy``, also accuracy against
    Mult-Adds (Figure 4's axes) and against int8 latency."""
    from eval.plots import new_figure, save_png

    panels = 3 if accuracy else 1
    fig = new_figure((5.2 * panels, 4.4))
    ax = fig.add_subplot(1, panels, 1)
    ma = np.array([r["mult_adds"] for r in grid], dtype=float) / 1e6
    for prec, marker in (("fp32", "o"), ("int8", "s")):
        ms = np.array([r[f"{prec}_ms"] if r.get(f"{prec}_ms") else np.nan for r in grid], dtype=float)
        ax.plot(ma, ms, marker, label=f"ONNX Runtime {prec}")
    for r, x in zip(grid, ma):
        if r.get("int8_ms"):
            ax.annotate(f"{r['alpha']:g}-{r['resolution']}", (x, r["int8_ms"]), fontsize=6,
                        xytext=(3, -8), textcoords="offset points")
    _plain_log(ax, "x")
    _plain_log(ax, "y")
    ax.set_xlabel("Mult-Adds (millions)")
    ax.set_ylabel("latency, batch 1 (ms, median)")
    ax.set_title(f"MobileNet alpha x resolution: latency\n{machine}", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    if accuracy:
        known = [r for r in grid if (r["alpha"], r["resolution"]) in accuracy]
        acc = np.array([100 * accuracy[(r["alpha"], r["resolution"])] for r in known])
        ax2 = fig.add_subplot(1, panels, 2)
        ax2.plot([r["mult_adds"] / 1e6 for r in known], acc, "o")
        _plain_log(ax2, "x")
        ax2.set_xlabel("Mult-Adds (millions)")
        ylabel = textwrap.fill(f"{accuracy_label} (%)", 36)  # a long label is wrapped, not clipped
        ax2.set_ylabel(ylabel, fontsize=8)
        ax2.set_title("accuracy against Mult-Adds (the paper's Figure 4 axes)", fontsize=8)
        ax2.grid(True, which="both", alpha=0.3)
        ax3 = fig.add_subplot(1, panels, 3)
        for prec, marker in (("fp32", "o"), ("int8", "s")):
            ax3.plot([r.get(f"{prec}_ms") or np.nan for r in known], acc, marker, label=f"ONNX Runtime {prec}")
        _plain_log(ax3, "x")
        ax3.set_xlabel("latency, batch 1 (ms)")
        ax3.set_ylabel(ylabel, fontsize=8)
        ax3.set_title("accuracy against measured latency", fontsize=8)
        ax3.grid(True, which="both", alpha=0.3)
        ax3.legend(fontsize=7)
    fig.tight_layout()
    return save_png(fig, path)


def targets(rows: Sequence[dict[str, Any]], floor: dict[str, Any], quick: bool) -> list[dict[str, Any]]:
    """Issue 12's latency targets on 1.0 MobileNet-224 (ONNX Runtime), PASS / MISS each."""
    cls = {(r["batch"], r["config"]): r for r in rows if r["model"] == "classifier" and "median_ms" in r}
    out = []
    # the same ratio targets for OpenVINO, where it ran (optional: not a dependency of the suite)
    also = [(b, c.replace("ort_", "openvino_"), lim) for b, c, lim in RATIO_TARGETS
            if (b, c.replace("ort_", "openvino_")) in cls]
    for batch, config, limit in RATIO_TARGETS + also:
        r = cls.get((batch, config))
        ratio = r.get("ratio") if r else None
        out.append({"target": f"batch {batch}: {config} <= {limit:g}x timm eager", "value": ratio,
                    "status": "n/a" if ratio is None else ("PASS" if ratio <= limit else "MISS")})
        if r and r.get("round_ratios"):
            within = sum(x <= limit for x in r["round_ratios"])
            out[-1]["note"] = (f"per round {_spread(r['round_ratios'])}, {within} of {len(r['round_ratios'])} "
                               "rounds within")
    r = cls.get((32, "ort_fp32"))
    f = floor.get("classifier", {}).get("32")
    value = r["median_ms"] / f if r and f else None
    out.append({"target": f"batch 32: ort_fp32 within {FLOOR_SLACK:g}x the arithmetic floor "
                f"({floor.get('peak_source', 'assumed')} peak)", "value": value,
                "status": "n/a" if value is None else ("PASS" if value <= FLOOR_SLACK else "MISS")})
    fa = floor.get("assumed", {}).get("classifier", {}).get("32")
    if r and fa and floor.get("peak_source") == "measured":
        out[-1]["note"] = f"{r['median_ms'] / fa:.3f}x the floor at the assumed peak"
    if quick:
        for t in out:
            t["note"] = "; ".join(filter(None, ["quick run: not a measurement", t.get("note")]))
    return out


def _spread(ratios: Sequence[float] | None) -> str:
    """The range of the per-round ratios (each round's median over the reference's in that round)."""
    return f"{min(ratios):.3f}-{max(ratios):.3f}" if ratios else "-"


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"Machine: {m.get('model_name')} ({m.get('vendor')}, family {m.get('family')}), "
             f"{m.get('logical_cpus')} logical CPUs, flags {', '.join(m.get('flags', []))}; "
             f"{result['threads']} threads; load average {result['load_before']} before, {result['load_after']} "
             f"after; {result['date']}; torch {result['versions']['torch']}, onnxruntime "
             f"{result['versions']['onnxruntime']}, timm {result['versions']['timm']}, openvino "
             f"{result['versions']['openvino'] or 'not installed'}."
             + (" **Quick run (smoke test): not a measurement.**" if result["quick"] else ""), ""]
    for model in dict.fromkeys(r["model"] for r in result["rows"]):
        ref = "timm eager" if model == "classifier" else "ours eager"
        title = "1.0 MobileNet-" + str(result["graphs"]["classifier"]["resolution"]) if model == "classifier" \
            else "SSD 300 (1.0 MobileNet, 91 classes, decoding + NMS)"
        lines += [f"**{title}**", "", f"| batch | configuration | median ms | p90 ms | images/s | x {ref} | "
                  "per round |", "|---:|---|---:|---:|---:|---:|---:|"]
        for r in result["rows"]:
            if r["model"] != model:
                continue
            if "error" in r:
                lines.append(f"| {r['batch']} | {r['config']} | failed: {r['error'][:80]} | | | | |")
                continue
            ratio = f"{r['ratio']:.3f}" if r.get("ratio") else "-"
            lines.append(f"| {r['batch']} | {r['config']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | "
                         f"{r['images_per_s']:.1f} | {ratio} | {_spread(r.get('round_ratios'))} |")
        lines.append("")
    fl = result["floor"]
    lines += [f"Arithmetic floor: Mult-Adds x 2 FLOP x batch / {fl['peak_gflops']:.1f} GFLOP/s, the {fl['peak_source']} "
              f"fp32 peak ({fl['peak_how']}). Assumed peak: {fl['cores']} cores x {fl['flop_per_cycle']:g} "
              f"FLOP/cycle x {fl['ghz']:.2f} GHz; {fl['flop_assumption']}; clock {fl['clock_how']}.", ""]
    for model, g in result["graphs"].items():
        if model in fl:
            assumed = fl["assumed"].get(model, {})
            lines.append(f"- {model}: {g['mult_adds'] / 1e6:.1f} M Mult-Adds per image; floor "
                         + ", ".join(f"batch {b}: {v:.2f} ms" + (f" (assumed peak: {assumed[b]:.2f} ms)"
                                                                   if b in assumed else "")
                                     for b, v in fl[model].items()))
    lines += ["", "Targets (issue 12, item 5):", ""]
    lines += [(f"- {t['status']}: {t['target']} (measured {t['value']:.3f})" if t["value"] is not None
               else f"- {t['status']}: {t['target']}") + (f"; {t['note']}" if t.get("note") else "")
              for t in result["targets"]]
    if result["openvino_vs_ort"]:
        lines += ["", "OpenVINO against ONNX Runtime (median latency ratio, < 1: OpenVINO is faster):", ""]
        lines += [f"- {c['model']} batch {c['batch']} {c['precision']}: {c['ratio']:.3f}" for c in
                  result["openvino_vs_ort"]]
    if result["grid"]:
        acc = any("top1" in r for r in result["grid"])
        lines += ["", "Figures 4-5 grid (ONNX Runtime, batch 1, median ms"
                  + (f"; top-1: {result['accuracy']['label']}" if acc else "") + "):", "",
                  "| alpha | resolution | Mult-Adds (M) | params (M) | fp32 ms | int8 ms | int8 / fp32 |"
                  + (" top-1 |" if acc else ""), "|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if acc else "")]
        for r in result["grid"]:
            f32, i8 = r.get("fp32_ms"), r.get("int8_ms")
            top1 = (f" {100 * r['top1']:.1f} % |" if "top1" in r else " - |") if acc else ""
            lines.append(f"| {r['alpha']:g} | {r['resolution']} | {r['mult_adds'] / 1e6:.0f} | {r['params'] / 1e6:.2f} "
                         f"| {f32 if f32 is None else f'{f32:.2f}'} | {i8 if i8 is None else f'{i8:.2f}'} | "
                         f"{(i8 / f32) if f32 and i8 else float('nan'):.2f} |" + top1)
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/deploy.py", description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", default="runs/deploy_bench", help="deploy.json, deploy.md, figures45.png go here")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS),
                   help="configurations to time (OpenVINO ones are skipped when it is not installed)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of every runtime (default 2)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 7; --quick: 2)")
    p.add_argument("--calls", type=int, default=None,
                   help="timed calls per configuration per round at batch 1, a tenth at batch >= 8 (default 20; "
                        "--quick: 3)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls at batch 1, a fifth at batch >= 8 "
                                                            "(default 10; --quick: 2)")
    p.add_argument("--resolution", type=int, default=224, help="the classifier's input side (default 224)")
    p.add_argument("--calib-count", type=int, default=None, help="synthetic calibration images (default 32; "
                                                                 "--quick: 4)")
    p.add_argument("--ssd-candidates", type=int, default=1000,
                   help="(anchor, class) pairs per image above SSD's score threshold (default 1000)")
    p.add_argument("--no-grid", action="store_true", help="skip the Figures 4-5 grid")
    p.add_argument("--accuracy-epochs", type=int, default=None,
                   help="epochs of the short training behind the accuracy panels (default 6; --quick: 1)")
    p.add_argument("--accuracy-csv", help="alpha,resolution,top1 per grid model, instead of the short training")
    p.add_argument("--accuracy-label", default="top-1 from --accuracy-csv",
                   help="what --accuracy-csv's numbers are, for the plot (e.g. 'ImageNet val top-1')")
    p.add_argument("--no-accuracy", action="store_true", help="latency only: no short training, one panel")
    p.add_argument("--device", default="cpu", help="device of the short training (timing is CPU-only)")
    p.add_argument("--flop-per-cycle", type=float, help="fp32 FLOP per cycle per core (default: from the CPU)")
    p.add_argument("--clock-ghz", type=float, help="clock for the floor (default: measured)")
    p.add_argument("--keep-models", action="store_true", help="keep the checkpoints and graphs in OUT_DIR/models")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, 3 calls, 2 grid points")
    return p


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    q = args.quick
    args.rounds = args.rounds or (2 if q else 7)
    args.calls = args.calls or (3 if q else 20)
    args.warmup = args.warmup if args.warmup is not None else (2 if q else 10)
    calib_count = args.calib_count or (4 if q else 32)
    for flag, v, low in (("--rounds", args.rounds, 1), ("--calls", args.calls, 1), ("--warmup", args.warmup, 0),
                         ("--threads", args.threads, 1), ("--resolution", args.resolution, 32),
                         ("--calib-count", calib_count, 1), ("--ssd-candidates", args.ssd_candidates, 1)):
        if v < low:
            raise ValueError(f"{flag} must be >= {low}, got {v}")
    if any(b < 1 for b in args.batches):
        raise ValueError(f"--batches must be positive, got {args.batches}")
    epochs = args.accuracy_epochs if args.accuracy_epochs is not None else (1 if q else 6)
    if epochs < 1:
        raise ValueError(f"--accuracy-epochs must be >= 1, got {epochs}")
    if args.accuracy_csv and args.no_accuracy:
        raise ValueError("--accuracy-csv and --no-accuracy contradict each other: give one")
    accuracy = read_accuracy_csv(args.accuracy_csv) if args.accuracy_csv else None
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say: Callable[[str], None] = lambda line: print(line, flush=True)  # noqa: E731
    started = time.perf_counter()
    import onnxruntime
    import timm

    ov = openvino_version()
    info = cpu_info()
    load_before = _load()
    say(f"deploy benchmark: {info.get('model_name')} ({', '.join(info.get('flags', []))}), {args.threads} threads, "
        f"load {load_before}; OpenVINO {ov or 'not installed: its rows are skipped'}")
    cores = min(args.threads, os.cpu_count() or args.threads)
    fpc, assumption = (args.flop_per_cycle, "given by --flop-per-cycle") if args.flop_per_cycle else \
        fp32_flop_per_cycle(info)
    if args.clock_ghz:
        ghz, how = args.clock_ghz, "given by --clock-ghz"
    else:
        ghz, how = measure_clock_ghz(cores, 0.4 if q else 2.0)
        if ghz is None:
            mhz = info.get("cpuinfo_mhz")
            ghz, how = (mhz / 1e3 if mhz else 1.0), f"{how}; /proc/cpuinfo's 'cpu MHz' used (nominal: turbo unseen)"
    say(f"  assumed peak: {cores} cores x {fpc:g} FLOP/cycle ({assumption}) x {ghz:.2f} GHz ({how})")
    given = bool(args.flop_per_cycle or args.clock_ghz)  # the user's numbers: the floor is the formula's
    peaks: list[tuple[float, str]] = []

    def probe_peak(when: str) -> None:
        if not given:
            value, why = measure_fp32_peak_gflops(cores, info, 0.4 if q else 2.0)
            peaks.append((value, f"{when}: {why}"))
            say(f"  measured peak {when}: " + (f"{value:.1f} GFLOP/s ({why})" if value else why))

    probe_peak("before the timing")

    accuracy_info: dict[str, Any] | None = None
    if accuracy is None and not args.no_accuracy and not args.no_grid:  # trains first: the timing runs on an idle CPU
        csv_path, args.accuracy_label = train_grid_accuracy(QUICK_GRID if q else GRID, out, epochs, q, say,
                                                            args.device)
        accuracy = read_accuracy_csv(str(csv_path))
        accuracy_info = {"csv": str(csv_path), "label": args.accuracy_label, "source": "short training"}
    elif accuracy is not None:
        accuracy_info = {"csv": args.accuracy_csv, "label": args.accuracy_label, "source": "--accuracy-csv"}
    keep = out / "models" if args.keep_models else None
    tmp = None if keep else tempfile.TemporaryDirectory(prefix="deploy-bench-")
    work = keep or Path(tmp.name)  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    try:
        calib = write_calibration_images(work / "calib", calib_count)
        graphs: dict[str, Any] = {}
        if "classifier" in args.models:
            graphs["classifier"] = build_classifier_graphs(work, args.resolution, calib, calib_count, say)
        if "ssd" in args.models:
            graphs["ssd"] = build_ssd_graphs(work, calib, calib_count, args.ssd_candidates, say)
        rows: list[dict[str, Any]] = []
        for model in args.models:
            rows += time_model(model, graphs[model], args, ov is not None, say)
        grid = [] if args.no_grid else time_grid(QUICK_GRID if q else GRID, work, calib, calib_count, args, say)
    finally:
        if tmp is not None:
            tmp.cleanup()

    probe_peak("after the timing")
    floor = floor_summary(cores, fpc, assumption, ghz, how, peaks)
    for model, g in graphs.items():
        floor[model] = {str(b): floor_ms(g["mult_adds"], b, floor["peak_gflops"]) for b in args.batches}
        floor["assumed"][model] = {str(b): arithmetic_floor_ms(g["mult_adds"], b, cores, fpc, ghz)
                                   for b in args.batches}
    for r in rows:
        f = floor.get(r["model"], {}).get(str(r["batch"]))
        if f and "median_ms" in r:
            r["x_floor"] = r["median_ms"] / f
    by = {(r["model"], r["batch"], r["config"]): r for r in rows if "median_ms" in r}
    ov_vs_ort = [{"model": m, "batch": b, "precision": prec,
                  "ratio": by[(m, b, f"openvino_{prec}")]["median_ms"] / by[(m, b, f"ort_{prec}")]["median_ms"]}
                 for (m, b, c) in list(by) if c.startswith("openvino_")
                 for prec in [c.split("_")[1]] if (m, b, f"ort_{prec}") in by]
    machine = f"{info.get('model_name')}, {args.threads} threads" + (" (quick run: not a measurement)" if q else "")
    result = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "quick": q,
              "machine": info, "threads": args.threads, "load_before": load_before, "load_after": _load(),
              "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                           "timm": timm.__version__, "openvino": ov, "python": platform.python_version()},
              "settings": {"rounds": args.rounds, "calls_batch1": args.calls, "warmup_batch1": args.warmup,
                           "calib_images": calib_count, "ssd_candidates": args.ssd_candidates},
              "graphs": {m: {k: v for k, v in g.items() if k in ("resolution", "mult_adds", "params",
                                                                  "background_bias", "candidates_per_image")}
                         for m, g in graphs.items()},
              "floor": floor, "rows": rows, "openvino_vs_ort": ov_vs_ort, "grid": grid,
              "accuracy": accuracy_info}
    result["targets"] = targets(rows, floor, q)
    if grid and accuracy:
        for r in grid:
            if (r["alpha"], r["resolution"]) in accuracy:
                r["top1"] = accuracy[(r["alpha"], r["resolution"])]
    if grid:
        result["figure"] = str(plot_figures45(grid, out / "figures45.png", machine, accuracy, args.accuracy_label))
    result["seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_json(out / "deploy.json", result)
    text = markdown(result)
    atomic_write_text(out / "deploy.md", text)
    say("")
    say(text)
    for t in result["targets"]:
        say(f"{t['status']}: {t['target']}" + (f" (measured {t['value']:.3f})" if t["value"] is not None else "")
            + (f" [{t['note']}]" if t.get("note") else ""))
    if ov is None and any(c.startswith("openvino") for c in args.configs):
        say("OpenVINO: not installed (pip install openvino to time it); its rows were skipped")
    say(f"wrote {out / 'deploy.json'}, {out / 'deploy.md'}" + (f", {result['figure']}" if grid else "")
        + f" ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    from datasets.io import run_cli

    run_cli(main)
