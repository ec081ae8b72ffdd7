"""Frozen torchvision feature extractors, shared by the memory bank and the U-Net's perceptual terms.

:class:`FeatureExtractor` runs the first stages of an ImageNet CNN on images in [0, 1], takes the outputs of a
few stages at different depths (strides 4, 8 and 16 by default), brings them to ONE grid at stride 4
(``H // 4 x W // 4``, bilinear) and concatenates them along channels.

Pretrained weights come through torchvision's normal weights API (``weights="IMAGENET1K_V1"``): on Colab they
are downloaded once into ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``); offline
they are read from that folder. When the file is missing and no download is possible,
:class:`BackboneWeightsMissing` is raised at once (no network attempt that could hang), naming the file and the
folder it must be copied to.

Library conventions that bite:

- torchvision's ImageNet models expect ImageNet-normalised RGB input; the normalisation is applied here, so
  callers pass plain [0, 1] images (1-channel images are repeated to 3 channels).
- For ``mobilenet_v2``, ``weights="DEFAULT"`` means ``IMAGENET1K_V2`` (another file); this module always asks
  for ``IMAGENET1K_V1`` (file ``mobilenet_v2-b0353104.pth``), the one kept offline for the tests.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The weights enum member asked of torchvision for every backbone.
WEIGHTS_TAG = "IMAGENET1K_V1"

#: Seconds allowed for the quick "can we reach the download server" probe.
NETWORK_PROBE_SECONDS = 3.0


class BackboneWeightsMissing(RuntimeError):
    """The ImageNet weights file of a backbone is not cached and cannot be downloaded."""


@dataclass(frozen=True)
class _BackboneSpec:
    """How to cut a torchvision model into a sequence of stages."""

    default_layers: tuple[int, ...]
    kind: str  # "features": model.features[i] are the stages; "resnet": stem, layer1..layer4


_SPECS: dict[str, _BackboneSpec] = {
    # features[3] (24 ch, stride 4), [6] (32 ch, stride 8), [13] (96 ch, stride 16): the last block of each stage
    "mobilenet_v2": _BackboneSpec(default_layers=(3, 6, 13), kind="features"),
    # features[2] (24 ch, stride 4), [3] (40 ch, stride 8), [5] (112 ch, stride 16)
    "efficientnet_b0": _BackboneSpec(default_layers=(2, 3, 5), kind="features"),
    # layer1 (stride 4), layer2 (stride 8), layer3 (stride 16): 64+128+256 ch resp. 256+512+1024 ch
    "resnet18": _BackboneSpec(default_layers=(1, 2, 3), kind="resnet"),
    "wide_resnet50_2": _BackboneSpec(default_layers=(1, 2, 3), kind="resnet"),
}

BACKBONES = tuple(_SPECS)


def weights_file_name(name: str) -> str:
    """File name torchvision stores the ImageNet weights of backbone ``name`` under (from the enum's url)."""
    weights = torchvision.models.get_model_weights(name)[WEIGHTS_TAG]
    return os.path.basename(urlparse(weights.url).path)


def weights_cache_path(name: str) -> Path:
    """Where torchvision looks for the weights file: ``$TORCH_HOME/hub/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / weights_file_name(name)


def _download_possible(url: str, timeout: float = NETWORK_PROBE_SECONDS) -> bool:
    """True when the host of ``url`` answers a TCP connection within ``timeout`` s (or a proxy is configured).

    Name resolution has no timeout of its own, so the probe runs in a daemon thread that is abandoned after
    ``timeout`` seconds.
    """
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # let urllib try through the proxy
    parsed = urlparse(url)
    host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def weights_obtainable(name: str) -> bool:
    """True when backbone ``name``'s ImageNet weights file is cached, or its download host answers."""
    if weights_cache_path(name).is_file():
        return True
    return _download_possible(torchvision.models.get_model_weights(name)[WEIGHTS_TAG].url)


def _missing_message(name: str, reason: str) -> str:
    path = weights_cache_path(name)
    return (
        f"ImageNet weights for backbone {name!r} are not available ({reason}). "
        f"Needed file: {path.name}. Put it at {path} "
        f"(that is $TORCH_HOME/hub/checkpoints/{path.name}; without TORCH_HOME the folder is "
        f"~/.cache/torch/hub/checkpoints), or connect to the internet so torchvision can download it, "
        f"or point SHARED_WEIGHTS at a folder holding it when you run `make demo`; or train with "
        f"--mode unet (no ImageNet weights needed); pretrained=False gives random weights, for smoke tests only."
    )


def _load_torchvision_model(name: str, pretrained: bool) -> nn.Module:
    """The torchvision classifier ``name``, with ImageNet weights when ``pretrained``."""
    if not pretrained:
        return torchvision.models.get_model(name, weights=None)
    weights = torchvision.models.get_model_weights(name)[WEIGHTS_TAG]
    if not weights_cache_path(name).is_file() and not _download_possible(weights.url):
        raise BackboneWeightsMissing(_missing_message(name, "file not cached and no network"))
    try:
        return torchvision.models.get_model(name, weights=weights)
    except Exception as exc:  # download errors (URLError), truncated (RuntimeError) or garbled (ValueError) files
        path = weights_cache_path(name)
        reason = f"{type(exc).__name__}: {exc}"
        if path.is_file():
            reason = f"the cached file {path} could not be read ({reason}); delete it and copy or download it again"
        raise BackboneWeightsMissing(_missing_message(name, reason)) from exc


def _stages(name: str, model: nn.Module) -> list[nn.Module]:
    """The model as a list of sequential stages; stage ``i``'s output is what layer index ``i`` means."""
    if _SPECS[name].kind == "features":
        return list(model.features)
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    return [stem, model.layer1, model.layer2, model.layer3, model.layer4]


class FeatureExtractor(nn.Module):
    """Frozen ImageNet CNN features of several depths on one stride-4 grid.

    Args:
        name: one of :data:`BACKBONES` (``mobilenet_v2``, ``resnet18``, ``wide_resnet50_2``, ``efficientnet_b0``).
        layers: stage indices whose outputs are used; ``()`` = the backbone's default (strides 4, 8, 16).
            For ``mobilenet_v2``/``efficientnet_b0`` an index ``i`` means ``model.features[i]``; for the
            ResNets 1..4 mean ``layer1``..``layer4`` (0 is the stem). Only the stages up to the deepest one used
            are kept, so deeper layers cost nothing.
        pretrained: load torchvision's ImageNet weights (``IMAGENET1K_V1``); ``False`` gives random weights
            (for shape tests only). Raises :class:`BackboneWeightsMissing` when the file is not cached and
            cannot be downloaded.
        pool: size of a local average pooling (stride 1, same size) applied to each stage's output before
            resampling, as in patch-level methods (PatchCore uses 3); 0 or 1 = off.
        stride: the stride of the common grid the stage outputs are resampled to (4: ``H // 4 x W // 4``;
            the memory bank uses 8).

    ``forward(images)``: float images (B, 3, H, W) or (B, 1, H, W) in [0, 1] -> features
    (B, F, H // stride, W // stride),
    F = :attr:`out_channels`, real-valued (unbounded). Gradients flow to the input (for the perceptual loss); the
    weights never change: all parameters have ``requires_grad=False`` and the module stays in eval mode even
    after ``.train()`` (BatchNorm statistics stay ImageNet's).
    """

    def __init__(
        self,
        name: str = "mobilenet_v2",
        layers: Sequence[int] = (),
        pretrained: bool = True,
        pool: int = 0,
        stride: int = 4,
    ) -> None:
        super().__init__()
        if name not in _SPECS:
            raise ValueError(f"unknown backbone {name!r}; choose from {BACKBONES}")
        model = _load_torchvision_model(name, pretrained)
        stages = _stages(name, model)
        layers = tuple(int(i) for i in layers) or _SPECS[name].default_layers
        if len(set(layers)) != len(layers) or any(not 0 <= i < len(stages) for i in layers):
            raise ValueError(
                f"layers={layers} for backbone {name!r}: need distinct stage indices in 0..{len(stages) - 1}"
            )
        if pool < 0 or (pool > 1 and pool % 2 == 0):
            raise ValueError(f"pool={pool}: must be 0 (off) or an odd size such as 3")
        self.name = name
        self.layers = tuple(sorted(layers))
        self.pretrained = bool(pretrained)
        self.pool = int(pool)
        if stride < 1:
            raise ValueError(f"stride={stride}: must be a positive grid stride such as 4 or 8")
        self.stride = int(stride)
        # channels-last convolutions: the same features, measured twice as fast on the CPU (MobileNetV2 to
        # stage 13 at 256 px, 2 threads: 22 against 41 ms an image; benchmarks/README.md, section 14)
        self.stages = nn.ModuleList(stages[: max(self.layers) + 1]).to(memory_format=torch.channels_last)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()
        with torch.no_grad():
            probe = self._stage_outputs(torch.zeros(1, 3, 64, 64))
        self.layer_channels = tuple(int(t.shape[1]) for t in probe)
        self.out_channels = int(sum(self.layer_channels))

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Always stays in eval mode (frozen BatchNorm), whatever ``mode`` says."""
        return super().train(False)

    def _stage_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.layers:
                outs.append(x)
        return outs

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3|1, H, W) in [0, 1] -> (B, out_channels, H // stride, W // stride)."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images (B, 3, H, W) or (B, 1, H, W), got {tuple(images.shape)}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        x = ((images - self.mean.to(images.dtype)) / self.std.to(images.dtype)).contiguous(memory_format=torch.channels_last)
        size = (images.shape[-2] // self.stride, images.shape[-1] // self.stride)
        feats = []
        for f in self._stage_outputs(x):
            if self.pool > 1:
                f = F.avg_pool2d(f, self.pool, stride=1, padding=self.pool // 2, count_include_pad=False)
            if tuple(f.shape[-2:]) != size:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            feats.append(f)
        return torch.cat(feats, dim=1)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, layers={self.layers}, pretrained={self.pretrained}, pool={self.pool}, "
            f"stride={self.stride}"
        )
