"""Static figures and the report export of the notebook suite (the interactive gallery is
:mod:`colab_utils.gallery`; the pictures both draw come from :mod:`colab_utils.panels`).

Everything here reads :class:`colab_utils.evaluate.EvalResult` objects (or plain numpy arrays) and draws;
nothing here trains, scores or computes a metric that is reported (curves come from
:mod:`colab_utils.metrics`).

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

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .evaluate import EvalResult
from .panels import (
    GT_COLOUR,
    as_result_list,
    colour_lut,
    default_indices,
    gallery_sheet,
    heatmap_overlay,
    image_panels,
    map_scale,
    mask2d,
    png_bytes,
    rgb_float,
    square,
    tint,
    to_numpy,
    to_u8,
    verdict,
)

__all__ = [
    "heatmap_overlay",
    "map_scale",
    "metrics_table",
    "plot_counts",
    "plot_history",
    "plot_per_defect",
    "plot_pro",
    "plot_roc",
    "plot_score_histogram",
    "save_gallery_html",
    "save_gallery_png",
    "show_reconstructions",
    "show_inspections",
    "show_samples",
    "show_worst",
]

_DPI = 110
_MAX_CURVE_POINTS = 5000  # points drawn per curve (drawing only; metrics are computed elsewhere)


# ----------------------------------------------------------------------------------------------- helpers

def _pct(value: Any) -> str:
    """A fraction in [0, 1] as a percentage with one decimal; ``n/a`` for missing/NaN."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if not np.isfinite(v) else f"{100.0 * v:.1f}"


def _new_axes(ax=None, nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6.0, 4.5), **kwargs):
    """(fig, axes): a new pyplot figure, or the figure of the given ``ax`` and that ``ax``."""
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, dpi=_DPI, **kwargs)
    return fig, axes


def _finish(fig, save_path: str | Path | None):
    """Save when asked; return ``fig`` (left open in pyplot, see the module docstring)."""
    if save_path is not None:
        path = Path(save_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    return fig


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
    fig, ax = _new_axes(ax, figsize=(7.0, max(2.0, 0.28 * n_bars + 1.0)))
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
    return _finish(fig, save_path)


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
    fig, axes = _new_axes(None, nrows, ncols, figsize=(2.6 * ncols, 2.7 * nrows), squeeze=False)
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
    return _finish(fig, save_path)


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
    totals = [k for k in series if k in _TOTAL_KEYS]
    others = [k for k in series if k not in totals]
    if not totals:
        totals, others = others, []
    from matplotlib.ticker import MaxNLocator

    epochs = history.get("epoch")
    try:
        epochs = np.asarray(epochs, dtype=np.float64) if epochs is not None and len(epochs) else None
    except (TypeError, ValueError):
        epochs = None

    panels = [("loss", totals)] + ([("loss terms", others)] if terms and others else [])
    fig, axes = _new_axes(None, 1, len(panels), figsize=(6.0 * len(panels), 4.0), squeeze=False)

    def base(key: str) -> str:
        for prefix in ("train_", "val_", "valid_", "validation_"):
            if key.startswith(prefix):
                return key[len(prefix) :]
        return key

    for ax, (panel, keys) in zip(axes[0], panels):
        bases = list(dict.fromkeys(base(k) for k in keys))
        for key in keys:
            y = series[key]
            x = (
                epochs[len(epochs) - len(y) :]
                if epochs is not None and len(y) <= len(epochs)
                else np.arange(1, len(y) + 1)
            )
            ok = np.isfinite(y)
            is_val = key.startswith(("val", "valid"))
            colour = f"C{bases.index(base(key)) % 10}"
            ax.plot(
                x[ok], y[ok], "--" if is_val else "-", color=colour, label=key, marker="." if ok.sum() < 30 else None
            )
            if is_val and ok.any():
                best = int(np.nanargmin(y))
                ax.scatter([x[best]], [y[best]], color=colour, zorder=3, s=30)
        if log_y:
            ax.set_yscale("log", nonpositive="mask")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(panel + (" (log)" if log_y else ""))
        name = "Training history" if panel == "loss" else "Loss terms"
        ax.set_title(f"{title}: {name}" if title else name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _finish(fig, save_path)


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
    fig, axes = _new_axes(None, 3, n, figsize=(2.2 * n + 0.8, 6.8), squeeze=False, layout="constrained")
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
    return _finish(fig, save_path)


# ------------------------------------------------------------------------------------------ metrics
def plot_roc(results, ax=None, save_path: str | Path | None = None):
    """Image-level ROC curves, one line per category (AUROC in the legend) plus the dashed chance diagonal.

    Args:
        results: one :class:`EvalResult`, a list of them or a ``{category: EvalResult}`` dict. Categories
            without both good and defective test images have no ROC and are listed as "no ROC" in the title.
    Returns:
        The Figure; its axes holds ``1 + number of categories with a curve`` lines.
    """
    from .metrics import roc_curve_points

    fig, ax = _new_axes(ax, figsize=(5.5, 5.0))
    ax.plot([0, 1], [0, 1], "--", color="0.6", lw=1, label="chance")
    skipped = []
    for r in as_result_list(results):
        labels = to_numpy(r.labels)
        if labels.min(initial=1) == labels.max(initial=0) or len(labels) == 0:
            skipped.append(r.category)
            continue
        fpr, tpr, _ = roc_curve_points(labels, to_numpy(r.scores))
        ax.plot(fpr, tpr, lw=1.6, label=f"{r.category} (AUROC {_pct(r.metrics.get('image_auroc'))}%)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (good images flagged)")
    ax.set_ylabel("true positive rate (defective images caught)")
    ax.set_title("Image-level ROC" + (f"\nno ROC (one class only): {', '.join(skipped)}" if skipped else ""))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _finish(fig, save_path)


def plot_pro(results, fpr_limit: float = 0.3, ax=None, save_path: str | Path | None = None):
    """Per-region-overlap (PRO) curves up to ``fpr_limit`` (AU-PRO in the legend), dashed line at the limit.

    Args:
        results: one :class:`EvalResult`, a list or a dict. Curves come from ``metrics.pro_curve(masks, maps)``
            with masks (N, H, W) and maps (N, H, W); categories without defect pixels are skipped.
        fpr_limit: the integration limit of AU-PRO (0.3 by convention).
    Returns:
        The Figure; its axes holds one line per category with a curve (the limit is an extra vertical line).
    """
    from .metrics import pro_curve

    fig, ax = _new_axes(ax, figsize=(6.0, 4.5))
    skipped = []
    for r in as_result_list(results):
        if not np.any(to_numpy(r.masks)):
            skipped.append(r.category)
            continue
        fpr, pro = (np.asarray(a, dtype=np.float64) for a in pro_curve(to_numpy(r.masks), to_numpy(r.maps)))
        if fpr.size == 0:
            skipped.append(r.category)
            continue
        order = np.argsort(fpr, kind="stable")
        fpr, pro = fpr[order], pro[order]
        keep = fpr <= fpr_limit
        x, y = fpr[keep], pro[keep]
        if keep.sum() < len(fpr) and len(x):  # close the curve exactly at the limit
            x = np.append(x, fpr_limit)
            y = np.append(y, np.interp(fpr_limit, fpr, pro))
        if len(x) > _MAX_CURVE_POINTS:  # the exact curve can have millions of corners; thin for drawing only
            pick = np.unique(np.linspace(0, len(x) - 1, _MAX_CURVE_POINTS).astype(np.intp))
            x, y = x[pick], y[pick]
        ax.plot(x, y, lw=1.6, label=f"{r.category} (AU-PRO {_pct(r.metrics.get('au_pro'))}%)")
    ax.axvline(fpr_limit, color="0.4", ls="--", lw=1)
    ax.text(
        fpr_limit,
        0.5,
        f"integration limit FPR {fpr_limit:g} ",
        color="0.3",
        fontsize=8,
        ha="right",
        va="center",
        rotation=90,
    )
    ax.set_xlim(0.0, fpr_limit * 1.05)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("pixel false positive rate")
    ax.set_ylabel("per-region overlap (PRO)")
    ax.set_title("PRO curves" + (f"\nno defect regions: {', '.join(skipped)}" if skipped else ""))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _finish(fig, save_path)


def score_axis_limit(scores: np.ndarray, keep: Sequence[float] = ()) -> float:
    """Upper end of a score histogram's axis that keeps the bulk readable: the largest score, unless a few
    far-out scores would squash the rest into the first bins; then the 97.5th percentile plus a quarter of the
    range below it (never below any value in ``keep``, e.g. the thresholds). scores: 1-D finite reals."""
    if scores.size == 0:
        return 1.0
    lo, top, q = float(scores.min()), float(scores.max()), float(np.percentile(scores, 97.5))
    hi = q + 0.25 * (q - lo)
    hi = max([hi, *keep])
    return top if top <= hi else hi


def plot_score_histogram(result: EvalResult, bins: int = 30, ax=None, save_path: str | Path | None = None):
    """Histograms of image scores, good vs defective, with the default and the F1-optimal image thresholds.

    The default threshold (``thresholds["image_default"]``) was set from held-out good images only and is the
    one used for verdicts; the F1-optimal one (``thresholds["image_f1_optimal"]``) was fitted on the test labels
    and is shown for reference only.
    A long tail (a few scores far above the rest) is clipped into the last bin, with a note saying how many
    (:func:`score_axis_limit`), so good and defective scores stay apart on the axis.
    Returns:
        The Figure (one axes; two histograms; one vertical line per finite threshold).
    """
    fig, ax = _new_axes(ax, figsize=(6.5, 4.0))
    scores, labels = to_numpy(result.scores).astype(np.float64), to_numpy(result.labels)
    finite = scores[np.isfinite(scores)]
    lines = [float(result.thresholds.get(k, np.nan)) for k in ("image_default", "image_f1_optimal")]
    hi = score_axis_limit(finite, [v for v in lines if np.isfinite(v)])
    clipped = int((finite > hi).sum())
    edges = np.histogram_bin_edges(np.clip(finite, None, hi), bins=bins)
    for lab, name, colour in ((0, "good", "tab:green"), (1, "defective", "tab:red")):
        s = np.clip(scores[labels == lab], None, hi)  # the tail lands in the last bin, marked below
        ax.hist(s, bins=edges, alpha=0.55, color=colour, label=f"{name} ({len(s)})")
    if clipped:
        ax.annotate(f"{clipped} above {hi:.3g}\n(in the last bin)", xy=(hi, 0), xytext=(-4, 40),
                    textcoords="offset points", ha="right", fontsize=8, arrowprops={"arrowstyle": "->"})  # fmt: skip
    for key, name, style in (("image_default", "default threshold", "-"), ("image_f1_optimal", "F1-optimal", ":")):
        v = float(result.thresholds.get(key, np.nan))
        if np.isfinite(v):
            ax.axvline(v, color="k", ls=style, lw=1.5, label=f"{name} = {v:.3g}")
    ax.set_xlabel("image anomaly score")
    ax.set_ylabel("images")
    ax.set_title(f"Image scores: {result.category}")
    ax.legend(fontsize=8)
    return _finish(fig, save_path)


def plot_per_defect(result: EvalResult, ax=None, save_path: str | Path | None = None):
    """Horizontal bars of the image AUROC of each defect type against the good images
    (``metrics["per_defect_image_auroc"]``, fractions), worst on top; dashed lines at chance (50 %) and at the
    category's overall image AUROC.
    Returns:
        The Figure (one axes; one bar per defect type; a text note when there are none).
    """
    per = dict(result.metrics.get("per_defect_image_auroc") or {})
    if not per:  # e.g. a user folder without defective test images: say so instead of failing the notebook
        fig, ax = _new_axes(ax, figsize=(6.5, 1.5))
        ax.text(0.5, 0.5, f"{result.category}: no per-defect AUROC (no defective test images)", ha="center")
        ax.set_axis_off()
        return _finish(fig, save_path)
    items = sorted(per.items(), key=lambda kv: (np.nan_to_num(float(kv[1]), nan=-1.0), kv[0]))
    names = [k for k, _ in items]
    values = np.array([100.0 * float(v) for _, v in items])
    fig, ax = _new_axes(ax, figsize=(6.5, 0.45 * len(names) + 1.5))
    y = np.arange(len(names))
    ax.barh(y, np.nan_to_num(values, nan=0.0), color="tab:blue")
    for yi, v in zip(y, values):
        ax.text(0 if np.isnan(v) else v, yi, " n/a" if np.isnan(v) else f" {v:.1f}", va="center", fontsize=8)
    ax.axvline(50, color="0.5", ls="--", lw=1, label="chance")
    overall = float(result.metrics.get("image_auroc", np.nan))
    if np.isfinite(overall):
        ax.axvline(100 * overall, color="tab:red", ls="--", lw=1, label=f"all defects ({100 * overall:.1f})")
    ax.set_yticks(y)
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    ax.set_xlim(0, 109)
    ax.set_xlabel("image AUROC (%) vs good images")
    ax.set_title(f"Per defect type: {result.category}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.6 / (len(names) + 3)), ncol=2, fontsize=8)
    return _finish(fig, save_path)


def _worst_indices(result: EvalResult, kind: str) -> np.ndarray:
    """Good images by descending score (``"fp"``) or defective images by ascending score (``"fn"``)."""
    labels, scores = to_numpy(result.labels), to_numpy(result.scores).astype(np.float64)
    if kind == "fp":
        idx = np.flatnonzero(labels == 0)
        return idx[np.argsort(-scores[idx], kind="stable")]
    if kind == "fn":
        idx = np.flatnonzero(labels == 1)
        return idx[np.argsort(scores[idx], kind="stable")]
    raise ValueError(f"kind must be 'fp' or 'fn', got {kind!r}")


def show_worst(
    result: EvalResult,
    kind: str = "fp",
    n: int = 4,
    alpha: float = 0.5,
    cmap: str = "jet",
    save_path: str | Path | None = None,
):
    """The worst false positives (good images with the highest scores, ``kind="fp"``) or false negatives
    (defective images with the lowest scores, ``kind="fn"``): one row per image with the image, the heatmap
    overlay (shared scale :func:`map_scale`) and the ground truth.

    Rows are the worst ``n`` of that class whether or not they cross the threshold; the row title says whether
    the image is actually misclassified at ``thresholds["image_default"]``.
    Returns:
        The Figure: 3 axes per row plus one colorbar axes (one text axes when the class is empty).
    """
    import matplotlib as mpl

    idx = _worst_indices(result, kind)[:n]
    what = "false positives (good, highest scores)" if kind == "fp" else "false negatives (defective, lowest scores)"
    if len(idx) == 0:
        fig, ax = _new_axes(None, figsize=(6.0, 1.5))
        ax.text(
            0.5,
            0.5,
            f"{result.category}: no {'good' if kind == 'fp' else 'defective'} test images",
            ha="center",
            va="center",
        )
        ax.set_axis_off()
        return _finish(fig, save_path)
    vmin, vmax = map_scale(result)
    thr = float(result.thresholds["image_default"])
    fig, axes = _new_axes(None, len(idx), 3, figsize=(8.4, 2.6 * len(idx) + 0.6), squeeze=False, layout="constrained")
    for row, i in enumerate(idx):
        rgb = rgb_float(result.images[i])
        score = float(result.scores[i])
        flagged = score >= thr
        wrong = flagged != bool(result.labels[i])
        status = ("MISCLASSIFIED" if wrong else "correct") + f" ({'DEFECT' if flagged else 'OK'})"
        axes[row, 0].imshow(rgb, interpolation="nearest")
        axes[row, 0].set_title(f"#{i} {result.defect_types[i]}: {Path(str(result.paths[i])).name}", fontsize=8)
        axes[row, 1].imshow(heatmap_overlay(result.images[i], result.maps[i], vmin, vmax, alpha, cmap))
        axes[row, 1].set_title(f"score {score:.3g} (thr {thr:.3g}): {status}", fontsize=8)
        axes[row, 2].imshow(tint(rgb, mask2d(result.masks[i]), GT_COLOUR), interpolation="nearest")
        axes[row, 2].set_title("ground truth", fontsize=8)
        for ax in axes[row]:
            ax.set_axis_off()
    sm = mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(vmin, vmax), cmap=cmap)
    fig.colorbar(
        sm, ax=axes.ravel().tolist(), shrink=min(0.9, 0.6 / len(idx) + 0.3), label="anomaly map (shared scale)"
    )
    fig.suptitle(f"{result.category}: worst {what}")
    return _finish(fig, save_path)


# ------------------------------------------------------------------------------------------- tables
_TABLE_COLUMNS = (
    ("image_auroc", "image AUROC"),
    ("pixel_auroc", "pixel AUROC"),
    ("au_pro", "AU-PRO"),
    ("image_f1_max", "image F1"),
    ("pixel_f1_max", "pixel F1"),
    ("pixel_ap", "pixel AP"),
)


def _anchor_values(entry: Any) -> tuple[float, ...]:
    """An anchor entry (number or tuple of numbers, percent or fraction) -> percentages."""
    values = entry if isinstance(entry, (tuple, list)) else (entry,)
    out = []
    for v in values:
        v = np.nan if v is None else float(v)
        out.append(100.0 * v if np.isfinite(v) and v <= 1.0 else v)
    return tuple(out)


def metrics_table(results, anchors: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """A markdown table: one row per category plus the mean; values in percent with one decimal.

    Args:
        results: one :class:`EvalResult`, a list or a dict.
        anchors: published reference numbers shown beside ours, e.g.
            ``{"PatchCore": {"bottle": (100.0, 98.6), ...}}`` with per category a tuple
            ``(image AUROC, pixel AUROC)`` (a single number = image AUROC only). Percentages; values <= 1 are
            read as fractions. Each method gets one column "image / pixel".
    Returns:
        Markdown text. Means skip undefined (NaN) values, marked ``*`` with a footnote when that happens. An
        anchor's mean is given only when it has numbers for every category in the table (else "–").
    """
    rs = as_result_list(results)
    anchors = dict(anchors or {})
    header = ["category"] + [f"{name} (%)" for _, name in _TABLE_COLUMNS] + [f"{a} image / pixel" for a in anchors]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    ours = np.array([[float(r.metrics.get(k, np.nan)) for k, _ in _TABLE_COLUMNS] for r in rs], dtype=np.float64)
    ours = ours.reshape(len(rs), len(_TABLE_COLUMNS))

    def anchor_cell(vals: Sequence[float]) -> str:
        cells = ["–" if not np.isfinite(v) else f"{v:.1f}" for v in list(vals)[:2]]
        return " / ".join(cells) if cells else "–"

    for row, r in enumerate(rs):
        cells = [r.category] + [_pct(v) for v in ours[row]]
        for table in anchors.values():
            cells.append(anchor_cell(_anchor_values(table[r.category])) if r.category in table else "–")
        lines.append("| " + " | ".join(cells) + " |")
    footnote = False
    mean_cells = ["**mean**"]
    for col in range(len(_TABLE_COLUMNS)):
        vals = ours[:, col]
        ok = np.isfinite(vals)
        if not ok.any():
            mean_cells.append("n/a")
            continue
        cell = _pct(vals[ok].mean())
        if not ok.all():
            cell += "*"
            footnote = True
        mean_cells.append(cell)
    for table in anchors.values():
        if all(r.category in table for r in rs):
            vals = np.array([_anchor_values(table[r.category])[:2] + (np.nan,) * 2 for r in rs])[:, :2]
            mean_cells.append(anchor_cell([vals[:, 0].mean(), vals[:, 1].mean()]))
        else:
            mean_cells.append("–")
    if len(rs) > 1:
        lines.append("| " + " | ".join(mean_cells) + " |")
    text = "\n".join(lines) + "\n"
    if footnote:
        text += "\n\\* mean over the categories where the metric is defined.\n"
    return text


def save_gallery_png(
    result: EvalResult,
    path: str | Path,
    indices: Sequence[int] | None = None,
    n: int = 12,
    panel_size: int = 192,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> Path:
    """A static gallery image for reports: one row per image (image, reconstruction when the result has them,
    heatmap overlay on the shared scale, predicted mask at ``thresholds["pixel_default"]``, ground truth), each
    row captioned with file name, defect type, score, threshold and verdict; a header with the column titles,
    the colour bar of the shared scale and (feature mode) the note that there is no pixel reconstruction.

    Args:
        indices: test-image indices to show; default: ``n`` images round-robin over the defect types.
    Returns:
        The PNG path.
    """
    from PIL import Image

    sheet = gallery_sheet(result, indices, n, panel_size, alpha, cmap)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path, format="PNG", optimize=False)
    return path


def save_gallery_html(
    result: EvalResult,
    path: str | Path,
    n: int = 12,
    indices: Sequence[int] | None = None,
    panel_size: int = 192,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> Path:
    """A self-contained HTML gallery (PNG panels embedded as base64): a header with the category's metrics and
    thresholds, then one table row per image: image, reconstruction (when the result has them), heatmap overlay
    (shared scale), predicted mask at ``thresholds["pixel_default"]``, ground truth, and the score and verdict.

    Args:
        n: number of images (round-robin over defect types) unless ``indices`` is given.
    Returns:
        The HTML path. Rows are ``<tr class="item">``.
    """
    idx = list(default_indices(result, n) if indices is None else indices)
    vmin, vmax = map_scale(result)
    thr = float(result.thresholds["pixel_default"])
    lut = to_u8(colour_lut(cmap))
    stops = ", ".join(f"rgb({r},{g},{b})" for r, g, b in lut[::32].tolist() + [lut[-1].tolist()])
    m = result.metrics
    esc = html.escape
    head_cols = (
        ["image"]
        + (["reconstruction"] if result.recons is not None else [])
        + ["heatmap", f"predicted mask (map &ge; {thr:.3g})", "ground truth", "score / verdict"]
    )
    parts = [
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>",
        f"<title>{esc(result.category)} anomaly gallery</title>",
        "<style>body{font-family:sans-serif;margin:16px} table{border-collapse:collapse}"
        " td,th{padding:4px;border-bottom:1px solid #ddd;text-align:center;vertical-align:middle}"
        " .ok{color:#1a7f37} .bad{color:#c62828} .bar{display:inline-block;width:200px;height:12px;"
        f"vertical-align:middle;background:linear-gradient(to right,{stops})}}</style></head><body>",
        f"<h2>{esc(result.category)}</h2>",
        f"<p>image AUROC {_pct(m.get('image_auroc'))}% &middot; pixel AUROC {_pct(m.get('pixel_auroc'))}% &middot; "
        f"AU-PRO {_pct(m.get('au_pro'))}% &middot; image threshold {float(result.thresholds['image_default']):.3g}"
        f" &middot; pixel threshold {thr:.3g}</p>",
        f"<p>heatmap scale (shared by all rows): {vmin:.3g} <span class='bar'></span> {vmax:.3g}</p>",
        "<table><tr>" + "".join(f"<th>{c}</th>" for c in head_cols) + "</tr>",
    ]
    for i in idx:
        panels, _ = image_panels(result, i, thr, alpha, vmin, vmax, cmap)
        flagged, correct, words = verdict(result, i)
        cells = []
        for title, arr in panels:
            if arr is None:
                continue  # feature mode: no reconstruction column
            b64 = base64.b64encode(png_bytes(square(arr, panel_size), compress_level=6)).decode("ascii")
            cells.append(f"<td><img width='{panel_size}' alt='{esc(title)}' src='data:image/png;base64,{b64}'></td>")
        cells.append(
            f"<td style='text-align:left'>#{i}<br>{esc(str(result.paths[i]))}<br>{esc(result.defect_types[i])}<br>"
            f"score {float(result.scores[i]):.3g}<br><b class='{'ok' if correct else 'bad'}'>"
            f"{'DEFECT' if flagged else 'OK'}</b> ({words})</td>"
        )
        parts.append("<tr class='item'>" + "".join(cells) + "</tr>")
    parts.append("</table></body></html>\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


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
    fig, axes = _new_axes(None, len(rows), n, figsize=(2.2 * n, 2.3 * len(rows)), squeeze=False)
    for r, (name, panels) in enumerate(rows):
        for k, panel in enumerate(panels):
            axes[r, k].imshow(panel, interpolation="nearest")
            axes[r, k].set_xticks([])
            axes[r, k].set_yticks([])
        axes[r, 0].set_ylabel(name)
    fig.suptitle(f"{title or ''} held-out good images".strip())
    return _finish(fig, save_path)


def save_report(result: EvalResult, folder: str | Path) -> list[Path]:
    """Save the standard figures of one evaluation as PNGs in ``folder`` and close them.

    Writes ``roc.png``, ``pro.png`` (when masks exist), ``score_histogram.png``,
    ``per_defect.png``, ``worst_fp.png`` and ``worst_fn.png``; returns the paths.
    """
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    jobs = {
        "roc.png": lambda p: plot_roc([result], save_path=p),
        "score_histogram.png": lambda p: plot_score_histogram(result, save_path=p),
        "per_defect.png": lambda p: plot_per_defect(result, save_path=p),
        "worst_fp.png": lambda p: show_worst(result, kind="fp", n=4, save_path=p),
        "worst_fn.png": lambda p: show_worst(result, kind="fn", n=4, save_path=p),
    }
    if result.masks.any():
        jobs["pro.png"] = lambda p: plot_pro([result], save_path=p)
    written = []
    for name, job in jobs.items():
        fig = job(folder / name)
        plt.close(fig)
        written.append(folder / name)
    return written


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
    took, with patches seen, bank size and feature dimension in the title. ``result``: a ``TrainResult``."""
    if result.history.get("epoch"):
        return plot_history(result.history, title=title, save_path=save_path)
    info = dict(result.fit_info or {})
    fig, ax = _new_axes(figsize=(6.0, 2.6))
    stages = {k.replace("_seconds", ""): float(v) for k, v in info.items() if k.endswith("_seconds") and k != "fit_seconds"}
    ax.barh(list(stages), list(stages.values()), color="#4477aa")
    for y, v in enumerate(stages.values()):
        ax.text(v, y, f" {v:.1f} s", va="center")
    ax.set_xlabel("seconds")
    ax.set_xlim(0, max(stages.values(), default=1.0) * 1.25 or 1.0)
    ax.set_title(
        f"{title + ': ' if title else ''}bank of {info.get('bank_size', 0):,} patches from "
        f"{info.get('patches_seen', 0):,} ({info.get('images', 0)} images, {info.get('feature_dim', 0)} dims, "
        f"{info.get('bank_megabytes', 0.0):.1f} MB)",
        fontsize=9,
    )
    return _finish(fig, save_path)


def live_history(config: Any, title: str | None = None) -> LiveHistory | None:
    """A displayed :class:`LiveHistory` for a family that trains by gradient; ``None`` (nothing shown) for one
    fitted in a single step, which has no epochs to draw."""
    from IPython.display import display

    from .models import get_family

    if not get_family(config).trains_by_gradient:
        return None
    live = LiveHistory(title=title)
    display(live.widget)
    return live


def show_inspections(report: Any, n: int = 8, cols: int = 4, save_path: str | Path | None = None):
    """The overlays of an :class:`~colab_utils.inspector.InspectionReport`, most suspicious first (highest
    ``score - threshold``), each titled with the file name, verdict and score; at most ``n`` images in rows of
    ``cols``. The overlays are read from the files ``predict(..., out=...)`` wrote. Returns the Figure."""
    from PIL import Image

    shown = sorted((p for p in report.predictions if p.overlay), key=lambda p: -p.margin)[: max(0, int(n))]
    if not shown:
        raise ValueError("no overlays to show: run Inspector.predict(images, out=FOLDER) so that they are written")
    cols = max(1, min(cols, len(shown)))
    rows = -(-len(shown) // cols)
    fig, axes = _new_axes(None, rows, cols, figsize=(3.2 * cols, 3.7 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, pred in zip(axes.ravel(), shown):
        with Image.open(pred.overlay) as im:
            ax.imshow(np.asarray(im.convert("RGB")))
        colour = "#c62828" if pred.is_defect else "#1a7f37"
        where = "/".join(Path(pred.path).parts[-2:])  # parent folder too: 000.png alone is ambiguous
        ax.set_title(f"{where}\n{pred.verdict}  {pred.score:.3g} / {pred.threshold:.3g}",
                     fontsize=9, color=colour)  # fmt: skip
    fig.suptitle(report.summary(), fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97), h_pad=3.0)
    return _finish(fig, save_path)
