"""The benchmark scripts run from a clean checkout and print their table last."""

from __future__ import annotations

import json
import runpy
import sys

import pytest


def test_quality_script_on_sample_smoke(sample_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "bench"
    argv = ["quality.py", "--data-root", str(sample_root), "--categories", "sample", "--mode", "unet",
            "--profile", "smoke", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path("benchmarks/quality.py", run_name="__main__")
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out.strip().splitlines()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "unet" and summary["categories"][0]["category"] == "sample"
    assert 0.0 <= summary["mean"]["image_auroc"] <= 1.0
    table = [line for line in printed if line.startswith("| sample |") or line.startswith("| mean |")]
    assert len(table) == 4  # the metrics table and the default-threshold table
    results = json.loads((out / "sample" / "results.json").read_text())
    assert results["train_seconds"] > 0 and results["epochs"] == 2

    # --rescore: the same trained run, scored another way, training nothing; a weight-changing field is refused
    again = tmp_path / "rescored"
    argv = ["quality.py", "--data-root", str(sample_root), "--categories", "sample", "--mode", "unet",
            "--rescore", str(out), "--out", str(again), "--set", "smooth_sigma=2.0"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path("benchmarks/quality.py", run_name="__main__")
    assert exit_info.value.code == 0
    rescored = json.loads((again / "sample" / "results.json").read_text())
    assert rescored["config"]["smooth_sigma"] == 2.0 and results["config"]["smooth_sigma"] != 2.0
    assert rescored["epochs"] == results["epochs"] and not (again / "sample" / "last.pt").exists()
    assert rescored["thresholds"] != results["thresholds"]  # recalibrated for the new smoothing
    monkeypatch.setattr(sys, "argv", [*argv[:-1], "base_width=4"])
    with pytest.raises(SystemExit, match="retraining"):
        runpy.run_path("benchmarks/quality.py", run_name="__main__")


def test_quality_script_reports_the_mean_and_range_over_seeds(sample_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "bench"
    argv = ["quality.py", "--data-root", str(sample_root), "--categories", "sample", "--profile", "smoke",
            "--out", str(out), "--seeds", "0", "1", "--set", "pretrained=false"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path("benchmarks/quality.py", run_name="__main__")
    assert exit_info.value.code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and len(summary["per_seed"]) == 2
    by_seed = {r["seed"]: r for r in summary["per_seed"]}
    for seed in (0, 1):  # each seed's run is its own, with its seed in the saved config
        saved = json.loads((out / f"seed-{seed}" / "sample" / "results.json").read_text())
        assert saved["config"]["seed"] == seed and saved["image_auroc"] == by_seed[seed]["image_auroc"]
    row = summary["categories"][0]
    for key in ("image_auroc", "au_pro", "good_flagged_rate", "defect_recall"):
        lo, hi = row["range"][key]
        assert lo == min(by_seed[0][key], by_seed[1][key]) and hi == max(by_seed[0][key], by_seed[1][key])
        assert row[key] == (by_seed[0][key] + by_seed[1][key]) / 2
    printed = capsys.readouterr().out
    assert "mean over seeds 0 1 (range)" in printed and f"| sample | {100 * row['image_auroc']:.1f} (" in printed
    assert "good flagged" in printed
    # the budget beside the count pooled over seeds, with its exact interval
    assert row["good_count"] == by_seed[0]["good_count"] + by_seed[1]["good_count"] > 0
    assert f"| {row['good_flagged']} / {row['good_count']} (" in printed and "| 5 |" in printed

    # the mask rules of section 12 on the same runs: one row per category, every rule's F1 and the F1-max
    monkeypatch.setattr(sys, "argv", ["mask_rule.py", "--data-root", str(sample_root), "--runs",
                                      str(out / "seed-0"), "--categories", "sample"])  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path("benchmarks/mask_rule.py", run_name="__main__")
    assert exit_info.value.code == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert table[-3].startswith("| category | maxima rule | 0.1 % | 0.3 % | 1 % | 3 % | maxima rule & half peak | "
                                "0.1 % & half peak | 0.3 % & half peak | 1 % & half peak | 3 % & half peak | pixel F1-max")
    assert table[-1].startswith("| sample | ") and len(table[-1].split("|")) == 14


def test_quality_script_rescores_a_memory_bank_leave_one_out(sample_root, tmp_path, monkeypatch):
    out, again = tmp_path / "bench", tmp_path / "rescored"
    base = ["quality.py", "--data-root", str(sample_root), "--categories", "sample", "--profile", "smoke"]
    for argv in ([*base, "--out", str(out), "--set", "pretrained=false"],
                 [*base, "--out", str(again), "--rescore", str(out), "--set", "map_norm=\"position\""]):  # fmt: skip
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path("benchmarks/quality.py", run_name="__main__")
        assert exit_info.value.code == 0
    first = json.loads((out / "sample" / "results.json").read_text())
    rescored = json.loads((again / "sample" / "results.json").read_text())
    assert rescored["config"]["map_norm"] == "position" and first["config"]["map_norm"] == "global"
    assert rescored["calibration_source"] == "leave_one_out" and not (again / "sample" / "last.pt").exists()
    assert rescored["image_auroc"] == pytest.approx(first["image_auroc"])  # same scores: only the heatmaps changed
    assert rescored["thresholds"]["pixel_default"] != first["thresholds"]["pixel_default"]


@pytest.mark.mvtec
def test_speed_scaling_times_whole_fits_of_screw_made_image_sets(mvtec_root, offline_torch_home):
    import importlib.util

    spec = importlib.util.spec_from_file_location("speed", "benchmarks/speed.py")
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    rows = speed.scaling_rows(str(mvtec_root), [8, 16], quality=False)
    assert [name.split(" (")[0] for name, _ in rows] == ["fit 8 images", "fit 16 images", "fit(16) / fit(8)"]
    assert "8,192 patches" in rows[0][0] and "bank 164" in rows[0][0] and rows[0][1].endswith(" MB")
    assert float(rows[2][1]) > 0
