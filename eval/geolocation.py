"""Geolocation metrics as pure functions of predicted and true coordinates (MobileNets paper, Section 4.4,
Table 11; PlaNet, Weyand et al. 2016).

* :func:`haversine_km`: great-circle distance on a sphere of radius R = 6371 km (the mean Earth radius;
  some projects use 6378.137 km, the equatorial one, which gives 0.1 % longer distances). Vectorised over
  numpy arrays or torch tensors (a tensor in gives a tensor out, on its device).
* :func:`accuracy_at_km`: the share of photos located within each of 1 / 25 / 200 / 750 / 2500 km (street,
  city, region, country, continent), counting a distance equal to the threshold as a hit (``d <= t``).
* :func:`median_km` and :func:`geoscore` (OSV-5M: the mean of ``5000 * exp(-d / 1492.7 km)``, 5000 for an
  exact hit).
* :func:`geolocation_metrics`: all of them in one flat dict, the shape ``summary.json`` stores.
* :func:`format_geolocation_table` and :func:`plot_error_cdf`: the printed five-scale table and the
  error CDF (km on a log axis) of one or more predictors side by side.

Accuracies are fractions in [0, 1] (the paper prints percentages).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from eval.plots import new_figure, save_png

__all__ = [
    "EARTH_RADIUS_KM",
    "GEOSCORE_SCALE_KM",
    "THRESHOLDS_KM",
    "accuracy_at_km",
    "format_geolocation_table",
    "geolocation_metrics",
    "geoscore",
    "haversine_km",
    "median_km",
    "plot_error_cdf",
]

EARTH_RADIUS_KM = 6371.0
THRESHOLDS_KM: tuple[float, ...] = (1.0, 25.0, 200.0, 750.0, 2500.0)
GEOSCORE_SCALE_KM = 1492.7

ArrayLike = Any  # numpy array, torch tensor, sequence or scalar


def haversine_km(lat1: ArrayLike, lon1: ArrayLike, lat2: ArrayLike, lon2: ArrayLike, *,
                 radius_km: float = EARTH_RADIUS_KM) -> np.ndarray | Tensor:
    """Great-circle distance in km between points given in degrees (broadcasting).

    Tensors are computed in float64 unless they are float32 on purpose (gradients through a float32
    model output); everything else goes through numpy in float64.
    """
    if any(isinstance(a, Tensor) for a in (lat1, lon1, lat2, lon2)):
        ref = next(a for a in (lat1, lon1, lat2, lon2) if isinstance(a, Tensor))
        dtype = ref.dtype if ref.is_floating_point() else torch.float64
        t = [torch.as_tensor(a, dtype=dtype, device=ref.device) for a in (lat1, lon1, lat2, lon2)]
        p1, l1, p2, l2 = (torch.deg2rad(a) for a in t)
        a = torch.sin((p2 - p1) / 2) ** 2 + torch.cos(p1) * torch.cos(p2) * torch.sin((l2 - l1) / 2) ** 2
        return 2 * radius_km * torch.asin(torch.sqrt(a.clamp(0.0, 1.0)))
    p1, l1, p2, l2 = (np.radians(np.asarray(a, dtype=np.float64)) for a in (lat1, lon1, lat2, lon2))
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin((l2 - l1) / 2) ** 2
    return 2 * radius_km * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def _distances(distances_km: ArrayLike) -> np.ndarray:
    if isinstance(distances_km, Tensor):
        distances_km = distances_km.detach().cpu().double().numpy()
    d = np.asarray(distances_km, dtype=np.float64).reshape(-1)
    if d.size == 0:
        raise ValueError("no distances to score (empty prediction set)")
    bad = ~np.isfinite(d) | (d < 0)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{int(bad.sum())} distance(s) are negative or not finite, e.g. distances_km[{k}] = {d[k]}")
    return d


def accuracy_at_km(distances_km: ArrayLike, thresholds_km: Sequence[float] = THRESHOLDS_KM) -> dict[float, float]:
    """``{threshold: share of distances <= threshold}`` (fractions in [0, 1]).

    Raises:
        ValueError: no distances, or a distance that is negative or not finite.
    """
    d = _distances(distances_km)
    return {float(t): float(np.mean(d <= t)) for t in thresholds_km}


def median_km(distances_km: ArrayLike) -> float:
    """The median great-circle error in km."""
    return float(np.median(_distances(distances_km)))


def geoscore(distances_km: ArrayLike, *, scale_km: float = GEOSCORE_SCALE_KM) -> float:
    """OSV-5M's GeoScore: the mean of ``5000 * exp(-d / scale_km)`` (5000 = every photo exactly placed)."""
    return float(np.mean(5000.0 * np.exp(-_distances(distances_km) / scale_km)))


def _key(threshold: float) -> str:
    return f"acc@{int(threshold) if float(threshold).is_integer() else threshold}km"


def geolocation_metrics(distances_km: ArrayLike,
                        thresholds_km: Sequence[float] = THRESHOLDS_KM) -> dict[str, float | int]:
    """``{"acc@1km": ..., ..., "acc@2500km": ..., "median_km": ..., "geoscore": ..., "count": n}``.

    Keys are ``acc@<t>km`` per threshold (fractions), ``median_km``, ``geoscore`` and ``count``.
    """
    d = _distances(distances_km)
    out = {_key(t): v for t, v in accuracy_at_km(d, thresholds_km).items()}
    out["median_km"] = median_km(d)
    out["geoscore"] = geoscore(d)
    out["count"] = int(d.size)
    return out



def format_geolocation_table(results: dict[str, dict[str, float]],
                             thresholds_km: Sequence[float] = THRESHOLDS_KM) -> str:
    """A text table, one row per predictor: accuracy (%) at each threshold, median km and GeoScore.

    Args:
        results: ``{row name: geolocation_metrics(...)}``.
    """
    if not results:
        raise ValueError("no results to tabulate")
    width = max(12, *(len(k) for k in results))
    head = f"{'':<{width}}" + "".join(f"{f'{t:g} km':>9}" for t in thresholds_km) + f"{'median km':>11}{'GeoScore':>10}"
    rows = [head]
    for name, m in results.items():
        cells = "".join(f"{100 * m[_key(t)]:>8.1f}%" for t in thresholds_km)
        rows.append(f"{name:<{width}}{cells}{m['median_km']:>11.0f}{m['geoscore']:>10.0f}")
    return "\n".join(rows)


def plot_error_cdf(distances: dict[str, ArrayLike], path: Any, title: str = "geolocation error",
                   thresholds_km: Sequence[float] = THRESHOLDS_KM) -> Any:
    """Write a PNG of the share of photos located within d km against d (log axis), one curve per predictor,
    with the thresholds marked; returns the path (written atomically; its folder must exist)."""
    from pathlib import Path

    out = Path(path)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"folder for the error plot does not exist: {out.parent}")
    fig = new_figure((6.5, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for name, dist in distances.items():
        d = np.sort(_distances(dist))
        share = np.arange(1, d.size + 1) / d.size
        ax.step(np.maximum(d, 0.1), share, where="post", label=f"{name} (median {np.median(d):.0f} km)")
    for t in thresholds_km:
        ax.axvline(t, color="grey", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_xlim(0.1, 20100)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("great-circle error (km, log scale)")
    ax.set_ylabel("share of photos within")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return save_png(fig, out)
