"""The pixel U-Net autoencoder family (``mode="unet"``), the method the suite was founded on.

- :class:`UNetAutoencoder`: images (B, C, H, W) in [0, 1] -> reconstructions at several scales,
  ``{s: (B, C, H // s, W // s)}`` in [0, 1]. Trained by the shared gradient loop on synthetically corrupted
  inputs (:func:`colab_utils.corruption.synthesize_defects`) with the clean image as target.
- :func:`pixel_error_map`: the raw anomaly map, at every output scale ``s`` the input average-pooled by ``s``
  compared with the reconstruction of that scale::

    err_s = map_l2_weight * mean_c (x_s - r_s)^2
          + map_ssim_weight * mean_c (1 - SSIM(x_s, r_s))        # kornia.metrics.ssim, per-pixel map
          + map_gms_weight * mean_c (1 - GMS(x_s, r_s))          # gradient-magnitude similarity

  each brought back to the input size (bilinear) and summed with ``map_scale_weights``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..augment import augment_batch
from ..corruption import CORRUPTIONS, DEFAULT_TEXTURES, TEXTURE_SOURCES, synthesize_defects
from ..losses import ReconstructionLoss
from ..settings import ConfigError, Settings
from .base import Family, MapOutput, feature_error_map, register

#: Widest U-Net stage; with base_width=32, depth=4 the widths are 32, 64, 128, 256, 256.
UNET_MAX_WIDTH = 256

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
                y = self.heads[str(2**i)](h)
                outputs[2**i] = torch.sigmoid(y)
        return dict(sorted(outputs.items()))


@dataclass
class UNetSettings(Settings):
    """The U-Net family's own fields (``Config.model`` when ``mode="unet"``)."""

    # --- architecture
    base_width: int = 32  # channels of the first encoder stage; doubled at each stage
    depth: int = 4  # number of down-sampling stages
    skip_levels: int = 2  # skips kept from the deepest stages up; the finest ones are dropped
    out_scales: tuple[int, ...] = (1, 2, 4)  # reconstructions produced at these down-sampling factors
    # --- loss
    loss_mse_weight: float = 1.0
    loss_ssim_weight: float = 1.0  # on kornia's SSIMLoss, which is (1 - SSIM) / 2
    loss_perceptual_weight: float = 0.0  # backbone-feature MSE of reconstruction and target (Config.backbone)
    loss_scale_weights: tuple[float, ...] = (1.0, 0.5, 0.25)  # one per entry of out_scales
    ssim_window: int = 11
    feature_layers: tuple[int, ...] = ()  # backbone stages of the perceptual terms; () = the backbone's default
    # --- synthetic defects on the training inputs (the clean image is the target)
    corruption_prob: float = 0.5  # share of training images that get a synthetic defect
    corruptions: tuple[str, ...] = CORRUPTIONS
    corruption_textures: tuple[str, ...] = DEFAULT_TEXTURES  # Perlin defects' textures, from TEXTURE_SOURCES
    # --- the anomaly map
    map_l2_weight: float = 1.0  # per-pixel squared error
    map_ssim_weight: float = 1.0  # per-pixel (1 - SSIM)
    map_gms_weight: float = 1.0  # per-pixel gradient-magnitude dissimilarity (measured in benchmarks/README.md)
    map_perceptual_weight: float = 0.0  # backbone-feature distance of input and reconstruction
    map_scale_weights: tuple[float, ...] = (1.0, 1.0, 1.0)  # one per entry of out_scales

    def check(self, config) -> None:
        if self.depth < 2 or self.depth > 6:
            self.bad("depth", "must lie in 2..6")
        if config.image_size % (2**self.depth):
            raise ConfigError(f"Config.image_size={config.image_size}: must be divisible by 2**depth = {2**self.depth}")
        if not 0 <= self.skip_levels <= self.depth:
            self.bad("skip_levels", f"must lie in 0..depth ({self.depth})")
        if not self.out_scales or any(s < 1 or s & (s - 1) or s > 2 ** (self.depth - 1) for s in self.out_scales):
            self.bad("out_scales", f"must be powers of two between 1 and {2 ** (self.depth - 1)}")
        for name in ("loss_scale_weights", "map_scale_weights"):
            if len(getattr(self, name)) != len(self.out_scales):
                self.bad(name, f"needs one weight per out_scales entry ({len(self.out_scales)})")
        if self.ssim_window < 3 or self.ssim_window % 2 == 0:
            self.bad("ssim_window", "must be an odd number >= 3")
        if unknown := set(self.corruptions) - set(CORRUPTIONS):
            self.bad("corruptions", f"unknown {sorted(unknown)}; choose from {CORRUPTIONS}")
        if unknown := set(self.corruption_textures) - set(TEXTURE_SOURCES):
            self.bad("corruption_textures", f"unknown {sorted(unknown)}; choose from {TEXTURE_SOURCES}")
        if not self.corruption_textures:
            self.bad("corruption_textures", f"needs at least one of {TEXTURE_SOURCES}")
        if not 0.0 <= self.corruption_prob <= 1.0:
            self.bad("corruption_prob", "must lie in [0, 1]")
        if self.base_width < 1:
            self.bad("base_width", "must be at least 1")


def grey_where_grey(images: Tensor, outputs: dict[int, Tensor]) -> dict[int, Tensor]:
    """The reconstructions of grey images (B, C, H, W) [0, 1] with every channel equal, as grey: the mean of the
    output channels in each of them. Three output heads fitted to a grey part otherwise drift apart by a few
    percent (a pink or green cast measured on screw) that no training image shows; colour images are untouched."""
    if images.shape[1] == 1:
        return outputs
    # no branch on the data: an ONNX trace keeps the same rule for every input
    g = ((images.amax(1) - images.amin(1)).flatten(1).amax(1) == 0).view(-1, 1, 1, 1)  # (B, 1, 1, 1) grey images
    return {s: torch.where(g, r.mean(1, keepdim=True).expand_as(r), r) for s, r in outputs.items()}


def _gms_dissimilarity(x: Tensor, r: Tensor, c: float = 0.0026) -> Tensor:
    """Per-pixel 1 - gradient-magnitude similarity, (B,C,H,W) in [0, 1]."""
    gx = kornia.filters.sobel(x)
    gr = kornia.filters.sobel(r)
    return 1.0 - (2 * gx * gr + c) / (gx**2 + gr**2 + c)


_EXTRACTORS: dict[tuple, nn.Module] = {}


def perceptual_extractor(config, device: torch.device | str) -> nn.Module:
    """The frozen backbone that compares input and reconstruction (``map_perceptual_weight``), built once per device."""
    key = (config.backbone, tuple(config.model.feature_layers), config.pretrained, str(device))
    if key not in _EXTRACTORS:
        from ..backbones import FeatureExtractor

        extractor = FeatureExtractor(config.backbone, config.model.feature_layers, config.pretrained)
        _EXTRACTORS[key] = extractor.to(device).eval()
    return _EXTRACTORS[key]


def pixel_error_map(images: Tensor, recons: dict[int, Tensor], config) -> Tensor:
    """Multi-scale reconstruction error of the pixel U-Net.

    images: (B,C,H,W) in [0,1]; recons: {scale: (B,C,H/s,W/s) in [0,1]}.
    Returns (B,1,H,W) unsmoothed error, >= 0. With ``map_perceptual_weight`` the
    channel-mean squared distance between backbone features of the input and of
    the full-size reconstruction (stride-4 grid, upsampled) is added: a defect
    the U-Net repaired differs from the input in *what* is there, not only in
    intensity, and features see that.
    """
    size = images.shape[-2:]
    s = config.model
    total = torch.zeros(images.shape[0], 1, *size, device=images.device, dtype=torch.float32)
    if s.map_perceptual_weight and 1 in recons:
        extractor = perceptual_extractor(config, images.device)
        fx, fr = extractor(images), extractor(recons[1].float())
        total = total + s.map_perceptual_weight * feature_error_map(fx, fr, size)
    for scale, weight in zip(s.out_scales, s.map_scale_weights):
        if weight == 0 or scale not in recons:
            continue
        r = recons[scale].float()
        x = images if scale == 1 else F.avg_pool2d(images, scale)
        err = torch.zeros_like(x[:, :1])
        if s.map_l2_weight:
            err = err + s.map_l2_weight * ((x - r) ** 2).mean(1, keepdim=True)
        if s.map_ssim_weight:
            window = min(s.ssim_window, (min(x.shape[-2:]) // 2) * 2 - 1)
            ssim = kornia.metrics.ssim(x, r, window, max_val=1.0)
            err = err + s.map_ssim_weight * (1.0 - ssim).mean(1, keepdim=True)
        if s.map_gms_weight:
            err = err + s.map_gms_weight * _gms_dissimilarity(x, r).mean(1, keepdim=True)
        if scale != 1:
            err = F.interpolate(err, size=size, mode="bilinear", align_corners=False)
        total = total + weight * err
    return total



class UNetFamily(Family):
    """Registry entry of the pixel U-Net autoencoder (settings: :class:`UNetSettings`)."""

    name = "unet"
    settings = UNetSettings
    trains_by_gradient = True
    has_reconstruction = True
    default_score_norm = "position"
    threshold_percentile = 99.0  # about 20 held-out images calibrate: a 95th percentile would be the second-highest
    resumable = frozenset({"map_l2_weight", "map_ssim_weight", "map_gms_weight", "map_perceptual_weight",
                           "map_scale_weights"})  # fmt: skip
    profiles = {
        "smoke": {"image_size": 64, "epochs": 2, "batch_size": 8, "base_width": 8, "smooth_sigma": 1.0},
        "cpu": {"image_size": 128, "epochs": 40, "batch_size": 16, "base_width": 16, "max_minutes": 10.0},
        "gpu": {"image_size": 256, "epochs": 300, "batch_size": 16, "base_width": 32},
    }
    retired = {
        "discriminative_head": (
            "the U-Net's discriminative head (DRAEM-style) was retired: it measured below the plain U-Net on every "
            "setting tried (gpu profile, H200: capsule 85.4 / 67.2 / 53.1 after 164 epochs against 85.9 / 78.1 / "
            "76.1; screw 60.7 / 78.3 / 50.9 against 67.8 / 96.3 / 86.9; benchmarks/README.md). A run trained "
            "with it cannot be loaded any more; remove discriminative_head (or set it false) and train the plain U-Net"
        ),
        # the head's own settings: without the head they did nothing, so an old config drops them
        "head_width": None, "head_loss_weight": None, "head_focal_gamma": None, "head_recon_map_weight": None,
    }

    def build(self, config, pretrained: bool | None = None) -> nn.Module:
        s = config.model
        return UNetAutoencoder(
            config.channels, base_width=s.base_width, depth=s.depth, skip_levels=s.skip_levels,
            out_scales=tuple(s.out_scales),
        )  # fmt: skip

    def needs_weights(self, config) -> bool:
        """Only the perceptual loss or map term uses a pretrained backbone."""
        s = config.model
        return bool(config.pretrained and (s.loss_perceptual_weight > 0 or s.map_perceptual_weight > 0))

    def loss(self, config, device) -> nn.Module:
        perceptual = None
        if config.model.loss_perceptual_weight > 0:
            from ..backbones import FeatureExtractor

            perceptual = FeatureExtractor(config.backbone, config.model.feature_layers, config.pretrained).to(device)
        return ReconstructionLoss(config, perceptual)

    def batch_loss(self, model, loss_fn, x: Tensor, train: bool, config, device, gen, use_amp: bool):
        s = config.model
        clean = x.to(device, non_blocking=True).float().div_(255.0)
        inputs = clean
        if train:
            clean = augment_batch(clean, config.augmentations, gen)
            inputs, _ = synthesize_defects(clean, gen, s.corruption_prob, s.corruptions, s.corruption_textures)
        with torch.autocast(device_type=torch.device(device).type, enabled=use_amp):
            out = model(inputs)
        return loss_fn(grey_where_grey(clean, {k: v.float() for k, v in out.items()}), clean)

    def raw_maps(self, model, images: Tensor, config) -> MapOutput:
        outputs = grey_where_grey(images, model(images))
        return MapOutput(maps=pixel_error_map(images, outputs, config), recon=outputs[1].float().clamp(0, 1))


register(UNetFamily())
