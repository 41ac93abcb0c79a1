"""The one way the suite draws a PNG: a headless matplotlib Figure, saved atomically.

No pyplot: a ``Figure`` with its own Agg canvas holds no global state, so plotting is safe in threads,
in data-loader workers and next to a training loop; ``save_png`` writes through ``datasets.io`` so a
killed run leaves the previous plot or none, never half a file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets.io import atomic_write

__all__ = ["new_figure", "save_png"]


def new_figure(figsize: tuple[float, float], **kwargs: Any) -> Any:
    """A ``matplotlib.figure.Figure`` of ``figsize`` inches with an Agg canvas (``kwargs`` go to Figure)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, **kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, path: str | Path, *, dpi: int | None = 110) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically; returns the path."""
    out = Path(path)
    options = {"format": "png"} if dpi is None else {"format": "png", "dpi": dpi}
    atomic_write(out, lambda f: fig.savefig(f, **options), "wb")
    return out
