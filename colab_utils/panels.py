"""Pictures of one evaluated image, shared by the static figures (:mod:`colab_utils.train_figures`, :mod:`colab_utils.eval_figures`, :mod:`colab_utils.report`) and the
interactive gallery (:mod:`colab_utils.gallery`).

Everything here is numpy + PIL (matplotlib only for its colour maps) and returns arrays or PNG bytes:
the shared colour scale of a category (:func:`map_scale`), heatmap overlays, the panels of one test image
(image, reconstruction, heatmap, predicted mask, ground truth), panels composed side by side, and a sheet of
captioned rows (:func:`gallery_sheet`), which is both the static gallery PNG and the gallery's fallback picture.

Conventions: images are uint8 (C, H, W) in 0..255 with C = 1 (gray) or 3 (RGB), or float in [0, 1]; torch
tensors are accepted wherever arrays are. Composed panels are uint8 (H, W, 3).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .evaluate import EvalResult
from .scoring import predicted_mask

PRED_COLOUR = (1.0, 0.15, 0.15)  # predicted defect pixels
GT_COLOUR = (0.1, 0.9, 0.2)  # ground-truth defect pixels

def to_numpy(x: Any) -> np.ndarray:
    """numpy view of an array or a (CPU/GPU) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def as_result_list(results: EvalResult | Iterable[EvalResult] | Mapping[str, EvalResult]) -> list[EvalResult]:
    if isinstance(results, EvalResult):
        return [results]
    if isinstance(results, Mapping):
        return list(results.values())
    return list(results)


def rgb_float(image: Any) -> np.ndarray:
    """One image (C, H, W) with C in {1, 3} (or (H, W)), uint8 0..255 or float [0, 1] -> float32 (H, W, 3) in [0, 1]."""
    img = to_numpy(image)
    if img.ndim == 2:
        img = img[None]
    if img.ndim != 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"expected one image of shape (C, H, W) with C in (1, 3), got {img.shape}")
    out = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else np.clip(img.astype(np.float32), 0.0, 1.0)
    out = np.moveaxis(out, 0, -1)
    return np.repeat(out, 3, axis=-1) if out.shape[-1] == 1 else out


def to_u8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def mask2d(mask: Any) -> np.ndarray:
    """(1, H, W) or (H, W) mask -> bool (H, W)."""
    m = to_numpy(mask)
    if m.ndim == 3:
        m = m[0]
    return m > 0.5


@lru_cache(maxsize=16)
def colour_lut(cmap: str) -> np.ndarray:
    """(256, 3) float32 RGB lookup table of a matplotlib colour map."""
    from matplotlib import colormaps

    return colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3].astype(np.float32)


# ------------------------------------------------------------------------------------------- heatmaps
def map_scale(result: EvalResult, high_percentile: float = 99.9) -> tuple[float, float]:
    """The shared heatmap colour scale ``(vmin, vmax)`` of one category.

    ``vmin`` is the level of a typical normal pixel: 0 for standardised maps (the mean of held-out good
    pixels, ``config["normalize_maps"]``), otherwise the median of the category's maps. ``vmax`` is the
    ``high_percentile`` of all test-map values, but at least ``2 * threshold - vmin``, so the default pixel
    threshold (from good images only) sits at or below the middle of the colour bar: blue-green is normal
    variation, yellow-red is flagged, and a missed defect that the model half-saw is still visible.
    Use the same pair for every image of the category.
    """
    maps = to_numpy(result.maps)
    sub = maps[..., ::2, ::2] if maps.size > 4_000_000 else maps  # percentiles of a 1/4 sample are plenty
    if not sub.size:
        return 0.0, 1.0
    vmin = 0.0 if result.config.get("normalize_maps", False) else float(np.nanmedian(sub))
    threshold = float(result.thresholds.get("pixel_default", np.nan))
    vmax = float(np.nanpercentile(sub, high_percentile))
    if np.isfinite(threshold) and threshold > vmin:
        vmax = max(vmax, 2.0 * threshold - vmin)
    if not vmax > vmin:
        vmax = vmin + 1.0
    return vmin, vmax


def heatmap_overlay(
    image: Any, amap: Any, vmin: float, vmax: float, alpha: float = 0.5, cmap: str = "jet"
) -> np.ndarray:
    """Blend a colour-mapped anomaly map over an image.

    Args:
        image: one image, uint8 (C, H, W) in 0..255 (or float in [0, 1]); C = 1 is shown as gray RGB.
        amap: float (H, W) anomaly map (higher = more anomalous); (1, H, W) is accepted.
        vmin, vmax: the colour scale: values <= vmin get the bottom colour, >= vmax the top colour.
            They must be SHARED by all images that are compared (e.g. :func:`map_scale` of the category:
            the default pixel threshold and a high percentile of the category's maps). Never pass the
            per-image min and max: that stretches the faint noise of a good image to full red, so every
            good image would look defective and images could not be compared.
        alpha: opacity of the colour map in [0, 1] (0 = image only, 1 = colour map only).
        cmap: matplotlib colour map name (``"jet"``, ``"inferno"``, ...).

    Returns:
        float32 RGB (H, W, 3) in [0, 1]. The same map value gives the same colour in every image.
    """
    if not vmax > vmin:
        raise ValueError(f"heatmap_overlay needs vmax > vmin, got vmin={vmin}, vmax={vmax}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    rgb = rgb_float(image)
    m = to_numpy(amap).astype(np.float32)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.shape != rgb.shape[:2]:
        raise ValueError(f"map shape {m.shape} does not match image size {rgb.shape[:2]}")
    t = np.clip((np.nan_to_num(m, nan=vmin) - vmin) / (vmax - vmin), 0.0, 1.0)
    colours = colour_lut(cmap)[np.rint(t * 255.0).astype(np.intp)]
    return ((1.0 - alpha) * rgb + alpha * colours).astype(np.float32)


def tint(image_rgb: np.ndarray, mask: np.ndarray, colour: tuple[float, float, float]) -> np.ndarray:
    """Dimmed image with ``mask`` pixels painted in ``colour``: float (H, W, 3) in [0, 1]."""
    out = 0.35 * image_rgb
    out[mask] = 0.25 * image_rgb[mask] + 0.75 * np.asarray(colour, np.float32)
    return out



# ------------------------------------------------------------------------------ panel composition (PIL)
@lru_cache(maxsize=4)
def pil_font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def square(rgb_u8: np.ndarray, size: int) -> np.ndarray:
    """Square panel of side ``size`` (nearest when enlarging: keeps pixels honest; box filter when shrinking)."""
    from PIL import Image

    h, w = rgb_u8.shape[:2]
    if (h, w) == (size, size):
        return rgb_u8
    resample = Image.NEAREST if max(h, w) < size else Image.BOX
    return np.asarray(Image.fromarray(rgb_u8).resize((size, size), resample))


def text_panel(size: int, text: str) -> np.ndarray:
    """A gray square with centred multi-line text: uint8 (size, size, 3)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (60, 60, 60))
    draw = ImageDraw.Draw(img)
    draw.multiline_text((size / 2, size / 2), text, fill=(230, 230, 230), font=pil_font(13), anchor="mm", align="center")
    return np.asarray(img)


def colour_strip(width: int, cmap: str, height: int = 10) -> np.ndarray:
    """Horizontal colour bar: uint8 (height, width, 3)."""
    lut = colour_lut(cmap)
    row = lut[np.linspace(0, 255, width).astype(np.intp)]
    return to_u8(np.broadcast_to(row, (height, width, 3)))


def peak_share_of(result: EvalResult) -> float:
    """The ``mask_peak_share`` the result's run drew its masks with (0 for results saved before the rule)."""
    return float(result.config.get("mask_peak_share") or 0.0)


def image_panels(
    result: EvalResult, i: int, threshold: float, alpha: float, vmin: float, vmax: float, cmap: str,
    peak_share: float | None = None,
) -> tuple[list[tuple[str, np.ndarray | None]], np.ndarray]:
    """The panels of image ``i``: ([(title, uint8 (H, W, 3) or None for the no-reconstruction note)], pred mask
    bool (H, W)); the mask at ``threshold`` and ``peak_share`` (None: the run's ``mask_peak_share``)."""
    rgb = rgb_float(result.images[i])
    amap = to_numpy(result.maps[i])
    if amap.ndim == 3:
        amap = amap[0]
    share = peak_share_of(result) if peak_share is None else float(peak_share)
    pred = predicted_mask(amap, threshold, share)
    panels: list[tuple[str, np.ndarray | None]] = [("image", to_u8(rgb))]
    panels.append(("reconstruction", None if result.recons is None else to_u8(rgb_float(result.recons[i]))))
    panels.append(("heatmap", to_u8(heatmap_overlay(result.images[i], amap, vmin, vmax, alpha, cmap))))
    rule = f"map >= {threshold:.3g}" + (f", >= {share:g} x peak" if share > 0 else "")
    panels.append((f"predicted mask ({rule})", to_u8(tint(rgb, pred, PRED_COLOUR))))
    panels.append(("ground truth", to_u8(tint(rgb, mask2d(result.masks[i]), GT_COLOUR))))
    return panels, pred


FEATURE_NOTE = "this model has\nno pixel\nreconstruction"


def compose(
    panels: Sequence[tuple[str, np.ndarray | None]],
    size: int,
    titles: bool = True,
    footers: Sequence[str] | None = None,
    strip: tuple[int, str, float, float] | None = None,
    gap: int = 6,
) -> np.ndarray:
    """Panels side by side on a white canvas: uint8 (H', W', 3).

    ``titles`` draws each panel's title above it; ``footers`` (one text per panel) below it; ``strip``
    ``(panel position, cmap, vmin, vmax)`` draws a colour bar with its end values under that panel.
    """
    from PIL import Image, ImageDraw

    title_h = 20 if titles else 0
    foot_h = (16 if footers is not None else 0) + (14 if strip is not None else 0)
    width = len(panels) * size + (len(panels) - 1) * gap
    canvas = Image.new("RGB", (width, title_h + size + foot_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = pil_font(12)
    for k, (title, arr) in enumerate(panels):
        x = k * (size + gap)
        tile = text_panel(size, FEATURE_NOTE) if arr is None else square(arr, size)
        canvas.paste(Image.fromarray(tile), (x, title_h))
        if titles:
            draw.text((x + size / 2, title_h / 2), title, fill=(0, 0, 0), font=font, anchor="mm")
        y = title_h + size + 2
        if strip is not None and strip[0] == k:
            canvas.paste(Image.fromarray(colour_strip(size, strip[1])), (x, y))
            for value, xx, anchor in ((strip[2], x, "lm"), (strip[3], x + size, "rm")):
                draw.text((xx, y + 14 + 7), f"{value:.3g}", fill=(0, 0, 0), font=font, anchor=anchor)
        if footers is not None and footers[k]:
            draw.text(
                (x + size / 2, y + (14 if strip is not None else 0) + 7),
                footers[k],
                fill=(0, 0, 0),
                font=font,
                anchor="mm",
            )
    return np.asarray(canvas)


def png_bytes(rgb_u8: np.ndarray, compress_level: int = 1) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb_u8).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def verdict(result: EvalResult, i: int) -> tuple[bool, bool, str]:
    """(flagged as defect, correct, words) of image ``i`` at the default image threshold."""
    flagged = float(result.scores[i]) >= float(result.thresholds["image_default"])
    defective = bool(result.labels[i])
    if flagged == defective:
        return flagged, True, "correct"
    return flagged, False, "wrong: false positive" if flagged else "wrong: false negative"


def default_indices(result: EvalResult, n: int) -> list[int]:
    """Up to ``n`` images taken round-robin over the defect types (good first), each type in file order;
    returned in file order."""
    by_type: dict[str, list[int]] = {}
    for i, t in enumerate(result.defect_types):
        by_type.setdefault(t, []).append(i)
    order = sorted(by_type, key=lambda t: (t != "good", t))
    picked: list[int] = []
    depth = 0
    while len(picked) < min(n, len(result.defect_types)):
        for t in order:
            if depth < len(by_type[t]) and len(picked) < n:
                picked.append(by_type[t][depth])
        depth += 1
    return sorted(picked)


def row_caption(result: EvalResult, i: int) -> str:
    flagged, _, words = verdict(result, i)
    return (
        f"#{i} {Path(str(result.paths[i])).name} | {result.defect_types[i]} | score {float(result.scores[i]):.3g} "
        f"(thr {float(result.thresholds['image_default']):.3g}) -> {'DEFECT' if flagged else 'OK'} ({words})"
    )


def gallery_sheet(
    result: EvalResult,
    indices: Sequence[int] | None = None,
    n: int = 12,
    panel_size: int = 192,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> np.ndarray:
    """Captioned gallery rows of one category as one picture: uint8 (H, W, 3).

    One row per image (image, reconstruction when the result has them, heatmap overlay on the shared scale,
    predicted mask at ``thresholds["pixel_default"]``, ground truth), each captioned with file name, defect
    type, score, threshold and verdict; above them a title line, the column titles and the colour bar of the
    shared scale (:func:`map_scale`). ``indices``: test-image indices; default ``n`` images taken round-robin
    over the defect types (:func:`default_indices`).
    """
    from PIL import Image, ImageDraw

    idx = list(default_indices(result, n) if indices is None else indices)
    if not idx:
        raise ValueError(f"{result.category}: no images to put in the gallery")
    vmin, vmax = map_scale(result)
    thr = float(result.thresholds["pixel_default"])
    small = pil_font(12)
    blocks = []
    for i in idx:
        shown = [p for p in image_panels(result, i, thr, alpha, vmin, vmax, cmap)[0] if p[1] is not None]
        row = compose(shown, panel_size, titles=False)
        bar = Image.new("RGB", (row.shape[1], 20), (255, 255, 255))
        ImageDraw.Draw(bar).text((2, 10), row_caption(result, i), fill=(0, 0, 0), font=small, anchor="lm")
        blocks += [np.asarray(bar), row, np.full((8, row.shape[1], 3), 255, np.uint8)]
    heat = [t for t, _ in shown].index("heatmap")
    header = compose(shown, panel_size, titles=True, footers=[""] * len(shown), strip=(heat, cmap, vmin, vmax))
    head = header[:20]  # the title line only
    scale = header[20 + panel_size :]  # colour bar + range, under the heatmap column
    lines = [f"{result.category}: heatmap scale shared by all rows; pixel threshold {thr:.3g}"]
    if result.recons is None:
        lines.append(f"{result.config.get('mode', 'this')} model: no pixel reconstruction")
    title = Image.new("RGB", (row.shape[1], 20 * len(lines) + 4), (255, 255, 255))
    for k, line in enumerate(lines):
        ImageDraw.Draw(title).text((2, 12 + 20 * k), line, fill=(0, 0, 0), font=pil_font(14), anchor="lm")
    return np.concatenate([np.asarray(title), head, scale] + blocks, axis=0)
