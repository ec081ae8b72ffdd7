"""The patch memory bank family: coreset, search, checkpoint round trip, real-data quality, clear errors."""

from __future__ import annotations

import itertools
import os

import pytest
import torch

from colab_utils import checkpoint as ckpt
from colab_utils.config import Config, ConfigError
from colab_utils.evaluate import evaluate
from colab_utils.models import FAMILIES, build_model, get_family, greedy_coreset
from colab_utils.models.coreset import faiss_available, nearest_faiss, nearest_torch, stand_ins
from colab_utils.train import BEST, LAST, fit, is_finished, load_trained

QUIET = dict(progress=False, log=lambda m: None)


def _brute_force_greedy(points: torch.Tensor, k: int, first: int) -> list[int]:
    """The textbook farthest-point rule, written the slow obvious way."""
    chosen = [first]
    while len(chosen) < k:
        best, best_d = None, -1.0
        for i in range(len(points)):
            d = min(float(torch.dist(points[i], points[j])) for j in chosen)
            if d > best_d:
                best, best_d = i, d
        chosen.append(best)
    return chosen


def test_coreset_keeps_farthest_point_property_on_hand_made_points():
    # four corners of a 10x10 square, its centre, and points clustered near the origin
    pts = torch.tensor([[0.0, 0.0], [0.2, 0.1], [0.1, 0.3], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0], [5.0, 5.0]])
    chosen = greedy_coreset(pts, 5, projection_dim=0, seed=3).tolist()
    assert chosen == _brute_force_greedy(pts, 5, chosen[0])
    # whatever the start, the four corners (the farthest-apart points) are all kept among five
    for seed in range(5):
        kept = set(greedy_coreset(pts, 5, projection_dim=0, seed=seed).tolist())
        assert {3, 4, 5} <= kept and ({0, 1, 2} & kept)
    # covering radius: every point lies within the greedy radius, which is within 2x the optimum (k-center bound)
    k = 3
    idx = greedy_coreset(pts, k, projection_dim=0, seed=0)
    radius = torch.cdist(pts, pts[idx]).min(1).values.max()
    optimum = min(torch.cdist(pts, pts[list(c)]).min(1).values.max() for c in itertools.combinations(range(7), k))
    assert radius <= 2 * optimum + 1e-6


def test_chunked_coreset_is_the_greedy_coreset_of_the_blocks_union_and_covers_like_one_pass():
    from colab_utils.models.coreset import chunked_coreset

    gen = torch.Generator().manual_seed(2)
    x = torch.cat([torch.randn(900, 8, generator=gen), torch.randn(100, 8, generator=gen) * 0.1 + 6.0])
    x[777] = 30.0  # a rare far point in the third block
    idx = chunked_coreset(x, 0.05, 300, projection_dim=0, seed=0, oversample=2)
    assert len(idx) == len(set(idx.tolist())) == 50 and 777 in idx.tolist()
    # four equal blocks of 250; each keeps twice its share by greedy k-center; the union is reduced by greedy
    union = torch.cat([greedy_coreset(x[250 * b : 250 * (b + 1)], 2 * round(0.05 * 250), 0, 1 + b) + 250 * b
                       for b in range(4)])  # fmt: skip
    assert idx.tolist() == union[greedy_coreset(x[union], 50, 0, 0)].tolist()
    # covering radius: every point lies within it, and it stays close to the single pass's (measured 1.0-1.2x)
    single = greedy_coreset(x, 50, 0, 0)
    radius = torch.cdist(x, x[idx]).min(1).values.max()
    assert radius <= 1.5 * torch.cdist(x, x[single]).min(1).values.max()
    # chunk 0 (or one block as large as the data) is the single pass
    assert chunked_coreset(x, 0.05, 0, 0, 0).tolist() == single.tolist()
    assert chunked_coreset(x, 0.05, 5000, 0, 0).tolist() == single.tolist()


def test_chunked_and_single_pass_banks_score_alike(sample_root, offline_torch_home, tmp_path):
    """On the sample (ImageNet weights, 128 px): a bank built block by block ranks the test images as the single
    pass's does (Spearman correlation of the image scores above 0.85; image AUROC within 0.03). Calibration
    absorbs any offset."""
    from scipy.stats import spearmanr

    from colab_utils.metrics import image_auroc

    results = {}
    for chunk in (0, 2048):
        cfg = _tiny_bank(coreset_ratio=0.1, coreset_chunk=chunk, pretrained=True, image_size=128)
        fit(cfg, sample_root, tmp_path / f"run{chunk}", **QUIET)
        ev = evaluate(tmp_path / f"run{chunk}", sample_root, out_dir=tmp_path / f"eval{chunk}", progress=False)
        results[chunk] = ev
    single, chunked = results[0], results[2048]
    assert spearmanr(chunked.scores, single.scores).statistic > 0.85  # measured 0.95
    labels = single.labels
    assert abs(image_auroc(labels, chunked.scores) - image_auroc(labels, single.scores)) < 0.03  # 0.992 vs 0.986


def test_coreset_on_a_projection_keeps_a_rare_far_point():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5000, 64, generator=gen)
    x[123] = 40.0  # one rare, far-away patch
    idx = greedy_coreset(x, 50, projection_dim=16, seed=1)
    assert len(set(idx.tolist())) == 50 and 123 in idx.tolist()


def test_torch_search_matches_brute_force_and_faiss_when_installed():
    gen = torch.Generator().manual_seed(1)
    bank, queries = torch.randn(700, 24, generator=gen), torch.randn(300, 24, generator=gen)
    dist, idx = nearest_torch(queries, bank, chunk=64)
    ref = torch.cdist(queries, bank)
    assert torch.equal(idx, ref.argmin(1))
    assert torch.allclose(dist, ref.min(1).values, atol=1e-4)
    if os.environ.get("CI"):
        assert faiss_available(), "faiss-cpu is in requirements-dev.txt: install it (pip install faiss-cpu)"
    if faiss_available():
        import faiss

        index = faiss.IndexFlatL2(24)
        index.add(bank.numpy())
        fd, fi = nearest_faiss(queries, index)
        assert torch.equal(fi, idx) and torch.allclose(fd, dist, atol=1e-3)


def test_leave_one_out_search_skips_the_query_images_own_entries():
    bank = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
    bank_source = torch.tensor([0, 1, 1], dtype=torch.int32)
    queries = torch.tensor([[0.1, 0.0], [0.9, 0.0], [0.9, 0.0]])
    dist, idx = nearest_torch(queries, bank, query_source=torch.tensor([0, 1, 2]), bank_source=bank_source)
    # query 0 (image 0) may not use entry 0 -> entry 1 at 0.9; query 1 (image 1) only has entry 0 -> 0.9;
    # query 2 (an image with no entries) sees them all -> entry 1 at 0.1
    assert idx.tolist() == [1, 0, 1]
    assert torch.allclose(dist, torch.tensor([0.9, 0.9, 0.1]))


def test_a_nearest_stand_in_is_the_nearest_patch_of_another_image():
    gen = torch.Generator().manual_seed(3)
    pool = torch.randn(400, 8, generator=gen)
    pool_source = torch.arange(400, dtype=torch.int32) // 50  # 8 images of 50 patches
    chosen = torch.randperm(400, generator=gen)[:30]
    spare, spare_source = stand_ins(chosen, pool, pool_source, "nearest")
    d = torch.cdist(pool[chosen], pool)
    d[pool_source[chosen][:, None] == pool_source[None, :]] = float("inf")  # never the entry's own image
    assert torch.equal(spare, pool[d.argmin(1)])
    assert torch.equal(spare_source, pool_source[d.argmin(1)])
    # a bank whose every patch is of one image has no stand-in to offer
    _, lonely = stand_ins(torch.arange(3), pool[:50], torch.zeros(50, dtype=torch.int32), "nearest")
    assert lonely.tolist() == [-1, -1, -1]


def test_the_coreset_tells_each_patch_its_cell_and_runner_up_as_an_exact_search_does():
    from colab_utils.models.coreset import cells_of

    gen = torch.Generator().manual_seed(4)
    pool = torch.randn(600, 6, generator=gen)
    chosen, radius, cells = greedy_coreset(pool, 25, projection_dim=0, seed=1, return_radius=True, return_cells=True)
    assert torch.equal(chosen, greedy_coreset(pool, 25, projection_dim=0, seed=1))  # the same choice either way
    d = torch.cdist(pool, pool[chosen]) ** 2
    two = d.topk(2, dim=1, largest=False)
    assert torch.equal(cells.index, two.indices[:, 0])  # the nearest chosen point, as a position in ``chosen``
    assert torch.allclose(cells.runner_up, two.values[:, 1], rtol=1e-4, atol=1e-4)
    assert float(d.min(1).values.max().sqrt()) == pytest.approx(radius, rel=1e-4)
    exact = cells_of(pool, pool[chosen])
    assert torch.equal(exact.index, cells.index) and torch.allclose(exact.runner_up, cells.runner_up, atol=1e-4)


@pytest.mark.parametrize("rule", ["greedy", "random"])
def test_a_stand_in_is_a_member_of_the_entrys_cell_from_another_image(rule):
    gen = torch.Generator().manual_seed(4)
    pool = torch.randn(600, 6, generator=gen)
    pool_source = torch.arange(600, dtype=torch.int32) // 40  # 15 images
    chosen, cells = greedy_coreset(pool, 25, projection_dim=0, seed=1, return_cells=True)
    spare, source = stand_ins(chosen, pool, pool_source, rule, cells, seed=0)
    member = (spare[:, None, :] == pool[None, :, :]).all(2).float().argmax(1)  # which pool patch each one is
    found = source >= 0
    assert found.sum() >= 20
    assert torch.equal(cells.index[member[found]], torch.arange(25)[found])  # in the entry's own cell
    assert (source[found] != pool_source[chosen][found]).all() and torch.equal(source[found], pool_source[member[found]])
    for k in torch.nonzero(~found).flatten().tolist():  # no stand-in: the cell holds the entry's image alone
        assert (pool_source[cells.index == k] == pool_source[chosen[k]]).all()
    if rule == "greedy":  # the member of another image farthest from every other entry: greedy's next pick there
        for k in torch.nonzero(found).flatten().tolist():
            members = (cells.index == k) & (pool_source != pool_source[chosen[k]])
            assert cells.runner_up[member[k]] == cells.runner_up[members].max()
    else:
        assert not torch.equal(stand_ins(chosen, pool, pool_source, rule, cells, seed=1)[0], spare)  # by the seed


def test_leave_one_out_meets_the_stand_ins_of_its_own_entries_and_no_others():
    # entries 0, 1 of image 0 and 1; entries 2, 3 stand in for them (from images 2 and 3)
    bank = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.5, 0.0], [10.5, 0.0]])
    source = torch.tensor([0, 1, 2, 3], dtype=torch.int32)
    stand_in_for = torch.tensor([-1, -1, 0, 1])
    queries = torch.tensor([[0.1, 0.0], [10.1, 0.0], [0.1, 0.0]])
    dist, idx = nearest_torch(queries, bank, query_source=torch.tensor([0, 0, 1]), bank_source=source,
                              stand_in_for=stand_in_for)  # fmt: skip
    # image 0 meets the stand-in of its own entry (0.4 away), and entry 1 of image 1, never stand-in 3;
    # image 1's query near entry 0 uses it directly (0.1), and may not use its own entry's stand-in 3
    assert idx.tolist() == [2, 1, 0]
    assert torch.allclose(dist, torch.tensor([0.4, 0.1, 0.1]), atol=1e-3)


def test_stand_ins_only_lower_leave_one_out_scores_and_never_below_the_seen_ones(sample_root, tmp_path):
    from colab_utils.scoring import predict
    from colab_utils.train import load_data

    cfg = _tiny_bank(image_score_norm="global")
    model = fit(cfg, sample_root, tmp_path / "run", **QUIET).model
    assert model.stand_in.shape == model.bank.shape and (model.stand_in_source != model.bank_source).all()
    train, held = load_data(cfg, sample_root)
    images = train.join(held).images
    seen = predict(model, images, cfg, "cpu", keep_recons=False)["scores"]
    helped = predict(model, images, cfg, "cpu", keep_recons=False, leave_one_out=True)["scores"]
    model.set_bank(model.bank.float(), model.bank_source)  # the same bank without its stand-ins
    plain = predict(model, images, cfg, "cpu", keep_recons=False, leave_one_out=True)["scores"]
    assert (helped <= plain + 1e-5).all() and (helped < plain - 1e-4).any()
    assert (helped >= seen - 1e-5).all()


def test_bank_is_fitted_on_every_good_image_and_calibrated_leave_one_out(sample_root, tmp_path):
    from colab_utils.data import load_split
    from colab_utils.scoring import predict

    cfg = _tiny_bank(image_score_norm="global")  # the bank's own scores, so calibration scores equal predict's
    result = fit(cfg, sample_root, tmp_path / "run", **QUIET)
    n_train = len(load_split(sample_root, "sample", "train", 64, 3))
    assert result.fit_info["images"] == n_train  # nothing held out
    cal = result.calibration
    assert cal["source"] == "leave_one_out" and len(cal["good_scores"]) == n_train
    model = result.model
    assert model.bank_source.shape == (model.bank.shape[0],) and int(model.bank_source.max()) < n_train
    # a training image scored with its own entries sits closer to the bank than without them
    from colab_utils.train import load_data

    train, held = load_data(cfg, sample_root)
    images = train.join(held).images[:6]  # the order the bank was fitted in
    seen = predict(model, images, cfg, "cpu", keep_recons=False)["scores"]
    unseen = predict(model, images, cfg, "cpu", keep_recons=False, leave_one_out=True)["scores"]
    assert (unseen >= seen - 1e-6).all() and (unseen > seen).any()
    assert unseen.tolist() == pytest.approx(cal["good_scores"][:6], rel=1e-5)


def _tiny_bank(**kw) -> Config:
    values = dict(mode="memory_bank", image_size=64, pretrained=False, coreset_ratio=0.25, batch_size=8,
                  smooth_sigma=1.0, epochs=1)
    values.update(kw)
    return Config.for_category("sample", **values)


def test_registry_names_every_mode_and_rejects_unknown_ones():
    from colab_utils.config import MODES

    assert set(FAMILIES) == set(MODES)
    with pytest.raises(ValueError, match="choose from"):
        get_family("patchcore")


def test_bank_round_trips_through_a_checkpoint_bit_for_bit(sample_root, tmp_path):
    cfg = _tiny_bank()
    result = fit(cfg, sample_root, tmp_path / "run", **QUIET)
    bank = result.model.bank.clone()
    assert bank.dtype == torch.float16 and bank.shape[0] == result.fit_info["bank_size"] > 0
    model, loaded_cfg, state = load_trained(tmp_path / "run", "cpu")
    assert torch.equal(model.bank, bank)
    assert loaded_cfg.mode == "memory_bank" and state["calibration"]["image_threshold"] > 0
    assert is_finished(tmp_path / "run", cfg)
    # fitting again loads instead of refitting
    again = fit(cfg, sample_root, tmp_path / "run", **QUIET)
    assert again.status == "already_done" and torch.equal(again.model.bank, bank)
    # the same images give the same maps from the loaded model
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(model(x)["maps"], result.model(x)["maps"])


def test_wrong_family_or_backbone_checkpoint_gives_a_clear_error(sample_root, tmp_path):
    fit(_tiny_bank(), sample_root, tmp_path / "run", **QUIET)
    with pytest.raises(ckpt.CheckpointError, match="mode"):
        fit(Config.for_category("sample", mode="unet", image_size=64, epochs=1), sample_root, tmp_path / "run", **QUIET)
    with pytest.raises(ckpt.CheckpointError, match="backbone"):
        fit(_tiny_bank(backbone="resnet18"), sample_root, tmp_path / "run", **QUIET)
    # a bank loaded into a model of another backbone: named, not a raw state_dict traceback
    state = ckpt.load_checkpoint(tmp_path / "run" / BEST)
    state["config"]["backbone"] = "resnet18"
    ckpt.save_checkpoint(tmp_path / "edited.pt", state)
    with pytest.raises(ckpt.CheckpointError, match="do not match"):
        load_trained(tmp_path / "edited.pt")


@pytest.mark.parametrize("backbone, channels", [("resnet18", 128 + 256), ("wide_resnet50_2", 512 + 1024), ("mobilenet_v2", 24 + 32 + 96)])
def test_colab_backbones_give_patch_features_of_the_right_shape(backbone, channels):
    model = build_model(Config(mode="memory_bank", backbone=backbone, image_size=64), pretrained=False).eval()
    with torch.no_grad():
        feats = model.patch_features(torch.rand(2, 3, 64, 64))
    assert feats.shape == (2, channels, 8, 8)


def test_empty_bank_says_to_fit_first():
    model = build_model(_tiny_bank()).eval()
    with pytest.raises(RuntimeError, match="fit the model first"):
        model(torch.rand(1, 3, 64, 64))


@pytest.mark.slow
def test_memory_bank_detects_real_bottle_defects(mvtec_root, offline_torch_home, tmp_path):
    cfg = Config.for_category("bottle", profile="cpu", mode="memory_bank", image_size=128)
    result = fit(cfg, mvtec_root, tmp_path / "bottle", **QUIET)
    assert (tmp_path / "bottle" / LAST).exists() and result.fit_info["patches_seen"] > result.fit_info["bank_size"]
    ev = evaluate(tmp_path / "bottle", mvtec_root, progress=False)
    assert ev.metrics["image_auroc"] >= 0.97, ev.metrics
    assert ev.metrics["pixel_auroc"] >= 0.95, ev.metrics


def test_a_mean_start_and_exact_distances_make_the_coreset_independent_of_the_seed():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(400, 16, generator=gen)
    nearest_mean = int(torch.argmin(((x - x.mean(0)) ** 2).sum(1)))
    a = greedy_coreset(x, 20, projection_dim=0, seed=0, start="mean")
    b = greedy_coreset(x, 20, projection_dim=0, seed=7, start="mean")
    assert a[0] == nearest_mean and a.tolist() == b.tolist()
    assert greedy_coreset(x, 20, projection_dim=0, seed=0).tolist() != greedy_coreset(x, 20, projection_dim=0, seed=7).tolist()
    with pytest.raises(ConfigError, match="coreset_start"):
        Config(coreset_start="first")


def test_every_point_lies_within_the_reported_covering_radius():
    gen = torch.Generator().manual_seed(3)
    for pts in (torch.randn(500, 6, generator=gen), torch.cat([torch.randn(300, 4, generator=gen),
                                                               torch.randn(5, 4, generator=gen) * 0.1 + 20])):
        for k in (1, 7, 40):
            chosen, radius = greedy_coreset(pts, k, projection_dim=0, seed=1, return_radius=True)
            nearest = torch.cdist(pts, pts[chosen]).min(1).values
            assert nearest.max() == pytest.approx(radius, rel=1e-4, abs=1e-4)  # the radius is the worst point's


def test_a_fit_above_the_candidate_cap_samples_its_coreset_and_keeps_the_ratio(sample_root, tmp_path):
    cfg = _tiny_bank(coreset_candidates=2_000, coreset_ratio=0.05)
    result = fit(cfg, sample_root, tmp_path / "run", **QUIET)
    info = result.fit_info
    assert info["patches_seen"] > 2_000 and info["coreset_candidates"] == 2_000
    assert info["bank_size"] == round(0.05 * 2_000) and info["feature_dtype"] == "float32"
    assert result.model.bank_source.max() < info["images"]  # entries still name the image they came from
    uncapped = fit(_tiny_bank(coreset_ratio=0.05), sample_root, tmp_path / "all", **QUIET).fit_info
    assert uncapped["coreset_candidates"] == uncapped["patches_seen"] and uncapped["bank_size"] > info["bank_size"]
    small = fit(_tiny_bank(coreset_ratio=0.05, coreset_max=40), sample_root, tmp_path / "small", **QUIET)
    assert small.fit_info["bank_size"] == 40 and small.model.stand_in.shape == (40, small.model.bank.shape[1])


def test_a_calibration_sample_scores_each_image_without_itself(sample_root, tmp_path):
    """Above ``max_calibration_images``, an evenly spaced sample calibrates, each image still left out of the
    bank: its scores equal the full calibration's scores of the same images."""
    import numpy as np

    from colab_utils.scoring import calibration_sample

    # the bank's own score (its largest leave-one-out patch distance) does not depend on the calibration set
    full = fit(_tiny_bank(image_score_norm="global"), sample_root, tmp_path / "full", **QUIET)
    sampled = fit(_tiny_bank(image_score_norm="global", max_calibration_images=20), sample_root,
                  tmp_path / "sampled", **QUIET)  # fmt: skip
    idx = calibration_sample(full.fit_info["images"], 20)
    assert len(sampled.calibration["good_scores"]) == len(idx) == 20 and idx[0] == 0 and idx[-1] == 79
    scores = np.asarray(full.calibration["good_scores"])[idx.numpy()]
    np.testing.assert_allclose(sampled.calibration["good_scores"], scores, rtol=1e-5, atol=1e-5)


_FIT_SCRIPT = """
import sys, torch
from colab_utils.config import Config
from colab_utils.data import ImageSet
from colab_utils.train import fit
torch.set_num_threads(1)
n = int(sys.argv[1])
cfg = Config.for_category("synthetic", mode="memory_bank", image_size=64, pretrained=False, batch_size=16,
                          geometry="resize", coreset_candidates=5000, max_calibration_images=100)
gen = torch.Generator().manual_seed(0)
images = (torch.rand(n, 3, 64, 64, generator=gen) * 255).to(torch.uint8)
good = ImageSet(images=images, masks=torch.zeros(n, 1, 64, 64, dtype=torch.uint8),
                labels=torch.zeros(n, dtype=torch.int64), defect_types=["good"] * n,
                paths=[f"{i}.png" for i in range(n)])
if n:
    fit(cfg, None, sys.argv[2], progress=False, train_set=good, val_set=good.subset([]), log=lambda m: None)
"""


def _peak_mb(tmp_path, n: int) -> float:
    import os
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", _FIT_SCRIPT, str(n), str(tmp_path / f"run{n}")])
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return usage.ru_maxrss / 1024


def test_a_fit_on_hundreds_of_images_stays_under_a_measured_memory_ceiling(tmp_path):
    """The process that fits 600 synthetic images (capped coreset candidates, a calibration sample) peaks within
    200 MB of the same process that fits nothing: images, features and bank are a few MB at 64 px, and nothing
    the fit keeps grows with the square of the patches."""
    baseline = _peak_mb(tmp_path, 0)
    peak = _peak_mb(tmp_path, 600)
    assert peak - baseline < 200, (baseline, peak)
