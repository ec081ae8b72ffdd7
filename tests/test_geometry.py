"""Input geometry (colab_utils.geometry): tiles cover every pixel, stitching averages overlaps, ``auto`` picks
from the training images, and tall, wide and mixed-size images go end to end (fit, evaluate, predict, export)
with a defect found where it was drawn, at the source size. A real-data check on KolektorSDD photos."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED, _require
from PIL import Image

from colab_utils import geometry
from colab_utils.config import Config, ConfigError
from colab_utils.data import DataError, load_split, load_user_folder
from colab_utils.evaluate import evaluate
from colab_utils.inspector import Inspector
from colab_utils.train import fit, load_trained

QUIET = dict(progress=False, log=lambda m: None)


# ----------------------------------------------------------------------------------------------- tiles
@pytest.mark.parametrize("canvas", [(64, 64), (168, 64), (64, 200), (300, 130), (97, 64)])
@pytest.mark.parametrize("overlap", [0.0, 0.125, 0.5])
def test_tiles_cover_every_pixel_and_stitching_inverts_cutting(canvas, overlap):
    tile = 64
    grid = geometry.tile_grid(canvas, tile, overlap)
    count = geometry.coverage(canvas, tile, overlap)
    assert count.min() >= 1  # every canvas pixel lies in some tile
    assert {y + tile for y, _ in grid} >= {canvas[0]} and {x + tile for _, x in grid} >= {canvas[1]}
    for length in canvas:
        origins = geometry.tile_origins(length, tile, overlap)
        gaps = np.diff(origins)
        assert origins[0] == 0 and origins[-1] == length - tile
        assert (gaps <= tile * (1 - overlap) + 1).all()  # neighbours overlap by at least `overlap` of a tile
    x = torch.rand(2, 3, *canvas)
    tiles = geometry.cut(x, tile, overlap)
    assert tiles.shape == (2 * len(grid), 3, tile, tile)
    torch.testing.assert_close(geometry.stitch(tiles, canvas, overlap), x)  # the mean of equal values is the value


def test_stitching_averages_where_tiles_overlap():
    canvas, tile = (100, 64), 64  # two tiles along y, at 0 and 36: rows 36..63 are covered twice
    assert geometry.tile_grid(canvas, tile, 0.25) == [(0, 0), (36, 0)]
    tiles = torch.stack([torch.full((1, 64, 64), 1.0), torch.full((1, 64, 64), 3.0)])
    out = geometry.stitch(tiles, canvas, 0.25)[0, 0]
    assert out.shape == canvas
    assert (out[:36] == 1).all() and (out[36:64] == 2).all() and (out[64:] == 3).all()


# ---------------------------------------------------------------------------------------------- choose
def test_auto_keeps_resize_for_square_images_and_tiles_tall_ones_and_says_why():
    cfg = Config(image_size=256)
    square, why = geometry.choose(cfg, [(256, 256)] * 5)
    assert square.geometry == "resize" and "resized to 256x256" in why
    tall, why = geometry.choose(cfg, [(500, 1235), (500, 1260), (500, 1285)])
    assert tall.geometry == "tile" and tall.canvas == (648, 256) and tall.work_size == (648, 256)
    assert "3 tiles of 256 px" in why and "median aspect 2.52" in why
    wide, _ = geometry.choose(cfg, [(1300, 500)])
    assert wide.canvas[0] < wide.canvas[1]  # orientation kept
    large, why = geometry.choose(cfg, [(2048, 2048)])
    assert large.geometry == "tile" and large.canvas == (1024, 1024) and "shorter side" in why
    kept, why = geometry.choose(cfg.replace(geometry="resize"), [(500, 1260)])
    assert kept.geometry == "resize" and "(set)" in why
    own, _ = geometry.choose(cfg.replace(geometry="tile", canvas=(512, 256)), [(500, 1260)])
    assert own.canvas == (512, 256)


def test_a_strip_of_an_image_gets_an_error_naming_the_file():
    with pytest.raises(geometry.GeometryError, match=r"strip\.png is 5000x1 px.*crop it"):
        geometry.choose(Config(), [(256, 256), (5000, 1)], ["a.png", "strip.png"])


def test_config_checks_the_geometry_fields():
    with pytest.raises(ConfigError, match="geometry"):
        Config(geometry="squash")
    with pytest.raises(ConfigError, match="canvas"):
        Config(geometry="tile", canvas=(100, 512))  # shorter than a tile
    with pytest.raises(ConfigError, match="tile_overlap"):
        Config(tile_overlap=0.95)
    cfg = Config(geometry="tile", canvas=[648, 256])
    assert cfg.canvas == (648, 256) and Config.from_dict(cfg.to_dict()) == cfg


# ------------------------------------------------------------------------------------ end to end
SPOT = (150, 50, 9)  # (y, x, radius) of the drawn defect in every 100 x 260 test image


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth horizontal stripes with noise: a stand-in for a tall metal part, uint8 (height, width)."""
    y = np.arange(height)[:, None]
    base = 120 + 40 * np.sin(y / 7.0 + rng.uniform(0, 6)) + rng.normal(0, 6, (height, width))
    return np.clip(base, 0, 255).astype(np.uint8)


def _make_tall_category(root: Path, sizes_train: list[tuple[int, int]]) -> Path:
    """<root>/tall in the MVTec layout: grayscale photos (width, height) in train/good; 100 x 260 test photos,
    good and with a bright disc at SPOT (masks in ground_truth)."""
    rng = np.random.default_rng(0)
    cat = root / "tall"
    for sub in ("train/good", "test/good", "test/spot", "ground_truth/spot"):
        (cat / sub).mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate(sizes_train):
        Image.fromarray(_texture(rng, h, w)).save(cat / "train/good" / f"{i:03d}.png")
    yy, xx = np.mgrid[:260, :100]
    disc = (yy - SPOT[0]) ** 2 + (xx - SPOT[1]) ** 2 <= SPOT[2] ** 2
    for i in range(3):
        Image.fromarray(_texture(rng, 260, 100)).save(cat / "test/good" / f"{i:03d}.png")
        img = _texture(rng, 260, 100)
        img[disc] = 250
        Image.fromarray(img).save(cat / "test/spot" / f"{i:03d}.png")
        Image.fromarray(disc.astype(np.uint8) * 255).save(cat / "ground_truth/spot" / f"{i:03d}_mask.png")
    return cat


def _tiny_bank(**kw) -> Config:
    values = dict(mode="memory_bank", image_size=64, pretrained=False, coreset_ratio=0.5, batch_size=8,
                  smooth_sigma=1.0, epochs=1, channels=1)  # fmt: skip
    values.update(kw)
    return Config.for_category("tall", **values)


@pytest.fixture(scope="module")
def tall_run(tmp_path_factory):
    """A memory bank (random backbone weights) fitted on tall grayscale photos of mixed heights, auto geometry."""
    root = tmp_path_factory.mktemp("tall_data")
    sizes = [(100, 250 + 5 * (i % 5)) for i in range(24)]  # 100 px wide, 250-270 px tall
    _make_tall_category(root, sizes)
    run = tmp_path_factory.mktemp("runs") / "tall"
    messages: list[str] = []
    result = fit(_tiny_bank(), root, run, progress=False, log=messages.append)
    return root, run, result, messages


def test_tall_photos_get_tiles_recorded_in_the_saved_config(tall_run):
    root, run, result, messages = tall_run
    assert any("geometry 'tile' (auto)" in m for m in messages)  # printed, with the reason
    cfg = result.config
    assert cfg.geometry == "tile" and cfg.canvas == (168, 64) and geometry.tiles_per_image(cfg) == 3
    saved = json.loads((run / "config.json").read_text())
    assert saved["geometry"] == "tile" and saved["canvas"] == [168, 64]
    model, loaded, _ = load_trained(run)
    assert loaded.geometry == "tile" and loaded.canvas == (168, 64)
    # calibration is per photo: one leave-one-out score per training photo, not per tile
    assert len(result.calibration["good_scores"]) == 24
    # fitting again with geometry "auto" loads the finished run instead of refitting
    again = fit(_tiny_bank(), root, run, **QUIET)
    assert again.status == "already_done" and again.config.canvas == (168, 64)


def test_a_defect_drawn_in_a_tall_photo_lands_in_place_in_map_mask_and_csv(tall_run, tmp_path):
    root, run, result, _ = tall_run
    ev = evaluate(run, root, "tall", tmp_path / "eval", "cpu", progress=False)
    assert ev.maps.shape[1:] == (168, 64)  # metrics on the whole photo's map, at the canvas size
    assert ev.metrics["image_auroc"] == 1.0 and ev.metrics["pixel_auroc"] > 0.9
    inspector = Inspector.load(run, "cpu")
    photo = root / "tall" / "test" / "spot" / "000.png"
    report = inspector.predict([photo], tmp_path / "pred", progress=False, keep_maps=True, log=lambda m: None)
    pred = report.predictions[0]
    assert (pred.width, pred.height) == (100, 260) and pred.anomaly_map.shape == (260, 100)
    y, x = np.unravel_index(np.argmax(pred.anomaly_map), pred.anomaly_map.shape)
    assert abs(y - SPOT[0]) <= 2 * SPOT[2] and abs(x - SPOT[1]) <= 2 * SPOT[2]  # found where it was drawn
    mask = np.asarray(Image.open(pred.mask))
    assert mask.shape == (260, 100) and pred.verdict == "DEFECT"
    with open(tmp_path / "pred" / "predictions.csv") as f:
        row = next(csv.DictReader(f))
    assert (int(row["width"]), int(row["height"])) == (100, 260)


def test_tiled_run_exports_to_onnx_with_the_tiling_inside_the_graph(tall_run):
    if not os.environ.get("CI"):  # optional at run time; in requirements-dev.txt, so CI must have it
        pytest.importorskip("onnxruntime")
    from colab_utils.export import export_run, run_onnx

    _, run, _, _ = tall_run
    inspector = Inspector.load(run, "cpu")
    onnx_path, side = export_run(inspector.run, run / "onnx")
    meta = json.loads(side.read_text())
    assert meta["inputs"]["images"]["shape"] == ["batch", 1, 168, 64] and meta["preprocessing"]["geometry"] == "tile"
    images = torch.from_numpy(np.stack([_texture(np.random.default_rng(i), 168, 64)[None] for i in range(3)]))
    scores, maps = inspector.score_batch(images)
    onnx_maps, onnx_scores = run_onnx(onnx_path, images.float().numpy() / 255.0)
    assert onnx_maps.shape == maps.shape == (3, 168, 64)
    assert np.abs(onnx_maps - maps).max() <= 1e-4 * max(1.0, np.ptp(maps))
    assert np.abs(onnx_scores - scores).max() <= 1e-4 * max(1.0, np.ptp(scores))


@pytest.mark.parametrize("geom", ["resize", "tile"])
def test_a_folder_of_mixed_sizes_works_in_every_geometry(geom, tmp_path):
    rng = np.random.default_rng(1)
    good = tmp_path / "good"
    good.mkdir()
    sizes = [(100, 260), (120, 240), (90, 300), (40, 100), (260, 100), (64, 64)] * 2  # wide, tall, tiny, square
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(_texture(rng, h, w)).save(good / f"{i:02d}.png")
    Image.fromarray(_texture(rng, 20, 30)).save(good / "thumb.png")  # far smaller than the model's input
    train, _ = load_user_folder(good, 64, 1)
    cfg = _tiny_bank(geometry=geom)
    messages: list[str] = []
    result = fit(cfg, None, tmp_path / "run", train_set=train, progress=False, log=messages.append)
    assert result.config.geometry == geom and result.model.bank.shape[0] > 0
    assert any(m.startswith("note: 1 of 13") and "thumb.png (30x20 px)" in m for m in messages)  # said once
    inspector = Inspector.load(tmp_path / "run", "cpu")
    report = inspector.predict(good, None, progress=False, keep_maps=True)
    assert sorted((p.width, p.height) for p in report.predictions) == sorted([*sizes, (30, 20)])
    assert all(p.anomaly_map.shape == (p.height, p.width) for p in report.predictions)
    if not os.environ.get("CI"):  # optional at run time; in requirements-dev.txt, so CI must have it
        pytest.importorskip("onnxruntime")
    from colab_utils.export import export_run, run_onnx

    onnx_path, _ = export_run(inspector.run, tmp_path / "onnx")
    x = torch.from_numpy(np.stack([_texture(rng, *result.config.work_size)[None] for _ in range(2)]))
    scores, maps = inspector.score_batch(x)
    onnx_maps, onnx_scores = run_onnx(onnx_path, x.float().numpy() / 255.0)
    assert np.abs(onnx_maps - maps).max() <= 1e-4 * max(1.0, np.ptp(maps))


def test_a_strip_or_a_dot_is_refused_by_name_in_training_and_skipped_with_the_reason_by_predict(tall_run, tmp_path):
    root = tmp_path / "data"
    _make_tall_category(root, [(100, 260)] * 3)
    strip = root / "tall" / "train" / "good" / "strip.png"
    Image.fromarray(np.zeros((2, 200), np.uint8)).save(strip)
    with pytest.raises(DataError, match=r"strip\.png is 200x2 px"):
        fit(_tiny_bank(), root, tmp_path / "run", **QUIET)
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tiny)
    report = Inspector.load(tall_run[1], "cpu").predict([strip, tiny], None, progress=False, log=lambda m: None)
    assert not report.predictions
    assert "200x2 px" in report.skipped[0][1] and "1x1 px, too small to inspect" in report.skipped[1][1]


# ------------------------------------------------------------------------------- real KolektorSDD
@pytest.fixture(scope="module")
def kolektor_root() -> Path:
    """../shared/more_data (KOLEKTOR_ROOT overrides): KolektorSDD in the MVTec layout, photos at native size."""
    root = Path(os.environ.get("KOLEKTOR_ROOT", SHARED / "more_data"))
    if not (root / "kolektorsdd" / "train" / "good").is_dir():
        _require(f"KolektorSDD under {root}", "set KOLEKTOR_ROOT to the folder holding kolektorsdd/")
    return root


def test_kolektorsdd_photos_come_back_at_native_size(kolektor_root, tmp_path):
    src = kolektor_root / "kolektorsdd"
    good = sorted((src / "train" / "good").iterdir())[:10]
    cracks = sorted((src / "test" / "crack").iterdir())[:2]
    folder = tmp_path / "good"
    folder.mkdir()
    for p in good:
        shutil.copy(p, folder / p.name)  # a temporary folder of ten real photos, deleted with tmp_path
    train, _ = load_user_folder(folder, 64, 1)
    result = fit(_tiny_bank(), None, tmp_path / "run", train_set=train, **QUIET)
    cfg = result.config
    assert cfg.geometry == "tile" and cfg.canvas[0] > 2 * cfg.canvas[1]  # tall canvas, several tiles
    report = Inspector.load(tmp_path / "run", "cpu").predict(cracks, tmp_path / "pred", progress=False)
    native = [Image.open(p).size for p in cracks]
    assert [(p.width, p.height) for p in report.predictions] == native
    for p, size in zip(report.predictions, native):
        assert Image.open(p.mask).size == size and Image.open(p.overlay).size == size
    with open(tmp_path / "pred" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["width"]), int(r["height"])) for r in rows] == native
    # the masks of the evaluation are the photos' own, brought to the canvas
    crack_dir, mask_dir = tmp_path / "crack", tmp_path / "masks"
    crack_dir.mkdir()
    mask_dir.mkdir()
    for p in cracks:
        shutil.copy(p, crack_dir / p.name)
        shutil.copy(src / "ground_truth" / "crack" / f"{p.stem}_mask.png", mask_dir / f"{p.stem}_mask.png")
    _, test = load_user_folder(folder, 64, 1, defect_dir=crack_dir, mask_dir=mask_dir)
    ev = evaluate(tmp_path / "run", test_set=test, out_dir=tmp_path / "eval", device="cpu", progress=False)
    assert ev.masks.shape[-2:] == cfg.work_size and ev.masks.sum() > 0 and ev.maps.shape[-2:] == cfg.work_size


def test_the_gallery_shows_a_tiled_run_whole(tall_run, tmp_path):
    from colab_utils import gallery as gallery_module

    root, run, _, _ = tall_run
    ev = evaluate(run, root, "tall", tmp_path / "eval", "cpu", progress=False)
    g = gallery_module.build_gallery({"tall": ev}, panel_size=64)
    g.index.value = len(ev.labels) - 1  # a photo with the drawn defect
    assert g.current_pred_mask.shape == (168, 64)  # the whole photo's mask, not a tile's
    before = g.current_pred_mask.sum()
    g.threshold.value = g.threshold.max
    assert g.current_pred_mask.sum() <= before and g.image.value[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_user_folder_loaded_before_training_is_evaluated_on_the_settled_canvas(tmp_path):
    cat = _make_tall_category(tmp_path / "data", [(100, 260)] * 12)
    train, test = load_user_folder(cat / "train" / "good", 64, 1, defect_dir=cat / "test" / "spot",
                                   mask_dir=cat / "ground_truth" / "spot", test_good_dir=cat / "test" / "good")  # fmt: skip
    assert train.images.shape[-2:] == test.images.shape[-2:] == (64, 64)  # the user does not know the canvas yet
    result = fit(_tiny_bank(), None, tmp_path / "run", train_set=train, **QUIET)
    assert result.config.work_size == (168, 64)
    ev = evaluate(tmp_path / "run", test_set=test, out_dir=tmp_path / "eval", device="cpu", progress=False)
    assert ev.maps.shape == (6, 168, 64) and ev.masks.shape[-2:] == (168, 64)
    assert ev.masks[3:].sum() > 0 and ev.metrics["pixel_auroc"] > 0.9  # the masks came along, on the canvas


def test_calibration_reuses_the_fits_features_and_gets_what_a_fresh_pass_gets(tall_run):
    from colab_utils.scoring import predict
    from colab_utils.train import load_data

    root, _, result, _ = tall_run
    model, cfg = result.model, result.config
    train, held = load_data(cfg, root)
    images = train.join(held).images  # the fit's order
    assert model._fit_patches is not None  # kept by the fit for its calibration
    kept = predict(model, images, cfg, "cpu", keep_recons=False, leave_one_out=True, batch_size=5)
    saved = model._fit_patches
    model.remember_fit_patches(None)
    try:
        fresh = predict(model, images, cfg, "cpu", keep_recons=False, leave_one_out=True, batch_size=7)
    finally:
        model._fit_patches = saved
    np.testing.assert_allclose(kept["maps"], fresh["maps"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(kept["scores"], fresh["scores"], rtol=1e-4, atol=1e-4)


def test_position_heatmaps_are_standardised_per_position_and_agree_everywhere(tall_run, tmp_path):
    from colab_utils.scoring import MapNormalizer, PositionStats, anomaly_maps

    root, run, _, _ = tall_run
    result = fit(_tiny_bank(map_norm="position"), root, tmp_path / "run", **QUIET)
    cal = result.calibration
    position, normalizer = PositionStats.from_calibration(cal), MapNormalizer.from_dict(cal["normalizer"])
    ev = evaluate(tmp_path / "run", root, "tall", tmp_path / "eval", "cpu", progress=False)
    test = load_split(root, "tall", "test", result.config.work_size, 1)
    raw = anomaly_maps(result.model, test.float_images(), result.config).maps
    np.testing.assert_allclose(ev.maps, normalizer(position(raw))[:, 0].numpy(), atol=2e-3)  # float32 z-scores
    report = Inspector.load(tmp_path / "run", "cpu").predict(test.paths, progress=False)
    np.testing.assert_allclose([p.score for p in report.predictions], ev.scores, rtol=1e-4, atol=1e-4)
    assert ev.metrics["pixel_auroc"] > 0.9


def test_the_command_line_sets_the_geometry_and_the_canvas(tall_run, tmp_path, capsys):
    from colab_utils.cli import main as cli

    root = tall_run[0]
    args = ["train", "--data-root", str(root), "--category", "tall", "--out", str(tmp_path), "--device", "cpu",
            "--profile", "smoke", "--mode", "memory_bank", "--geometry", "tile", "--canvas", "192", "64"]  # fmt: skip
    config = tmp_path / "cfg.json"
    _tiny_bank().save(config)
    assert cli([*args, "--config", str(config)]) == 0
    assert "geometry 'tile' (set)" in capsys.readouterr().out
    saved = json.loads((tmp_path / "tall" / "config.json").read_text())
    assert saved["geometry"] == "tile" and saved["canvas"] == [192, 64]


def test_evaluate_refuses_a_run_of_another_category_unless_asked(tall_run, tmp_path, capsys):
    from colab_utils.cli import main as cli

    root, run, _, _ = tall_run
    other = root / "other"
    shutil.copytree(root / "tall", other)  # the same photos under another category's name
    with pytest.raises(ValueError, match=r"trained on category 'tall', not 'other'.*--allow-other-category"):
        evaluate(run, root, "other", None, "cpu", progress=False)
    runs = tmp_path / "runs"
    shutil.copytree(run, runs / "other")
    assert cli(["evaluate", "--data-root", str(root), "--category", "other", "--out", str(runs), "--device", "cpu"]) != 0
    assert "trained on category 'tall'" in capsys.readouterr().err
    assert cli(["evaluate", "--data-root", str(root), "--category", "other", "--out", str(runs), "--device", "cpu",
                "--allow-other-category"]) == 0  # fmt: skip
    saved = json.loads((runs / "other" / "results.json").read_text())
    assert saved["category"] == "other" and saved["trained_category"] == "tall"


def test_tiny_and_stretched_training_images_are_named_in_warnings():
    from colab_utils.train import settle_geometry

    cfg = Config(category="parts", geometry="resize", image_size=64)
    sizes = {"a.png": (300, 300), "b.png": (320, 310), "icon.png": (1, 1), "banner.png": (900, 200)}
    messages: list[str] = []
    import colab_utils.train as train_module

    real = train_module.image_sizes
    train_module.image_sizes = lambda paths: [sizes[p] for p in paths]
    try:
        settle_geometry(cfg, list(sizes), messages.append)
    finally:
        train_module.image_sizes = real
    tiny = [m for m in messages if "under 16 px" in m]
    stretched = [m for m in messages if "aspect far from" in m]
    assert len(tiny) == 1 and "icon.png (1x1 px)" in tiny[0] and "banner" not in tiny[0]
    assert len(stretched) == 1 and "banner.png (900x200 px)" in stretched[0] and "a.png" not in stretched[0]
