"""Evaluation metrics for visual anomaly detection, computed the way published MVTec AD tables compute them.

Pure functions: numpy arrays (or lists, or CPU torch tensors) in, Python floats out. No torch import.

Conventions shared by every function:

- **Labels** (image level) are 0 = good, 1 = anomalous, given as ints, floats or bools; any other value raises
  ``ValueError``.
- **Masks** (pixel level) are ``(N, H, W)``, ``(N, 1, H, W)`` or ``(H, W)``; a pixel is anomalous iff its mask value
  is ``> 0``, so both {0, 1} and {0, 255} masks work. **Maps** have the same shape as the masks; real values, higher =
  more anomalous. float32 maps are used as they are (float64 too); other dtypes are converted.
- **Scores**: higher = more anomalous. A sample is predicted anomalous iff ``score >= threshold``.
- **Ties** are handled exactly: tied scores form one threshold (one curve point); AUROC counts a tied
  (anomalous, good) pair as 1/2 (Mann-Whitney), identical to ``sklearn.metrics.roc_auc_score``.
- **Undefined** values are returned as ``nan`` and never raise: AUROC / AP / AU-PRO / F1-max when a needed class is
  absent (for example a test set without anomalous images, or without good pixels). NaN *scores* raise ``ValueError``.

Pixel-level metrics sort the maps once (``np.sort`` of the float32 scores of good pixels, plus an ``argsort`` of the
usually few anomalous pixels) and use cumulative counts with ``np.searchsorted``; no sklearn call and no
float64/int64 array as large as the maps is made. Memory beyond float32 inputs is about 6 bytes per pixel (a bool
mask, its complement, a float32 copy of the scores) plus, for AU-PRO, about 70 bytes per anomalous pixel: roughly
0.6-0.7 GiB for 100 M pixels, under a second for one MVTec category at 256 px (see benchmarks/metrics_speed.py).
:func:`pixel_metrics` computes all pixel metrics from a single sort.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from .metric_inputs import (
    NAN,
    Split,
    as_mask_stack,
    as_scores,
    check_no_nan,
    labelled_pair,
    split_pixels,
    split_sorted,
    to_numpy,
)
from .regions import region_ids

__all__ = [
    "au_pro",
    "binary_confusion",
    "binomial_interval",
    "f1_max",
    "image_auroc",
    "label_8_connected_regions",
    "per_defect_auroc",
    "per_defect_image_auroc",
    "pixel_auroc",
    "pixel_average_precision",
    "pixel_f1_max",
    "pixel_metrics",
    "pro_curve",
    "roc_curve_points",
    "threshold_from_good",
]
# ----------------------------------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------------
# curve statistics from a sorted split
# ----------------------------------------------------------------------------------------------------------------------


class _Groups(NamedTuple):
    """One row per distinct positive score ``value`` (ascending)."""

    value: np.ndarray  # the distinct positive scores
    count: np.ndarray  # positives equal to value
    pos_ge: np.ndarray  # positives >= value (true positives at threshold value)
    neg_lt: np.ndarray  # negatives < value
    neg_le: np.ndarray  # negatives <= value


def _positive_groups(split: Split) -> _Groups:
    pos, neg = split.pos, split.neg
    n_pos = pos.size
    new = np.empty(n_pos, dtype=bool)
    new[:1] = True
    np.not_equal(pos[1:], pos[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    value = pos[starts]
    count = np.diff(starts, append=n_pos)
    return _Groups(
        value=value,
        count=count,
        pos_ge=n_pos - starts,
        neg_lt=np.searchsorted(neg, value, side="left"),
        neg_le=np.searchsorted(neg, value, side="right"),
    )


def _auroc(split: Split, groups: _Groups | None = None) -> float:
    """Mann-Whitney U / (P * N): P(score_pos > score_neg) + 1/2 P(equal), in exact integer arithmetic."""
    n_pos, n_neg = split.pos.size, split.neg.size
    if n_pos == 0 or n_neg == 0:
        return NAN
    g = groups if groups is not None else _positive_groups(split)
    twice_u = int(np.dot(g.count, g.neg_lt + g.neg_le))  # 2 * (#neg below + 1/2 #neg tied), summed over positives
    return twice_u / (2 * n_pos * n_neg)


def _average_precision(split: Split, groups: _Groups | None = None) -> float:
    """sum over thresholds of (recall increase) * precision, thresholds = distinct positive scores (sklearn's AP)."""
    n_pos, n_neg = split.pos.size, split.neg.size
    if n_pos == 0:
        return NAN
    g = groups if groups is not None else _positive_groups(split)
    tp = g.pos_ge.astype(np.float64)
    precision = tp / (tp + (n_neg - g.neg_lt))
    return float(np.dot(g.count, precision) / n_pos)


def _f1_max(split: Split, groups: _Groups | None = None) -> tuple[float, float]:
    """max over thresholds of 2TP / (2TP + FP + FN); the optimum is always at a distinct positive score."""
    n_pos, n_neg = split.pos.size, split.neg.size
    if n_pos == 0:
        return NAN, NAN
    g = groups if groups is not None else _positive_groups(split)
    tp = g.pos_ge.astype(np.float64)
    f1 = 2.0 * tp / (tp + (n_neg - g.neg_lt) + n_pos)
    best = f1.size - 1 - int(np.argmax(f1[::-1]))  # the highest threshold among equally good ones
    return float(f1[best]), float(g.value[best])


def _suffix_sums(weight: np.ndarray) -> np.ndarray:
    """cw[k] = sum(weight[k:]), length len(weight) + 1, cw[-1] = 0."""
    cw = np.zeros(weight.size + 1, dtype=np.float64)
    np.cumsum(weight[::-1], out=cw[1:])
    return cw[::-1]


def _largest_count_within(limit: float, n: int) -> int:
    """Largest c in [0, n] with c / n <= limit, using the same float64 division as the FPR values."""
    c = min(n, max(0, int(np.floor(limit * n))))
    while c < n and (c + 1) / n <= limit:
        c += 1
    while c > 0 and c / n > limit:
        c -= 1
    return c


def _au_pro(split: Split, fpr_limit: float) -> float:
    """Exact normalised area under the PRO curve up to ``fpr_limit`` (see :func:`au_pro`).

    With neg = good pixels and positives weighted by w = 1 / region size, the curve has one point per distinct score t
    (pixels with score >= t predicted anomalous): FPR(t) = #neg >= t / N, PRO(t) = sum(w of pos >= t) / R. Between
    consecutive points only the good pixels tied at one value v move the FPR, so the trapezoid area is
    sum over good pixels i of (1/N) * (PRO_ge(s_i) + PRO_gt(s_i)) / 2, which, swapped into a sum over anomalous pixels,
    needs only searchsorted calls on the sorted good scores. The tie group crossing ``fpr_limit`` is interpolated
    linearly, as in the MVTec AD evaluation script.
    """
    neg, pos, weight = split.neg, split.pos, split.weight
    n_ok, n_regions = neg.size, split.n_regions
    if n_ok == 0 or n_regions == 0:
        return NAN
    assert weight is not None
    cw = _suffix_sums(weight)
    k = _largest_count_within(fpr_limit, n_ok)  # tie groups whose end FPR is <= fpr_limit are integrated fully
    if k < n_ok:
        v_star = neg[n_ok - 1 - k]  # the good-pixel score whose tie group crosses fpr_limit
        base = int(np.searchsorted(neg, v_star, side="right"))
    else:
        v_star, base = None, 0
    # full part: good pixels with score > v_star, i.e. neg[base:]
    a = np.searchsorted(neg, pos, side="right") - base  # good pixels in neg[base:] with score <= pos_j
    b = np.searchsorted(neg, pos, side="left") - base  # ... with score < pos_j
    np.maximum(a, 0, out=a)
    np.maximum(b, 0, out=b)
    area = float(np.dot(weight, a + b)) / (2.0 * n_ok * n_regions)
    if v_star is not None:
        fpr_gt = (n_ok - base) / n_ok
        fpr_ge = (n_ok - int(np.searchsorted(neg, v_star, side="left"))) / n_ok
        pro_gt = cw[np.searchsorted(pos, v_star, side="right")] / n_regions
        pro_ge = cw[np.searchsorted(pos, v_star, side="left")] / n_regions
        if fpr_limit > fpr_gt:
            pro_at_limit = pro_gt + (pro_ge - pro_gt) * (fpr_limit - fpr_gt) / (fpr_ge - fpr_gt)
            area += 0.5 * (pro_at_limit + pro_gt) * (fpr_limit - fpr_gt)
    return float(area / fpr_limit)


def _trapezoid_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area of the polyline (x ascending) over [x[0], x_max], with y linearly interpolated at x_max."""
    inside = int(np.searchsorted(x, x_max, side="right"))  # points with x <= x_max
    area = float(np.sum(0.5 * (y[1:inside] + y[: inside - 1]) * np.diff(x[:inside])))
    if inside < x.size and x[inside - 1] < x_max:
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += 0.5 * (y_at + y0) * (x_max - x0)
    return area


def _au_pro_thresholds(split: Split, fpr_limit: float, num_thresholds: int) -> float:
    """AU-PRO from ``num_thresholds`` thresholds spaced evenly from the highest to the lowest pixel score."""
    neg, pos = split.neg, split.pos
    n_ok, n_regions = neg.size, split.n_regions
    if n_ok == 0 or n_regions == 0:
        return NAN
    assert split.weight is not None
    lo = min(neg[0], pos[0])
    hi = max(neg[-1], pos[-1])
    thresholds = np.linspace(float(hi), float(lo), num_thresholds)
    fpr = (n_ok - np.searchsorted(neg, thresholds, side="left")) / n_ok
    pro = _suffix_sums(split.weight)[np.searchsorted(pos, thresholds, side="left")] / n_regions
    fpr = np.concatenate(([0.0], fpr, [1.0]))
    pro = np.concatenate(([0.0], pro, [1.0]))
    return _trapezoid_up_to(fpr, pro, fpr_limit) / fpr_limit


def _check_fpr_limit(fpr_limit: float) -> float:
    fpr_limit = float(fpr_limit)
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must lie in (0, 1], got {fpr_limit}")
    return fpr_limit
# ----------------------------------------------------------------------------------------------------------------------
# connected components (8-connectivity), no scipy
# ----------------------------------------------------------------------------------------------------------------------


def label_8_connected_regions(masks: Any) -> tuple[np.ndarray, int]:
    """Label the 8-connected anomalous regions of one mask or a stack of masks.

    Args:
        masks: (H, W), (N, H, W) or (N, 1, H, W); a pixel is anomalous iff its value is > 0.

    Returns:
        (labels, n_regions): int32 labels of the same shape, 0 = normal, 1..n_regions numbered in raster order of each
        region's first pixel, continuing across images (no region spans two images). For a single (H, W) mask this
        equals ``scipy.ndimage.label(mask > 0, structure=np.ones((3, 3)))``.
    """
    m = to_numpy(masks)
    fg = as_mask_stack(m)
    _, h, w = fg.shape
    fg_index = np.flatnonzero(fg.ravel())
    region, n_regions = region_ids(fg_index, h, w)
    labels = np.zeros(fg.size, dtype=np.int32)
    labels[fg_index] = region + 1
    return labels.reshape(m.shape), n_regions



# ----------------------------------------------------------------------------------------------------------------------
# image level
# ----------------------------------------------------------------------------------------------------------------------


def image_auroc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve of image scores (the "image AUROC" / detection AUROC of MVTec AD tables).

    Args:
        labels: (N,) 0 = good, 1 = anomalous.
        scores: (N,) real, higher = more anomalous.

    Returns:
        AUROC in [0, 1]: the probability that a random anomalous image scores higher than a random good one, ties
        counting 1/2 (identical to ``sklearn.metrics.roc_auc_score``). ``nan`` if only one class (or no image) is
        present; sklearn raises in that case, this function does not.
    """
    y, s = labelled_pair(labels, scores)
    return _auroc(split_sorted(y, s))


def f1_max(labels: Any, scores: Any) -> tuple[float, float]:
    """Best F1 over all thresholds, and the threshold achieving it (the "F1-max" of anomaly detection papers).

    Args:
        labels: (N,) or any shape, 0/1 (or bool).
        scores: same shape, real.

    Returns:
        (f1, threshold): F1 = 2TP / (2TP + FP + FN) in [0, 1], with a sample predicted anomalous iff
        ``score >= threshold``; ``threshold`` is one of the scores. Every distinct score is tried; when several
        thresholds reach the same F1 the highest is returned. ``(nan, nan)`` if there is no anomalous sample.
    """
    y, s = labelled_pair(labels, scores)
    return _f1_max(split_sorted(y, s))


def roc_curve_points(labels: Any, scores: Any, drop_intermediate: bool = True) -> tuple[np.ndarray, ...]:
    """ROC curve for plotting; the same arrays as ``sklearn.metrics.roc_curve``.

    Args:
        labels: (N,) or any shape, 0/1 (or bool).
        scores: same shape, real.
        drop_intermediate: drop points that lie on a straight horizontal/vertical run (the curve is unchanged).

    Returns:
        (fpr, tpr, thresholds), float64 arrays of equal length, fpr and tpr non-decreasing in [0, 1]; point i predicts
        anomalous iff ``score >= thresholds[i]``; the first point is (0, 0) with threshold ``inf``. Without anomalous
        (good) samples tpr (fpr) is all ``nan``. Memory: an int64 sort index per sample.
    """
    y, s = labelled_pair(labels, scores)
    order = np.argsort(s, kind="stable")[::-1]
    s_desc = s[order]
    check_no_nan(s_desc[:1])
    tp_cum = np.cumsum(y[order], dtype=np.int64)
    del order
    ends = np.flatnonzero(s_desc[1:] != s_desc[:-1])
    ends = np.append(ends, s_desc.size - 1) if s_desc.size else ends
    tps = tp_cum[ends]
    fps = ends + 1 - tps
    thresholds = s_desc[ends].astype(np.float64)
    if drop_intermediate and tps.size > 2:
        bend = np.logical_or(np.diff(fps, 2) != 0, np.diff(tps, 2) != 0)
        keep = np.concatenate(([True], bend, [True]))
        tps, fps, thresholds = tps[keep], fps[keep], thresholds[keep]
    tps = np.concatenate(([0], tps)).astype(np.float64)
    fps = np.concatenate(([0], fps)).astype(np.float64)
    thresholds = np.concatenate(([np.inf], thresholds))
    with np.errstate(divide="ignore", invalid="ignore"):
        fpr = fps / fps[-1]
        tpr = tps / tps[-1]
    return fpr, tpr, thresholds


def per_defect_image_auroc(labels: Any, scores: Any, defect_types: Sequence[str]) -> dict[str, float]:
    """Image AUROC of each defect type against all good images.

    Args:
        labels: (N,) 0 = good, 1 = anomalous.
        scores: (N,) real.
        defect_types: N names (e.g. MVTec folder names); only those of anomalous images matter.

    Returns:
        ``{defect_type: auroc}`` for every defect type of an anomalous image, sorted by name; each AUROC uses the
        images of that type plus every good image (``nan`` without good images). Empty dict without anomalous images.
    """
    y, s = labelled_pair(labels, scores)
    types = np.asarray(list(defect_types), dtype=object)
    if types.shape != y.shape:
        raise ValueError(f"defect_types must have one entry per image ({y.size}), got {types.size}")
    good = ~y
    out: dict[str, float] = {}
    for name in sorted({str(t) for t in types[y]}):
        keep = good | (y & (types == name))
        out[name] = _auroc(split_sorted(y[keep], s[keep]))
    return out


per_defect_auroc = per_defect_image_auroc  # the name used in ARCHITECTURE.md


def binomial_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a rate from ``k`` events in ``n`` trials, e.g. good images flagged out
    of good images tested: (low, high) in [0, 1]; (nan, nan) for ``n = 0``. scipy's ``binomtest``."""
    if n <= 0:
        return NAN, NAN
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def threshold_from_good(scores_good: Any, percentile: float = 99.0) -> float:
    """Default decision threshold from good (defect-free, held-out) samples only.

    Args:
        scores_good: scores of good images (N,) or anomaly maps of good images (any shape), real.
        percentile: in [0, 100]; e.g. 99 flags about 1 % of good samples.

    Returns:
        ``np.percentile(scores_good, percentile)`` (linear interpolation between order statistics); ``nan`` when
        ``scores_good`` is empty. Raises ``ValueError`` on NaN scores or a percentile outside [0, 100].
    """
    if not 0.0 <= float(percentile) <= 100.0:
        raise ValueError(f"percentile must lie in [0, 100], got {percentile}")
    s = as_scores(scores_good, "scores_good").ravel()
    if s.size == 0:
        return NAN
    value = float(np.percentile(s, float(percentile)))
    if np.isnan(value):
        raise ValueError("scores_good contains NaN")
    return value


def binary_confusion(labels: Any, scores: Any, threshold: float) -> dict[str, float]:
    """Confusion counts and derived rates at one threshold (predicted anomalous iff ``score >= threshold``).

    Args:
        labels: 0/1 (or bool), any shape; pass ``masks > 0`` for pixels.
        scores: same shape, real.
        threshold: real.

    Returns:
        dict with int ``tp``, ``fp``, ``tn``, ``fn`` and float ``precision`` = tp/(tp+fp), ``recall`` = tp/(tp+fn),
        ``f1`` = 2tp/(2tp+fp+fn), ``accuracy`` = (tp+tn)/n, each in [0, 1] or ``nan`` when its denominator is 0.
    """
    y, s = labelled_pair(labels, scores)
    pred = s >= threshold
    tp = int(np.count_nonzero(pred & y))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(y)) - tp
    tn = y.size - tp - fp - fn

    def ratio(num: int, den: int) -> float:
        return num / den if den else NAN

    return {
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": ratio(tp + tn, y.size),
    }


# ----------------------------------------------------------------------------------------------------------------------
# pixel level
# ----------------------------------------------------------------------------------------------------------------------


def pixel_auroc(masks: Any, maps: Any) -> float:
    """AUROC over all test pixels pooled (the "pixel AUROC" / segmentation AUROC of MVTec AD tables).

    Args:
        masks: (N, H, W), (N, 1, H, W) or (H, W); > 0 = anomalous pixel.
        maps: same shape, real (float32 recommended).

    Returns:
        In [0, 1], equal to ``roc_auc_score(masks.ravel() > 0, maps.ravel())``; ``nan`` without anomalous or
        without normal pixels.
    """
    return _auroc(split_pixels(masks, maps, regions=False))


def pixel_average_precision(masks: Any, maps: Any) -> float:
    """Average precision over all test pixels pooled (area under the step-wise precision-recall curve).

    Args:
        masks: (N, H, W), (N, 1, H, W) or (H, W); > 0 = anomalous pixel.
        maps: same shape, real.

    Returns:
        sum over thresholds of (recall_k - recall_{k-1}) * precision_k, in [0, 1], equal to
        ``sklearn.metrics.average_precision_score(masks.ravel() > 0, maps.ravel())``; ``nan`` without anomalous
        pixels (sklearn returns 0 with a warning there).
    """
    return _average_precision(split_pixels(masks, maps, regions=False))


def pixel_f1_max(masks: Any, maps: Any) -> tuple[float, float]:
    """Best pixel F1 over all thresholds and its threshold: :func:`f1_max` on all pixels pooled.

    Args:
        masks: (N, H, W), (N, 1, H, W) or (H, W); > 0 = anomalous pixel.
        maps: same shape, real.

    Returns:
        (f1 in [0, 1], threshold; pixel anomalous iff ``map >= threshold``); ``(nan, nan)`` without anomalous pixels.
    """
    return _f1_max(split_pixels(masks, maps, regions=False))


def au_pro(masks: Any, maps: Any, fpr_limit: float = 0.3, num_thresholds: int | None = None) -> float:
    """Normalised area under the per-region-overlap (PRO) curve up to ``fpr_limit``, as in the MVTec AD evaluation.

    Each ground-truth mask is split into 8-connected regions. At a threshold t (pixel anomalous iff map >= t) the
    PRO is the mean over all regions of all images of (region pixels predicted anomalous / region size), and the FPR
    is the share of normal pixels (outside every mask, good images included) predicted anomalous. The curve starts
    at (0, 0) and ends at (1, 1); it is integrated with the trapezoid rule from FPR 0 to ``fpr_limit`` (PRO linearly
    interpolated at exactly ``fpr_limit``) and divided by ``fpr_limit``.

    Args:
        masks: (N, H, W), (N, 1, H, W) or (H, W); > 0 = anomalous pixel. Good images have empty masks.
        maps: same shape, real.
        fpr_limit: integration limit in (0, 1]; 0.3 in MVTec AD tables.
        num_thresholds: ``None`` (default) uses every distinct map value as a threshold, exact up to float
            rounding. An int >= 2 uses that many thresholds evenly spaced from the highest to the lowest map value
            (an approximation, for comparison with code that subsamples thresholds).

    Returns:
        AU-PRO in [0, 1] (a constant map gives 0.15 at ``fpr_limit=0.3``); ``nan`` without anomalous regions or
        without normal pixels.
    """
    fpr_limit = _check_fpr_limit(fpr_limit)
    split = split_pixels(masks, maps, regions=True)
    if num_thresholds is None:
        return _au_pro(split, fpr_limit)
    if int(num_thresholds) < 2:
        raise ValueError(f"num_thresholds must be None or >= 2, got {num_thresholds}")
    return _au_pro_thresholds(split, fpr_limit, int(num_thresholds))


def pro_curve(masks: Any, maps: Any, max_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The exact PRO curve (see :func:`au_pro`) for plotting.

    Args:
        masks: (N, H, W), (N, 1, H, W) or (H, W); > 0 = anomalous pixel.
        maps: same shape, real.
        max_points: if set (>= 2) and the curve has more points, keep that many of them, evenly spaced by index
            (first and last included); the polyline through them is then an approximation.

    Returns:
        (fpr, pro): float64 arrays, both non-decreasing, from (0, 0) to (1, 1). Only corners are kept (points on
        straight horizontal or vertical runs are dropped), so ``trapezoid`` of the arrays equals the full curve's
        area. Empty arrays without anomalous regions or without normal pixels.
    """
    split = split_pixels(masks, maps, regions=True)
    neg, pos = split.neg, split.pos
    n_ok, n_regions = neg.size, split.n_regions
    if n_ok == 0 or n_regions == 0:
        return np.zeros(0), np.zeros(0)
    assert split.weight is not None
    # Corners sit at the distinct anomalous-pixel scores u (descending): just before u is included
    # (FPR_gt, PRO_gt) and just after (FPR_ge, PRO_ge); between two such values the curve is horizontal.
    g = _positive_groups(split)
    g_desc = slice(None, None, -1)
    starts = (pos.size - g.pos_ge)[g_desc]
    cw = _suffix_sums(split.weight)
    fpr = np.empty(2 * starts.size + 2)
    pro = np.empty_like(fpr)
    fpr[0] = pro[0] = 0.0
    fpr[-1] = pro[-1] = 1.0
    fpr[1:-1:2] = (n_ok - g.neg_le[g_desc]) / n_ok
    fpr[2:-1:2] = (n_ok - g.neg_lt[g_desc]) / n_ok
    pro[1:-1:2] = cw[starts + g.count[g_desc]] / n_regions
    pro[2:-1:2] = cw[starts] / n_regions
    np.clip(pro, 0.0, 1.0, out=pro)
    distinct = np.concatenate(([True], (np.diff(fpr) != 0) | (np.diff(pro) != 0)))
    fpr, pro = fpr[distinct], pro[distinct]
    if fpr.size > 2:
        straight = ((fpr[:-2] == fpr[1:-1]) & (fpr[1:-1] == fpr[2:])) | (
            (pro[:-2] == pro[1:-1]) & (pro[1:-1] == pro[2:])
        )
        keep = np.concatenate(([True], ~straight, [True]))
        fpr, pro = fpr[keep], pro[keep]
    if max_points is not None:
        if int(max_points) < 2:
            raise ValueError(f"max_points must be None or >= 2, got {max_points}")
        if fpr.size > max_points:
            idx = np.unique(np.linspace(0, fpr.size - 1, int(max_points)).round().astype(np.int64))
            fpr, pro = fpr[idx], pro[idx]
    return fpr, pro


def pixel_metrics(masks: Any, maps: Any, fpr_limit: float = 0.3) -> dict[str, float]:
    """All pixel-level metrics from one sort of the maps (faster than calling each function).

    Args:
        masks: (N, H, W), (N, 1, H, W) or (H, W); > 0 = anomalous pixel.
        maps: same shape, real.
        fpr_limit: AU-PRO integration limit in (0, 1].

    Returns:
        dict with ``pixel_auroc``, ``pixel_ap``, ``pixel_f1_max``, ``pixel_f1_threshold`` and ``au_pro``, equal to
        :func:`pixel_auroc`, :func:`pixel_average_precision`, :func:`pixel_f1_max` and :func:`au_pro`.
    """
    fpr_limit = _check_fpr_limit(fpr_limit)
    split = split_pixels(masks, maps, regions=True)
    groups = _positive_groups(split)
    f1, threshold = _f1_max(split, groups)
    return {
        "pixel_auroc": _auroc(split, groups),
        "pixel_ap": _average_precision(split, groups),
        "pixel_f1_max": f1,
        "pixel_f1_threshold": threshold,
        "au_pro": _au_pro(split, fpr_limit),
    }
