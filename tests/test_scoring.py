"""Anomaly maps, image scores and the calibration from good images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from colab_utils.config import Config
from colab_utils.models import build_model
from colab_utils.models.unet import pixel_error_map
from colab_utils.scoring import (
    MapNormalizer,
    PositionStats,
    anomaly_maps,
    calibrate,
    gaussian_smooth,
    image_scores,
    predict,
)

UNET = dict(mode="unet", image_size=64, base_width=8, depth=3, skip_levels=1, out_scales=(1, 2),
            loss_scale_weights=(1.0, 0.5), map_scale_weights=(1.0, 1.0), smooth_sigma=1.0)


def test_pixel_error_is_zero_for_perfect_reconstruction_and_local_otherwise():
    cfg = Config(**UNET)
    x = torch.rand(2, 3, 64, 64)
    recons = {1: x.clone(), 2: torch.nn.functional.avg_pool2d(x, 2)}
    assert torch.allclose(pixel_error_map(x, recons, cfg), torch.zeros(2, 1, 64, 64), atol=1e-5)
    broken = x.clone()
    broken[0, :, 40:50, 10:20] = 1.0 - broken[0, :, 40:50, 10:20]
    recons = {1: broken, 2: torch.nn.functional.avg_pool2d(broken, 2)}
    err = pixel_error_map(x, recons, cfg)
    assert err[0, 0, 42:48, 12:18].mean() > 10 * err[0, 0, :20, 40:].mean()
    assert err[1].abs().max() < 1e-4  # the other image is untouched


def test_perceptual_map_term_adds_feature_distance():
    cfg = Config(**UNET, map_perceptual_weight=1.0, pretrained=False)
    x = torch.rand(1, 3, 64, 64)
    same = pixel_error_map(x, {1: x, 2: torch.nn.functional.avg_pool2d(x, 2)}, cfg)
    other = torch.rand(1, 3, 64, 64)
    diff = pixel_error_map(x, {1: other, 2: torch.nn.functional.avg_pool2d(x, 2)}, cfg)
    assert same.abs().max() < 1e-4 and diff.mean() > same.mean()


def test_gaussian_smoothing_keeps_shape_and_mass():
    maps = torch.zeros(1, 1, 64, 64)
    maps[0, 0, 32, 32] = 1.0
    smooth = gaussian_smooth(maps, 4.0)
    assert smooth.shape == maps.shape
    assert float(smooth.sum()) == pytest.approx(1.0, rel=1e-3)
    assert float(smooth.max()) < 0.02 and smooth[0, 0, 32, 32] == smooth.max()


def test_image_scores_max_and_topk():
    maps = torch.zeros(1, 1, 10, 10)
    maps[0, 0, 0, :4] = torch.tensor([4.0, 3.0, 2.0, 1.0])
    assert image_scores(maps, Config(image_score="max")).item() == 4.0
    cfg = Config(image_score="topk_mean", topk_fraction=0.02)  # top 2 of 100 pixels
    assert image_scores(maps, cfg).item() == pytest.approx(3.5)


def test_normalizer_standardises_good_maps():
    good = np.random.default_rng(0).normal(5.0, 2.0, size=(20, 16, 16)).astype(np.float32)
    norm = MapNormalizer.fit(good)
    z = norm(torch.from_numpy(good))
    assert float(z.mean()) == pytest.approx(0.0, abs=1e-5) and float(z.std()) == pytest.approx(1.0, abs=1e-3)
    assert MapNormalizer.from_dict(norm.to_dict()) == norm


def test_position_stats_discount_places_that_are_always_hard():
    rng = np.random.default_rng(0)
    good = rng.normal(0.0, 0.1, size=(30, 16, 16)).astype(np.float32)
    good[:, 2, 2] += 5.0  # a spot every good image reconstructs badly (printed text, an edge)
    stats = PositionStats.fit(good)
    test = torch.from_numpy(rng.normal(0.0, 0.1, size=(2, 1, 16, 16)).astype(np.float32))
    test[0, 0, 2, 2] += 5.0  # a good image: the usual hard spot
    test[1, 0, 10, 10] += 1.0  # a defect: a smaller error, but where good images never have one
    global_scores = test.flatten(1).max(1).values
    assert global_scores[0] > global_scores[1]  # a global maximum ranks the good image first
    z_scores = stats(test).flatten(1).max(1).values
    assert z_scores[1] > z_scores[0]  # per-position standardisation ranks the defect first


def test_each_map_standardised_without_itself_equals_statistics_of_the_others():
    rng = np.random.default_rng(1)
    maps = torch.from_numpy(rng.gamma(2.0, 1.0, size=(9, 1, 6, 5)).astype(np.float32))
    maps[3, 0, 2, 2] += 40.0  # one image's own outlier widens its position's std in-sample
    maps[:, 0, 0, 0] = 1.0  # a flat position: the std floor applies
    stats = PositionStats.fit(maps[:, 0])
    loo = stats.without_each(maps, chunk=4)
    for i in range(9):
        others = torch.cat([maps[:i], maps[i + 1 :]])[:, 0]
        ref = PositionStats(others.mean(0), others.std(0).clamp_min(stats.floor))
        assert torch.allclose(loo[i], ref(maps[i : i + 1])[0], rtol=1e-4, atol=1e-4)
    assert loo[3, 0, 2, 2] > 2 * stats(maps)[3, 0, 2, 2]  # in-sample, the outlier hid itself


def test_calibrate_sets_thresholds_from_good_images_only():
    torch.manual_seed(0)
    cfg = Config(**UNET)
    model = build_model(cfg).eval()
    good = (torch.rand(12, 3, 64, 64) * 255).to(torch.uint8)
    train = (torch.rand(20, 3, 64, 64) * 255).to(torch.uint8)
    cal = calibrate(model, good, cfg, "cpu", batch_size=4, train_images_uint8=train)
    assert cal["position"]["mean"].shape == (64, 64)
    assert cal["image_threshold"] == pytest.approx(np.percentile(cal["good_scores"], cfg.threshold_percentile))
    normalizer = MapNormalizer.from_dict(cal["normalizer"])
    pred = predict(model, good, cfg, "cpu", normalizer, position=PositionStats.from_calibration(cal))
    np.testing.assert_allclose(pred["scores"], cal["good_scores"], rtol=1e-4, atol=1e-4)
    assert pred["recons"].dtype == np.uint8 and pred["recons"].shape == (12, 3, 64, 64)
    assert float(np.abs(pred["maps"].mean())) < 0.2  # standardised on these very images
    glob = calibrate(model, good, cfg.replace(image_score_norm="global"), "cpu", train_images_uint8=train)
    assert glob["position"] is None


def test_anomaly_maps_of_memory_bank_have_image_size():
    cfg = Config(mode="memory_bank", image_size=64, pretrained=False, smooth_sigma=1.0)
    model = build_model(cfg).eval()
    model.set_bank(torch.randn(40, model.extractor.out_channels))
    out = anomaly_maps(model, torch.rand(2, 3, 64, 64), cfg)
    maps, recon = out.maps, out.recon
    assert maps.shape == (2, 1, 64, 64) and recon is None and bool((maps >= 0).all())



def test_the_mask_threshold_is_a_quantile_of_good_pixels():
    """``mask_pixel_rate``: that share of the calibration images' normalised pixels lies above the mask threshold;
    0 keeps the percentile of their map maxima. Calibration sees good images only: it has no labels to reach."""
    import inspect

    torch.manual_seed(0)
    good = (torch.rand(12, 3, 64, 64) * 255).to(torch.uint8)
    cfg = Config(**UNET, mask_pixel_rate=0.01)
    model = build_model(cfg).eval()
    cal = calibrate(model, good, cfg, "cpu", batch_size=4)
    pred = predict(model, good, cfg, "cpu", MapNormalizer.from_dict(cal["normalizer"]),
                   position=PositionStats.from_calibration(cal))  # fmt: skip
    above = float((pred["maps"] >= cal["pixel_threshold"]).mean())
    assert above == pytest.approx(0.01, abs=0.002) and "1 % of good pixels" in cal["pixel_threshold_rule"]
    assert cal["good_pixel_quantiles"]["0.01"] == pytest.approx(cal["pixel_threshold"])
    old = calibrate(model, good, cfg.replace(mask_pixel_rate=0.0), "cpu", batch_size=4)
    assert old["pixel_threshold"] == pytest.approx(np.percentile(pred["maps"].reshape(12, -1).max(1), 99.0), rel=1e-4)
    assert old["pixel_threshold"] > cal["pixel_threshold"]  # the maxima rule sits far above 1 % of good pixels
    assert not {"labels", "masks"} & set(inspect.signature(calibrate).parameters)
