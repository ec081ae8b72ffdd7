"""Tests of colab_utils.models: U-Net shapes and ranges, skip levels, GroupNorm batch independence, build_model,
self-contained checkpoints, and a short real-data training run that lowers the loss."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from colab_utils import backbones
from colab_utils.augment import augment_batch
from colab_utils.config import Config
from colab_utils.corruption import synthesize_defects
from colab_utils.losses import ReconstructionLoss
from colab_utils.models import UNetAutoencoder, build_model, count_parameters


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(64, 64), (128, 128), (96, 64)])
def test_unet_shapes_and_range(channels, size):
    torch.manual_seed(0)
    net = UNetAutoencoder(channels, base_width=8, depth=4, skip_levels=2, out_scales=(1, 2, 4))
    x = torch.rand(2, channels, *size)
    out = net(x)
    assert list(out) == [1, 2, 4]
    for s, y in out.items():
        assert y.shape == (2, channels, size[0] // s, size[1] // s)
        assert y.dtype == torch.float32 and y.min() >= 0 and y.max() <= 1


@pytest.mark.parametrize("skip_levels", [0, 1, 2, 3])
def test_unet_every_skip_level(skip_levels):
    depth = 3
    net = UNetAutoencoder(3, base_width=8, depth=depth, skip_levels=skip_levels, out_scales=(1, 4))
    assert net.skip_from == tuple(range(depth - skip_levels, depth))
    # the full-resolution decoder stage sees a skip only when every level sends one (a plain U-Net)
    first_conv = net.decoder["0"][0]
    assert first_conv.in_channels == net.widths[1] + (net.widths[0] if skip_levels == depth else 0)
    out = net(torch.rand(1, 3, 32, 32))
    assert {s: tuple(y.shape) for s, y in out.items()} == {1: (1, 3, 32, 32), 4: (1, 3, 8, 8)}


def test_unet_decoder_stops_at_finest_output_and_rejects_bad_input():
    net = UNetAutoencoder(3, base_width=8, depth=3, skip_levels=1, out_scales=(2, 4))
    assert "0" not in net.decoder
    assert set(net(torch.rand(1, 3, 32, 32))) == {2, 4}
    with pytest.raises(ValueError, match="divisible"):
        net(torch.rand(1, 3, 36, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        net(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="out_scales"):
        UNetAutoencoder(3, depth=3, out_scales=(8,))
    with pytest.raises(ValueError, match="skip_levels"):
        UNetAutoencoder(3, depth=3, skip_levels=4)


def test_unet_output_of_an_image_does_not_depend_on_its_batch():
    # GroupNorm normalises each image alone: single-image evaluation equals batched training-mode output
    torch.manual_seed(0)
    net = UNetAutoencoder(3, base_width=8, depth=3, skip_levels=2, out_scales=(1,))
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        batched = net.train()(x)[1]
        alone = net.eval()(x[2:3])[1]
    torch.testing.assert_close(batched[2:3], alone, rtol=1e-5, atol=1e-6)


def test_build_model_unet_from_config():
    cfg = Config(
        mode="unet",
        channels=1,
        base_width=8,
        depth=3,
        skip_levels=1,
        out_scales=(1, 2),
        image_size=64,
        loss_scale_weights=(1.0, 0.5),
        map_scale_weights=(1.0, 1.0),
    )
    net = build_model(cfg)
    assert isinstance(net, UNetAutoencoder)
    assert (net.in_channels, net.depth, net.skip_levels, net.out_scales, net.widths[0]) == (1, 3, 1, (1, 2), 8)
    assert count_parameters(net) == sum(p.numel() for p in net.parameters()) > 0
    assert {s: tuple(y.shape) for s, y in net(torch.rand(1, 1, 64, 64)).items()} == {
        1: (1, 1, 64, 64),
        2: (1, 1, 32, 32),
    }


def test_build_model_memory_bank_checkpoint_is_self_contained(tmp_path, monkeypatch):
    # no ImageNet file and no network: pretrained=False builds, and loading a state_dict restores everything
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(backbones, "_download_possible", lambda url, timeout=0: False)
    cfg = Config(mode="memory_bank", image_size=64)
    with pytest.raises(backbones.BackboneWeightsMissing):
        build_model(cfg)
    torch.manual_seed(1)
    a = build_model(cfg, pretrained=False).eval()
    a.set_bank(torch.randn(50, a.extractor.out_channels))
    torch.manual_seed(2)
    b = build_model(cfg, pretrained=False).eval()
    x = torch.rand(1, 3, 64, 64)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(x)["maps"], b(x)["maps"], rtol=0, atol=0)
    assert b.bank.shape == (50, a.extractor.out_channels)


def _load_pngs(folder, n, size):
    from PIL import Image

    paths = sorted(folder.glob("*.png"))[:n]
    arrays = [np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR)) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


@pytest.mark.slow
@pytest.mark.mvtec
def test_unet_training_on_real_bottle_images_lowers_the_loss(mvtec_root):
    start = time.perf_counter()
    torch.manual_seed(0)
    images = _load_pngs(mvtec_root / "bottle" / "train" / "good", 16, 64)
    cfg = Config(mode="unet", image_size=64, base_width=16, depth=3, skip_levels=2, out_scales=(1, 2, 4))
    net = build_model(cfg)
    loss_fn = ReconstructionLoss(cfg)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)

    def clean_loss() -> float:
        net.eval()
        with torch.no_grad():
            return loss_fn(net(images), images)[0].item()

    before = clean_loss()
    net.train()
    for _ in range(30):
        idx = torch.randperm(len(images), generator=gen)[:8]
        batch = augment_batch(images[idx], cfg.augmentations, gen)
        corrupted, _ = synthesize_defects(batch, gen, prob=cfg.model.corruption_prob, kinds=cfg.model.corruptions)
        total, parts = loss_fn(net(corrupted), batch)
        opt.zero_grad()
        total.backward()
        opt.step()
        assert np.isfinite(parts["total"])
    after = clean_loss()
    assert after < 0.5 * before, (before, after)
    assert time.perf_counter() - start < 20


def test_a_grey_part_is_reconstructed_grey_and_a_colour_one_untouched():
    from colab_utils.models.unet import grey_where_grey

    torch.manual_seed(0)
    grey = torch.rand(1, 1, 16, 16).expand(1, 3, 16, 16)
    colour = torch.rand(1, 3, 16, 16)
    outputs = {1: torch.rand(2, 3, 16, 16), 2: torch.rand(2, 3, 8, 8)}
    out = grey_where_grey(torch.cat([grey, colour]), outputs)
    for s in (1, 2):
        assert torch.equal(out[s][0, 0], out[s][0, 1]) and torch.equal(out[s][0, 1], out[s][0, 2])
        torch.testing.assert_close(out[s][0, 0], outputs[s][0].mean(0))
        assert torch.equal(out[s][1], outputs[s][1])
