"""Input handling shared by the metric functions (:mod:`colab_utils.metrics`, :mod:`colab_utils.regions`):
labels, scores, masks and maps coerced and checked (the conventions are in :mod:`colab_utils.metrics`), and the
one sort of the pixel scores every pixel metric reads."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .regions import region_ids

NAN = float("nan")


# ----------------------------------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------------------------------


def to_numpy(x: Any) -> np.ndarray:
    """Array view of ``x``; torch tensors (any device) are detached and copied to the CPU without importing torch."""
    if hasattr(x, "detach") and hasattr(x, "cpu") and hasattr(x, "numpy"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def as_scores(x: Any, name: str) -> np.ndarray:
    """Scores as float32 or float64 (kept as given); small ints/bools/float16 -> float32 (exact), others -> float64."""
    a = to_numpy(x)
    if a.dtype == np.float32 or a.dtype == np.float64:
        return a
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numeric, got dtype {a.dtype}")
    if a.dtype.itemsize <= 2:
        return a.astype(np.float32)
    return a.astype(np.float64)


def as_labels(x: Any, name: str = "labels") -> np.ndarray:
    """Labels as a bool array; only 0/1 (or bool) values are accepted."""
    a = to_numpy(x)
    if a.dtype == np.bool_:
        return a
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be 0/1 numbers or bools, got dtype {a.dtype}")
    positive = a == 1
    if not np.logical_or(positive, a == 0).all():
        bad = np.unique(a[np.logical_and(~positive, a != 0)])[:5]
        raise ValueError(f"{name} must contain only 0 (good) and 1 (anomalous); found also {bad.tolist()}")
    return positive


def labelled_pair(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Flattened (bool labels, scores) of equal size."""
    y = as_labels(labels)
    s = as_scores(scores, "scores")
    if y.shape != s.shape:
        raise ValueError(f"labels and scores must have the same shape, got {y.shape} and {s.shape}")
    return y.ravel(), s.ravel()


def as_stack(a: np.ndarray, name: str) -> np.ndarray:
    """(N, H, W) view of an (H, W), (N, H, W) or (N, 1, H, W) array."""
    if a.ndim == 4 and a.shape[1] == 1:
        return a[:, 0]
    if a.ndim == 3:
        return a
    if a.ndim == 2:
        return a[None]
    raise ValueError(f"{name} must be (H, W), (N, H, W) or (N, 1, H, W), got shape {a.shape}")


def as_mask_stack(masks: Any) -> np.ndarray:
    """Bool (N, H, W): True = anomalous pixel (mask value > 0)."""
    m = as_stack(to_numpy(masks), "masks")
    if m.dtype == np.bool_:
        return m
    if m.dtype.kind not in "biuf":
        raise TypeError(f"masks must be numeric or bool, got dtype {m.dtype}")
    return m > 0


def pixel_pair(masks: Any, maps: Any) -> tuple[np.ndarray, np.ndarray]:
    """(anomalous bool (N, H, W), scores (N, H, W)) from masks/maps of shape (H, W), (N, H, W) or (N, 1, H, W)."""
    m = to_numpy(masks)
    s = as_scores(maps, "maps")
    if m.shape != s.shape:
        raise ValueError(f"masks and maps must have the same shape, got {m.shape} and {s.shape}")
    return as_mask_stack(m), as_stack(s, "maps")


class Split(NamedTuple):
    """Scores split by class, each sorted ascending. ``weight``: 1 / region size per positive (AU-PRO only)."""

    pos: np.ndarray
    neg: np.ndarray
    weight: np.ndarray | None
    n_regions: int


def split_sorted(is_pos: np.ndarray, scores: np.ndarray) -> Split:
    """Split flat scores by the flat bool ``is_pos`` and sort both parts (no argsort of the large negative part)."""
    pos = scores[is_pos]
    neg = scores[~is_pos]
    pos.sort()
    neg.sort()
    check_no_nan(pos, neg)
    return Split(pos, neg, None, 0)


def split_pixels(masks: Any, maps: Any, regions: bool) -> Split:
    """Sorted split of all pixels; with ``regions`` the anomalous pixels carry 1 / size of their 8-connected region."""
    fg, s = pixel_pair(masks, maps)
    if not regions:
        return split_sorted(fg.ravel(), s.ravel())
    _, h, w = fg.shape
    fg_flat = fg.ravel()
    s_flat = s.ravel()
    fg_index = np.flatnonzero(fg_flat)
    region, n_regions = region_ids(fg_index, h, w)
    weight = 1.0 / np.bincount(region, minlength=n_regions)[region]
    pos = s_flat[fg_index]
    del fg_index, region
    order = np.argsort(pos, kind="stable")
    pos = pos[order]
    weight = weight[order]
    neg = s_flat[~fg_flat]
    neg.sort()
    check_no_nan(pos, neg)
    return Split(pos, neg, weight, n_regions)


def check_no_nan(*sorted_arrays: np.ndarray) -> None:
    """NaN sorts last, so checking the last element of each sorted array is enough."""
    for a in sorted_arrays:
        if a.size and np.isnan(a[-1]):
            raise ValueError("scores/maps contain NaN; replace or drop them before computing metrics")
