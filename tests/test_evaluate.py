"""Evaluation end to end: metrics on real images, results.json, exported maps, summary, command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import offline_torch_home
from sklearn.metrics import roc_auc_score

from colab_utils.cli import main
from colab_utils.config import Config
from colab_utils.evaluate import evaluate, load_results, write_summary
from colab_utils.train import fit

REQUIRED = ("image_auroc", "pixel_auroc", "au_pro", "image_f1_max", "pixel_f1_max", "pixel_ap")


@pytest.fixture(scope="module")
def bottle_bank_run(mvtec_root, weights_dir, tmp_path_factory):
    """A memory-bank run at 128 px on real bottle images with the offline MobileNetV2 weights."""
    with offline_torch_home(weights_dir, tmp_path_factory.mktemp("torch_home")):
        cfg = Config.for_category("bottle", mode="memory_bank", image_size=128, batch_size=16)
        runs = tmp_path_factory.mktemp("runs")
        fit(cfg, mvtec_root, runs / "bottle", progress=False, log=lambda m: None)
        yield runs, cfg


def test_memory_bank_detects_real_bottle_defects(bottle_bank_run, mvtec_root):
    runs, cfg = bottle_bank_run
    result = evaluate(runs / "bottle", mvtec_root, out_dir=runs, export="npy", progress=False)
    assert result.metrics["image_auroc"] > 0.9, result.metrics
    assert result.metrics["pixel_auroc"] > 0.9, result.metrics
    assert 0.0 < result.metrics["au_pro"] <= 1.0

    data = load_results(runs / "bottle")
    for key in REQUIRED:
        assert data[key] == pytest.approx(result.metrics[key])
    assert set(data["per_defect_image_auroc"]) == {"broken_large", "broken_small", "contamination"}
    assert data["config"]["category"] == "bottle" and Config.from_dict(data["config"]) == cfg.replace(geometry="resize")
    assert len(data["checkpoint_sha256"]) == 64
    # anyone can recompute the image metrics from the per-image records
    labels = [r["label"] for r in data["records"]]
    scores = [r["score"] for r in data["records"]]
    assert roc_auc_score(labels, scores) == pytest.approx(data["image_auroc"], abs=1e-6)
    assert len(data["records"]) == len(result.labels) == 83
    # thresholds: default from good training images only, F1-optimal for reference
    assert {"image_default", "pixel_default", "image_f1_optimal", "pixel_f1_optimal"} <= set(data["thresholds"])
    # one exported map per test image, readable and equal to what was scored
    maps = sorted((runs / "bottle" / "maps").rglob("*.npy"))
    assert len(maps) == 83
    first = result.paths[0]
    dtype = result.defect_types[0]
    stem = first.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    np.testing.assert_allclose(np.load(runs / "bottle" / "maps" / dtype / f"{stem}.npy"), result.maps[0])


def test_summary_table_has_mean_row(bottle_bank_run):
    runs, _ = bottle_bank_run
    results = [load_results(runs / "bottle")]
    md, csv = write_summary(results, runs)
    lines = csv.read_text().strip().splitlines()
    assert lines[0].split(",")[:2] == ["category", "image_auroc"]
    assert [line.split(",")[0] for line in lines[1:]] == ["bottle", "mean"]
    assert "| mean |" in md.read_text()


def test_a_runs_summary_holds_only_the_categories_it_was_asked_for(bottle_bank_run, tmp_path):
    import shutil

    from colab_utils.evaluate import summarize_runs

    runs, _ = bottle_bank_run
    folder = tmp_path / "runs"
    for name in ("bottle", "sample"):  # an earlier run's results lie beside this run's
        (folder / name).mkdir(parents=True)
        shutil.copy(runs / "bottle" / "results.json", folder / name / "results.json")
    data = json.loads((folder / "sample" / "results.json").read_text())
    data["category"] = "sample"
    (folder / "sample" / "results.json").write_text(json.dumps(data))
    _, csv = summarize_runs(folder, ["bottle"])
    assert [line.split(",")[0] for line in csv.read_text().strip().splitlines()[1:]] == ["bottle", "mean"]
    _, csv = summarize_runs(folder)
    assert [line.split(",")[0] for line in csv.read_text().strip().splitlines()[1:]] == ["bottle", "sample", "mean"]


def test_command_line_train_and_evaluate_on_sample(sample_root, tmp_path, capsys):
    cfg = Config.for_category("sample", mode="unet", image_size=64, base_width=8, depth=3, skip_levels=1,
                              out_scales=(1, 2), loss_scale_weights=(1.0, 0.5), map_scale_weights=(1.0, 1.0),
                              smooth_sigma=1.0, epochs=2, batch_size=8)
    cfg_file = cfg.save(tmp_path / "cfg.yaml")
    runs = tmp_path / "runs"
    args = ["--data-root", str(sample_root), "--category", "sample", "--out", str(runs), "--device", "cpu"]
    assert main(["train", *args, "--config", str(cfg_file)]) == 0
    assert (runs / "sample" / "best.pt").exists()
    assert main(["train", *args, "--config", str(cfg_file)]) == 0  # finished: not retrained
    assert "already trained" in capsys.readouterr().out
    assert main(["evaluate", *args, "--export", "png16"]) == 0
    data = json.loads((runs / "sample" / "results.json").read_text())
    assert all(data[k] is not None and 0.0 <= data[k] <= 1.0 for k in REQUIRED)
    assert (runs / "summary.md").exists() and (runs / "summary.csv").exists()
    for figure in ("roc.png", "pro.png", "score_histogram.png", "worst_fp.png", "worst_fn.png"):
        assert (runs / "sample" / figure).stat().st_size > 1000
    assert len(list((runs / "sample" / "maps").rglob("*.png"))) == data["n_images"]
    assert main(["summary", "--out", str(runs)]) == 0


def test_command_line_errors_name_the_problem(tmp_path, capsys):
    code = main(["train", "--data-root", str(tmp_path / "nowhere"), "--category", "bottle", "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "nowhere" in err
    assert not (tmp_path / "bottle").exists()  # a failed command leaves no empty run folder
    code = main(["evaluate", "--data-root", str(tmp_path), "--category", "bottle", "--out", str(tmp_path / "runs")])
    assert code == 2
    assert "train first" in capsys.readouterr().err


def test_command_line_names_the_profile_it_picked(sample_root, tmp_path, capsys, monkeypatch):
    from colab_utils.cli import _resolve_profile

    monkeypatch.delenv("SMOKE", raising=False)
    assert _resolve_profile("auto", "cpu", "unet") == "cpu"
    out = capsys.readouterr().out
    assert "profile 'cpu' (chosen by --profile auto, device cpu)" in out and "image_size=128" in out
    runs = tmp_path / "runs"
    args = ["--data-root", str(sample_root), "--category", "sample", "--out", str(runs), "--device", "cpu"]
    assert main(["train", *args, "--profile", "smoke", "--mode", "unet", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "profile 'smoke' (as asked" in out and "base_width=8" in out
    saved = json.loads((runs / "sample" / "config.json").read_text())
    assert saved["image_size"] == 64 and saved["model"]["base_width"] == 8 and saved["epochs"] == 1


UNET_TINY = dict(mode="unet", base_width=8, depth=3, skip_levels=1, out_scales=(1, 2), loss_scale_weights=(1.0, 0.5),
                 map_scale_weights=(1.0, 1.0))
BANK_TINY = dict(mode="memory_bank", pretrained=False, coreset_ratio=0.25)  # random weights: plumbing only


@pytest.mark.parametrize("family", [UNET_TINY, BANK_TINY], ids=["unet", "memory_bank"])
def test_user_folder_without_masks_end_to_end(sample_root, tmp_path, family):
    """The README's own-images recipe: a folder of good images, a folder of test images, no masks."""
    from colab_utils.data import load_user_folder

    cat = sample_root / "sample"
    train_set, test_set = load_user_folder(cat / "train" / "good", image_size=64, channels=3, defect_dir=cat / "test")
    assert test_set is not None and not test_set.has_masks and 0 < test_set.labels.sum() < len(test_set)
    cfg = Config.for_category("my_parts", image_size=64, smooth_sigma=1.0, epochs=1, batch_size=8, **family)
    fit(cfg, None, tmp_path / "runs" / "my_parts", train_set=train_set, progress=False, log=lambda m: None)
    result = evaluate(tmp_path / "runs" / "my_parts", test_set=test_set, out_dir=tmp_path / "runs", progress=False)
    assert 0.0 <= result.metrics["image_auroc"] <= 1.0
    assert np.isnan(result.metrics["pixel_auroc"]) and np.isnan(result.metrics["au_pro"])  # no masks: not computed
    data = load_results(tmp_path / "runs" / "my_parts")
    assert data["pixel_auroc"] is None and data["category"] == "my_parts"


def test_operating_points_on_a_hand_worked_case():
    from colab_utils.evaluate import operating_points

    labels = np.array([0, 0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.9, 0.3, 0.8, 0.4])
    masks = np.zeros((6, 2, 2), np.uint8)
    masks[4, 0, :] = 1  # two defect pixels
    maps = np.zeros((6, 2, 2), np.float32)
    maps[4, 0, 0] = maps[4, 1, 1] = 5.0  # one hit, one false alarm, one miss
    out = operating_points(labels, scores, masks, maps, image_threshold=0.5, pixel_threshold=1.0)
    assert out["good_flagged_rate"] == 0.25  # 0.9 of four good images
    assert out["defect_recall"] == 0.5  # 0.8 flagged, 0.4 missed
    assert out["mask_f1"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1)) and out["mask_iou"] == pytest.approx(1 / 3)
    no_masks = operating_points(labels, scores, None, maps, 0.5, 1.0)
    assert np.isnan(no_masks["mask_f1"]) and np.isnan(no_masks["mask_iou"])
    # the false-alarm budget beside the count and its exact interval: 1 of 4 is consistent with a 5 % budget
    budgeted = operating_points(labels, scores, masks, maps, 0.5, 1.0, false_alarm_budget=0.05)
    assert (budgeted["good_flagged"], budgeted["good_count"], budgeted["false_alarm_budget"]) == (1, 4, 0.05)
    assert budgeted["good_flagged_ci_low"] == pytest.approx(1 - 0.975 ** 0.25, abs=1e-3)
    assert budgeted["good_flagged_ci_low"] < 0.05
    assert budgeted["budget_kept"] == 1.0


def test_the_mask_keeps_each_images_pixels_above_the_threshold_and_half_its_peak():
    from colab_utils.evaluate import operating_points
    from colab_utils.scoring import predicted_mask

    # a strong defect with a blurred flank, a faint one, a good image: one row each
    maps = np.array([[0.5, 3.0, 9.0, 10.0, 4.0], [0.5, 2.5, 3.0, 2.0, 0.5], [0.5, 1.0, 1.5, 1.0, 0.5]], np.float32)
    plain = predicted_mask(maps[:, None], 2.0)
    assert plain[:, 0].tolist() == [[0, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 0, 0, 0]]
    half = predicted_mask(maps[:, None], 2.0, 0.5)  # the strong one keeps 9 and 10 (>= 5), the faint one >= 2
    assert half[:, 0].tolist() == [[0, 0, 1, 1, 0], [0, 1, 1, 1, 0], [0, 0, 0, 0, 0]]
    assert predicted_mask(maps[1], 2.0, 0.9).tolist() == [0, 0, 1, 0, 0]  # one image (H, W): its own peak
    masks = np.zeros_like(maps, np.uint8)[:, None]
    masks[0, 0, 2:4] = masks[1, 0, 1:4] = 1
    labels = np.array([1, 1, 0])
    scores = maps.max(1)
    out = operating_points(labels, scores, masks, maps[:, None], 2.0, 2.0, peak_share=0.5)
    assert out["mask_f1"] == 1.0 and out["mask_iou"] == 1.0
    flank = operating_points(labels, scores, masks, maps[:, None], 2.0, 2.0)
    assert flank["mask_f1"] == pytest.approx(2 * 5 / (2 * 5 + 2))  # the strong defect's two flank pixels


def test_binomial_interval_matches_its_closed_forms():
    from colab_utils.metrics import binomial_interval

    assert binomial_interval(0, 20) == pytest.approx((0.0, 1 - 0.025 ** (1 / 20)))  # none flagged of 20
    assert binomial_interval(20, 20) == pytest.approx((0.025 ** (1 / 20), 1.0))
    low, high = binomial_interval(5, 100)
    assert low < 0.05 < high and high - low < 0.1
    assert all(np.isnan(v) for v in binomial_interval(0, 0))


def test_a_percentile_calibration_keeps_its_budget_on_good_images_of_the_same_distribution():
    """Hand-built good scores: a threshold at the 95th percentile of 2,000 calibration scores flags about 5 % of
    10,000 fresh ones, inside the exact interval of that count, for three score distributions."""
    from colab_utils.metrics import binomial_interval, threshold_from_good

    rng = np.random.default_rng(0)
    for draw in (lambda n: rng.normal(0, 1, n), lambda n: rng.lognormal(0, 1, n), lambda n: rng.gamma(2.0, 1.0, n)):
        threshold = threshold_from_good(draw(2000), 95.0)
        fresh = draw(10000)
        flagged = int((fresh >= threshold).sum())
        low, high = binomial_interval(flagged, len(fresh))
        assert 0.04 < flagged / len(fresh) < 0.06 and low <= 0.05 + 0.01 and high >= 0.05 - 0.01
