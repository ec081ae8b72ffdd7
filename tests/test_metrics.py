"""Tests of colab_utils.metrics: hand-computed cases, scikit-learn cross-checks, a brute-force AU-PRO, edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from colab_utils import metrics as M

EIGHT = np.ones((3, 3), dtype=int)


# ----------------------------------------------------------------------------------------------------------------------
# helpers: random data and an independent brute-force AU-PRO
# ----------------------------------------------------------------------------------------------------------------------


def blob_masks(rng: np.random.Generator, n: int, h: int, w: int, noise: float = 0.0) -> np.ndarray:
    """uint8 (n, h, w) {0, 1}: image 0 is good (empty), the others get 1-3 ellipses plus optional salt pixels."""
    yy, xx = np.mgrid[:h, :w]
    masks = np.zeros((n, h, w), dtype=np.uint8)
    for i in range(1, n):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(1, h / 4), rng.uniform(1, w / 4)
            masks[i][((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = 1
        if noise:
            masks[i][rng.random((h, w)) < noise] = 1
    return masks


def brute_force_pro_points(masks: np.ndarray, maps: np.ndarray, thresholds: np.ndarray):
    """(fpr, pro) at each threshold, straight from the definition, regions from scipy with 8-connectivity."""
    labels = np.zeros(masks.shape, dtype=np.int64)
    n_regions = 0
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m > 0, structure=EIGHT)
        labels[i] = np.where(lab > 0, lab + n_regions, 0)
        n_regions += n
    sizes = np.bincount(labels.ravel(), minlength=n_regions + 1)[1:]
    normal = masks == 0
    fprs, pros = [], []
    for t in thresholds:
        predicted = maps >= t
        fprs.append(np.count_nonzero(predicted & normal) / np.count_nonzero(normal))
        hit = np.bincount(labels[predicted], minlength=n_regions + 1)[1:]
        pros.append(float(np.mean(hit / sizes)))
    return np.array(fprs), np.array(pros)


def integrate_to(points, limit: float) -> float:
    """Trapezoid area under a polyline of (x, y) points sorted by x, up to x = limit (y interpolated there)."""
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= limit:
            break
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_limit) / 2
    return area


def brute_force_au_pro(masks: np.ndarray, maps: np.ndarray, thresholds: np.ndarray, limit: float = 0.3) -> float:
    fpr, pro = brute_force_pro_points(masks, maps, thresholds)
    points = sorted([(0.0, 0.0), (1.0, 1.0), *zip(fpr.tolist(), pro.tolist())])
    return integrate_to(points, limit) / limit


# ----------------------------------------------------------------------------------------------------------------------
# image AUROC
# ----------------------------------------------------------------------------------------------------------------------


def test_image_auroc_hand_computed():
    # anomalous 0.35 beats good 0.1 but not good 0.4; anomalous 0.8 beats both -> 3 of 4 pairs
    assert M.image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    # one pair, tied -> 1/2
    assert M.image_auroc([0, 1], [0.5, 0.5]) == 0.5
    # pairs: 0.5>0.1 (1), 0.5=0.5 (1/2), 0.9 beats both (2) -> 3.5 / 4
    assert M.image_auroc([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9]) == 0.875
    # reversed ranking -> 0
    assert M.image_auroc([1, 1, 0], [0.1, 0.2, 0.3]) == 0.0


def test_image_auroc_single_class_is_nan_not_error():
    assert math.isnan(M.image_auroc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert math.isnan(M.image_auroc([1, 1], [0.1, 0.2]))
    assert math.isnan(M.image_auroc([], []))
    fpr, tpr, _ = M.roc_curve_points([0, 0], [0.1, 0.2])
    assert np.isnan(tpr).all() and fpr[-1] == 1.0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="only 0"):
        M.image_auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="same shape"):
        M.image_auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        M.image_auroc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="NaN"):
        M.pixel_auroc(np.eye(3), np.full((3, 3), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="same shape"):
        M.au_pro(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="fpr_limit"):
        M.au_pro(np.eye(4), np.eye(4), fpr_limit=0.0)


# ----------------------------------------------------------------------------------------------------------------------
# F1-max, AP, confusion, thresholds
# ----------------------------------------------------------------------------------------------------------------------


def test_f1_max_hand_computed():
    labels = [0, 1, 0, 1, 1]
    scores = [0.1, 0.2, 0.3, 0.4, 0.5]
    # F1 = 2TP / (TP + FP + P), P = 3:  t=.5: 2/4   t=.4: 4/5   t=.3: 4/6   t=.2: 6/7   t=.1: 6/8
    f1, threshold = M.f1_max(labels, scores)
    assert f1 == pytest.approx(6 / 7, abs=1e-15)
    assert threshold == 0.2
    # the threshold convention (score >= threshold) reproduces the F1
    assert M.binary_confusion(labels, scores, threshold)["f1"] == pytest.approx(f1, abs=1e-15)
    # equal F1 at t=0.9 (TP1 FP0 -> 2/3) and t=0.1 (TP2 FP2 -> 4/6): the higher threshold is reported
    assert M.f1_max([1, 0, 0, 1], [0.9, 0.5, 0.5, 0.1]) == (pytest.approx(2 / 3), 0.9)
    # only anomalous samples: predicting all of them is perfect
    assert M.f1_max([1, 1], [0.3, 0.7]) == (1.0, 0.3)
    assert all(math.isnan(v) for v in M.f1_max([0, 0], [0.3, 0.7]))


def test_average_precision_hand_computed():
    # descending: 0.5(+) 0.4(+) 0.3(-) 0.2(+) 0.1(-) -> precisions at the 3 hits 1/1, 2/2, 3/4 -> (1 + 1 + 0.75) / 3
    ap = M.pixel_average_precision(np.array([[0, 1, 0, 1, 1]]), np.array([[0.1, 0.2, 0.3, 0.4, 0.5]]))
    assert ap == pytest.approx(11 / 12, abs=1e-15)
    # tie: at t=0.5 one hit and one false alarm (precision 1/2, recall 1/2), at t=0.2 precision 2/3, recall 1
    ap = M.pixel_average_precision(np.array([[1, 0, 1]]), np.array([[0.5, 0.5, 0.2]]))
    assert ap == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3, abs=1e-15)


def test_binary_confusion_hand_computed():
    out = M.binary_confusion([0, 0, 1, 1, 1], [0.2, 0.6, 0.6, 0.9, 0.1], 0.6)
    # predicted: 0.6 (good) fp, 0.6 (anomalous) tp, 0.9 tp; 0.1 (anomalous) fn; 0.2 tn
    assert (out["tp"], out["fp"], out["tn"], out["fn"]) == (2, 1, 1, 1)
    assert out["precision"] == pytest.approx(2 / 3)
    assert out["recall"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(2 / 3)
    assert out["accuracy"] == pytest.approx(3 / 5)
    none_predicted = M.binary_confusion([0, 0], [0.1, 0.2], 1.0)
    assert math.isnan(none_predicted["precision"]) and math.isnan(none_predicted["recall"])
    assert none_predicted["accuracy"] == 1.0


def test_threshold_from_good():
    scores = np.arange(101, dtype=np.float32)
    assert M.threshold_from_good(scores, 99) == 99.0
    assert M.threshold_from_good([1.0, 2.0], 50) == 1.5  # linear interpolation between order statistics
    assert M.threshold_from_good(np.random.default_rng(0).random((3, 8, 8)), 90) == pytest.approx(
        np.percentile(np.random.default_rng(0).random((3, 8, 8)), 90)
    )
    assert math.isnan(M.threshold_from_good([], 99))
    with pytest.raises(ValueError):
        M.threshold_from_good([1.0], 101)


def test_per_defect_image_auroc_hand_computed():
    labels = [0, 0, 1, 1, 1]
    scores = [0.1, 0.2, 0.3, 0.15, 0.05]
    types = ["good", "good", "crack", "scratch", "scratch"]
    out = M.per_defect_image_auroc(labels, scores, types)
    # crack 0.3 beats both goods -> 1; scratch: 0.15 beats 0.1 only, 0.05 beats none -> 1 of 4
    assert out == {"crack": 1.0, "scratch": 0.25}
    assert M.per_defect_auroc is M.per_defect_image_auroc
    assert all(math.isnan(v) for v in M.per_defect_image_auroc([1, 1], [0.1, 0.2], ["a", "b"]).values())


# ----------------------------------------------------------------------------------------------------------------------
# cross-checks with scikit-learn on data with many ties
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_image_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    scores = (rng.integers(0, 12, n) + 2 * labels).astype(np.float32) / 7  # heavy ties
    assert M.image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    fpr, tpr, thr = M.roc_curve_points(labels, scores)
    ref = roc_curve(labels, scores)
    for mine, theirs in zip((fpr, tpr, thr), ref):
        np.testing.assert_array_equal(mine, theirs)
    fpr, tpr, thr = M.roc_curve_points(labels, scores, drop_intermediate=False)
    for mine, theirs in zip((fpr, tpr, thr), roc_curve(labels, scores, drop_intermediate=False)):
        np.testing.assert_array_equal(mine, theirs)
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1_ref = np.nan_to_num(2 * precision * recall / (precision + recall)).max()
    f1, threshold = M.f1_max(labels, scores)
    assert f1 == pytest.approx(f1_ref, abs=1e-12)
    assert M.binary_confusion(labels, scores, threshold)["f1"] == pytest.approx(f1, abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_pixel_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    masks = blob_masks(rng, 5, 40, 48, noise=0.01)
    maps = (rng.integers(0, 40, masks.shape) + 10 * masks).astype(np.float32) / 3  # ties across both classes
    y, s = masks.ravel(), maps.ravel()
    assert M.pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert M.pixel_average_precision(masks, maps) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    precision, recall, _ = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1_ref = np.nan_to_num(2 * precision * recall / (precision + recall)).max()
    assert M.pixel_f1_max(masks, maps)[0] == pytest.approx(f1_ref, abs=1e-12)
    # the one-sort suite gives the same numbers as the single functions
    suite = M.pixel_metrics(masks, maps)
    assert suite["pixel_auroc"] == M.pixel_auroc(masks, maps)
    assert suite["pixel_ap"] == M.pixel_average_precision(masks, maps)
    assert (suite["pixel_f1_max"], suite["pixel_f1_threshold"]) == M.pixel_f1_max(masks, maps)
    assert suite["au_pro"] == M.au_pro(masks, maps)


def test_pixel_input_layouts_agree():
    rng = np.random.default_rng(7)
    masks = blob_masks(rng, 4, 16, 16)
    maps = rng.random(masks.shape, dtype=np.float32) + masks
    masks_before, maps_before = masks.copy(), maps.copy()
    ref = M.pixel_metrics(masks, maps)
    M.au_pro(masks, maps)
    M.pro_curve(masks, maps)
    np.testing.assert_array_equal(maps, maps_before)  # inputs are never modified (sorting works on copies)
    np.testing.assert_array_equal(masks, masks_before)
    # (N, 1, H, W) float32 masks, {0, 255} masks, float64 maps, torch tensors: all give the same numbers
    assert M.pixel_metrics(masks[:, None].astype(np.float32), maps[:, None]) == ref
    assert M.pixel_metrics(masks * 255, maps) == ref
    assert M.pixel_metrics(masks.astype(bool), maps.astype(np.float64)) == ref
    torch = pytest.importorskip("torch")
    assert M.pixel_metrics(torch.from_numpy(masks), torch.from_numpy(maps)) == ref
    assert M.image_auroc(torch.tensor([0, 1, 1]), torch.tensor([0.2, 0.1, 0.9])) == 0.5


# ----------------------------------------------------------------------------------------------------------------------
# connected components
# ----------------------------------------------------------------------------------------------------------------------


def test_diagonal_pixels_form_one_region():
    mask = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    labels, n = M.label_8_connected_regions(mask)
    assert n == 1
    np.testing.assert_array_equal(labels, mask)
    assert ndimage.label(mask)[1] == 2  # with 4-connectivity it would be two regions


@pytest.mark.parametrize("density", [0.05, 0.3, 0.45, 0.6, 0.9])
def test_labelling_matches_scipy(density):
    rng = np.random.default_rng(int(density * 100))
    masks = rng.random((4, 37, 53)) < density
    masks[1] = blob_masks(rng, 2, 37, 53)[1]
    masks[2, :, 0] = masks[2, :, -1] = True  # regions touching the left and right borders must not wrap
    masks[3] = False
    labels, n = M.label_8_connected_regions(masks)
    assert labels.dtype == np.int32
    offset = 0
    for i in range(len(masks)):
        ref, k = ndimage.label(masks[i], structure=EIGHT)
        np.testing.assert_array_equal(labels[i], np.where(ref > 0, ref + offset, 0))
        offset += k
    assert n == offset
    single, k = M.label_8_connected_regions(masks[0])
    ref, k_ref = ndimage.label(masks[0], structure=EIGHT)
    np.testing.assert_array_equal(single, ref)
    assert k == k_ref


def test_labelling_long_snake():
    # a one-pixel-wide serpentine path: one region spanning the whole image
    mask = np.zeros((41, 41), dtype=bool)
    mask[::2] = True
    mask[1::4, -1] = True
    mask[3::4, 0] = True
    labels, n = M.label_8_connected_regions(mask)
    assert n == 1 and labels.max() == 1


# ----------------------------------------------------------------------------------------------------------------------
# AU-PRO
# ----------------------------------------------------------------------------------------------------------------------


def two_region_case():
    """One 3x4 image with regions A = {(0,0), (0,1)} and B = {(1,3), (2,3)}, 8 normal pixels."""
    mask = np.array([[1, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 1]], dtype=np.uint8)
    maps = np.array([[5, 3, 6, 0], [0, 2, 0, 4], [0, 0, 0, 1]], dtype=np.float32)
    return mask[None], maps[None]


def test_au_pro_hand_computed_two_regions():
    masks, maps = two_region_case()
    # threshold: FPR, PRO = mean(A overlap, B overlap)
    #   6: 1/8, 0          5: 1/8, (1/2 + 0)/2 = 1/4     4: 1/8, (1/2 + 1/2)/2 = 1/2
    #   3: 1/8, 3/4        2: 2/8, 3/4                    1: 2/8, 1             0: 1, 1
    # area to 0.3: [0, 1/8] under 0 -> 0; [1/8, 1/4] at 3/4 -> 3/32; [1/4, 0.3] at 1 -> 1/20
    # (3/32 + 1/20) / 0.3 = (23/160) / (3/10) = 23/48
    assert M.au_pro(masks, maps) == pytest.approx(23 / 48, abs=1e-12)
    fpr, pro = M.pro_curve(masks, maps)
    np.testing.assert_allclose(fpr, [0, 1 / 8, 1 / 8, 2 / 8, 2 / 8, 1])
    np.testing.assert_allclose(pro, [0, 0, 3 / 4, 3 / 4, 1, 1])
    # full area: [1/8, 1/4] * 3/4 + [1/4, 1] * 1
    assert M.au_pro(masks, maps, fpr_limit=1.0) == pytest.approx(3 / 32 + 3 / 4, abs=1e-12)


def test_au_pro_hand_computed_interpolated_tie_segment():
    masks, maps = two_region_case()
    maps[0, 2, 3] = 0  # B's second pixel now ties with 6 normal pixels at 0
    # after threshold 2 (FPR 1/4, PRO 3/4), threshold 0 jumps diagonally to (1, 1).
    # PRO at FPR 0.3: 3/4 + (1/4) * (0.05 / 0.75) = 23/30; area of [1/4, 0.3]: (3/4 + 23/30) / 2 * 1/20 = 91/2400
    # total (3/32 + 91/2400) / 0.3 = (316/2400) / 0.3 = 79/180
    assert M.au_pro(masks, maps) == pytest.approx(79 / 180, abs=1e-12)


def test_au_pro_good_image_pixels_count_only_as_false_positives():
    masks, maps = two_region_case()
    masks = np.concatenate([masks, np.zeros_like(masks)])
    maps = np.concatenate([maps, np.zeros_like(maps)])
    # 20 normal pixels now: FPR 1/20 at thresholds 6..3, 2/20 at 2 (PRO 3/4) and 1 (PRO 1)
    # area: [0.05, 0.1] * 3/4 + [0.1, 0.3] * 1 = 0.0375 + 0.2 -> / 0.3 = 19/24
    assert M.au_pro(masks, maps) == pytest.approx(19 / 24, abs=1e-12)


def test_au_pro_uses_8_connectivity():
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[0, 0] = mask[1, 1] = mask[1, 2] = 1  # one 8-connected region of 3 pixels (two regions if 4-connected)
    maps = np.zeros((4, 4), dtype=np.float32)
    maps[0, 0] = 3
    maps[1, 1] = maps[1, 2] = 1
    maps[3, 3] = 2  # one of 13 normal pixels
    # points: (0, 1/3) at 3, (1/13, 1/3) at 2, (1/13, 1) at 1, (1, 1) at 0
    # area to 0.3: 1/13 * 1/3 + (0.3 - 1/13) -> / 0.3 = 1 - 20/117 = 97/117  (4-connected would give 1 - 10/78)
    assert M.au_pro(mask, maps) == pytest.approx(97 / 117, abs=1e-12)
    assert M.au_pro(mask, maps) == pytest.approx(brute_force_au_pro(mask[None], maps[None], np.unique(maps)))


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_au_pro_equals_brute_force_over_every_distinct_value(seed, limit):
    rng = np.random.default_rng(seed)
    masks = blob_masks(rng, 4, 24, 28, noise=0.02)
    # integer-valued maps: many ties, also between normal and anomalous pixels, plus a few bright normal pixels
    maps = (rng.integers(0, 15, masks.shape) + 6 * masks + 20 * (rng.random(masks.shape) < 0.01)).astype(np.float32)
    expected = brute_force_au_pro(masks, maps, np.unique(maps), limit)
    assert M.au_pro(masks, maps, fpr_limit=limit) == pytest.approx(expected, abs=1e-12)
    fpr, pro = M.pro_curve(masks, maps)
    assert integrate_to(list(zip(fpr, pro)), limit) / limit == pytest.approx(expected, abs=1e-12)


def test_au_pro_matches_dense_threshold_sweep_on_continuous_maps():
    rng = np.random.default_rng(11)
    masks = blob_masks(rng, 6, 48, 48, noise=0.005)
    maps = rng.standard_normal(masks.shape).astype(np.float32) + 1.5 * ndimage.uniform_filter(
        masks.astype(np.float32), size=(1, 5, 5)
    )
    thresholds = np.linspace(maps.max(), maps.min(), 3000)
    exact = M.au_pro(masks, maps)
    assert exact == pytest.approx(brute_force_au_pro(masks, maps, thresholds), abs=1e-3)
    # the subsampled variant is exactly the brute force at the same thresholds
    assert M.au_pro(masks, maps, num_thresholds=3000) == pytest.approx(
        brute_force_au_pro(masks, maps, thresholds), abs=1e-12
    )
    assert 0.0 < exact < 1.0


def test_pro_curve_shape_and_thinning():
    rng = np.random.default_rng(3)
    masks = blob_masks(rng, 5, 32, 32)
    maps = rng.random(masks.shape, dtype=np.float32) + 0.5 * masks
    fpr, pro = M.pro_curve(masks, maps)
    assert (fpr[0], pro[0], fpr[-1], pro[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= 0)
    # every threshold's (FPR, PRO) point lies on the returned polyline
    bf_fpr, bf_pro = brute_force_pro_points(masks, maps, np.unique(maps)[::97])
    for x, y in zip(bf_fpr, bf_pro):
        at_x = pro[fpr == x] if np.any(fpr == x) else np.interp(x, fpr, pro)
        assert np.min(np.abs(at_x - y)) < 1e-12 or (at_x.min() <= y <= at_x.max())
    small_fpr, small_pro = M.pro_curve(masks, maps, max_points=50)
    assert small_fpr.size == 50 and (small_fpr[0], small_pro[-1]) == (0.0, 1.0)


# ----------------------------------------------------------------------------------------------------------------------
# edge cases
# ----------------------------------------------------------------------------------------------------------------------


def test_constant_maps():
    masks = np.zeros((2, 8, 8), dtype=np.uint8)
    masks[1, 2:4, 2:5] = 1
    maps = np.full(masks.shape, 0.5, dtype=np.float32)
    assert M.pixel_auroc(masks, maps) == 0.5
    # one threshold: all pixels anomalous -> precision = anomalous share
    assert M.pixel_average_precision(masks, maps) == pytest.approx(6 / 128)
    assert M.pixel_f1_max(masks, maps) == (pytest.approx(2 * 6 / (6 + 128)), 0.5)
    # the curve is the diagonal from (0, 0) to (1, 1): area to 0.3 = 0.045, normalised 0.15
    assert M.au_pro(masks, maps) == pytest.approx(0.15, abs=1e-12)
    assert M.image_auroc([0, 1, 1], [2.0, 2.0, 2.0]) == 0.5


def test_no_anomalous_pixels_or_no_normal_pixels_gives_nan():
    good_only = np.zeros((3, 8, 8), dtype=np.uint8)
    maps = np.random.default_rng(0).random(good_only.shape, dtype=np.float32)
    for value in (
        M.pixel_auroc(good_only, maps),
        M.pixel_average_precision(good_only, maps),
        M.au_pro(good_only, maps),
    ):
        assert math.isnan(value)
    assert all(math.isnan(v) for v in M.pixel_f1_max(good_only, maps))
    assert all(math.isnan(v) for v in M.pixel_metrics(good_only, maps).values())
    assert M.pro_curve(good_only, maps)[0].size == 0
    all_anomalous = np.ones((1, 4, 4), dtype=np.uint8)
    assert math.isnan(M.au_pro(all_anomalous, maps[:1, :4, :4]))
    assert math.isnan(M.pixel_auroc(all_anomalous, maps[:1, :4, :4]))
    assert M.pixel_f1_max(all_anomalous, maps[:1, :4, :4])[0] == 1.0


def test_perfect_and_inverted_maps():
    rng = np.random.default_rng(5)
    masks = blob_masks(rng, 4, 20, 20)
    perfect = masks.astype(np.float32) + 0.01 * rng.random(masks.shape, dtype=np.float32)
    assert M.pixel_metrics(masks, perfect) == {
        "pixel_auroc": 1.0,
        "pixel_ap": 1.0,
        "pixel_f1_max": 1.0,
        "pixel_f1_threshold": pytest.approx(perfect[masks > 0].min()),
        "au_pro": 1.0,
    }
    assert M.pixel_auroc(masks, -perfect) == 0.0
    assert M.au_pro(masks, -perfect) == 0.0
