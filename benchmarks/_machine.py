"""What a benchmark records about the machine it ran on: CPU model, CPUs, load average, time, versions.

Every script under ``benchmarks/`` prints these beside its numbers (``docs/benchmarks.md`` keeps them with each
result), each in its own layout; the readings come from here. ``benchmarks/deploy.py`` reads more of the CPU
(vendor, family, SIMD flags) for its arithmetic floor: ``deploy.cpu_info``.
"""
from __future__ import annotations

import datetime
import importlib
import os
import platform
import subprocess
from pathlib import Path

__all__ = ["cpu_count", "cpu_model", "load_average", "load_text", "timestamp", "versions"]


def cpu_model() -> str:
    """The CPU's model name: ``lscpu``'s "Model name", else /proc/cpuinfo's, else what ``platform`` says."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        name = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "")
        if name:
            return name
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_count() -> int:
    """CPUs this process may run on (``nproc``: the affinity mask where the OS has one, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_average() -> tuple[float, float, float] | None:
    """The 1, 5 and 15 minute load averages, or None where the OS has none."""
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return None


def load_text(sep: str = " / ", digits: int = 2) -> str:
    """The load averages as text (``"0.41 / 0.52 / 0.60"``), ``"n/a"`` where there are none."""
    load = load_average()
    return "n/a" if load is None else sep.join(f"{v:.{digits}f}" for v in load)


def timestamp(utc: bool = False) -> str:
    """Now, to the minute, with its time zone: ``2026-12-04 19:04 UTC``."""
    now = datetime.datetime.now(datetime.timezone.utc) if utc else datetime.datetime.now().astimezone()
    return now.strftime("%Y-%m-%d %H:%M %Z")


def versions(*modules: str) -> dict[str, str]:
    """``{module: __version__}``; ``"not installed"`` for a module that does not import."""
    out = {}
    for name in modules:
        try:
            out[name] = str(getattr(importlib.import_module(name), "__version__", "unknown"))
        except ImportError:
            out[name] = "not installed"
    return out
