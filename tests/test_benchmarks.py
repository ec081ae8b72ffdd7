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
    assert len(table) == 2
    results = json.loads((out / "sample" / "results.json").read_text())
    assert results["train_seconds"] > 0 and results["epochs"] == 2
