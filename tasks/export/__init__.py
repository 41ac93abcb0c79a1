"""Deploy any task's checkpoint: ONNX fp32 / int8 export, verification and latency measurement.

MobileNets are about running fast on small devices (paper, Figures 4 and 5: accuracy against
Mult-Adds and parameters); this package turns a trained checkpoint into the graphs that do.

* ``python -m tasks.export``: :func:`export_checkpoint` (``core.py``), graphs per network kind (``graph.py``),
  calibration images (``data.py``), checks (``verify.py``).
* ``python -m tasks.export.bench``: median / p90 latency and images/s, each runtime in its own process.
* ``python -m tasks.export.profile``: ONNX Runtime's kernel time per operator and the slowest nodes.
"""
from typing import Any

__all__ = ["ExportError", "export_checkpoint"]


def __getattr__(name: str) -> Any:
    # lazy: ``python -m tasks.export.bench`` workers that time ONNX Runtime must not load torch
    if name == "export_checkpoint":
        from .core import export_checkpoint

        return export_checkpoint
    if name == "ExportError":
        from .graph import ExportError

        return ExportError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
