"""Tests of colab_utils.backbones: shapes, frozen behaviour, offline ImageNet weights, missing-weights message."""

from __future__ import annotations

import time

import pytest
import torch

from colab_utils import backbones
from colab_utils.backbones import BackboneWeightsMissing, FeatureExtractor

WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"  # the file the offline_torch_home fixture provides


@pytest.fixture(scope="module")
def mobilenet() -> FeatureExtractor:
    torch.manual_seed(0)
    return FeatureExtractor("mobilenet_v2", pretrained=False)


@pytest.fixture(scope="module")
def resnet18() -> FeatureExtractor:
    torch.manual_seed(0)
    return FeatureExtractor("resnet18", pretrained=False)


@pytest.mark.parametrize("size", [128, 256])
@pytest.mark.parametrize("which, channels", [("mobilenet", 24 + 32 + 96), ("resnet18", 64 + 128 + 256)])
def test_output_shape_on_stride_4_grid(request, which, channels, size):
    extractor = request.getfixturevalue(which)
    assert extractor.out_channels == channels
    with torch.no_grad():
        f = extractor(torch.rand(2, 3, size, size))
    assert f.shape == (2, channels, size // 4, size // 4)
    assert f.dtype == torch.float32 and torch.isfinite(f).all()


@pytest.mark.parametrize("name, channels", [("efficientnet_b0", 24 + 40 + 112), ("wide_resnet50_2", 256 + 512 + 1024)])
def test_other_backbones(name, channels):
    extractor = FeatureExtractor(name, pretrained=False)
    assert extractor.out_channels == channels
    with torch.no_grad():
        assert extractor(torch.rand(1, 3, 64, 64)).shape == (1, channels, 16, 16)


def test_non_square_and_grayscale(mobilenet):
    x = torch.rand(2, 1, 96, 128)
    with torch.no_grad():
        gray = mobilenet(x)
        rgb = mobilenet(x.repeat(1, 3, 1, 1))
    assert gray.shape == (2, 152, 24, 32)
    torch.testing.assert_close(gray, rgb)


def test_custom_layers_and_errors():
    extractor = FeatureExtractor("mobilenet_v2", layers=(6, 3), pretrained=False)
    assert extractor.layers == (3, 6) and extractor.out_channels == 24 + 32
    assert len(extractor.stages) == 7  # deeper stages are dropped
    with pytest.raises(ValueError, match="layers"):
        FeatureExtractor("mobilenet_v2", layers=(99,), pretrained=False)
    with pytest.raises(ValueError, match="unknown backbone"):
        FeatureExtractor("vgg_nonexistent", pretrained=False)
    with pytest.raises(ValueError, match="pool"):
        FeatureExtractor("mobilenet_v2", pretrained=False, pool=2)
    with pytest.raises(ValueError, match="expected images"):
        FeatureExtractor("mobilenet_v2", pretrained=False)(torch.rand(1, 2, 32, 32))


def test_local_pooling_smooths_features(mobilenet):
    pooled = FeatureExtractor("mobilenet_v2", pretrained=False, pool=3)
    pooled.load_state_dict(mobilenet.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        plain, smooth = mobilenet(x), pooled(x)
    assert smooth.shape == plain.shape
    # a local mean lowers the spatial variation between neighbouring cells
    assert smooth.diff(dim=-1).abs().mean() < plain.diff(dim=-1).abs().mean()


def test_frozen_eval_and_gradient_to_input(mobilenet):
    assert all(not p.requires_grad for p in mobilenet.parameters())
    before = {k: v.clone() for k, v in mobilenet.state_dict().items()}
    mobilenet.train()
    assert not mobilenet.training and not any(m.training for m in mobilenet.modules())
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    mobilenet(x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # usable for the perceptual loss
    for k, v in mobilenet.state_dict().items():  # BatchNorm running statistics untouched
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_pretrained_offline_weights_load_and_are_deterministic(offline_torch_home, weights_dir):
    assert backbones.weights_file_name("mobilenet_v2") == WEIGHTS_FILE
    assert backbones.weights_cache_path("mobilenet_v2") == offline_torch_home / "hub" / "checkpoints" / WEIGHTS_FILE
    a = FeatureExtractor("mobilenet_v2", pretrained=True)
    b = FeatureExtractor("mobilenet_v2", pretrained=True)
    reference = torch.load(weights_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    torch.testing.assert_close(a.stages[0][0].weight, reference["features.0.0.weight"], rtol=0, atol=0)
    torch.testing.assert_close(a.stages[13].conv[0][0].weight, reference["features.13.conv.0.0.weight"], rtol=0, atol=0)
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fa1, fa2, fb = a(x), a(x), b(x)
    torch.testing.assert_close(fa1, fa2, rtol=0, atol=0)
    torch.testing.assert_close(fa1, fb, rtol=0, atol=0)
    assert fa1.shape == (2, 152, 32, 32) and fa1.std() > 0


def test_missing_weights_raise_helpful_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(backbones, "_download_possible", lambda url, timeout=0: False)  # as when offline
    start = time.perf_counter()
    with pytest.raises(BackboneWeightsMissing) as info:
        FeatureExtractor("mobilenet_v2", pretrained=True)
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert WEIGHTS_FILE in message
    assert str(tmp_path / "hub" / "checkpoints" / WEIGHTS_FILE) in message
    assert "TORCH_HOME" in message and "~/.cache/torch/hub/checkpoints" in message
    assert "pretrained=False" in message
    assert isinstance(info.value, RuntimeError)
    FeatureExtractor("mobilenet_v2", pretrained=False)  # the advertised way out works


def test_network_probe_never_hangs():
    start = time.perf_counter()
    result = backbones._download_possible("https://download.pytorch.org/models/x.pth", timeout=0.5)
    assert isinstance(result, bool)
    assert time.perf_counter() - start < 2.0


def test_damaged_cached_file_raises_with_advice(tmp_path, monkeypatch):
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / WEIGHTS_FILE).write_bytes(b"not a checkpoint")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(BackboneWeightsMissing, match="delete it"):
        FeatureExtractor("mobilenet_v2", pretrained=True)
