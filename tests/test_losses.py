"""Tests of colab_utils.losses: zero for identical images, gradients, kornia's SSIM convention, weighting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kornia.losses import ssim_loss

from colab_utils.backbones import FeatureExtractor
from colab_utils.config import Config
from colab_utils.losses import ReconstructionLoss, ssim_window_for
from colab_utils.models import UNetAutoencoder, get_family


def _pyramid(x: torch.Tensor, scales=(1, 2, 4)) -> dict[int, torch.Tensor]:
    return {s: (x if s == 1 else F.avg_pool2d(x, s)).clone() for s in scales}


def _reference_ssim_map(x: torch.Tensor, y: torch.Tensor, window: int, sigma: float = 1.5) -> torch.Tensor:
    """SSIM (Wang et al. 2004) written out independently: Gaussian window, reflect padding, c1/c2 for range 1."""
    coords = torch.arange(window, dtype=torch.float64) - window // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(x.shape[1], 1, window, window)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, [window // 2] * 4, mode="reflect"), kernel, groups=t.shape[1])

    x, y = x.double(), y.double()
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))


@pytest.mark.parametrize("channels", [1, 3])
def test_loss_is_exactly_zero_for_identical_images(channels):
    x = torch.rand(2, channels, 64, 64, generator=torch.Generator().manual_seed(0))
    total, parts = ReconstructionLoss(Config(mode="unet"))(_pyramid(x), x)
    assert total.item() == 0.0
    assert set(parts) == {"mse@1", "ssim@1", "mse@2", "ssim@2", "mse@4", "ssim@4", "total"}
    assert all(v == 0.0 for v in parts.values())


def test_loss_has_gradients_for_a_perturbed_reconstruction():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=gen)
    outputs = {
        s: (y + 0.05 * torch.randn(y.shape, generator=gen)).clamp(0, 1).requires_grad_() for s, y in _pyramid(x).items()
    }
    total, parts = ReconstructionLoss(Config(mode="unet"))(outputs, x)
    assert total.ndim == 0 and total.item() > 0
    total.backward()
    for y in outputs.values():
        assert y.grad is not None and torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    assert all(v > 0 for v in parts.values())


def test_total_is_the_documented_weighted_sum():
    cfg = Config(mode="unet", loss_mse_weight=2.0, loss_ssim_weight=0.5, loss_scale_weights=(1.0, 0.3, 0.1))
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 32, 32, generator=gen)
    outputs = {s: torch.rand(y.shape, generator=gen) for s, y in _pyramid(x).items()}
    total, parts = ReconstructionLoss(cfg)(outputs, x)
    expected = sum(w * (2.0 * parts[f"mse@{s}"] + 0.5 * parts[f"ssim@{s}"]) for s, w in zip((1, 2, 4), (1.0, 0.3, 0.1)))
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert parts["total"] == pytest.approx(total.item())
    # the target of scale s is the s x s mean of the full-size target
    assert parts["mse@2"] == pytest.approx(F.mse_loss(outputs[2], F.avg_pool2d(x, 2)).item(), rel=1e-5)


def test_kornia_ssim_loss_is_half_of_one_minus_ssim():
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(1, 3, 48, 48, generator=gen)
    y = (x + 0.2 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    reference = _reference_ssim_map(x, y, 11)
    kornia_value = ssim_loss(x, y, window_size=11, max_val=1.0, eps=0.0)
    assert kornia_value.item() == pytest.approx(((1 - reference) / 2).mean().item(), abs=1e-5)
    with pytest.raises(TypeError):  # kornia wants a float max_val
        ssim_loss(x, y, window_size=11, max_val=1)


def test_ssim_term_of_an_inverted_image_is_large_and_at_most_one():
    x = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    cfg = Config(mode="unet", loss_mse_weight=0.0, out_scales=(1,), loss_scale_weights=(1.0,), map_scale_weights=(1.0,))
    total, parts = ReconstructionLoss(cfg)({1: 1 - x}, x)
    assert 0.9 < parts["ssim@1"] <= 1.0  # anti-correlated: SSIM near -1, (1 - SSIM) / 2 near 1
    assert total.item() == pytest.approx(parts["ssim@1"])


def test_ssim_window_shrinks_to_fit_small_scales():
    assert ssim_window_for((64, 64), 11) == 11
    assert ssim_window_for((8, 16), 11) == 7
    assert ssim_window_for((4, 4), 11) == 3
    assert ssim_window_for((2, 2), 11) == 0
    x = torch.rand(1, 3, 16, 16)
    cfg = Config(
        mode="unet", image_size=32, depth=3, out_scales=(1, 4), loss_scale_weights=(1, 1), map_scale_weights=(1, 1)
    )
    _, parts = ReconstructionLoss(cfg)({1: x.flip(-1), 4: torch.rand(1, 3, 4, 4)}, x)
    assert parts["ssim@4"] > 0  # a 3x3 window on the 4x4 output


def test_unknown_scale_and_missing_reconstruction_raise():
    loss = ReconstructionLoss(Config(mode="unet"))
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="scale 8"):
        loss({8: torch.rand(1, 3, 4, 4)}, x)
    with pytest.raises(ValueError, match="no reconstruction"):
        loss({"features": x}, x)


def test_perceptual_term_zero_for_identical_and_differentiable():
    torch.manual_seed(0)
    extractor = FeatureExtractor("mobilenet_v2", layers=(3, 6), pretrained=False)
    cfg = Config(
        mode="unet", loss_perceptual_weight=0.5, out_scales=(1,), loss_scale_weights=(1.0,), map_scale_weights=(1.0,)
    )
    loss = ReconstructionLoss(cfg, perceptual_extractor=extractor)
    x = torch.rand(2, 1, 64, 64)
    total, parts = loss({1: x.clone()}, x)
    assert parts["perceptual"] == 0.0 and total.item() == 0.0
    recon = (x + 0.1 * torch.randn_like(x)).clamp(0, 1).requires_grad_()
    total, parts = loss({1: recon}, x)
    assert parts["perceptual"] > 0
    total.backward()
    assert recon.grad.abs().sum() > 0
    assert all(p.grad is None for p in extractor.parameters())  # the extractor stays frozen


def test_unet_parameters_get_gradients_from_the_loss():
    torch.manual_seed(0)
    net = UNetAutoencoder(3, base_width=8, depth=3, skip_levels=1, out_scales=(1, 2, 4))
    x = torch.rand(2, 3, 32, 32)
    cfg = Config(mode="unet", image_size=32, depth=3)
    total, _ = ReconstructionLoss(cfg)(net(x), x)
    total.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_the_unet_family_builds_its_loss():
    assert isinstance(get_family("unet").loss(Config(mode="unet"), "cpu"), ReconstructionLoss)
