"""The U-Net's discriminative head (DRAEM-style): shapes, its loss, learning on real images, resume, old runs."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torchvision

from colab_utils import checkpoint as ckpt
from colab_utils.config import Config
from colab_utils.corruption import synthesize_defects
from colab_utils.data import load_split
from colab_utils.losses import focal_loss
from colab_utils.metrics import pixel_auroc
from colab_utils.models import build_model, get_family
from colab_utils.models.unet import ReconstructSegment, UNetAutoencoder
from colab_utils.train import BEST, LAST, fit, load_trained


def head_config(category: str = "sample", **kw) -> Config:
    values = dict(mode="unet", discriminative_head=True, image_size=64, base_width=8, head_width=8, depth=3, skip_levels=1, out_scales=(1, 2),
                  loss_scale_weights=(1.0, 0.5), map_scale_weights=(1.0, 1.0), epochs=2, batch_size=8,
                  smooth_sigma=1.0, lr=2e-3)  # fmt: skip
    values.update(kw)
    return Config.for_category(category, **values)


@pytest.mark.parametrize("channels", [1, 3])
def test_head_output_shape_and_range(channels):
    cfg = head_config(channels=channels)
    model = build_model(cfg).eval()
    assert isinstance(model, ReconstructSegment)
    assert model.head.in_channels == 2 * channels and model.head.skip_levels == model.head.depth
    x = torch.rand(2, channels, 64, 64)
    with torch.no_grad():
        out = model(x)
        raw = get_family(cfg).raw_maps(model, x, cfg)
        fused = get_family(cfg).raw_maps(model, x, cfg.replace(head_recon_map_weight=0.5))
    assert out["logits"].shape == (2, 1, 64, 64) and torch.isfinite(out["logits"]).all()
    assert out[1].shape == (2, channels, 64, 64) and out[2].shape == (2, channels, 32, 32)
    assert raw.maps.shape == (2, 1, 64, 64) and raw.maps.min() >= 0 and raw.maps.max() <= 1
    torch.testing.assert_close(raw.maps, torch.sigmoid(out["logits"]))
    assert raw.recon.shape == (2, channels, 64, 64) and 0 <= raw.recon.min() and raw.recon.max() <= 1
    assert (fused.maps >= raw.maps).all() and (fused.maps > raw.maps).any()  # + 0.5 * reconstruction error


def test_head_off_builds_the_plain_autoencoder():
    assert isinstance(build_model(head_config(discriminative_head=False)), UNetAutoencoder)
    with pytest.raises(ValueError, match="out_scales must contain 1"):
        ReconstructSegment(UNetAutoencoder(3, 8, 3, 1, (2,)))


def test_focal_loss_hand_worked_and_against_torchvision():
    # logit 0 on a defect pixel: BCE = ln 2, p_t = 1/2, focal = (1/2)**2 * ln 2
    zero, one = torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)
    assert focal_loss(zero, one).item() == pytest.approx(0.25 * torch.log(torch.tensor(2.0)).item(), rel=1e-6)
    assert focal_loss(zero, one, gamma=0).item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), rel=1e-6)
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(4, 1, 16, 16, generator=gen)
    target = (torch.rand(4, 1, 16, 16, generator=gen) > 0.8).float()
    reference = torchvision.ops.sigmoid_focal_loss(logits, target, alpha=-1, gamma=2.0, reduction="mean")
    assert focal_loss(logits, target).item() == pytest.approx(reference.item(), rel=1e-5)
    assert focal_loss(10 * (2 * target - 1), target).item() < 1e-6  # confident and right: nearly zero
    with pytest.raises(ValueError, match="one shape"):
        focal_loss(logits, target[:, :, :8])


def _segmentation_loss(model, images, masks):
    with torch.no_grad():
        return focal_loss(model(images)["logits"], masks).item()


def test_training_on_real_bottle_images_teaches_the_head_to_find_synthetic_defects(mvtec_root, tmp_path):
    torch.manual_seed(0)
    cfg = head_config("bottle", epochs=6, corruption_prob=1.0, lr=3e-3)
    test = load_split(mvtec_root, "bottle", "test", cfg.image_size, cfg.channels)
    good = test.float_images(torch.nonzero(torch.as_tensor(test.labels) == 0).flatten()[:16])
    corrupted, masks = synthesize_defects(good, torch.Generator().manual_seed(7), prob=1.0,
                                          kinds=cfg.corruptions, textures=cfg.corruption_textures)  # fmt: skip
    keep = masks.flatten(1).sum(1) > 20  # images whose defect is more than a speck
    corrupted, masks, clean = corrupted[keep], masks[keep], good[keep]
    untrained = build_model(cfg).eval()
    before = _segmentation_loss(untrained, corrupted, masks)

    result = fit(cfg, mvtec_root, tmp_path / "run", progress=False, log=lambda m: None)
    model = result.model.eval()
    after = _segmentation_loss(model, corrupted, masks)
    assert "train_focal" in result.history and result.history["train_focal"][-1] < result.history["train_focal"][0]
    assert after < 0.7 * before, (before, after)

    with torch.no_grad():
        on_defect = get_family(cfg).raw_maps(model, corrupted, cfg).maps
        on_clean = get_family(cfg).raw_maps(model, clean, cfg).maps
    inside = on_defect[masks > 0].mean().item()
    outside = on_defect[masks == 0].mean().item()
    # soft Dice overlap with the defect mask, against the same overlap of the clean image's map (no defect there)
    dice_defect = (2 * (on_defect * masks).sum() / (on_defect.sum() + masks.sum())).item()
    dice_clean = (2 * (on_clean * masks).sum() / (on_clean.sum() + masks.sum())).item()
    auroc = pixel_auroc(masks.numpy(), on_defect.numpy())
    figures = dict(inside=inside, outside=outside, clean=on_clean.mean().item(), dice_defect=dice_defect,
                   dice_clean=dice_clean, auroc=auroc)  # fmt: skip
    # six short epochs at 64 px: the head is far from DRAEM's, but it clearly points at the defects
    assert inside > 1.5 * figures["clean"] and inside > 1.5 * outside, figures
    assert dice_defect > dice_clean + 0.05, figures
    assert auroc > 0.75, figures


def test_resume_restores_both_networks_and_the_optimizer(sample_root, tmp_path):
    cfg = head_config(epochs=2)
    fit(cfg, sample_root, tmp_path / "run", progress=False, log=lambda m: None)
    state = ckpt.load_checkpoint(tmp_path / "run" / LAST)
    keys = set(state["model"])
    assert any(k.startswith("recon.") for k in keys) and any(k.startswith("head.") for k in keys)
    model = build_model(cfg)
    assert len(state["optimizer"]["state"]) == sum(1 for p in model.parameters() if p.requires_grad)
    # resuming for two more epochs starts from exactly the saved weights and moments of both networks
    longer = cfg.replace(epochs=4)
    messages = []
    resumed = fit(longer, sample_root, tmp_path / "run", progress=False, log=messages.append)
    assert any("resumed" in m and "epoch 2" in m for m in messages)
    assert resumed.history["train_loss"][:2] == state["history"]["train_loss"] and resumed.epochs_done == 4


def test_a_unet_saved_before_the_head_existed_still_loads(sample_root, tmp_path):
    cfg = head_config(discriminative_head=False)
    fit(cfg, sample_root, tmp_path / "run", progress=False, log=lambda m: None)
    for name in (LAST, BEST):  # rewrite the run as a version before the head stored it: no discriminative_head
        payload = ckpt.load_checkpoint(tmp_path / "run" / name)
        for key in ("config", "calibrated_config"):
            if key in payload:
                payload[key].pop("discriminative_head")
        ckpt.save_checkpoint(tmp_path / "run" / name, payload)
    model, config, _ = load_trained(tmp_path / "run")
    assert config.discriminative_head is False and isinstance(model, UNetAutoencoder)


def test_onnx_export_of_the_head_gives_the_torch_maps_and_scores(sample_root, tmp_path):
    onnx = pytest.importorskip("onnx") if not os.environ.get("CI") else __import__("onnx")
    from colab_utils.export import export_onnx, run_onnx
    from colab_utils.inspector import Inspector

    cfg = head_config(epochs=1)
    fit(cfg, sample_root, tmp_path / "run", progress=False, log=lambda m: None)
    onnx_path, _ = export_onnx(tmp_path / "run")
    onnx.checker.check_model(str(onnx_path))
    inspector = Inspector.load(tmp_path / "run", "cpu")
    images = load_split(sample_root, "sample", "test", cfg.image_size, cfg.channels).images[:6]
    scores, maps = inspector.score_batch(images)
    onnx_maps, onnx_scores = run_onnx(onnx_path, images.float().numpy() / 255.0)
    assert np.abs(onnx_scores - scores).max() <= 1e-4 * max(1.0, np.ptp(scores))
    assert np.abs(onnx_maps - maps).max() <= 1e-4 * max(1.0, np.ptp(maps))
