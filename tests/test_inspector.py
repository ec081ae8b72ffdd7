"""Inspecting new images (colab_utils.inspector and `python -m colab_utils predict`) with a memory bank trained
on real MVTec bottle images (smoke profile), on a folder of mixed formats and sizes with one corrupt file."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import offline_torch_home
from PIL import Image

from colab_utils.cli import main as cli
from colab_utils.data import DataError
from colab_utils.inspector import CSV_COLUMNS, Inspector, find_images


@pytest.fixture(scope="module")
def bottle_run(mvtec_root, weights_dir, tmp_path_factory) -> Path:
    """RUNS/bottle: a smoke-profile memory bank (64 px) fitted on the real bottle training images."""
    runs = tmp_path_factory.mktemp("runs")
    with offline_torch_home(weights_dir, tmp_path_factory.mktemp("torch_home")):
        args = ["--data-root", str(mvtec_root), "--category", "bottle", "--out", str(runs), "--device", "cpu"]
        assert cli(["train", *args, "--mode", "memory_bank", "--profile", "smoke"]) == 0
    return runs / "bottle"


@pytest.fixture(scope="module")
def mixed_folder(mvtec_root, tmp_path_factory) -> tuple[Path, dict[str, tuple[int, int]]]:
    """Real bottle test images saved as PNG, JPEG (non-square), BMP (gray), 16-bit TIFF and an RGBA PNG in a
    sub-folder, plus a corrupt PNG and a text file; returns (folder, {readable file name: (width, height)})."""
    folder = tmp_path_factory.mktemp("new_photos")
    test = mvtec_root / "bottle" / "test"
    good = Image.open(test / "good" / "000.png").convert("RGB")
    broken = Image.open(test / "broken_large" / "000.png").convert("RGB")
    contamination = Image.open(test / "contamination" / "001.png").convert("RGB")
    sizes = {}
    good.save(folder / "good.png")
    sizes["good.png"] = good.size
    wide = broken.resize((300, 200))
    wide.save(folder / "broken_wide.jpg", quality=95)
    sizes["broken_wide.jpg"] = wide.size
    gray = contamination.convert("L").resize((180, 180))
    gray.save(folder / "contamination_gray.bmp")
    sizes["contamination_gray.bmp"] = gray.size
    deep = Image.fromarray((np.asarray(good.convert("L"), dtype=np.uint16) * 257).astype(np.uint16))
    deep.save(folder / "good_16bit.tif")
    sizes["good_16bit.tif"] = deep.size
    (folder / "more").mkdir()
    rgba = broken.convert("RGBA").resize((320, 240))
    rgba.save(folder / "more" / "broken_rgba.png")
    sizes["broken_rgba.png"] = rgba.size
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    (folder / "notes.txt").write_text("not an image")
    return folder, sizes


def test_predict_a_mixed_folder_reports_the_corrupt_file_and_keeps_sizes(bottle_run, mixed_folder, tmp_path):
    folder, sizes = mixed_folder
    messages: list[str] = []
    inspector = Inspector.load(bottle_run, "cpu")
    report = inspector.predict(folder, out=tmp_path / "out", batch_size=4, progress=False, log=messages.append)
    assert sorted(Path(p.path).name for p in report.predictions) == sorted(sizes)
    assert [Path(p).name for p, _ in report.skipped] == ["corrupt.png"]
    assert "cannot read image" in report.skipped[0][1] and any("corrupt.png" in m for m in messages)
    rows = list(csv.DictReader(report.csv.open()))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == len(sizes)
    for row, pred in zip(rows, report.predictions):
        width, height = sizes[Path(row["path"]).name]
        assert (int(row["width"]), int(row["height"])) == (width, height)
        assert Image.open(row["overlay"]).size == (width, height)  # on the photo's own pixels
        mask = Image.open(row["mask"])
        assert mask.size == (width, height) and set(np.unique(np.asarray(mask))) <= {0, 255}
        # the verdict follows the score and the threshold, and the CSV carries the same numbers
        score, threshold = float(row["score"]), float(row["threshold"])
        assert threshold == pytest.approx(inspector.image_threshold, rel=1e-5)
        assert row["verdict"] == ("DEFECT" if pred.score >= pred.threshold else "OK")
        assert score == pytest.approx(pred.score, rel=1e-5) and float(row["margin"]) == pytest.approx(score - threshold, abs=1e-4)
        area = 100.0 * (np.asarray(mask) > 0).mean()
        assert float(row["defect_area_percent"]) == pytest.approx(area, abs=1e-3)
    summary = report.summary()
    assert f"{report.n_ok} OK, {report.n_defect} DEFECT" in summary and "1 unreadable file skipped" in summary


def test_inspector_scores_equal_evaluation_scores(bottle_run, mvtec_root):
    """Files read from disk score exactly as the evaluation scores the same test images."""
    from colab_utils.evaluate import evaluate

    result = evaluate(bottle_run, mvtec_root, "bottle", None, "cpu", 16)
    report = Inspector.load(bottle_run, "cpu").predict(result.paths, progress=False, keep_maps=True)
    scores = np.array([p.score for p in report.predictions])
    np.testing.assert_allclose(scores, result.scores, rtol=1e-4, atol=1e-4)  # z-scores: float noise of batching, amplified
    flagged = np.array([p.is_defect for p in report.predictions])
    assert (flagged == (result.scores >= result.thresholds["image_default"])).all()
    # the defective images are flagged more often than the good ones
    assert flagged[result.labels == 1].mean() > flagged[result.labels == 0].mean()
    # maps come back at the source size (256 px), not the model's input size (64 px in the smoke profile)
    assert result.maps[0].shape == (64, 64) and report.predictions[0].anomaly_map.shape == (256, 256)


def test_cli_predict_writes_csv_and_prints_a_summary(bottle_run, mixed_folder, tmp_path, capsys):
    folder, sizes = mixed_folder
    code = cli(["predict", "--run", str(bottle_run), "--images", str(folder / "*.png"), "--out", str(tmp_path),
                "--device", "cpu"])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0
    assert "1 image: " in out.out and "1 unreadable file skipped" in out.out  # good.png read, corrupt.png skipped
    assert len(list(csv.DictReader((tmp_path / "predictions.csv").open()))) == 1
    code = cli(["predict", "--run", str(bottle_run), "--images", str(folder / "corrupt.png"), "--out",
                str(tmp_path / "none"), "--device", "cpu"])  # fmt: skip
    assert code == 2 and "none of the 1 files could be read" in capsys.readouterr().err


def test_bad_inputs_name_the_problem_and_the_fix(bottle_run, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images found in .*glob pattern"):
        find_images(empty)
    with pytest.raises(DataError, match="does not exist"):
        find_images(tmp_path / "missing")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "last.pt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no finished model.*did not finish.*resumes"):
        Inspector.load(unfinished, "cpu")
    with pytest.raises(FileNotFoundError, match="does not exist: train first, or pass the folder that training wrote"):
        Inspector.load(tmp_path / "nowhere", "cpu")
    inspector = Inspector.load(bottle_run, "cpu")
    size = inspector.config.image_size
    with pytest.raises(ValueError, match=r"trained on 3-channel .* got a batch of shape \(2, 1,"):
        inspector.score_batch(np.zeros((2, 1, size, size), np.uint8))
    assert cli(["predict", "--run", str(unfinished), "--images", str(empty), "--out", str(tmp_path / "o")]) == 2


def test_results_json_reports_the_default_operating_point(bottle_run, mvtec_root, tmp_path):
    """results.json carries what the default thresholds do, consistent with its own per-image records."""
    import json

    from colab_utils.evaluate import evaluate

    evaluate(bottle_run, mvtec_root, "bottle", tmp_path, "cpu", 16)
    data = json.loads((tmp_path / "bottle" / "results.json").read_text())
    op, records = data["at_default_thresholds"], data["records"]
    good = [r for r in records if r["label"] == 0]
    bad = [r for r in records if r["label"] == 1]
    assert op["good_flagged_rate"] == pytest.approx(sum(r["predicted"] for r in good) / len(good))
    assert op["defect_recall"] == pytest.approx(sum(r["predicted"] for r in bad) / len(bad))
    assert 0.0 <= op["mask_f1"] <= 1.0 and 0.0 <= op["mask_iou"] <= op["mask_f1"]
    assert op["image_threshold"] == data["thresholds"]["image_default"] == pytest.approx(
        Inspector.load(bottle_run, "cpu").image_threshold
    )
    assert data["calibration_source"] == "leave_one_out" and data["config"]["threshold_percentile"] == 95.0


def test_notebook_upload_path_saves_the_files_and_inspects_them(bottle_run, mixed_folder, tmp_path, monkeypatch):
    """In Colab, UPLOAD=True takes files from google.colab.files.upload() (faked here) into OUTPUTS/uploads."""
    import sys
    import types

    from colab_utils import env, session

    folder, _ = mixed_folder
    fake_files = types.SimpleNamespace(upload=lambda: {"a photo.png": (folder / "good.png").read_bytes()})
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", types.SimpleNamespace(files=fake_files))
    monkeypatch.setattr(env, "in_colab", lambda: True)
    paths = session.Folders(data_root=tmp_path, runs_dir=bottle_run.parent, outputs_dir=tmp_path / "outputs")
    reports = session.inspect_all(["bottle"], None, paths, "cpu", upload=True)
    (pred,) = reports["bottle"].predictions
    assert Path(pred.path) == (tmp_path / "outputs" / "uploads" / "bottle" / "a photo.png").resolve()
    assert (bottle_run / "inspections" / "predictions.csv").read_text().count("\n") == 2


def test_show_inspections_puts_the_most_suspicious_first(bottle_run, mixed_folder, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from colab_utils import eval_figures

    folder, sizes = mixed_folder
    report = Inspector.load(bottle_run, "cpu").predict(folder, out=tmp_path, progress=False, log=lambda _m: None)
    fig = eval_figures.show_inspections(report, n=3, save_path=tmp_path / "inspections.png")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    best = sorted(report.predictions, key=lambda p: -p.margin)[:3]
    assert [t.splitlines()[0] for t in titles] == ["/".join(Path(p.path).parts[-2:]) for p in best]
    assert report.summary() in fig._suptitle.get_text() and (tmp_path / "inspections.png").stat().st_size > 1000
    plt.close(fig)
    with pytest.raises(ValueError, match="out=FOLDER"):
        eval_figures.show_inspections(Inspector.load(bottle_run, "cpu").predict(folder / "good.png", progress=False))
