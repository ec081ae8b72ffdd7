"""ONNX export (colab_utils.export, `python -m colab_utils export`): onnxruntime on real bottle test images gives
the maps and scores torch gives, for every model family (smoke-profile runs on real MVTec bottle images)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from colab_utils.cli import main as cli
from colab_utils.data import load_split
from colab_utils.inspector import Inspector

try:
    import onnx
    import onnxruntime  # noqa: F401 - run_onnx needs it
except ImportError as exc:  # optional at run time; in requirements-dev.txt, so CI must have them
    if os.environ.get("CI"):
        raise
    pytest.skip(f"{exc.name} is not installed (pip install onnx onnxruntime)", allow_module_level=True)


@pytest.mark.parametrize("mode", ["memory_bank", "unet"])
def test_onnx_output_equals_torch_on_real_images(mode, mvtec_root, offline_torch_home, tmp_path, capsys):
    from colab_utils.export import run_onnx

    runs = tmp_path / "runs"
    args = ["--data-root", str(mvtec_root), "--category", "bottle", "--out", str(runs), "--device", "cpu"]
    assert cli(["train", *args, "--mode", mode, "--profile", "smoke"]) == 0
    assert cli(["export", "--run", str(runs / "bottle"), "--format", "onnx"]) == 0
    assert "model.onnx" in capsys.readouterr().out
    onnx_path, sidecar = runs / "bottle" / "model.onnx", runs / "bottle" / "model.json"
    onnx.checker.check_model(str(onnx_path))
    inspector = Inspector.load(runs / "bottle", "cpu")
    size = inspector.config.image_size
    meta = json.loads(sidecar.read_text())
    assert meta["thresholds"]["image"] == pytest.approx(inspector.image_threshold)
    assert meta["thresholds"]["pixel"] == pytest.approx(inspector.pixel_threshold)
    assert meta["inputs"]["images"]["shape"] == ["batch", 3, size, size] and meta["mode"] == mode

    test = load_split(mvtec_root, "bottle", "test", size, 3)
    pick = [0, 1, 2, 30, 45, 60, 70, 82]  # defective and good images
    images = test.images[pick]
    scores, maps = inspector.score_batch(images)
    onnx_maps, onnx_scores = run_onnx(onnx_path, images.float().numpy() / 255.0)
    assert onnx_maps.shape == maps.shape == (len(pick), size, size) and onnx_scores.shape == scores.shape
    # float32 in two runtimes: agreement within 1e-4 of each output's range (the measured worst is in the note)
    assert np.abs(onnx_scores - scores).max() <= 1e-4 * max(1.0, np.ptp(scores))
    assert np.abs(onnx_maps - maps).max() <= 1e-4 * max(1.0, np.ptp(maps))
    # the batch size is free: one image alone gives the same answer
    one_maps, one_scores = run_onnx(onnx_path, images[:1].float().numpy() / 255.0)
    np.testing.assert_allclose(one_scores, onnx_scores[:1], rtol=1e-5, atol=1e-5)
    # verdicts from the ONNX scores and the sidecar's threshold are the torch verdicts
    assert ((onnx_scores >= meta["thresholds"]["image"]) == (scores >= inspector.image_threshold)).all()


def test_export_of_an_unfinished_run_says_how_to_finish_it(tmp_path, capsys):
    (tmp_path / "bottle").mkdir()
    assert cli(["export", "--run", str(tmp_path / "bottle"), "--format", "onnx"]) == 2
    assert "no finished model" in capsys.readouterr().err


def test_predict_with_the_onnx_backend_gives_the_torch_verdicts(mvtec_root, offline_torch_home, tmp_path, capsys):
    runs = tmp_path / "runs"
    args = ["--data-root", str(mvtec_root), "--category", "bottle", "--out", str(runs), "--device", "cpu"]
    assert cli(["train", *args, "--mode", "memory_bank", "--profile", "smoke"]) == 0
    files = sorted((mvtec_root / "bottle" / "test").glob("*/00[0-3].png"))
    torch_report = Inspector.load(runs / "bottle", "cpu").predict(files, progress=False)
    assert not (runs / "bottle" / "model.onnx").exists()
    onnx_inspector = Inspector.load(runs / "bottle", "cpu").use_onnx()  # exports model.onnx on first use
    assert (runs / "bottle" / "model.onnx").is_file()
    onnx_report = onnx_inspector.predict(files, progress=False)
    torch_scores = np.array([p.score for p in torch_report.predictions])
    onnx_scores = np.array([p.score for p in onnx_report.predictions])
    assert np.abs(onnx_scores - torch_scores).max() <= 1e-4 * max(1.0, np.ptp(torch_scores))
    assert [p.verdict for p in onnx_report.predictions] == [p.verdict for p in torch_report.predictions]
    code = cli(["predict", "--run", str(runs / "bottle"), "--images", str(files[0]), "--out", str(tmp_path / "o"),
                "--device", "cpu", "--backend", "onnx"])  # fmt: skip
    assert code == 0 and "1 image: " in capsys.readouterr().out
