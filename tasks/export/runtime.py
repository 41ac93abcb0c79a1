"""ONNX Runtime sessions of the exported graphs, without torch.

The timing workers of ``tasks.export.bench`` load only this (and ONNX Runtime): a process that times ONNX
Runtime never loads torch, whose import alone costs seconds and hundreds of MiB per worker.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["run_graph", "session"]


def session(path: str | os.PathLike, threads: int | None = None, profile_prefix: str | None = None):
    """An ONNX Runtime CPU session (``threads`` intra-op threads; None: ORT's default). With ``profile_prefix``
    ORT's profiler records every kernel into ``<prefix>_<time>.json`` (``end_profiling()`` returns the path)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile_prefix)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_graph(sess: Any, x: np.ndarray) -> list[np.ndarray]:
    return sess.run(None, {sess.get_inputs()[0].name: x})
