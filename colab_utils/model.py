"""The two reconstruction models: a pixel U-Net autoencoder and a feature-space autoencoder.

Tensors in, tensors out: no loss is computed here and no device is named (move a model with ``.to(device)``).

- :class:`UNetAutoencoder` (``mode="unet"``): images (B, C, H, W) in [0, 1] -> reconstructions at several scales,
  ``{s: (B, C, H // s, W // s)}`` in [0, 1].
- :class:`FeatureModel` (``mode="feature"``): a frozen :class:`~colab_utils.backbones.FeatureExtractor` and a
  :class:`FeatureAutoencoder` that reconstructs its features; images (B, 3, H, W) in [0, 1] ->
  ``{"features": (B, F, H // 4, W // 4), 1: reconstruction of the same shape}``.
- :func:`build_model` picks one from a :class:`~colab_utils.config.Config`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import FeatureExtractor

#: Widest U-Net stage; with base_width=32, depth=4 the widths are 32, 64, 128, 256, 256.
UNET_MAX_WIDTH = 256

#: Defaults for feature-mode settings that Config does not (yet) carry; build_model reads
#: ``config.feature_pool`` / ``config.feature_downsample`` when those fields exist.


def _groups(channels: int) -> int:
    """GroupNorm groups: 8 where the width allows it (32 -> 8 groups of 4 channels)."""
    return math.gcd(channels, 8)


class _ConvBlock(nn.Sequential):
    """Two 3x3 conv - GroupNorm - SiLU layers; the first one may stride by 2."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.GroupNorm(_groups(c_out), c_out),
            nn.SiLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.GroupNorm(_groups(c_out), c_out),
            nn.SiLU(inplace=True),
        )


class UNetAutoencoder(nn.Module):
    """Convolutional autoencoder with U-Net skips from the deepest stages only, multi-scale outputs.

    Encoder: a full-resolution stage of width ``base_width`` followed by ``depth`` stages that each halve the
    resolution (stride-2 conv) and double the width (capped at ``max_width``); the last one is the bottleneck at
    ``H / 2**depth``. Decoder: per level, bilinear x2 up-sampling, concatenation with the encoder output of that
    level when a skip is kept, and two convs. Every layer is conv - GroupNorm - SiLU.

    Why not a plain U-Net: with a full-resolution skip the network can copy its input, defects included, and the
    reconstruction error is then blind to anomalies. Two defences work together:

    1. only the ``skip_levels`` deepest encoder levels (the coarsest, e.g. 1/8 and 1/4 for depth 4 and
       ``skip_levels=2``) send skips; the fine ones are dropped, so fine detail must pass through the bottleneck
       (``skip_levels=0``: a plain autoencoder; ``skip_levels=depth``: a plain U-Net that can copy). This alone
       is not a guarantee: a 1/4-scale skip of 64 channels holds more numbers than the image, so a network could
       learn to pass fine detail through it; hence
    2. the training loop feeds synthetically corrupted inputs (``colab_utils.corruption.synthesize_defects``)
       with the CLEAN image as target, so the network learns to repair local defects instead of copying them.

    GroupNorm, not BatchNorm: batches are small (8-16 on a Colab T4, often 1 at evaluation). BatchNorm's batch
    statistics are noisy at that size, differ between training (batch statistics) and evaluation (running
    averages), and let one corrupted image in the batch shift the normalisation of the others. GroupNorm
    normalises each image on its own, so train and eval behave the same for any batch size.

    Args:
        in_channels: C, 1 or 3.
        base_width: channels of the full-resolution stage.
        depth: number of down-sampling stages; H and W must be divisible by ``2**depth``.
        skip_levels: number of skips kept, counted from the deepest level (0..depth).
        out_scales: down-sampling factors of the outputs, powers of two up to ``2**(depth-1)``.
        max_width: cap on the channel count of any stage.

    ``forward(x)``: (B, C, H, W) float in [0, 1] -> ``{s: (B, C, H // s, W // s)}`` for each ``s`` in
    ``out_scales`` (ascending), each from a 1x1 conv head and a sigmoid, so values lie in [0, 1].
    """

    def __init__(
        self,
        in_channels: int,
        base_width: int = 32,
        depth: int = 4,
        skip_levels: int = 2,
        out_scales: Sequence[int] = (1, 2, 4),
        max_width: int = UNET_MAX_WIDTH,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth={depth}: must be at least 1")
        if not 0 <= skip_levels <= depth:
            raise ValueError(f"skip_levels={skip_levels}: must lie in 0..depth ({depth})")
        scales = tuple(sorted({int(s) for s in out_scales}))
        if not scales or any(s < 1 or s & (s - 1) or s > 2 ** (depth - 1) for s in scales):
            raise ValueError(f"out_scales={tuple(out_scales)}: must be powers of two between 1 and {2 ** (depth - 1)}")
        self.in_channels = in_channels
        self.depth = depth
        self.skip_levels = skip_levels
        self.out_scales = scales
        widths = [min(base_width * 2**i, max_width) for i in range(depth + 1)]
        self.widths = tuple(widths)
        # level i of the encoder works at scale 2**i; level `depth` is the bottleneck
        self.encoder = nn.ModuleList(
            [_ConvBlock(in_channels, widths[0])]
            + [_ConvBlock(widths[i - 1], widths[i], 2) for i in range(1, depth + 1)]
        )
        self.skip_from = tuple(range(depth - skip_levels, depth))  # encoder levels whose output is concatenated
        lowest = int(math.log2(scales[0]))  # the decoder stops at the finest scale that is output
        self.decoder = nn.ModuleDict()
        for i in range(depth - 1, lowest - 1, -1):
            c_in = widths[i + 1] + (widths[i] if i in self.skip_from else 0)
            self.decoder[str(i)] = _ConvBlock(c_in, widths[i])
        self.heads = nn.ModuleDict({str(s): nn.Conv2d(widths[int(math.log2(s))], in_channels, 1) for s in scales})

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """(B, C, H, W) in [0, 1] -> {scale: (B, C, H // scale, W // scale) in [0, 1]}."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        m = 2**self.depth
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"H and W must be divisible by 2**depth = {m}; got {tuple(x.shape[-2:])}")
        skips: dict[int, torch.Tensor] = {}
        h = x
        for i, block in enumerate(self.encoder):
            h = block(h)
            if i in self.skip_from:
                skips[i] = h
        outputs: dict[int, torch.Tensor] = {}
        for i in range(self.depth - 1, int(math.log2(self.out_scales[0])) - 1, -1):
            h = F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=False)
            if i in skips:
                h = torch.cat([h, skips[i]], dim=1)
            h = self.decoder[str(i)](h)
            if str(2**i) in self.heads:
                outputs[2**i] = torch.sigmoid(self.heads[str(2**i)](h))
        return dict(sorted(outputs.items()))


class FeatureAutoencoder(nn.Module):
    """Autoencoder of a CNN feature stack (e.g. the :class:`FeatureExtractor` output), DFR-style.

    Default (``downsample=False``): 1x1 convs ``F -> hidden -> latent -> hidden -> F``, i.e. the same small MLP
    applied at every grid position; the ``latent`` bottleneck (much narrower than F) forces it to learn the
    manifold of normal patch features, so unusual feature vectors reconstruct badly.
    ``downsample=True`` adds spatial context: a stride-2 3x3 conv before the bottleneck and a 3x3 conv after
    bilinear up-sampling back to (h, w).

    BatchNorm is used here (not GroupNorm as in the U-Net): its statistics are taken over B * h * w positions
    (4096 per 256-px image), stable even for batch 1, and at evaluation every layer is then a per-position
    function, so a defect at one place cannot change the reconstruction elsewhere.

    ``forward(f)``: (B, F, h, w) real features -> ``{1: (B, F, h, w)}``, unbounded (no sigmoid).
    """

    def __init__(self, in_channels: int, latent: int = 64, hidden: int | None = None, downsample: bool = False):
        super().__init__()
        hidden = hidden or max(2 * latent, (in_channels + latent) // 2)
        self.in_channels, self.latent, self.hidden, self.downsample = in_channels, latent, hidden, downsample

        def layer(c_in: int, c_out: int, k: int = 1, stride: int = 1) -> list[nn.Module]:
            return [
                nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]

        if downsample:
            self.encoder = nn.Sequential(
                *layer(in_channels, hidden), *layer(hidden, hidden, 3, 2), *layer(hidden, latent)
            )
            self.decoder = nn.Sequential(*layer(latent, hidden, 3), nn.Conv2d(hidden, in_channels, 1))
        else:
            self.encoder = nn.Sequential(*layer(in_channels, hidden), *layer(hidden, latent))
            self.decoder = nn.Sequential(*layer(latent, hidden), nn.Conv2d(hidden, in_channels, 1))

    def forward(self, f: torch.Tensor) -> dict[int, torch.Tensor]:
        """(B, F, h, w) -> {1: (B, F, h, w)}."""
        if f.ndim != 4 or f.shape[1] != self.in_channels:
            raise ValueError(f"expected features (B, {self.in_channels}, h, w), got {tuple(f.shape)}")
        z = self.encoder(f)
        if self.downsample:
            z = F.interpolate(z, size=f.shape[-2:], mode="bilinear", align_corners=False)
        return {1: self.decoder(z)}


class FeatureModel(nn.Module):
    """Frozen feature extractor + feature autoencoder (``mode="feature"``).

    ``forward(images)``: (B, 3, H, W) (or 1-channel, repeated) float in [0, 1] -> dict with
    ``"features"``: the extractor output (B, F, H // 4, W // 4), computed without gradient (the target), and
    ``1``: its reconstruction, same shape. Integer keys are reconstructions (as for the U-Net), the string key is
    the target; code that iterates over scales must skip non-integer keys.

    ``state_dict()`` INCLUDES the extractor's (truncated, frozen) weights (``extractor.*``: 0.54 M values for
    mobilenet_v2 up to features[13]): a checkpoint is then self-contained, reproduces the exact features it was trained on even if
    torchvision's files change, works for ``pretrained=False``, and can be evaluated where the ImageNet file is
    missing by building with ``build_model(config, pretrained=False)`` before ``load_state_dict``.
    The extractor's parameters have ``requires_grad=False``; give the optimiser only trainable parameters
    (``[p for p in model.parameters() if p.requires_grad]``), and ``model.train()`` leaves the extractor in eval.
    """

    def __init__(self, extractor: FeatureExtractor, autoencoder: FeatureAutoencoder) -> None:
        super().__init__()
        if autoencoder.in_channels != extractor.out_channels:
            raise ValueError(
                f"autoencoder expects {autoencoder.in_channels} channels, extractor gives {extractor.out_channels}"
            )
        self.extractor = extractor
        self.autoencoder = autoencoder

    def forward(self, images: torch.Tensor) -> dict[int | str, torch.Tensor]:
        """(B, 3, H, W) in [0, 1] -> {"features": (B, F, H//4, W//4), 1: (B, F, H//4, W//4)}."""
        with torch.no_grad():
            features = self.extractor(images)
        out: dict[int | str, torch.Tensor] = {"features": features}
        out.update(self.autoencoder(features))
        return out


def build_model(config, pretrained: bool | None = None) -> nn.Module:
    """The model ``config.mode`` asks for, on the CPU (move it with ``.to(device)``).

    ``mode="unet"``: ``UNetAutoencoder(channels, base_width, depth, skip_levels, out_scales)``.
    ``mode="feature"``: ``FeatureModel(FeatureExtractor(backbone, feature_layers, pretrained), FeatureAutoencoder(F,
    feature_latent))``. ``pretrained`` overrides ``config.pretrained`` (pass ``False`` when the weights are about
    to be loaded from a checkpoint anyway, so no ImageNet file is needed).
    """
    if config.mode == "unet":
        return UNetAutoencoder(
            config.channels,
            base_width=config.base_width,
            depth=config.depth,
            skip_levels=config.skip_levels,
            out_scales=tuple(config.out_scales),
        )
    if config.mode == "feature":
        extractor = FeatureExtractor(
            config.backbone,
            layers=tuple(config.feature_layers),
            pretrained=config.pretrained if pretrained is None else pretrained,
            pool=config.feature_pool,
        )
        autoencoder = FeatureAutoencoder(
            extractor.out_channels,
            latent=config.feature_latent,
            downsample=config.feature_downsample,
        )
        return FeatureModel(extractor, autoencoder)
    raise ValueError(f"Config.mode={config.mode!r}: must be 'unet' or 'feature'")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter values in ``model`` (only those with ``requires_grad`` when ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
