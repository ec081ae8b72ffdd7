"""The report export of an evaluated category: a gallery sheet as PNG, a self-contained HTML gallery, and the
figures of notebook 03 saved next to ``results.json`` (the ``evaluate`` command writes them). The interactive
gallery is :mod:`colab_utils.gallery`; both draw the panels of :mod:`colab_utils.panels`.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from .eval_figures import plot_per_defect, plot_pro, plot_roc, plot_score_histogram, show_worst
from .evaluate import EvalResult
from .panels import (
    colour_lut,
    default_indices,
    gallery_sheet,
    image_panels,
    map_scale,
    png_bytes,
    square,
    to_u8,
    verdict,
)
from .plotting import pct


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
    the colour bar of the shared scale and (a family without reconstructions) the note that there is none.

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
        f"<p>image AUROC {pct(m.get('image_auroc'))}% &middot; pixel AUROC {pct(m.get('pixel_auroc'))}% &middot; "
        f"AU-PRO {pct(m.get('au_pro'))}% &middot; image threshold {float(result.thresholds['image_default']):.3g}"
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
                continue  # a family without reconstructions: no such column
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
