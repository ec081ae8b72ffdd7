"""colab_utils.data: MVTec layout and user folders -> cached uint8 tensors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from colab_utils import data
from colab_utils.data import (
    GRAYSCALE_CATEGORIES,
    IMAGE_EXTENSIONS,
    MVTEC_CATEGORIES,
    AnomalyDataset,
    DataError,
    ImageSet,
    copy_to_local,
    count_table,
    find_categories,
    load_split,
    load_user_folder,
    split_train_val,
)


# --------------------------------------------------------------------------- helpers
def _img(path: Path, size=(40, 40), mode="RGB", seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    arr = rng.integers(0, 256, shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)
    return arr


def _mask(path: Path, size=(40, 40), box=(5, 5, 15, 20)) -> np.ndarray:
    arr = np.zeros((size[1], size[0]), np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode="L").save(path)
    return arr


def _make_category(root: Path, name: str = "widget", n_train: int = 6) -> Path:
    cat = root / name
    for i in range(n_train):
        _img(cat / "train" / "good" / f"{i:03d}.png", seed=i)
    for i in range(2):
        _img(cat / "test" / "good" / f"{i:03d}.png", seed=100 + i)
    for t, dtype in enumerate(("dent", "scratch")):
        for i in range(2):
            _img(cat / "test" / dtype / f"{i:03d}.png", seed=200 + 10 * t + i)
            _mask(cat / "ground_truth" / dtype / f"{i:03d}_mask.png", box=(2 + i, 3, 12 + 5 * t, 9 + i))
    return cat


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for n in dirnames + filenames:
            st = os.stat(os.path.join(dirpath, n))
            out[os.path.relpath(os.path.join(dirpath, n), folder)] = (st.st_mtime_ns, st.st_size)
    return out


def _list(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


@pytest.fixture()
def tiny_root(tmp_path) -> Path:
    root = tmp_path / "data"
    _make_category(root)
    return root


# --------------------------------------------------------------------------- constants, discovery
def test_constants():
    assert len(MVTEC_CATEGORIES) == len(set(MVTEC_CATEGORIES)) == 15
    assert set(GRAYSCALE_CATEGORIES) <= set(MVTEC_CATEGORIES)
    assert {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"} == set(IMAGE_EXTENSIONS)
    assert issubclass(DataError, ValueError)


def test_find_categories_only_official_layout(tiny_root):
    (tiny_root / "notes").mkdir()
    (tiny_root / ".widget2.partial" / "train" / "good").mkdir(parents=True)  # hidden: an unfinished extraction
    _make_category(tiny_root, "my_part", n_train=1)
    assert find_categories(tiny_root) == ["my_part", "widget"]
    with pytest.raises(DataError, match="does not exist"):
        find_categories(tiny_root / "nope")


def test_find_categories_real(mvtec_root):
    expected = sorted(d.name for d in mvtec_root.iterdir() if (d / "train" / "good").is_dir())
    assert find_categories(mvtec_root) == expected
    assert "bottle" in expected


def test_count_table_matches_folders(mvtec_root):
    for category in find_categories(mvtec_root):
        rows = count_table(mvtec_root, category)
        cat = mvtec_root / category
        expected = {("train", "good"): len(_list(cat / "train" / "good"))}
        expected.update({("test", d.name): len(_list(d)) for d in (cat / "test").iterdir() if d.is_dir()})
        assert {(r["split"], r["defect_type"]): r["count"] for r in rows} == expected
        assert all(r["category"] == category for r in rows)
        assert rows[0]["split"] == "train" and [r["defect_type"] for r in rows if r["split"] == "test"][0] == "good"
    bottle = count_table(mvtec_root, "bottle")
    # the official release's numbers (also in ../shared/mvtec_ad/README.md)
    assert sum(r["count"] for r in bottle if r["split"] == "train") == 209
    assert sum(r["count"] for r in bottle if r["split"] == "test" and r["defect_type"] == "good") == 20
    assert sum(r["count"] for r in bottle if r["split"] == "test" and r["defect_type"] != "good") == 63


# --------------------------------------------------------------------------- real data
def test_load_bottle_counts_labels_masks(mvtec_root):
    cat = mvtec_root / "bottle"
    train = load_split(mvtec_root, "bottle", "train", 256, 3)
    assert len(train) == len(_list(cat / "train" / "good"))
    assert train.images.dtype == torch.uint8 and tuple(train.images.shape[1:]) == (3, 256, 256)
    assert int(train.labels.sum()) == 0 and int(train.masks.sum()) == 0
    first = np.array(Image.open(cat / "train" / "good" / _list(cat / "train" / "good")[0]).convert("RGB"))
    assert torch.equal(train.images[0], torch.from_numpy(first).permute(2, 0, 1))  # same size: kept pixel for pixel

    test = load_split(mvtec_root, "bottle", "test", 256, 3)
    folders = {d.name: _list(d) for d in (cat / "test").iterdir() if d.is_dir()}
    assert len(test) == sum(len(v) for v in folders.values())
    for dtype, names in folders.items():
        picked = [i for i, t in enumerate(test.defect_types) if t == dtype]
        assert len(picked) == len(names)
        assert set(test.labels[picked].tolist()) == {0 if dtype == "good" else 1}
    assert tuple(test.masks.shape) == (len(test), 1, 256, 256)
    assert set(torch.unique(test.masks).tolist()) == {0, 1}
    per_image = test.masks.flatten(1).sum(1)
    assert bool((per_image[test.labels == 1] > 0).all()), "every defect image has a non-empty mask"
    assert int(per_image[test.labels == 0].sum()) == 0
    i = test.defect_types.index("broken_large")
    stem = Path(test.paths[i]).stem
    gt = np.asarray(Image.open(cat / "ground_truth" / "broken_large" / f"{stem}_mask.png")) > 127
    assert torch.equal(test.masks[i, 0].bool(), torch.from_numpy(gt))


def test_resized_masks_stay_aligned(mvtec_root):
    test = load_split(mvtec_root, "bottle", "test", 64, 3)
    assert tuple(test.images.shape[1:]) == (3, 64, 64) and tuple(test.masks.shape[1:]) == (1, 64, 64)
    for i in [k for k, lab in enumerate(test.labels.tolist()) if lab == 1][::15]:
        p = Path(test.paths[i])
        mask_file = p.parents[2] / "ground_truth" / p.parent.name / f"{p.stem}_mask.png"
        expected = np.asarray(Image.open(mask_file).resize((64, 64), Image.Resampling.NEAREST)) > 127
        assert np.array_equal(test.masks[i, 0].numpy().astype(bool), expected)
        ref = np.asarray(Image.open(p).convert("RGB").resize((64, 64), Image.Resampling.LANCZOS))
        assert np.abs(test.images[i].permute(1, 2, 0).numpy().astype(int) - ref).max() <= 1


def test_screw_is_grayscale(mvtec_root):
    if not (mvtec_root / "screw").is_dir():
        pytest.skip("no screw category under MVTEC_ROOT")
    first = mvtec_root / "screw" / "test" / "good" / _list(mvtec_root / "screw" / "test" / "good")[0]
    assert Image.open(first).mode == "L"
    rgb = load_split(mvtec_root, "screw", "test", 64, 3)
    assert rgb.images.shape[1] == 3
    assert torch.equal(rgb.images[:, 0], rgb.images[:, 1]) and torch.equal(rgb.images[:, 1], rgb.images[:, 2])
    gray = load_split(mvtec_root, "screw", "test", 64, 1)
    assert gray.images.shape[1] == 1 and torch.equal(gray.images[:, 0], rgb.images[:, 0])
    assert bool((gray.masks.flatten(1).sum(1)[gray.labels == 1] > 0).all())


# --------------------------------------------------------------------------- conversions, cache
def test_rgb_to_luminance(sample_root):
    s = load_split(sample_root, "sample", "train", 256, 1)
    assert tuple(s.images.shape[1:]) == (1, 256, 256)
    expected = np.asarray(Image.open(s.paths[0]).convert("L"))
    assert np.array_equal(s.images[0, 0].numpy(), expected)


def test_sixteen_bit_grayscale(tmp_path):
    good = tmp_path / "good"
    good.mkdir()
    arr = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60).astype(np.uint16)
    Image.fromarray(arr).save(good / "a.png")  # 16-bit PNG
    train, _ = load_user_folder(good, 32, 1)
    expected = np.clip(np.rint(np.asarray(Image.open(good / "a.png")).astype(float) / 257), 0, 255)
    assert np.array_equal(train.images[0, 0].numpy(), expected.astype(np.uint8))


def test_cache_reuses_and_notices_changes(tiny_root):
    a = load_split(tiny_root, "widget", "test", 32, 3)
    b = load_split(tiny_root, "widget", "test", 32, 3)
    assert b.images is a.images and b.masks is a.masks  # cached
    assert b is not a and b.paths == a.paths
    c = load_split(tiny_root, "widget", "test", 32, 1)
    assert c.images.shape[1] == 1  # other settings: other entry
    changed = tiny_root / "widget" / "test" / "good" / "000.png"
    new = _img(changed, seed=999)
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    d = load_split(tiny_root, "widget", "test", 40, 3)
    e = load_split(tiny_root, "widget", "test", 32, 3)
    assert e.images is not a.images
    assert np.array_equal(d.images[0].permute(1, 2, 0).numpy(), new)
    data.clear_cache()
    assert load_split(tiny_root, "widget", "test", 32, 3).images is not e.images


def test_loading_writes_nothing(tiny_root):
    before = _snapshot(tiny_root)
    find_categories(tiny_root)
    count_table(tiny_root, "widget")
    load_split(tiny_root, "widget", "train", 32, 3)
    load_split(tiny_root, "widget", "test", 48, 1)
    load_user_folder(tiny_root / "widget" / "train" / "good", 32, 3, defect_dir=tiny_root / "widget" / "test")
    assert _snapshot(tiny_root) == before


# --------------------------------------------------------------------------- bad input
def test_unknown_category_suggests_close_names(tiny_root):
    with pytest.raises(DataError) as err:
        load_split(tiny_root, "widgt", "train", 32, 3)
    msg = str(err.value)
    assert "'widget'" in msg and "Did you mean" in msg and str(tiny_root / "widgt") in msg
    with pytest.raises(DataError, match="download_mvtec") as err:
        count_table(tiny_root, "cable")
    assert "widget" in str(err.value)  # lists what exists


def test_empty_data_folder_gets_no_made_up_suggestion(tmp_path):
    with pytest.raises(DataError) as err:
        load_split(tmp_path, "title", "train", 32, 3)  # close to MVTec's "tile", which is not there
    msg = str(err.value)
    assert "Did you mean" not in msg and "none (the folder holds no category yet)" in msg
    with pytest.raises(DataError, match="python -m colab_utils download") as err:
        load_split(tmp_path, "tile", "train", 32, 3)
    assert "Did you mean" not in str(err.value)


def test_missing_and_empty_folders(tiny_root, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_split(tmp_path / "missing", "widget", "train", 32, 3)
    (tiny_root / "loose").mkdir()
    with pytest.raises(DataError, match="not in the MVTec AD layout"):
        load_split(tiny_root, "loose", "train", 32, 3)
    empty = tiny_root / "empty"
    (empty / "train" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match=r"holds no images") as err:
        load_split(tiny_root, "empty", "train", 32, 3)
    assert str(empty / "train" / "good") in str(err.value)
    with pytest.raises(DataError, match="no test folder"):
        load_split(tiny_root, "empty", "test", 32, 3)
    with pytest.raises(DataError, match="good_dir .*missing does not exist"):
        load_user_folder(tmp_path / "missing", 32, 3)
    with pytest.raises(DataError, match="good_dir .*holds no images"):
        load_user_folder(empty / "train" / "good", 32, 3)


def test_truncated_image(tiny_root):
    bad = tiny_root / "widget" / "train" / "good" / "003.png"
    raw = bad.read_bytes()
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="truncated") as err:
        load_split(tiny_root, "widget", "train", 32, 3)
    assert str(bad) in str(err.value)
    bad.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="cannot read image"):
        load_split(tiny_root, "widget", "train", 32, 3)


def test_defect_image_without_mask(tiny_root):
    mask = tiny_root / "widget" / "ground_truth" / "scratch" / "001_mask.png"
    mask.unlink()
    with pytest.raises(DataError, match="has no mask") as err:
        load_split(tiny_root, "widget", "test", 32, 3)
    assert str(tiny_root / "widget" / "test" / "scratch" / "001.png") in str(err.value)
    assert "001_mask.png" in str(err.value)


def test_mask_size_mismatch(tiny_root):
    mask = tiny_root / "widget" / "ground_truth" / "dent" / "000_mask.png"
    _mask(mask, size=(30, 40))
    with pytest.raises(DataError, match="exactly the size") as err:
        load_split(tiny_root, "widget", "test", 32, 3)
    assert str(mask) in str(err.value)


def test_mask_name_variants(tiny_root):
    gt = tiny_root / "widget" / "ground_truth" / "dent"
    (gt / "000_mask.png").unlink()
    expected = _mask(gt / "000.bmp", box=(0, 0, 40, 10))  # same stem, no suffix, other format
    s = load_split(tiny_root, "widget", "test", 40, 3)
    i = s.paths.index(str((tiny_root / "widget" / "test" / "dent" / "000.png").resolve()))
    assert np.array_equal(s.masks[i, 0].numpy(), (expected > 0).astype(np.uint8))


def test_bad_arguments(tiny_root):
    with pytest.raises(DataError, match="split"):
        load_split(tiny_root, "widget", "validation", 32, 3)
    with pytest.raises(DataError, match="channels"):
        load_split(tiny_root, "widget", "train", 32, 2)
    with pytest.raises(DataError, match="image_size"):
        load_split(tiny_root, "widget", "train", 0, 3)


# --------------------------------------------------------------------------- ImageSet, Dataset, splits
def test_imageset_subset_and_floats(tiny_root):
    s = load_split(tiny_root, "widget", "test", 32, 3)
    sub = s.subset([4, 0, -1])
    assert sub.paths == [s.paths[4], s.paths[0], s.paths[-1]]
    assert torch.equal(sub.images[1], s.images[0]) and torch.equal(sub.labels, s.labels[[4, 0, len(s) - 1]])
    by_mask = s.subset(s.labels == 1)
    assert len(by_mask) == s.num_defective == 4 and set(by_mask.defect_types) == {"dent", "scratch"}
    assert len(s.subset(slice(0, 2))) == 2
    f = s.float_images()
    assert f.dtype == torch.float32 and f.shape == s.images.shape
    assert 0.0 <= float(f.min()) and float(f.max()) <= 1.0
    assert torch.allclose(f * 255, s.images.float())
    assert s.float_images(1).shape == (3, 32, 32) and s.float_images([0, 1]).shape == (2, 3, 32, 32)
    assert set(torch.unique(s.float_masks()).tolist()) == {0.0, 1.0}
    with pytest.raises(IndexError):
        s.subset([len(s)])
    with pytest.raises(ValueError, match="masks"):
        ImageSet(s.images, s.masks[:, :, :5], s.labels, s.defect_types, s.paths)


def test_anomaly_dataset_and_loader(tiny_root):
    s = load_split(tiny_root, "widget", "test", 32, 3)
    ds = AnomalyDataset(s)
    item = ds[len(s) - 1]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 32, 32)
    assert item["mask"].shape == (1, 32, 32) and float(item["mask"].sum()) > 0
    assert item["label"] == 1 and item["defect_type"] == "scratch" and item["path"] == s.paths[-1]
    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=False)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["mask"].shape == (4, 1, 32, 32)
    assert batch["label"].tolist() == s.labels[:4].tolist() and batch["defect_type"] == s.defect_types[:4]


def test_split_train_val():
    tr, va = split_train_val(100, 0.1, seed=3)
    assert len(va) == 10 and len(tr) == 90 and sorted(tr + va) == list(range(100))
    assert (tr, va) == split_train_val(100, 0.1, seed=3)
    assert va != split_train_val(100, 0.1, seed=4)[1]
    assert len(split_train_val(2, 0.01, 0)[1]) == 1
    assert len(split_train_val(5, 0.89, 0)[0]) >= 1
    assert split_train_val(1, 0.5, 0) == ([0], [])
    with pytest.raises(ValueError, match="val_fraction"):
        split_train_val(10, 0.0, 0)


# --------------------------------------------------------------------------- user folders
def test_user_folder_with_masks(tmp_path):
    good, defects, masks = tmp_path / "good", tmp_path / "bad", tmp_path / "masks"
    for i in range(3):
        _img(good / f"part{i}.jpg", size=(60, 40), seed=i)  # non-square: stretched to the square
    _img(defects / "crack" / "c1.png", seed=10)
    _img(defects / "loose.png", seed=11)
    _img(defects / "good" / "ok.png", seed=12)
    m1 = _mask(masks / "crack" / "c1.png")  # same stem, no suffix
    _mask(masks / "loose-m.png", box=(0, 0, 40, 40))
    tg = tmp_path / "test_good"
    _img(tg / "g1.png", seed=13)
    train, test = load_user_folder(good, 32, 3, defect_dir=defects, mask_dir=masks, mask_suffix="-m", test_good_dir=tg)
    assert len(train) == 3 and train.labels.tolist() == [0, 0, 0] and train.images.shape == (3, 3, 32, 32)
    assert test.has_masks
    assert test.defect_types == ["good", "good", "defect", "crack"]
    assert test.labels.tolist() == [0, 0, 1, 1]
    assert int(test.masks[2].sum()) == 32 * 32  # loose-m.png: the whole image
    expected = np.asarray(Image.fromarray(m1).resize((32, 32), Image.Resampling.NEAREST)) > 0
    assert np.array_equal(test.masks[3, 0].numpy().astype(bool), expected) and int(test.masks[:2].sum()) == 0
    with pytest.raises(DataError, match="has no mask"):
        load_user_folder(good, 32, 3, defect_dir=defects, mask_dir=masks)  # suffix "_mask": loose.png unmatched


def test_user_folder_without_masks(tmp_path):
    good, defects = tmp_path / "good", tmp_path / "bad"
    for i in range(2):
        _img(good / f"{i}.png", seed=i)
        _img(defects / f"{i}.png", seed=5 + i)
    train, test = load_user_folder(good, 32, 1, defect_dir=defects)
    assert train.images.shape == (2, 1, 32, 32)
    assert not test.has_masks and int(test.masks.sum()) == 0 and test.labels.tolist() == [1, 1]
    train2, none = load_user_folder(good, 32, 1)
    assert none is None and torch.equal(train2.images, train.images)
    with pytest.raises(DataError, match="without defect_dir"):
        load_user_folder(good, 32, 1, mask_dir=tmp_path)


# --------------------------------------------------------------------------- copying
def test_copy_to_local(tiny_root, tmp_path):
    dst = tmp_path / "local"
    out = copy_to_local(tiny_root, dst, progress=False)
    assert out == dst
    src_files = {k for k, v in _snapshot(tiny_root).items() if (tiny_root / k).is_file()}
    assert {k for k in _snapshot(dst) if (dst / k).is_file()} == src_files
    for k in src_files:
        assert (dst / k).read_bytes() == (tiny_root / k).read_bytes()
    assert (
        load_split(dst, "widget", "test", 32, 3).labels.tolist()
        == load_split(tiny_root, "widget", "test", 32, 3).labels.tolist()
    )

    before = _snapshot(dst)
    copy_to_local(tiny_root, dst, progress=False)
    assert _snapshot(dst) == before  # nothing copied again

    changed = tiny_root / "widget" / "train" / "good" / "000.png"
    _img(changed, size=(50, 50), seed=77)  # other size: copied again
    (dst / "widget" / "train" / "good" / "001.png").unlink()  # missing: copied again
    copy_to_local(tiny_root, dst, progress=False)
    assert (dst / "widget" / "train" / "good" / "000.png").read_bytes() == changed.read_bytes()
    assert (dst / "widget" / "train" / "good" / "001.png").is_file()
    assert not [p for p in dst.rglob("*") if p.name.endswith(".tmp")]
    with pytest.raises(DataError, match="inside the source"):
        copy_to_local(tiny_root, tiny_root / "widget" / "copy", progress=False)


def test_an_image_over_pillows_size_limit_says_so_and_how_to_lift_it(tmp_path, monkeypatch):
    from PIL import Image

    from colab_utils.data import DataError, image_sizes, read_image

    path = tmp_path / "huge.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4,096 pixels is over twice the limit: an error
    with pytest.raises(DataError, match=r"larger than Pillow's safety limit .*MAX_IMAGE_PIXELS = None"):
        read_image(path, 3)
    with pytest.raises(DataError, match="safety limit"):
        image_sizes([path])


def test_a_fully_transparent_image_is_named_in_a_warning(tmp_path):
    import numpy as np
    from PIL import Image

    from colab_utils.data import read_image
    from colab_utils.images import OddImageWarning

    clear = tmp_path / "clear.png"
    Image.fromarray(np.zeros((20, 20, 4), np.uint8)).save(clear)
    with pytest.warns(OddImageWarning, match="clear.png is fully transparent"):
        read_image(clear, 3)
    half = tmp_path / "half.png"
    arr = np.zeros((20, 20, 4), np.uint8)
    arr[..., 3] = 128
    Image.fromarray(arr).save(half)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", OddImageWarning)
        read_image(half, 3)  # only a fully transparent one is odd
