"""The interactive heatmap gallery of notebook 04: ipywidgets controls over evaluated test images.

Only standard ipywidgets 8 controls (Dropdown, IntSlider, FloatSlider, Button, HTML) and an ``ipywidgets.Image``
of PNG bytes are used, with no custom front-end code, so the gallery renders wherever ipywidgets does:
JupyterLab, Notebook 7, VS Code and Colab's own widget manager. Every picture is drawn in the kernel by
:mod:`colab_utils.panels`; the browser only shows PNGs.

Where widgets cannot render (static HTML from nbconvert, GitHub's viewer, a front end without the widget
manager) the gallery's display bundle carries a static PNG of its first rows, which those viewers show instead.
In Colab the widget is displayed on its own, through Colab's widget display hook.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np

from .evaluate import EvalResult
from .panels import (
    as_result_list,
    compose,
    gallery_sheet,
    image_panels,
    map_scale,
    mask2d,
    peak_share_of,
    png_bytes,
    text_panel,
    to_numpy,
    verdict,
)

__all__ = ["Gallery", "SORT_OPTIONS", "build_gallery"]

#: Orderings offered by the gallery's ``sort`` dropdown.
SORT_OPTIONS = ("file order", "score (high first)", "worst false positives", "worst false negatives")

#: Rows per category in the static fallback picture (:meth:`Gallery.snapshot_png`).
SNAPSHOT_ROWS = 4


class Gallery:
    """Interactive gallery of evaluated test images (notebook 04). Display ``gallery.widget`` (or the gallery
    itself as a cell's last expression).

    Controls (ipywidgets, public attributes): ``category`` (Dropdown), ``defect_type`` (Dropdown: "all" + the
    category's types), ``sort`` (Dropdown, :data:`SORT_OPTIONS`), ``index`` (IntSlider: position in the
    filtered list), ``prev_button``/``next_button``, ``threshold`` (FloatSlider on the pixel-map scale; default
    ``thresholds["pixel_default"]``), ``peak_share`` (FloatSlider 0..0.95: a masked pixel also reaches this share of
    its image's peak; default the run's ``mask_peak_share``), ``reset_button`` (both back to their defaults),
    ``opacity`` (FloatSlider 0..1).

    Panels side by side, rendered with numpy + PIL into ``image`` (an ``ipywidgets.Image`` of PNG bytes): image,
    reconstruction (or a "no pixel reconstruction" note for a family without one), heatmap overlay on the category's shared
    scale (:func:`map_scale`, colour bar below), predicted mask (:func:`~colab_utils.scoring.predicted_mask`: map >=
    threshold and >= peak share x the image's peak) and ground truth; ``caption``
    (HTML) gives path, defect type, image score vs ``thresholds["image_default"]``, the verdict and whether it
    is correct. Only the current image is rendered, on every control change.

    Constructor options: ``category`` (initially shown), ``panel_size`` (pixels per panel), ``opacity`` (initial
    heatmap opacity), ``cmap``, ``continuous_update`` (re-render while a slider is dragged; set False on a slow
    connection: each render sends one PNG of about 5 panels).

    State after each render (for tests and for code cells): ``current_category``, ``current_position``,
    ``current_index`` (test-image index into the result arrays, None when the filter matches nothing),
    ``current_pred_mask`` (bool (H, W) or None), ``current_panels`` (uint8 (H', W', 3)), ``filtered_indices``
    (list of test-image indices in display order), ``n_renders``.

    Sorts: "file order"; "score (high first)"; "worst false positives" = good images only, highest score first;
    "worst false negatives" = defective images only, lowest score first. The defect-type filter applies first.
    """

    def __init__(
        self,
        results: EvalResult | Iterable[EvalResult] | Mapping[str, EvalResult],
        category: str | None = None,
        panel_size: int = 256,
        opacity: float = 0.5,
        cmap: str = "jet",
        continuous_update: bool = True,
    ) -> None:
        if isinstance(results, Mapping):
            self.results = dict(results)
        else:
            self.results = {r.category: r for r in as_result_list(results)}
        if not self.results:
            raise ValueError("Gallery needs at least one EvalResult")
        first = category if category is not None else next(iter(self.results))
        if first not in self.results:
            raise ValueError(f"category {first!r} not among {list(self.results)}")
        self.panel_size = int(panel_size)
        self.cmap = cmap
        self._scales: dict[str, tuple[float, float, float, float]] = {}
        self._busy = False
        self.n_renders = 0
        self.filtered_indices: list[int] = []
        self._first = first
        self.current_category = first
        self.current_position = 0
        self.current_index: int | None = None
        self.current_pred_mask: np.ndarray | None = None
        self.current_panels: np.ndarray | None = None

        self._build_controls(first, opacity, bool(continuous_update))
        with self._hold():
            self._load_category(first)
        self._connect()
        self.render()

    def _build_controls(self, first: str, opacity: float, live: bool) -> None:
        """The ipywidgets controls and their layout (``self.widget``)."""
        import ipywidgets as w

        wide = {"description_width": "90px"}
        self.category = w.Dropdown(options=list(self.results), value=first, description="category", style=wide)
        self.defect_type = w.Dropdown(options=["all"], value="all", description="defect type", style=wide)
        self.sort = w.Dropdown(options=list(SORT_OPTIONS), value=SORT_OPTIONS[0], description="order", style=wide)
        self.index = w.IntSlider(min=0, max=0, value=0, description="image", style=wide, continuous_update=live,
                                 layout=w.Layout(width="420px"))  # fmt: skip
        self.prev_button = w.Button(description="◀", layout=w.Layout(width="40px"), tooltip="previous image")
        self.next_button = w.Button(description="▶", layout=w.Layout(width="40px"), tooltip="next image")
        self.threshold = w.FloatSlider(min=0.0, max=1.0, step=0.001, value=0.5, description="pixel thr.",
                                       readout_format=".3g", style=wide, continuous_update=live,
                                       layout=w.Layout(width="420px"))  # fmt: skip
        self.peak_share = w.FloatSlider(min=0.0, max=0.95, step=0.05, value=0.0, description="peak share",
                                        style=wide, continuous_update=live, layout=w.Layout(width="300px"))  # fmt: skip
        self.reset_button = w.Button(
            description="default", layout=w.Layout(width="70px"),
            tooltip="reset to thresholds['pixel_default'] and the run's mask_peak_share",
        )
        self.opacity = w.FloatSlider(
            min=0.0, max=1.0, step=0.05, value=float(opacity), description="opacity", style=wide, continuous_update=live
        )
        self.image = w.Image(format="png")
        self.caption = w.HTML()
        self.widget = w.VBox([
            w.HBox([self.category, self.defect_type, self.sort]),
            w.HBox([self.index, self.prev_button, self.next_button]),
            w.HBox([self.threshold, self.peak_share, self.reset_button]),
            self.opacity,
            self.image,
            self.caption,
        ])  # fmt: skip

    def _connect(self) -> None:
        """The callbacks: every control change re-renders the current image (tests drive them directly)."""
        self.category.observe(self._on_category, names="value")
        self.defect_type.observe(self._on_filter, names="value")
        self.sort.observe(self._on_filter, names="value")
        for ctrl in (self.index, self.threshold, self.peak_share, self.opacity):
            ctrl.observe(self._on_view, names="value")
        self.prev_button.on_click(lambda _: self.step(-1))
        self.next_button.on_click(lambda _: self.step(+1))
        self.reset_button.on_click(lambda _: self._reset_threshold())

    # ------------------------------------------------------------------ display
    def _repr_mimebundle_(self, **kwargs):
        """The widget view, plus the static fallback (:meth:`snapshot_png`) as ``image/png``: front ends with a
        widget manager rank the widget view first and show the live gallery; static viewers (nbconvert HTML
        without widget state, GitHub) show the picture instead of an empty cell."""
        data = dict(self.widget._repr_mimebundle_(**kwargs))  # ipywidgets 8: the data dict, view included
        data["image/png"] = base64.b64encode(self.snapshot_png()).decode("ascii")
        data["text/plain"] = f"Gallery of {', '.join(self.results)} (interactive in a live notebook)"
        return data

    def _ipython_display_(self) -> None:
        """The widget in Colab, :meth:`_repr_mimebundle_` elsewhere (:func:`colab_utils.env.display_widget`)."""
        from .env import display_widget

        display_widget(self)

    def snapshot_png(self, rows: int = SNAPSHOT_ROWS, panel_size: int = 160) -> bytes:
        """PNG bytes of the gallery's first ``rows`` rows of every category, one block per category, the
        category shown first on top (:func:`colab_utils.panels.gallery_sheet`: images round-robin over the
        defect types, default thresholds)."""
        order = [self._first] + [c for c in self.results if c != self._first]
        sheets = [gallery_sheet(self.results[c], n=rows, panel_size=panel_size) for c in order]
        width = max(s.shape[1] for s in sheets)
        padded = [np.pad(s, ((0, 12), (0, width - s.shape[1]), (0, 0)), constant_values=255) for s in sheets]
        return png_bytes(np.concatenate(padded, axis=0), compress_level=6)

    # --------------------------------------------------------------- internals
    @contextmanager
    def _hold(self):
        """Suppress re-rendering while several controls change together."""
        self._busy = True
        try:
            yield
        finally:
            self._busy = False

    @property
    def result(self) -> EvalResult:
        """The EvalResult of the selected category."""
        return self.results[self.category.value]

    def scale(self, category: str | None = None) -> tuple[float, float]:
        """The shared heatmap scale (vmin, vmax) of a category (cached)."""
        return self._scale_and_range(category or self.category.value)[:2]

    def _scale_and_range(self, category: str) -> tuple[float, float, float, float]:
        if category not in self._scales:
            r = self.results[category]
            vmin, vmax = map_scale(r)
            maps = to_numpy(r.maps)
            self._scales[category] = (vmin, vmax, float(np.nanmin(maps)), float(np.nanmax(maps)))
        return self._scales[category]

    def _load_category(self, category: str) -> None:
        r = self.results[category]
        types = sorted(set(r.defect_types), key=lambda t: (t != "good", t))
        self.defect_type.options = ["all", *types]
        self.defect_type.value = "all"
        _, _, lo, hi = self._scale_and_range(category)
        default = float(r.thresholds["pixel_default"])
        lo, hi = min(lo, default), max(hi, default)
        if not hi > lo:
            hi = lo + 1.0
        slider = self.threshold
        slider.max = max(slider.max, hi)  # widen first so every intermediate state is valid
        slider.min = min(slider.min, lo)
        slider.value = default
        slider.min, slider.max = lo, hi
        slider.step = (hi - lo) / 1000.0
        self.peak_share.value = peak_share_of(r)
        self._refilter()

    def _refilter(self) -> None:
        r = self.result
        labels, scores = to_numpy(r.labels), to_numpy(r.scores).astype(np.float64)
        want = self.defect_type.value
        idx = np.array([i for i, t in enumerate(r.defect_types) if want == "all" or t == want], dtype=np.intp)
        order = self.sort.value
        if order == "score (high first)":
            idx = idx[np.argsort(-scores[idx], kind="stable")]
        elif order == "worst false positives":
            idx = idx[labels[idx] == 0]
            idx = idx[np.argsort(-scores[idx], kind="stable")]
        elif order == "worst false negatives":
            idx = idx[labels[idx] == 1]
            idx = idx[np.argsort(scores[idx], kind="stable")]
        self.filtered_indices = [int(i) for i in idx]
        self.index.value = 0
        self.index.max = max(0, len(self.filtered_indices) - 1)
        self.index.disabled = len(self.filtered_indices) <= 1

    def _on_category(self, change) -> None:
        if self._busy:
            return
        with self._hold():
            self._load_category(change["new"])
        self.render()

    def _on_filter(self, _change) -> None:
        if self._busy:
            return
        with self._hold():
            self._refilter()
        self.render()

    def _on_view(self, _change) -> None:
        if not self._busy:
            self.render()

    def _reset_threshold(self) -> None:
        with self._hold():
            self.peak_share.value = peak_share_of(self.result)
            self.threshold.value = float(self.result.thresholds["pixel_default"])
        self.render()

    def step(self, delta: int) -> None:
        """Move ``delta`` images along the filtered list (clamped)."""
        self.index.value = int(np.clip(self.index.value + delta, self.index.min, self.index.max))

    # ----------------------------------------------------------------- render
    def render(self) -> None:
        """Render the current image into ``image`` and ``caption`` and update the ``current_*`` state."""
        self.n_renders += 1
        r = self.result
        self.current_category = self.category.value
        self.current_position = int(self.index.value)
        if not self.filtered_indices:
            self.current_index = None
            self.current_pred_mask = None
            self.current_panels = text_panel(self.panel_size, "no images match\nthis filter")
            self.image.value = png_bytes(self.current_panels)
            self.caption.value = (
                f"<b>{html.escape(self.current_category)}</b>: no images match defect type "
                f"{html.escape(str(self.defect_type.value))!r} with order "
                f"{html.escape(str(self.sort.value))!r}"
            )
            return
        i = self.filtered_indices[self.current_position]
        vmin, vmax = self.scale(self.current_category)
        thr = float(self.threshold.value)
        panels, pred = image_panels(r, i, thr, float(self.opacity.value), vmin, vmax, self.cmap,
                                    float(self.peak_share.value))  # fmt: skip
        gt = mask2d(r.masks[i])
        inter, union = int((pred & gt).sum()), int((pred | gt).sum())
        footers = [
            "",
            "",
            "shared scale",
            f"{100.0 * pred.mean():.1f}% of pixels" + (f", IoU {inter / union:.2f}" if gt.any() else ""),
            f"{100.0 * gt.mean():.1f}% of pixels" if gt.any() else "no defect",
        ]
        self.current_index = i
        self.current_pred_mask = pred
        self.current_panels = compose(panels, self.panel_size, footers=footers, strip=(2, self.cmap, vmin, vmax))
        self.image.value = png_bytes(self.current_panels)
        flagged, correct, words = verdict(r, i)
        colour = "#1a7f37" if correct else "#c62828"
        self.caption.value = (
            f"<div style='font-family:monospace'>{self.current_position + 1} / {len(self.filtered_indices)} "
            f"&middot; #{i} &middot; <b>{html.escape(str(r.paths[i]))}</b><br>"
            f"defect type: <b>{html.escape(r.defect_types[i])}</b> &middot; image score {float(r.scores[i]):.4g} "
            f"vs threshold {float(r.thresholds['image_default']):.4g} &rarr; <b>{'DEFECT' if flagged else 'OK'}</b> "
            f"<span style='color:{colour}'>({words})</span></div>"
        )


def build_gallery(results: EvalResult | Iterable[EvalResult] | Mapping[str, EvalResult], **kwargs: Any) -> Gallery:
    """``Gallery(results, **kwargs)``; ``results`` maps category -> :class:`EvalResult` (a list or one works too)."""
    return Gallery(results, **kwargs)
