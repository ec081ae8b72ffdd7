"""Plumbing shared by the static figures (:mod:`colab_utils.train_figures`, :mod:`colab_utils.eval_figures`)
and the report export (:mod:`colab_utils.report`): new axes, saving, percentages.

Conventions

- Figure functions return a :class:`matplotlib.figure.Figure` and never call ``plt.show()``. Figures are
  created through pyplot and left open, so Jupyter/Colab's inline backend shows every figure a cell made when
  the cell ends (inside loops too) and then closes it. When such a call is the last line of a cell, end it
  with ``;`` or the returned Figure is shown a second time. Scripts should ``plt.close(fig)`` when done.
  When an ``ax`` is passed, the drawing goes there and the caller's figure is returned.
  ``save_path`` writes a PNG (or any format matplotlib knows by the suffix).
- Images are uint8 (N, C, H, W) in 0..255 with C = 1 (grayscale, shown as gray) or 3 (RGB); float images
  are taken as [0, 1]. Torch tensors are accepted wherever arrays are.
- Anomaly maps of one category are always drawn on ONE shared colour scale (see :func:`map_scale`),
  never min-max scaled per image: per-image scaling stretches the noise of a good image to full red and
  makes every good image look defective.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

DPI = 110
MAX_CURVE_POINTS = 5000  # points drawn per curve (drawing only; metrics are computed elsewhere)


# ----------------------------------------------------------------------------------------------- helpers

def pct(value: Any) -> str:
    """A fraction in [0, 1] as a percentage with one decimal; ``n/a`` for missing/NaN."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if not np.isfinite(v) else f"{100.0 * v:.1f}"


def new_axes(ax=None, nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6.0, 4.5), **kwargs):
    """(fig, axes): a new pyplot figure, or the figure of the given ``ax`` and that ``ax``."""
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, dpi=DPI, **kwargs)
    return fig, axes


def finish(fig, save_path: str | Path | None):
    """Save when asked; return ``fig`` (left open in pyplot, see the module docstring)."""
    if save_path is not None:
        path = Path(save_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return fig
