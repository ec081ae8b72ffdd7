"""colab_utils.sample: the built-in procedurally generated `sample` category."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colab_utils import sample
from colab_utils.data import find_categories, load_split
from colab_utils.sample import CATEGORY, DEFECT_TYPES, MARKER, make_sample, render_image

SMALL = {"n_train": 3, "n_test_good": 2, "n_per_defect": 1, "image_size": 64}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_official_layout_and_counts(sample_root):
    cat = sample_root / CATEGORY
    settings = json.loads((cat / MARKER).read_text())
    assert find_categories(sample_root) == [CATEGORY]
    assert len(list((cat / "train" / "good").glob("*.png"))) == settings["n_train"]
    assert (
        50 <= settings["n_train"] <= 120 and 10 <= settings["n_test_good"] <= 30 and 4 <= settings["n_per_defect"] <= 10
    )
    assert len(list((cat / "test" / "good").glob("*.png"))) == settings["n_test_good"]
    assert sorted(d.name for d in (cat / "test").iterdir()) == sorted(["good", *DEFECT_TYPES])
    for d in DEFECT_TYPES:
        images = sorted((cat / "test" / d).glob("*.png"))
        masks = sorted((cat / "ground_truth" / d).glob("*.png"))
        assert len(images) == len(masks) == settings["n_per_defect"]
        assert [m.name for m in masks] == [f"{p.stem}_mask.png" for p in images]
    total = sum(p.stat().st_size for p in cat.rglob("*") if p.is_file())
    assert total < 15 * 2**20, f"sample is {total / 2**20:.1f} MB; it should stay a few MB"


def test_images_and_masks(sample_root):
    cat = sample_root / CATEGORY
    for d in DEFECT_TYPES:
        for p in sorted((cat / "test" / d).glob("*.png")):
            im = Image.open(p)
            mask = Image.open(cat / "ground_truth" / d / f"{p.stem}_mask.png")
            assert im.mode == "RGB" and mask.mode == "L" and im.size == mask.size == (256, 256)
            m = np.asarray(mask)
            assert set(np.unique(m).tolist()) == {0, 255}
            area = (m > 0).mean()
            assert 0.0003 < area < 0.02, f"{p}: defect covers {area:.2%} of the image (small real defects expected)"


def test_masks_mark_exactly_the_changed_pixels():
    for seed in (1, 2):
        base, none_mask = render_image(seed, 128)
        assert not none_mask.any()
        for d in DEFECT_TYPES:
            img, mask = render_image(seed, 128, d)
            diff = np.abs(img.astype(int) - base.astype(int)).max(-1)
            assert mask.any() and int(diff[~mask].max()) == 0, f"{d}: pixels changed outside the mask"
            assert diff[mask].mean() > 25, f"{d}: defect too faint ({diff[mask].mean():.1f} grey levels)"
    with pytest.raises(ValueError, match="not known"):
        render_image(0, 64, "dent")


def test_pose_and_lighting_vary(sample_root):
    files = sorted((sample_root / CATEGORY / "train" / "good").glob("*.png"))[:6]
    imgs = np.stack([np.asarray(Image.open(p)).astype(float) for p in files])
    means = imgs.mean(axis=(1, 2, 3))
    assert means.std() > 0.5  # lighting differs
    pair_diff = np.abs(imgs[0] - imgs[1]).mean()
    assert 1.0 < pair_diff < 40.0  # same kind of part, not the same image


def test_loads_with_labels(sample_root):
    test = load_split(sample_root, CATEGORY, "test", 64, 3)
    assert set(test.defect_types) == {"good", *DEFECT_TYPES}
    defective = test.labels == 1
    assert bool((test.masks.flatten(1).sum(1)[defective] > 0).all())
    assert int(test.masks[~defective].sum()) == 0


def test_deterministic_by_seed(tmp_path):
    a = _files(make_sample(tmp_path / "a", seed=5, **SMALL))
    b = _files(make_sample(tmp_path / "b", seed=5, **SMALL))
    c = _files(make_sample(tmp_path / "c", seed=6, **SMALL))
    assert a == b
    assert a.keys() == c.keys()
    assert a["train/good/000.png"] != c["train/good/000.png"]


def test_skips_when_complete_and_rebuilds_on_new_settings(tmp_path):
    out = make_sample(tmp_path, seed=0, **SMALL)
    assert out == tmp_path / CATEGORY
    before = _mtimes(out)
    assert make_sample(tmp_path, seed=0, **SMALL) == out
    assert _mtimes(out) == before  # nothing rewritten
    make_sample(tmp_path, seed=0, **{**SMALL, "n_train": 4})
    assert len(list((out / "train" / "good").glob("*.png"))) == 4
    assert [p.name for p in tmp_path.iterdir()] == [CATEGORY]  # no temporary folders left


def test_never_overwrites_a_foreign_folder(tmp_path):
    mine = tmp_path / CATEGORY / "train" / "good" / "mine.png"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"user data")
    with pytest.raises(FileExistsError, match="not made by make_sample"):
        make_sample(tmp_path, **SMALL)
    assert mine.read_bytes() == b"user data"


def test_interrupted_run_leaves_nothing_complete(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = sample._save_png

    def flaky(array, path):
        calls["n"] += 1
        if calls["n"] > 4:
            raise OSError("disk full (simulated)")
        real(array, path)

    monkeypatch.setattr(sample, "_save_png", flaky)
    with pytest.raises(OSError, match="simulated"):
        make_sample(tmp_path, **SMALL)
    assert not (tmp_path / CATEGORY).exists()
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(sample, "_save_png", real)
    out = make_sample(tmp_path, **SMALL)
    assert (out / MARKER).is_file()
