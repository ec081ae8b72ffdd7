"""The interactive gallery of colab_utils.gallery, driven through its callbacks on synthetic EvalResults
(the same gallery in a real browser: tests/test_gallery_browser.py)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from helpers import SIZE
from PIL import Image

from colab_utils import gallery as gallery_module


@pytest.fixture()
def gallery(alpha, beta):
    return gallery_module.build_gallery({"alpha": alpha, "beta": beta}, panel_size=64)


def test_gallery_initial_state(gallery, alpha):
    import ipywidgets as w

    assert isinstance(gallery.widget, w.Box)
    assert gallery.current_category == "alpha" and gallery.current_index == 0
    assert gallery.filtered_indices == list(range(6))
    assert gallery.threshold.value == pytest.approx(alpha.thresholds["pixel_default"])
    assert gallery.current_pred_mask.dtype == np.bool_ and gallery.current_pred_mask.shape == (SIZE, SIZE)
    assert gallery.image.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert "DEFECT" in gallery.caption.value or "OK" in gallery.caption.value
    assert gallery.current_panels.shape[1] == 5 * 64 + 4 * 6  # five panels with gaps


def test_gallery_threshold_changes_mask(gallery):
    gallery.index.value = 3  # a defective image
    before = gallery.current_pred_mask.copy()
    gallery.threshold.value = 3.0
    after = gallery.current_pred_mask
    assert after.sum() < before.sum() and not (after & ~before).any()  # a strict subset
    png = gallery.image.value
    gallery.opacity.value = 0.9
    assert gallery.image.value != png


def test_gallery_category_switch(gallery, beta):
    first_png, renders = gallery.image.value, gallery.n_renders
    gallery.threshold.value = 2.5
    gallery.category.value = "beta"
    assert gallery.n_renders == renders + 2  # the threshold move, then exactly one render for the switch
    assert gallery.current_category == "beta"
    assert list(gallery.defect_type.options) == ["all", "good", "dent", "scratch"]
    assert gallery.threshold.value == pytest.approx(beta.thresholds["pixel_default"])
    assert gallery.image.value != first_png
    assert "beta/test/good/000.png" in gallery.caption.value
    # memory bank: the reconstruction panel is the gray note panel
    recon_panel = gallery.current_panels[20 + 5 : 20 + 60, 64 + 6 + 2 : 2 * 64 + 6 - 2]
    assert np.median(recon_panel.reshape(-1, 3), axis=0).tolist() == [60, 60, 60]


def test_gallery_sort_and_filter(gallery, alpha):
    gallery.sort.value = "worst false positives"
    good = [i for i in range(6) if alpha.labels[i] == 0]
    assert sorted(gallery.filtered_indices) == good
    assert [alpha.scores[i] for i in gallery.filtered_indices] == sorted(alpha.scores[good], reverse=True)
    assert gallery.current_index == gallery.filtered_indices[0] == 2
    gallery.sort.value = "worst false negatives"
    assert gallery.filtered_indices[0] == 5
    gallery.sort.value = "score (high first)"
    assert gallery.filtered_indices == list(np.argsort(-alpha.scores, kind="stable"))
    gallery.sort.value = "file order"
    gallery.defect_type.value = "crack"
    assert gallery.filtered_indices == [3, 4]
    assert gallery.index.max == 1
    gallery.next_button.click()
    assert gallery.current_index == 4 and "crack" in gallery.caption.value
    gallery.next_button.click()  # clamped at the end
    assert gallery.current_index == 4
    gallery.sort.value = "worst false positives"  # no good image is a crack: nothing matches, no crash
    assert gallery.filtered_indices == [] and gallery.current_index is None
    assert "no images match" in gallery.caption.value


def test_gallery_reset_threshold(gallery, alpha):
    gallery.threshold.value = 2.5
    gallery.peak_share.value = 0.9
    renders = gallery.n_renders
    gallery.reset_button.click()
    assert gallery.threshold.value == pytest.approx(alpha.thresholds["pixel_default"])
    assert gallery.peak_share.value == pytest.approx(alpha.config.get("mask_peak_share") or 0.0)
    assert gallery.n_renders == renders + 1  # both back, one render


def test_gallery_peak_share_narrows_the_mask_to_the_images_own_peak(gallery):
    from colab_utils.scoring import predicted_mask

    gallery.index.value = 3  # a defective image
    gallery.peak_share.value = 0.0
    wide = gallery.current_pred_mask.copy()
    gallery.peak_share.value = 0.8
    narrow = gallery.current_pred_mask
    assert narrow.sum() < wide.sum() and not (narrow & ~wide).any()
    amap = np.asarray(gallery.result.maps[gallery.current_index]).squeeze()
    assert np.array_equal(narrow, predicted_mask(amap, gallery.threshold.value, 0.8))




def test_display_bundle_carries_the_first_rows_as_a_picture(gallery, alpha, beta):
    """Live front ends show the widget view; static viewers fall back to the PNG of the first rows."""
    from colab_utils.panels import gallery_sheet

    data = gallery._repr_mimebundle_()
    view = data["application/vnd.jupyter.widget-view+json"]
    assert view["model_id"] == gallery.widget.model_id
    picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(data["image/png"]))).convert("RGB"))
    first = gallery_sheet(alpha, n=gallery_module.SNAPSHOT_ROWS, panel_size=160)
    second = gallery_sheet(beta, n=gallery_module.SNAPSHOT_ROWS, panel_size=160)
    assert picture.shape[0] == first.shape[0] + second.shape[0] + 2 * 12  # one block per category
    assert np.array_equal(picture[: first.shape[0], : first.shape[1]], first)  # the category shown first on top
    assert "alpha" in data["text/plain"] and "beta" in data["text/plain"]


def test_display_in_colab_shows_the_widget_itself(gallery, monkeypatch):
    """Colab's widget manager needs the metadata its display hook adds to widgets, so there the widget is shown."""
    import IPython.display

    from colab_utils import env

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, **kw: shown.append((obj, kw)))
    monkeypatch.setattr(env, "in_colab", lambda: True)
    gallery._ipython_display_()
    assert shown == [(gallery.widget, {})]
    monkeypatch.setattr(env, "in_colab", lambda: False)
    gallery._ipython_display_()
    bundle, options = shown[-1]
    assert options == {"raw": True} and "image/png" in bundle and "application/vnd.jupyter.widget-view+json" in bundle
