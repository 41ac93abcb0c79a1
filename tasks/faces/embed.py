"""Embed image files with a face model (used by evaluation, the search CLI and services)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from datasets.faces import face_transform
from datasets.images import load_rgb_image

__all__ = ["ImageList", "embed_paths", "file_sha256"]


class ImageList(torch.utils.data.Dataset):
    """Image files -> ``[3, R, R]`` tensors in [0, 1] (``datasets.faces.face_transform``)."""

    def __init__(self, paths: Sequence[str], resolution: int, center_crop: float = 1.0):
        self.paths = list(paths)
        self.transform = face_transform(resolution, center_crop)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(load_rgb_image(self.paths[i]))


@torch.no_grad()
def embed_paths(
    model: nn.Module,
    paths: Sequence[str],
    *,
    resolution: int | None = None,
    center_crop: float | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    flip: bool = False,
    progress: bool | str = False,
) -> np.ndarray:
    """Embeddings of image files, in the order of ``paths``.

    Args:
        model: a face model (``FaceEmbedder``) returning L2-normalised embeddings; put in eval mode here
            for the call and restored afterwards.
        paths: image files.
        resolution, center_crop: preprocessing; default to ``model.cfg``'s.
        batch_size: images per forward pass.
        device: defaults to the model's device.
        num_workers: DataLoader workers for decoding.
        flip: average each embedding with that of the mirrored image (then renormalise).
        progress: show a tqdm bar (a string is used as its label).

    Returns:
        ``[N, D]`` float32 array.
    """
    cfg = getattr(model, "cfg", None)
    resolution = resolution or (cfg.resolution if cfg is not None else None)
    if resolution is None:
        raise ValueError("resolution is required for a model without a FaceModelConfig")
    center_crop = center_crop or (cfg.center_crop if cfg is not None else 1.0)
    if device is None:
        device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(ImageList(paths, resolution, center_crop), batch_size=batch_size,
                                         shuffle=False, num_workers=num_workers)
    was_training = model.training
    model.eval()
    out = []
    try:
        bar = tqdm(total=len(paths), desc=progress if isinstance(progress, str) else "embedding",
                   unit="img", disable=not progress, leave=False, dynamic_ncols=True)
        for x in loader:
            x = x.to(device)
            e = model(x).float()
            if flip:
                e = torch.nn.functional.normalize(e + model(torch.flip(x, dims=[3])).float(), dim=1)
            out.append(e.cpu())
            bar.update(len(x))
        bar.close()
    finally:
        model.train(was_training)
    if not out:
        dim = getattr(cfg, "embedding_dim", 0)
        return np.empty((0, dim), np.float32)
    return torch.cat(out).numpy().astype(np.float32)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (the gallery's content hash)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
