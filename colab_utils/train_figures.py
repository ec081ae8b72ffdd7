"""Static figures for the reader of notebooks 01 and 02: the data (counts, samples) and what training did (loss
curves, a direct fit's stages, reconstructions, held-out good images). Conventions: :mod:`colab_utils.plotting`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .panels import (
    heatmap_overlay,
    mask2d,
    rgb_float,
    to_numpy,
)
from .plotting import finish, new_axes

# ------------------------------------------------------------------------------------------ data plots
_SPLIT_ORDER = {"train": 0, "val": 1, "validation": 1, "test": 2}


def plot_counts(rows: Sequence[Mapping[str, Any]], ax=None, save_path: str | Path | None = None):
    """Horizontal bar chart of image counts, one bar group per category.

    Args:
        rows: dicts ``{"category", "split", "defect_type", "count"}`` (as from ``data.count_table``; rows of
            several categories may be concatenated). Within a group: train first, then test good, then the
            test defect types; bars are coloured by kind (train good / test good / test defective).
    Returns:
        The Figure (one axes; one bar per row).
    """
    rows = list(rows)
    if not rows:
        raise ValueError("plot_counts needs at least one row")
    categories = list(dict.fromkeys(r["category"] for r in rows))
    n_bars = len(rows) + len(categories) - 1
    fig, ax = new_axes(ax, figsize=(7.0, max(2.0, 0.28 * n_bars + 1.0)))
    colours = {"train": "tab:blue", "test good": "tab:green", "test defective": "tab:orange"}
    y, ticks, labels, used = 0, [], [], set()
    for cat in categories:
        group = sorted(
            (r for r in rows if r["category"] == cat),
            key=lambda r: (_SPLIT_ORDER.get(r["split"], 3), r["defect_type"] != "good"),
        )
        for r in group:
            kind = (
                "train" if r["split"] != "test" else ("test good" if r["defect_type"] == "good" else "test defective")
            )
            ax.barh(y, r["count"], color=colours[kind], label=None if kind in used else kind)
            used.add(kind)
            ax.text(r["count"], y, f" {r['count']}", va="center", fontsize=8)
            ticks.append(y)
            labels.append(
                f"{cat}: {r['split']}/{r['defect_type']}" if len(categories) > 1 else f"{r['split']}/{r['defect_type']}"
            )
            y += 1
        y += 1  # gap between groups
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("images")
    ax.set_title("Images per split and defect type" + (f" ({categories[0]})" if len(categories) == 1 else ""))
    ax.margins(x=0.12)
    ax.legend(loc="lower right", fontsize=8)
    return finish(fig, save_path)


def show_samples(
    images: Any,
    masks: Any = None,
    titles: Sequence[str] | None = None,
    ncols: int = 4,
    title: str | None = None,
    save_path: str | Path | None = None,
):
    """Grid of images with the ground-truth defect region drawn on top (red fill + contour).

    Args:
        images: uint8 (N, C, H, W) in 0..255 (float [0, 1] accepted), C in {1, 3}.
        masks: (N, 1, H, W) or (N, H, W) in {0, 1}, or None.
        titles: N strings (e.g. defect types), or None.
        ncols: grid columns.
        title: optional figure title (e.g. the category).
    Returns:
        The Figure, with exactly N image axes.
    """
    imgs = to_numpy(images)
    n = len(imgs)
    if n == 0:
        raise ValueError("show_samples needs at least one image")
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig, axes = new_axes(None, nrows, ncols, figsize=(2.6 * ncols, 2.7 * nrows), squeeze=False)
    m_all = None if masks is None else to_numpy(masks)
    for k, ax in enumerate(axes.ravel()):
        if k >= n:
            fig.delaxes(ax)
            continue
        ax.imshow(rgb_float(imgs[k]), interpolation="nearest")
        if m_all is not None:
            m = mask2d(m_all[k])
            if m.any():
                fill = np.zeros((*m.shape, 4), np.float32)
                fill[m] = (1.0, 0.0, 0.0, 0.3)
                ax.imshow(fill, interpolation="nearest")
                ax.contour(m.astype(np.float32), levels=[0.5], colors="red", linewidths=1.0)
        if titles is not None:
            ax.set_title(str(titles[k]), fontsize=9)
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return finish(fig, save_path)


# ----------------------------------------------------------------------------------------- training
_NOT_LOSS_KEYS = ("lr", "epoch", "time", "seconds", "step")
_TOTAL_KEYS = ("loss", "train_loss", "val_loss", "valid_loss", "validation_loss")


def plot_history(
    history: Mapping[str, Sequence[float]],
    log_y: bool = False,
    terms: bool = True,
    title: str | None = None,
    save_path: str | Path | None = None,
):
    """Loss curves over epochs.

    Args:
        history: ``{name: per-epoch values}`` as saved by ``train.fit``: ``train_loss``, ``val_loss``, per-term
            keys such as ``train_mse``, ``val_ssim``, and optionally ``epoch`` (the x values; a list shorter than
            ``epoch`` is aligned to its end, e.g. a term that was added on resume; without ``epoch`` entry ``e``
            is epoch ``e + 1``). ``None``/NaN entries (epochs without validation) are skipped. Keys that are not
            losses (``lr``, ``epoch``, anything with ``time``/``seconds``/``step``) and non-list values are
            ignored.
        log_y: logarithmic loss axis (non-positive values are masked).
        terms: draw per-term keys in a second panel (when there are any).
        title: optional prefix of the panel titles (e.g. the category).
    Returns:
        The Figure: one axes with the totals (``train_loss``, ``val_loss``, ``loss``), plus a second axes with
        the other (per-term) curves.
        Train curves are solid, validation curves dashed in the same colour; the best validation epoch is marked.
    """
    series = _loss_series(history)
    totals = [k for k in series if k in _TOTAL_KEYS]
    others = [k for k in series if k not in totals]
    if not totals:
        totals, others = others, []
    epochs = history.get("epoch")
    try:
        epochs = np.asarray(epochs, dtype=np.float64) if epochs is not None and len(epochs) else None
    except (TypeError, ValueError):
        epochs = None
    panels = [("loss", totals)] + ([("loss terms", others)] if terms and others else [])
    fig, axes = new_axes(None, 1, len(panels), figsize=(6.0 * len(panels), 4.0), squeeze=False)
    for ax, (panel, keys) in zip(axes[0], panels):
        _draw_losses(ax, {k: series[k] for k in keys}, epochs)
        if log_y:
            ax.set_yscale("log", nonpositive="mask")
        ax.set_ylabel(panel + (" (log)" if log_y else ""))
        name = "Training history" if panel == "loss" else "Loss terms"
        ax.set_title(f"{title}: {name}" if title else name)
    fig.tight_layout()
    return finish(fig, save_path)


def _loss_series(history: Mapping[str, Sequence[float]]) -> dict[str, np.ndarray]:
    """The per-epoch loss lists of a history as float arrays (None -> NaN); other keys and values skipped."""
    series: dict[str, np.ndarray] = {}
    for key, values in history.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not len(values):
            continue
        if any(word in key.lower() for word in _NOT_LOSS_KEYS):
            continue
        try:
            series[key] = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
        except (TypeError, ValueError):
            continue
    if not series:
        raise ValueError(f"plot_history found no per-epoch loss lists in keys {sorted(history)}")
    return series


def _loss_base(key: str) -> str:
    """``train_mse`` and ``val_mse`` -> ``mse``: one colour per term."""
    for prefix in ("train_", "val_", "valid_", "validation_"):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _draw_losses(ax, series: dict[str, np.ndarray], epochs: np.ndarray | None) -> None:
    """Train curves solid, validation dashed in the same colour, the best validation epoch marked."""
    from matplotlib.ticker import MaxNLocator

    bases = list(dict.fromkeys(_loss_base(k) for k in series))
    for key, y in series.items():
        x = epochs[len(epochs) - len(y) :] if epochs is not None and len(y) <= len(epochs) else np.arange(1, len(y) + 1)
        ok = np.isfinite(y)
        is_val = key.startswith(("val", "valid"))
        colour = f"C{bases.index(_loss_base(key)) % 10}"
        ax.plot(x[ok], y[ok], "--" if is_val else "-", color=colour, label=key, marker="." if ok.sum() < 30 else None)
        if is_val and ok.any():
            best = int(np.nanargmin(y))
            ax.scatter([x[best]], [y[best]], color=colour, zorder=3, s=30)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def show_reconstructions(
    images: Any, recons: Any, n: int = 6, title: str | None = None, save_path: str | Path | None = None
):
    """Three rows: inputs, reconstructions, and their absolute difference (mean over channels).

    Args:
        images, recons: (N, C, H, W), uint8 0..255 or float [0, 1] (numpy or torch).
        n: number of columns (the first ``n`` images).
        title: optional figure title (default "Reconstructions").
    Returns:
        The Figure: 3 * n image axes plus one colorbar axes. The difference row shares one colour scale
        (0 .. the largest difference shown), so brighter means a worse reconstruction in every column.
    """
    imgs, recs = to_numpy(images), to_numpy(recons)
    if imgs.shape[0] != recs.shape[0]:
        raise ValueError(f"images ({imgs.shape}) and recons ({recs.shape}) differ in length")
    n = max(1, min(n, len(imgs)))
    inp = [rgb_float(imgs[k]) for k in range(n)]
    rec = [rgb_float(recs[k]) for k in range(n)]
    diff = [np.abs(a - b).mean(axis=-1) for a, b in zip(inp, rec)]
    dmax = max(float(max(d.max() for d in diff)), 1e-6)
    fig, axes = new_axes(None, 3, n, figsize=(2.2 * n + 0.8, 6.8), squeeze=False, layout="constrained")
    im = None
    for k in range(n):
        axes[0, k].imshow(inp[k], interpolation="nearest")
        axes[1, k].imshow(rec[k], interpolation="nearest")
        im = axes[2, k].imshow(diff[k], cmap="inferno", vmin=0.0, vmax=dmax, interpolation="nearest")
        for r in range(3):
            axes[r, k].set_xticks([])
            axes[r, k].set_yticks([])
    for r, name in enumerate(("input", "reconstruction", "|difference|")):
        axes[r, 0].set_ylabel(name)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.3, anchor=(0.0, 0.0), label="|difference|")
    fig.suptitle(title or "Reconstructions")
    return finish(fig, save_path)


# ------------------------------------------------------------------------------------ notebook helpers
def show_holdout(preview: Mapping[str, Any], title: str | None = None, alpha: float = 0.5, save_path=None):
    """Held-out good images with their reconstruction (U-Net mode) and anomaly heatmap.

    Args:
        preview: from :func:`colab_utils.session.holdout_preview`: ``images`` uint8 (n,C,H,W),
            ``recons`` uint8 (n,C,H,W) or None, ``maps`` float (n,H,W) normalised, ``threshold`` float.
        title: figure title.
    Returns:
        The Figure: rows input, [reconstruction,] heatmap; the heatmap scale runs from 0 (a typical
        good pixel) to twice the pixel threshold, so a good image should stay in the blue-green half.
    """
    images, recons, maps = to_numpy(preview["images"]), preview.get("recons"), to_numpy(preview["maps"])
    n = len(images)
    threshold = float(preview.get("threshold", np.nan))
    # the scale of map_scale(): 0 = a typical good pixel, the threshold in the middle of the colour bar
    vmax = 2.0 * threshold if np.isfinite(threshold) and threshold > 0 else max(float(maps.max()), 1e-6)
    rows = [("input", [rgb_float(images[k]) for k in range(n)])]
    if recons is not None:
        rows.append(("reconstruction", [rgb_float(to_numpy(recons)[k]) for k in range(n)]))
    rows.append(("heatmap", [heatmap_overlay(images[k], maps[k], 0.0, vmax, alpha) for k in range(n)]))
    fig, axes = new_axes(None, len(rows), n, figsize=(2.2 * n, 2.3 * len(rows)), squeeze=False)
    for r, (name, panels) in enumerate(rows):
        for k, panel in enumerate(panels):
            axes[r, k].imshow(panel, interpolation="nearest")
            axes[r, k].set_xticks([])
            axes[r, k].set_yticks([])
        axes[r, 0].set_ylabel(name)
    fig.suptitle(f"{title or ''} held-out good images".strip())
    return finish(fig, save_path)


class LiveHistory:
    """Loss curves that redraw after every epoch, in an ``ipywidgets.Output``.

    ``display(live.widget)`` once, then pass ``live.update`` as ``on_epoch`` to
    :func:`colab_utils.train.fit`. ``update(epoch, history)`` can be driven
    without a display (tests); ``n_updates`` and ``last_epoch`` record what it drew.
    """

    def __init__(self, title: str | None = None) -> None:
        import ipywidgets as widgets

        self.title = title
        self.widget = widgets.Output()
        self.n_updates = 0
        self.last_epoch = 0
        self.last_title = ""
        self.last_lines = 0

    def _repr_mimebundle_(self, **kwargs):
        """The widget view, with a plain line for viewers without a widget manager (a saved notebook shows that
        line, not a literal ``Output()``; the final curves are drawn by :func:`plot_fit` after training)."""
        data = dict(self.widget._repr_mimebundle_(**kwargs))
        data["text/plain"] = f"(live loss curves{' of ' + self.title if self.title else ''}: the final ones are drawn below)"
        return data

    def _ipython_display_(self) -> None:
        """The widget in Colab, :meth:`_repr_mimebundle_` elsewhere (:func:`colab_utils.env.display_widget`)."""
        from .env import display_widget

        display_widget(self)

    def update(self, epoch: int, history: Mapping[str, Sequence[float]]) -> None:
        import matplotlib.pyplot as plt
        from IPython.display import display

        self.last_title = f"{self.title or ''} epoch {epoch}".strip()
        fig = plot_history(dict(history), title=self.last_title)
        self.last_lines = sum(len(ax.lines) for ax in fig.axes)
        with self.widget:
            self.widget.clear_output(wait=True)
            display(fig)
        plt.close(fig)
        self.n_updates += 1
        self.last_epoch = epoch


def plot_fit(result: Any, title: str | None = None, save_path: str | Path | None = None):
    """What fitting did, as a plain figure (it survives static HTML): the loss curves of a family that trains
    by gradient (:func:`plot_history`), or, for one fitted directly (the memory bank), the seconds each stage
    took, titled with the family's own line on its fit (``Family.describe_fit``). ``result``: a ``TrainResult``."""
    from .models import get_family

    if result.history.get("epoch"):
        return plot_history(result.history, title=title, save_path=save_path)
    info = dict(result.fit_info or {})
    fig, ax = new_axes(figsize=(6.0, 2.6))
    stages = {k.replace("_seconds", ""): float(v) for k, v in info.items() if k.endswith("_seconds") and k != "fit_seconds"}
    ax.barh(list(stages), list(stages.values()), color="#4477aa")
    for y, v in enumerate(stages.values()):
        ax.text(v, y, f" {v:.1f} s", va="center")
    ax.set_xlabel("seconds")
    ax.set_xlim(0, max(stages.values(), default=1.0) * 1.25 or 1.0)
    ax.set_title(f"{title + ': ' if title else ''}{get_family(result.config).describe_fit(info)}", fontsize=9)
    return finish(fig, save_path)


def live_history(config: Any, title: str | None = None) -> LiveHistory | None:
    """A displayed :class:`LiveHistory` for a family that trains by gradient; ``None`` (nothing shown) for one
    fitted in a single step, which has no epochs to draw."""
    from IPython.display import display

    from .models import get_family

    if not get_family(config).trains_by_gradient:
        return None
    live = LiveHistory(title=title)
    display(live)
    return live
