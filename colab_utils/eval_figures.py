"""Static figures for the reader of notebooks 03 and 05: ROC and PRO curves, score histograms, per-defect
detection, the worst cases, the metrics table, and inspected new images. They read
:class:`colab_utils.evaluate.EvalResult` objects and draw; every reported figure is computed elsewhere
(:mod:`colab_utils.metrics`). Conventions: :mod:`colab_utils.plotting`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .evaluate import EvalResult
from .panels import (
    GT_COLOUR,
    as_result_list,
    heatmap_overlay,
    map_scale,
    mask2d,
    rgb_float,
    tint,
    to_numpy,
)
from .plotting import MAX_CURVE_POINTS, finish, new_axes, pct


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

    fig, ax = new_axes(ax, figsize=(5.5, 5.0))
    ax.plot([0, 1], [0, 1], "--", color="0.6", lw=1, label="chance")
    skipped = []
    for r in as_result_list(results):
        labels = to_numpy(r.labels)
        if labels.min(initial=1) == labels.max(initial=0) or len(labels) == 0:
            skipped.append(r.category)
            continue
        fpr, tpr, _ = roc_curve_points(labels, to_numpy(r.scores))
        ax.plot(fpr, tpr, lw=1.6, label=f"{r.category} (AUROC {pct(r.metrics.get('image_auroc'))}%)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (good images flagged)")
    ax.set_ylabel("true positive rate (defective images caught)")
    ax.set_title("Image-level ROC" + (f"\nno ROC (one class only): {', '.join(skipped)}" if skipped else ""))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return finish(fig, save_path)


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

    fig, ax = new_axes(ax, figsize=(6.0, 4.5))
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
        if len(x) > MAX_CURVE_POINTS:  # the exact curve can have millions of corners; thin for drawing only
            pick = np.unique(np.linspace(0, len(x) - 1, MAX_CURVE_POINTS).astype(np.intp))
            x, y = x[pick], y[pick]
        ax.plot(x, y, lw=1.6, label=f"{r.category} (AU-PRO {pct(r.metrics.get('au_pro'))}%)")
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
    return finish(fig, save_path)


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
    fig, ax = new_axes(ax, figsize=(6.5, 4.0))
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
    return finish(fig, save_path)


def plot_per_defect(result: EvalResult, ax=None, save_path: str | Path | None = None):
    """Horizontal bars of the image AUROC of each defect type against the good images
    (``metrics["per_defect_image_auroc"]``, fractions), worst on top; dashed lines at chance (50 %) and at the
    category's overall image AUROC.
    Returns:
        The Figure (one axes; one bar per defect type; a text note when there are none).
    """
    per = dict(result.metrics.get("per_defect_image_auroc") or {})
    if not per:  # e.g. a user folder without defective test images: say so instead of failing the notebook
        fig, ax = new_axes(ax, figsize=(6.5, 1.5))
        ax.text(0.5, 0.5, f"{result.category}: no per-defect AUROC (no defective test images)", ha="center")
        ax.set_axis_off()
        return finish(fig, save_path)
    items = sorted(per.items(), key=lambda kv: (np.nan_to_num(float(kv[1]), nan=-1.0), kv[0]))
    names = [k for k, _ in items]
    values = np.array([100.0 * float(v) for _, v in items])
    fig, ax = new_axes(ax, figsize=(6.5, 0.45 * len(names) + 1.5))
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
    return finish(fig, save_path)


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
        fig, ax = new_axes(None, figsize=(6.0, 1.5))
        ax.text(
            0.5,
            0.5,
            f"{result.category}: no {'good' if kind == 'fp' else 'defective'} test images",
            ha="center",
            va="center",
        )
        ax.set_axis_off()
        return finish(fig, save_path)
    vmin, vmax = map_scale(result)
    thr = float(result.thresholds["image_default"])
    fig, axes = new_axes(None, len(idx), 3, figsize=(8.4, 2.6 * len(idx) + 0.6), squeeze=False, layout="constrained")
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
    return finish(fig, save_path)


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
        cells = [r.category] + [pct(v) for v in ours[row]]
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
        cell = pct(vals[ok].mean())
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
    fig, axes = new_axes(None, rows, cols, figsize=(3.2 * cols, 3.7 * rows), squeeze=False)
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
    return finish(fig, save_path)
