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

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..augment import augment_batch
from ..corruption import synthesize_defects
from ..losses import ReconstructionLoss, focal_loss
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
        out_channels: channels of each output (default ``in_channels``).
        logits: outputs without the sigmoid (real values), for the discriminative head.

    ``forward(x)``: (B, C, H, W) float in [0, 1] -> ``{s: (B, out_channels, H // s, W // s)}`` for each ``s`` in
    ``out_scales`` (ascending), each from a 1x1 conv head and a sigmoid, so values lie in [0, 1] (real logits
    when ``logits``).

    The same class, with every skip kept (``skip_levels=depth``), one output channel and ``logits=True``, is the
    segmentation network of :class:`ReconstructSegment`: there copying the input is wanted.
    """

    def __init__(
        self,
        in_channels: int,
        base_width: int = 32,
        depth: int = 4,
        skip_levels: int = 2,
        out_scales: Sequence[int] = (1, 2, 4),
        max_width: int = UNET_MAX_WIDTH,
        out_channels: int | None = None,
        logits: bool = False,
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
        self.logits = logits
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
        self.heads = nn.ModuleDict({str(s): nn.Conv2d(widths[int(math.log2(s))], out_channels or in_channels, 1) for s in scales})

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """(B, C, H, W) in [0, 1] -> {scale: (B, out_channels, H // scale, W // scale) in [0, 1] (or logits)}."""
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
                outputs[2**i] = y if self.logits else torch.sigmoid(y)
        return dict(sorted(outputs.items()))


class ReconstructSegment(nn.Module):
    """The U-Net autoencoder with a discriminative head, as in DRAEM (Zavrtanik et al., ICCV 2021).

    ``recon`` repairs the input (trained, as without the head, to reconstruct the clean image from a synthetically
    corrupted one); ``head`` sees the input and the full-size reconstruction side by side, (B, 2C, H, W), and
    segments what differs in a way a defect does: it is trained with focal loss on the exact masks of the
    synthetic defects, so the anomaly map is learnt instead of a hand-made error formula. The head is a full
    U-Net (:class:`UNetAutoencoder` with every skip, one output channel, logits).

    ``forward(x)``: (B, C, H, W) in [0, 1] -> ``{s: reconstruction (B, C, H/s, W/s) in [0, 1] for each output
    scale, "logits": (B, 1, H, W) real}``; the anomaly probability is ``sigmoid(logits)``.
    """

    def __init__(self, recon: UNetAutoencoder, head_width: int = 16) -> None:
        super().__init__()
        if 1 not in recon.out_scales:
            raise ValueError("the discriminative head needs the full-size reconstruction: out_scales must contain 1")
        self.recon = recon
        c = recon.in_channels
        self.head = UNetAutoencoder(2 * c, head_width, recon.depth, recon.depth, (1,), out_channels=1, logits=True)

    def forward(self, x: Tensor) -> dict:
        out: dict = dict(self.recon(x))
        out["logits"] = self.head(torch.cat([x, out[1].to(x.dtype)], dim=1))[1]
        return out



def _gms_dissimilarity(x: Tensor, r: Tensor, c: float = 0.0026) -> Tensor:
    """Per-pixel 1 - gradient-magnitude similarity, (B,C,H,W) in [0, 1]."""
    gx = kornia.filters.sobel(x)
    gr = kornia.filters.sobel(r)
    return 1.0 - (2 * gx * gr + c) / (gx**2 + gr**2 + c)


_EXTRACTORS: dict[tuple, nn.Module] = {}


def perceptual_extractor(config, device: torch.device | str) -> nn.Module:
    """The frozen backbone that compares input and reconstruction (``map_perceptual_weight``), built once per device."""
    key = (config.backbone, tuple(config.feature_layers), config.feature_pool, config.pretrained, str(device))
    if key not in _EXTRACTORS:
        from ..backbones import FeatureExtractor

        extractor = FeatureExtractor(config.backbone, config.feature_layers, config.pretrained, pool=config.feature_pool)
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
    total = torch.zeros(images.shape[0], 1, *size, device=images.device, dtype=torch.float32)
    if config.map_perceptual_weight and 1 in recons:
        extractor = perceptual_extractor(config, images.device)
        fx, fr = extractor(images), extractor(recons[1].float())
        total = total + config.map_perceptual_weight * feature_error_map(fx, fr, size)
    for scale, weight in zip(config.out_scales, config.map_scale_weights):
        if weight == 0 or scale not in recons:
            continue
        r = recons[scale].float()
        x = images if scale == 1 else F.avg_pool2d(images, scale)
        err = torch.zeros_like(x[:, :1])
        if config.map_l2_weight:
            err = err + config.map_l2_weight * ((x - r) ** 2).mean(1, keepdim=True)
        if config.map_ssim_weight:
            window = min(config.ssim_window, (min(x.shape[-2:]) // 2) * 2 - 1)
            ssim = kornia.metrics.ssim(x, r, window, max_val=1.0)
            err = err + config.map_ssim_weight * (1.0 - ssim).mean(1, keepdim=True)
        if config.map_gms_weight:
            err = err + config.map_gms_weight * _gms_dissimilarity(x, r).mean(1, keepdim=True)
        if scale != 1:
            err = F.interpolate(err, size=size, mode="bilinear", align_corners=False)
        total = total + weight * err
    return total



class UNetFamily(Family):
    """Registry entry of the pixel U-Net autoencoder, with or without its discriminative head.

    ``Config.discriminative_head``: the model is a :class:`ReconstructSegment`, trained on reconstruction loss
    plus ``head_loss_weight`` times focal loss on the synthetic defects' masks, and its raw map is the head's
    anomaly probability in [0, 1] (plus ``head_recon_map_weight`` times :func:`pixel_error_map`). Held-out
    images are then validated with synthetic defects too (the same ones every epoch), so ``best.pt`` is chosen
    on how well the head finds them, not on clean images alone.
    """

    name = "unet"
    trains_by_gradient = True
    has_reconstruction = True
    default_score_norm = "position"

    def score_norm_for(self, config) -> str:
        """The head's probabilities are ~0 on every good training image, so per-position statistics of them
        are noise: with the head the image score is taken on the globally normalised map."""
        return "global" if config.discriminative_head else self.default_score_norm

    def build(self, config, pretrained: bool | None = None) -> nn.Module:
        recon = UNetAutoencoder(
            config.channels,
            base_width=config.base_width,
            depth=config.depth,
            skip_levels=config.skip_levels,
            out_scales=tuple(config.out_scales),
        )
        return ReconstructSegment(recon, config.head_width) if config.discriminative_head else recon

    def needs_weights(self, config) -> bool:
        """Only the perceptual loss or map term uses a pretrained backbone."""
        return bool(config.pretrained and (config.loss_perceptual_weight > 0 or config.map_perceptual_weight > 0))

    def loss(self, config, device) -> nn.Module:
        perceptual = None
        if config.loss_perceptual_weight > 0:
            from ..backbones import FeatureExtractor

            perceptual = FeatureExtractor(config.backbone, config.feature_layers, config.pretrained).to(device)
        return ReconstructionLoss(config, perceptual)

    def batch_loss(self, model, loss_fn, x: Tensor, train: bool, config, device, gen, use_amp: bool):
        clean = x.to(device, non_blocking=True).float().div_(255.0)
        inputs, masks = clean, None
        corrupt = (config.corruption_prob, config.corruptions, config.corruption_textures)
        if train:
            clean = augment_batch(clean, config.augmentations, gen)
            inputs, masks = synthesize_defects(clean, gen, *corrupt)
        elif config.discriminative_head:  # the same synthetic defects on the held-out images every epoch
            inputs, masks = synthesize_defects(clean, torch.Generator().manual_seed(config.seed + 1), *corrupt)
        with torch.autocast(device_type=torch.device(device).type, enabled=use_amp):
            out = model(inputs)
        total, parts = loss_fn({k: v.float() for k, v in out.items() if isinstance(k, int)}, clean)
        if "logits" in out:
            seg = focal_loss(out["logits"], masks, config.head_focal_gamma)
            total = total + config.head_loss_weight * seg
            parts["focal"] = float(seg.detach())
            parts["total"] = float(total.detach())
        return total, parts

    def raw_maps(self, model, images: Tensor, config) -> MapOutput:
        outputs = model(images)
        recon = outputs[1].float().clamp(0, 1)
        if "logits" not in outputs:
            return MapOutput(maps=pixel_error_map(images, outputs, config), recon=recon)
        maps = torch.sigmoid(outputs["logits"].float())
        if config.head_recon_map_weight:
            maps = maps + config.head_recon_map_weight * pixel_error_map(images, outputs, config)
        return MapOutput(maps=maps, recon=recon)


register(UNetFamily())
