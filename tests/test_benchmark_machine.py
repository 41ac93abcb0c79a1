"""benchmarks/_machine.py: the machine readings every benchmark prints beside its numbers."""
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _machine  # noqa: E402


def test_machine_readings(monkeypatch):
    assert isinstance(_machine.cpu_model(), str) and _machine.cpu_model()
    assert 1 <= _machine.cpu_count() <= (__import__("os").cpu_count() or 1)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", _machine.timestamp(utc=True))
    assert re.fullmatch(r"\d+\.\d\d / \d+\.\d\d / \d+\.\d\d", _machine.load_text())
    assert re.fullmatch(r"\d+\.\d, \d+\.\d, \d+\.\d", _machine.load_text(", ", 1))
    v = _machine.versions("numpy", "no_such_module_here")
    assert re.match(r"\d+\.\d+", v["numpy"]) and v["no_such_module_here"] == "not installed"
    # no lscpu and no /proc/cpuinfo: the platform's own name, never an empty string
    monkeypatch.setattr(_machine.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(OSError("no lscpu")))
    monkeypatch.setattr(_machine.Path, "read_text", lambda self: (_ for _ in ()).throw(OSError("no procfs")))
    monkeypatch.setattr(_machine.platform, "processor", lambda: "")
    monkeypatch.setattr(_machine.platform, "machine", lambda: "riscv64")
    assert _machine.cpu_model() == "riscv64"
    monkeypatch.setattr(_machine.os, "getloadavg", lambda: (_ for _ in ()).throw(OSError("none")))
    assert _machine.load_average() is None and _machine.load_text() == "n/a"
