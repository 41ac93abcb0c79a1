"""Face embeddings and face search (MobileNets Section 4.7, Table 14).

* ``model``: any backbone + an L2-normalised embedding head (:class:`FaceEmbedder`), fingerprints.
* ``losses``: FaceNet semi-hard triplets, batch-hard triplets, CosFace/ArcFace, embedding distillation.
* ``train`` / ``evaluate``: ``python -m tasks.faces.train`` and ``python -m tasks.faces.evaluate``.
* ``index`` / ``search``: a crash-safe faiss + SQLite gallery (:class:`FaceIndex`) and its CLI.

Names are imported lazily, so a service that only searches a gallery (``tasks.faces.index``) does not
pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FaceIndex": "tasks.faces.index",
    "FaceIndexError": "tasks.faces.index",
    "Hit": "tasks.faces.index",
    "IndexCorruptError": "tasks.faces.index",
    "ModelMismatchError": "tasks.faces.index",
    "FaceEmbedder": "tasks.faces.model",
    "FaceModelConfig": "tasks.faces.model",
    "build_face_model": "tasks.faces.model",
    "fingerprint": "tasks.faces.model",
    "load_face_model": "tasks.faces.model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tasks.faces' has no attribute {name!r}")
