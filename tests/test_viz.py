"""Static figures (train_figures, eval_figures) and the report export, on small synthetic EvalResults (64 px, 6 images)."""

from __future__ import annotations

import importlib
import re
import sys
import types

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from helpers import SIZE, make_result  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from colab_utils import eval_figures, panels, report, train_figures  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _roc_stub(labels, scores):
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    y = np.asarray(labels)[order]
    tpr = np.concatenate([[0.0], np.cumsum(y) / max(1, y.sum())])
    fpr = np.concatenate([[0.0], np.cumsum(1 - y) / max(1, (1 - y).sum())])
    return fpr, tpr, np.concatenate([[np.inf], np.asarray(scores)[order]])


def _pro_stub(masks, maps):
    masks, maps = np.asarray(masks) > 0, np.asarray(maps)
    fprs, pros = [], []
    for t in np.quantile(maps, np.linspace(1.0, 0.0, 50)):
        pred = maps >= t
        fprs.append(pred[~masks].mean())
        pros.append(np.mean([pred[i][masks[i]].mean() for i in range(len(masks)) if masks[i].any()]))
    return np.array(fprs), np.array(pros)


@pytest.fixture()
def metrics(monkeypatch):
    """colab_utils.metrics when it exists; otherwise a minimal stand-in with the agreed signatures."""
    try:
        return importlib.import_module("colab_utils.metrics")
    except ImportError:
        stub = types.ModuleType("colab_utils.metrics")
        stub.roc_curve_points = _roc_stub
        stub.pro_curve = _pro_stub
        monkeypatch.setitem(sys.modules, "colab_utils.metrics", stub)
        return stub


def _png_ok(path) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 50 and im.size[1] > 50


# ------------------------------------------------------------------------------------------- heatmaps
def test_heatmap_overlay_shape_range_and_shared_scale(alpha, beta):
    img = beta.images[0]
    low = np.zeros((SIZE, SIZE), np.float32)
    low[10, 10] = 2.0
    high = np.full((SIZE, SIZE), 0.5, np.float32)
    high[10, 10] = 2.0
    high[40, 40] = 9.0  # a much larger peak elsewhere must not change the colour of value 2.0
    a = panels.heatmap_overlay(img, low, vmin=1.0, vmax=4.0, alpha=0.6)
    b = panels.heatmap_overlay(img, high, vmin=1.0, vmax=4.0, alpha=0.6)
    assert a.shape == (SIZE, SIZE, 3) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_allclose(a[10, 10], b[10, 10])
    # everything at or below vmin gets one colour: a good image's noise is not stretched to red
    flat = panels.heatmap_overlay(img, np.full((SIZE, SIZE), 0.3, np.float32), 1.0, 4.0, alpha=1.0)
    assert np.allclose(flat, flat[0, 0]) and flat[0, 0, 2] > flat[0, 0, 0]  # jet's cold end is blue
    # colour only (alpha=1): the same map on two different images gives identical pixels
    np.testing.assert_allclose(
        panels.heatmap_overlay(beta.images[1], high, 1.0, 4.0, alpha=1.0),
        panels.heatmap_overlay(beta.images[2], high, 1.0, 4.0, alpha=1.0),
    )
    # grayscale images are shown as gray RGB
    gray = panels.heatmap_overlay(alpha.images[0], low, 1.0, 4.0, alpha=0.0)
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    np.testing.assert_allclose(gray[..., 0], alpha.images[0, 0] / 255.0, atol=1e-6)
    with pytest.raises(ValueError):
        panels.heatmap_overlay(img, low, vmin=2.0, vmax=2.0)


def test_map_scale_puts_threshold_at_or_below_the_middle(alpha):
    vmin, vmax = panels.map_scale(alpha)
    threshold = alpha.thresholds["pixel_default"]
    expected_vmin = 0.0 if alpha.config.get("normalize_maps") else float(np.median(alpha.maps))
    assert vmin == pytest.approx(expected_vmin)
    assert vmin < threshold <= (vmin + vmax) / 2 + 1e-9
    assert vmax >= float(np.percentile(alpha.maps, 99.9)) - 1e-6


# -------------------------------------------------------------------------------------------- figures
def test_plot_counts_one_bar_per_row(tmp_path):
    rows = [
        {"category": c, "split": s, "defect_type": t, "count": k}
        for c in ("alpha", "beta")
        for s, t, k in (("train", "good", 200), ("test", "good", 20), ("test", "crack", 12))
    ]
    fig = train_figures.plot_counts(rows, save_path=tmp_path / "counts.png")
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    assert len(fig.axes[0].patches) == len(rows)
    assert sorted(p.get_width() for p in fig.axes[0].patches) == sorted(r["count"] for r in rows)
    _png_ok(tmp_path / "counts.png")


@pytest.mark.parametrize("mask_shape", ["n1hw", "nhw", "none"])
def test_show_samples_grid(alpha, mask_shape, tmp_path):
    masks = {"n1hw": alpha.masks[:, None], "nhw": alpha.masks, "none": None}[mask_shape]
    fig = train_figures.show_samples(
        alpha.images[:5],
        None if masks is None else masks[:5],
        alpha.defect_types[:5],
        ncols=3,
        save_path=tmp_path / "s.png",
    )
    assert len(fig.axes) == 5  # unused grid cells are removed
    assert [ax.get_title() for ax in fig.axes] == alpha.defect_types[:5]
    contours = sum(len(ax.collections) for ax in fig.axes)
    assert (contours > 0) == (masks is not None)  # defective samples get a contour
    _png_ok(tmp_path / "s.png")


def test_plot_history_totals_and_terms(tmp_path):
    hist = {"train_loss": [1.0, 0.5, 0.3], "val_loss": [1.2, None, 0.4], "lr": [1e-3, 1e-3, 5e-4]}
    fig = train_figures.plot_history(hist, title="alpha")
    assert len(fig.axes) == 1 and len(fig.axes[0].get_lines()) == 2  # lr is not a loss
    assert fig.axes[0].get_title().startswith("alpha")
    val = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "val_loss"][0]
    assert list(val.get_xdata()) == [1, 3]  # the missing epoch is skipped
    hist.update({"train_mse": [0.5, 0.2, 0.1], "train_ssim_loss": [0.5, 0.3, 0.2], "val_mse": [0.6, 0.3, 0.2]})
    fig = train_figures.plot_history(hist, log_y=True, save_path=tmp_path / "h.png")
    assert len(fig.axes) == 2
    assert len(fig.axes[0].get_lines()) == 2 and len(fig.axes[1].get_lines()) == 3
    assert fig.axes[0].get_yscale() == "log"
    _png_ok(tmp_path / "h.png")
    # train.fit's layout: an "epoch" list gives x; a shorter list (a term added on resume) aligns to its end
    fig = train_figures.plot_history(
        {"epoch": [5, 6, 7], "train_loss": [0.3, 0.2, 0.1], "train_mse": [0.2, 0.1], "seconds": [1, 1, 1]}
    )
    lines = {ln.get_label(): list(ln.get_xdata()) for ax in fig.axes for ln in ax.get_lines()}
    assert lines == {"train_loss": [5, 6, 7], "train_mse": [6, 7]}


def test_show_reconstructions(alpha, tmp_path):
    fig = train_figures.show_reconstructions(alpha.images, alpha.recons, n=4, save_path=tmp_path / "r.png")
    assert len(fig.axes) == 3 * 4 + 1  # three rows of images + the difference colorbar
    _png_ok(tmp_path / "r.png")


def test_plot_roc_one_line_per_category(alpha, beta, metrics, tmp_path):
    fig = eval_figures.plot_roc([alpha, beta], save_path=tmp_path / "roc.png")
    lines = fig.axes[0].get_lines()
    assert len(lines) == 1 + 2  # chance diagonal + one per category
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(t.startswith("alpha (AUROC 88.9%") for t in legend)
    _png_ok(tmp_path / "roc.png")
    # a category with one class only has no ROC and gets no line
    only_good = make_result("gamma", ["good"] * 6, 3, False, 2)
    fig = eval_figures.plot_roc({"alpha": alpha, "gamma": only_good})
    assert len(fig.axes[0].get_lines()) == 2 and "gamma" in fig.axes[0].get_title()


def test_plot_pro_stops_at_limit(alpha, beta, metrics, tmp_path):
    fig = eval_figures.plot_pro([alpha, beta], save_path=tmp_path / "pro.png")
    ax = fig.axes[0]
    curves = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    assert len(curves) == 2
    assert all(np.max(ln.get_xdata()) <= 0.3 + 1e-12 for ln in curves)
    assert any(np.allclose(ln.get_xdata(), 0.3) for ln in ax.get_lines() if ln not in curves)  # the limit line
    assert any("AU-PRO 80.0%" in t.get_text() for t in ax.get_legend().get_texts())
    _png_ok(tmp_path / "pro.png")


def test_plot_score_histogram_thresholds(alpha, tmp_path):
    fig = eval_figures.plot_score_histogram(alpha, save_path=tmp_path / "hist.png")
    ax = fig.axes[0]
    xs = sorted(ln.get_xdata()[0] for ln in ax.get_lines())
    assert xs == [alpha.thresholds["image_f1_optimal"], alpha.thresholds["image_default"]]
    heights = sum(p.get_height() for p in ax.patches)
    assert heights == len(alpha.scores)  # every image counted once
    _png_ok(tmp_path / "hist.png")


def test_score_histogram_clips_a_long_tail_into_the_last_bin(alpha):
    import dataclasses

    scores = np.array([1.0, 1.2, 1.1, 2.0, 2.4, 1000.0] + [1.05] * 40 + [2.2] * 40, np.float32)
    labels = np.array([0, 0, 0, 1, 1, 1] + [0] * 40 + [1] * 40)
    skewed = dataclasses.replace(alpha, scores=scores, labels=labels,
                                 thresholds={"image_default": 1.5, "image_f1_optimal": 1.6})  # fmt: skip
    ax = eval_figures.plot_score_histogram(skewed).axes[0]
    assert ax.get_xlim()[1] < 10  # not stretched to 1000: good (~1) and defective (~2) stay apart
    assert sum(p.get_height() for p in ax.patches) == len(scores)  # the outlier is still counted
    assert any("1 above" in t.get_text() for t in ax.texts)
    # the thresholds stay on the axis even when they lie beyond the bulk
    assert eval_figures.score_axis_limit(np.array([1.0, 1.1, 1.2]), keep=[5.0]) == 1.2
    assert eval_figures.score_axis_limit(np.array([1.0] * 50 + [100.0]), keep=[5.0]) == 5.0


def test_plot_per_defect(alpha, tmp_path):
    fig = eval_figures.plot_per_defect(alpha, save_path=tmp_path / "pd.png")
    ax = fig.axes[0]
    assert len(ax.patches) == 2  # crack, hole
    assert sorted(p.get_width() for p in ax.patches) == pytest.approx([50.0, 60.0])
    _png_ok(tmp_path / "pd.png")


def test_show_worst_orders_by_score(alpha, tmp_path):
    fig = eval_figures.show_worst(alpha, kind="fp", n=2, save_path=tmp_path / "fp.png")
    assert len(fig.axes) == 3 * 2 + 1
    assert fig.axes[0].get_title().startswith("#2 ")  # the good image with the spurious bump
    assert "MISCLASSIFIED" in fig.axes[1].get_title()
    fig = eval_figures.show_worst(alpha, kind="fn", n=1)
    assert fig.axes[0].get_title().startswith("#5 ")  # the weakest defect
    _png_ok(tmp_path / "fp.png")
    with pytest.raises(ValueError):
        eval_figures.show_worst(alpha, kind="xx")


def test_metrics_table_with_anchors(alpha, beta):
    anchors = {"PatchCore": {"alpha": (100, 98.5), "beta": (0.99, 0.97)}, "Other": {"alpha": (None, 93.0)}}
    text = eval_figures.metrics_table([alpha, beta], anchors)
    lines = text.strip().splitlines()
    assert len(lines) == 2 + 2 + 1  # header, separator, two categories, mean
    assert lines[0].count("|") == 1 + 1 + 6 + 2
    assert lines[2].startswith("| alpha | 88.9 | 95.0 | 80.0 |")
    assert lines[2].endswith("| 100.0 / 98.5 | – / 93.0 |")
    assert lines[3].endswith("| 99.0 / 97.0 | – |")  # fractions read as percent
    assert lines[4].startswith("| **mean** | 88.9 |") and lines[4].endswith("| 99.5 / 97.8 | – |")


# -------------------------------------------------------------------------------------- static gallery
def test_save_gallery_png(alpha, beta, tmp_path):
    a = report.save_gallery_png(alpha, tmp_path / "a.png", n=4, panel_size=64)
    b = report.save_gallery_png(beta, tmp_path / "b.png", indices=[0, 3], panel_size=64)
    _png_ok(a)
    _png_ok(b)
    with Image.open(a) as ia, Image.open(b) as ib:
        assert ia.size[0] > ib.size[0]  # the memory bank has no reconstruction column
        assert ia.size[1] > ib.size[1]  # 4 rows vs 2


def test_save_gallery_html_rows(alpha, beta, tmp_path):
    text = report.save_gallery_html(alpha, tmp_path / "g.html", n=5, panel_size=64).read_text()
    rows = re.findall(r"<tr class='item'>(.*?)</tr>", text)
    assert len(rows) == 5
    assert all(r.count("<img") == 5 and "data:image/png;base64," in r for r in rows)
    assert "DEFECT" in text and "OK" in text
    assert sorted({t for t in alpha.defect_types}) == sorted({t for t in alpha.defect_types if t in text})
    text = report.save_gallery_html(beta, tmp_path / "b.html", n=3, panel_size=64).read_text()
    rows = re.findall(r"<tr class='item'>(.*?)</tr>", text)
    assert len(rows) == 3 and all(r.count("<img") == 4 for r in rows)


def test_live_history_redraws_on_each_epoch():
    live = train_figures.LiveHistory(title="bottle")
    history = {"epoch": [], "train_loss": [], "val_loss": []}
    for epoch in (1, 2, 3):
        history["epoch"].append(epoch)
        history["train_loss"].append(1.0 / epoch)
        history["val_loss"].append(1.2 / epoch)
        live.update(epoch, history)
    assert live.n_updates == 3 and live.last_epoch == 3
    assert live.last_title == "bottle epoch 3" and live.last_lines >= 2  # train and validation curves
