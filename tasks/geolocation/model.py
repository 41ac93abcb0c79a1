"""The geolocation network and its scoring (MobileNets paper, Section 4.4, Table 11; PlaNet, Weyand et al. 2016).

PlaNet is a classifier over S2 cells: one softmax over the cells of a partition. With one partition the
network is the suite's plain classifier (``tasks.classifier.build_classifier`` with K outputs). With
several partitions of the same photos (coarse to fine, e.g. ``t_max`` 5000 / 2000 / 1000 as in
GeoEstimation, Mueller-Budack et al. 2018), :class:`GeoCellClassifier` puts one linear head per partition
on one shared backbone; its output is the heads' logits side by side, ``[N, K_1 + ... + K_P]``, so the
suite's ``predict_outputs`` and checkpoint loader serve it unchanged.

The hierarchical prediction scores a cell of the finest partition by the product of its own softmax
probability and those of the cells that contain it in the coarser partitions (probabilities, not logits):
:func:`hierarchical_scores`.

Loss: cross-entropy per partition, averaged over the partitions; optionally with PIGEON's haversine label
smoothing (Haas et al. 2024), targets proportional to ``exp(-(d_i - min_j d_j) / tau)`` with ``d_i`` the
great-circle distance from the photo to cell ``i``'s location: near misses cost less than far ones.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eval.geolocation import haversine_km
from tasks.classifier import build_classifier
from tasks.geolocation import s2
from tasks.geolocation.partition import Partition

__all__ = ["CellDecoder", "GeoCellClassifier", "GeoLoss", "build_geo_classifier", "geo_classifier_spec", "hierarchical_scores",
           "split_logits"]


class GeoCellClassifier(nn.Module):
    """One backbone, one linear head per partition; ``forward`` returns the concatenated logits.

    Args:
        body: a backbone whose own classifier is removed (``forward_features`` + ``forward_head(pre_logits)``).
        num_cells: K per partition, coarse to fine (the order of the heads and of the output slices).
        dropout: dropout on the pooled features before the heads.
    """

    def __init__(self, body: nn.Module, num_cells: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        self.body = body
        self.num_cells = [int(k) for k in num_cells]
        width = int(body.num_features)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.heads = nn.ModuleList(nn.Linear(width, k) for k in self.num_cells)

    def forward(self, x: Tensor) -> Tensor:
        features = self.dropout(self.body.forward_head(self.body.forward_features(x), pre_logits=True))
        return torch.cat([head(features) for head in self.heads], dim=1)


def geo_classifier_spec(*, num_cells: Sequence[int], backbone: str = "mobilenet_v1", alpha: float = 1.0,
                        dropout: float = 0.0) -> dict[str, Any]:
    """The builder arguments of :func:`build_geo_classifier`, as plain data (a checkpoint's model args)."""
    return {"num_cells": [int(k) for k in num_cells], "backbone": str(backbone), "alpha": float(alpha),
            "dropout": float(dropout)}


def build_geo_classifier(*, num_cells: Sequence[int], backbone: str = "mobilenet_v1", alpha: float = 1.0,
                         dropout: float = 0.0, pretrained_backbone: str | None = None) -> GeoCellClassifier:
    """A :class:`GeoCellClassifier` (registered as ``"geo_classifier"`` in ``tasks.checkpoint.MODEL_BUILDERS``).

    Args:
        num_cells: cells per partition, at least two partitions of at least two cells each.
        backbone, alpha, pretrained_backbone: as for ``tasks.classifier.build_classifier``.
        dropout: before the heads.
    """
    cells = list(num_cells)
    if len(cells) < 2 or any(isinstance(k, bool) or not isinstance(k, int) or k < 2 for k in cells):
        raise ValueError(f"num_cells must list at least two partitions of at least 2 cells each, got {cells!r}")
    # build_classifier checks the arguments and loads starting weights; its 1-way head is then removed
    body = build_classifier(num_outputs=1, backbone=backbone, alpha=alpha, pretrained_backbone=pretrained_backbone)
    body.reset_classifier(0)
    return GeoCellClassifier(body, cells, dropout=float(dropout))


def split_logits(logits: Tensor | np.ndarray, num_cells: Sequence[int]) -> list[Any]:
    """The per-partition slices of a ``[N, sum(num_cells)]`` output."""
    if logits.shape[1] != sum(num_cells):
        raise ValueError(f"the model gives {logits.shape[1]} outputs, the partitions have {sum(num_cells)} cells "
                         f"({list(num_cells)})")
    bounds = np.cumsum([0, *num_cells])
    return [logits[:, int(a):int(b)] for a, b in zip(bounds[:-1], bounds[1:])]


def hierarchical_scores(probs: Sequence[np.ndarray], parents: Sequence[np.ndarray]) -> np.ndarray:
    """Scores of the finest partition's cells: own probability times those of their ancestors.

    Args:
        probs: softmax probabilities per partition, coarse to fine, ``[N, K_p]`` each; the last is the finest.
        parents: for each coarser partition ``p`` (``len(probs) - 1`` arrays), int ``[K_fine]``: the label of
            the cell of partition ``p`` that contains each finest cell (``Partition.parent_labels``).

    Returns:
        float64 ``[N, K_fine]`` (not renormalised: a product of probabilities).

    Raises:
        ValueError: shapes that do not fit, or a finest cell without a containing cell (label -1).
    """
    if len(parents) != len(probs) - 1:
        raise ValueError(f"{len(probs)} partitions need {len(probs) - 1} parent maps, got {len(parents)}")
    score = np.asarray(probs[-1], dtype=np.float64).copy()
    for p, (coarse, parent) in enumerate(zip(probs[:-1], parents)):
        parent = np.asarray(parent, dtype=np.int64)
        coarse = np.asarray(coarse, dtype=np.float64)
        if parent.shape != (score.shape[1],):
            raise ValueError(f"parent map {p} has shape {parent.shape}, expected ({score.shape[1]},)")
        if (parent < 0).any() or (parent >= coarse.shape[1]).any():
            k = int(np.flatnonzero((parent < 0) | (parent >= coarse.shape[1]))[0])
            raise ValueError(f"finest cell {k} lies in no cell of partition {p} (parent label {int(parent[k])}); "
                             "hierarchical partitions must nest (build them from the same photos and t_min)")
        score *= coarse[:, parent]
    return score


class GeoLoss:
    """``loss_fn(model, batch, device)``: cross-entropy per partition, averaged over the partitions.

    Args:
        num_cells: K per partition, in head order.
        cell_lat, cell_lon: per partition, the cells' locations (degrees), for haversine smoothing.
        tau_km: ``None``: one-hot targets; else PIGEON's haversine smoothing with this temperature.
    """

    def __init__(self, num_cells: Sequence[int], cell_lat: Sequence[np.ndarray], cell_lon: Sequence[np.ndarray],
                 tau_km: float | None = None) -> None:
        self.num_cells = [int(k) for k in num_cells]
        self.tau_km = None if tau_km is None else float(tau_km)
        self.cell_lat = [torch.as_tensor(np.asarray(a, dtype=np.float32)) for a in cell_lat]
        self.cell_lon = [torch.as_tensor(np.asarray(a, dtype=np.float32)) for a in cell_lon]

    def soft_targets(self, p: int, lat: Tensor, lon: Tensor) -> Tensor:
        """``[B, K_p]`` haversine-smoothed targets of partition ``p`` for photos at ``lat, lon``."""
        clat = self.cell_lat[p].to(lat.device)
        clon = self.cell_lon[p].to(lat.device)
        d = haversine_km(lat[:, None], lon[:, None], clat[None, :], clon[None, :])
        return torch.softmax(-(d - d.min(dim=1, keepdim=True).values) / self.tau_km, dim=1)

    def __call__(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, Tensor]:
        images = batch["image"].to(device, non_blocking=True)
        cells = batch["cells"].to(device, non_blocking=True)
        logits = split_logits(model(images).float(), self.num_cells)
        losses = []
        for p, part_logits in enumerate(logits):
            if self.tau_km is None:
                losses.append(F.cross_entropy(part_logits, cells[:, p]))
            else:
                target = batch["target"].to(device, non_blocking=True).float()
                soft = self.soft_targets(p, target[:, 0], target[:, 1])
                losses.append(-(soft * F.log_softmax(part_logits, dim=1)).sum(1).mean())
        return {"ce": torch.stack(losses).mean()}


def partition_meta(part: Partition) -> dict[str, Any]:
    """A partition as plain checkpoint metadata (tokens, levels, counts, locations in class-label order)."""
    return {"tokens": part.tokens, "levels": part.levels.tolist(), "counts": part.counts.tolist(),
            "lat_mean": [float(v) for v in part.lat_mean], "lon_mean": [float(v) for v in part.lon_mean]}


def partition_from_meta(entry: dict[str, Any]) -> Partition:
    """Inverse of :func:`partition_meta`."""
    ids = np.array([s2.token_to_cell_id(t) for t in entry["tokens"]], dtype=np.uint64)
    return Partition(ids, np.asarray(entry["levels"], dtype=np.int64), np.asarray(entry["counts"], dtype=np.int64),
                     np.asarray(entry["lat_mean"], dtype=np.float64), np.asarray(entry["lon_mean"], dtype=np.float64))


class CellDecoder:
    """From network outputs to cells and locations: softmax per partition, the hierarchical product over
    the partitions (coarse to fine; the last is the finest), the best cells and their mean locations.

    Args:
        partitions: in head order, coarse to fine.

    Raises:
        ValueError: partitions that do not nest (a finest cell outside every cell of a coarser one).
    """

    def __init__(self, partitions: Sequence[Partition]) -> None:
        self.partitions = list(partitions)
        if not self.partitions:
            raise ValueError("no partitions")
        self.num_cells = [len(p) for p in self.partitions]
        finest = self.partitions[-1]
        self.parents = [finest.parent_labels(c) for c in self.partitions[:-1]]
        for p, parent in enumerate(self.parents):
            if (parent < 0).any():
                k = int(np.flatnonzero(parent < 0)[0])
                raise ValueError(f"cell {finest.tokens[k]} of the finest partition ({len(finest)} cells) lies in no "
                                 f"cell of partition {p} ({self.num_cells[p]} cells): hierarchical partitions must "
                                 "nest (build them from the same photos with the same t_min)")
        self.tokens = finest.tokens
        self.lat = np.asarray(finest.lat_mean, dtype=np.float64)
        self.lon = np.asarray(finest.lon_mean, dtype=np.float64)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> CellDecoder:
        """The decoder of a geolocation checkpoint (its ``cells`` metadata)."""
        if "cells" not in meta:
            raise ValueError("the checkpoint has no 'cells' metadata: not a geolocation checkpoint")
        return cls([partition_from_meta(e) for e in meta["cells"]])

    def scores(self, outputs: np.ndarray) -> np.ndarray:
        """``[N, K_fine]`` cell scores of raw outputs ``[N, sum K]``."""
        logits = split_logits(torch.as_tensor(np.asarray(outputs, dtype=np.float32)), self.num_cells)
        probs = [torch.softmax(x.double(), dim=1).numpy() for x in logits]
        return hierarchical_scores(probs, self.parents)

    def top_k(self, outputs: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(labels ``[N, k]``, scores ``[N, k]``) of the best finest cells, best first."""
        sc = self.scores(outputs)
        k = min(int(k), sc.shape[1])
        order = np.argsort(-sc, axis=1, kind="stable")[:, :k]
        return order, np.take_along_axis(sc, order, axis=1)
