"""The feature-space autoencoder family (``mode="feature"``), DFR-style, on a frozen ImageNet backbone.

- :class:`FeatureModel`: a frozen :class:`~colab_utils.backbones.FeatureExtractor` and a
  :class:`FeatureAutoencoder` that reconstructs its features; images (B, 3, H, W) in [0, 1] ->
  ``{"features": (B, F, H // 4, W // 4), 1: reconstruction of the same shape}``.
- The raw anomaly map is the channel-mean squared error between features and reconstruction, on the stride-4
  grid, upsampled to the input size. Backbone features of the (augmented) training images are extracted once
  and cached, so an epoch costs only the small autoencoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..augment import augment_batch
from ..backbones import FeatureExtractor
from ..losses import FeatureLoss
from .base import Family, MapOutput, feature_error_map, register


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



@torch.no_grad()
def extract_features(model: nn.Module, images: Tensor, device, batch_size: int) -> Tensor:
    """Cached backbone features (N,F,h,w) float16 on the CPU, for uint8 images (N,3,H,W) (float in [0,1] ok)."""
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device)
        batch = batch.float().div(255.0) if batch.dtype == torch.uint8 else batch.float()
        out.append(model.extractor(batch).to(torch.float16).cpu())
    return torch.cat(out)


class FeatureAEFamily(Family):
    """Registry entry of the feature autoencoder."""

    name = "feature"
    trains_by_gradient = True
    needs_backbone = True
    has_reconstruction = False
    default_score_norm = "position"

    def build(self, config, pretrained: bool | None = None) -> nn.Module:
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

    def trainable(self, model: nn.Module) -> nn.Module:
        return model.autoencoder

    def views(self, config) -> int:
        return 2 if config.augmentations else 1

    def prepare(self, model, train_set, val_set, config, device, log):
        """Features of the training images plus one augmented view per image when augmentations are on."""
        log(f"extracting {config.backbone} features of {len(train_set)} training images (once)")
        gen = torch.Generator(device="cpu").manual_seed(config.seed + 1)  # same views on every resume
        feats = [extract_features(model, train_set.images, device, config.batch_size)]
        if config.augmentations:
            aug = augment_batch(train_set.images.float().div(255.0), config.augmentations, gen)
            feats.append(extract_features(model, aug, device, config.batch_size))
        val = extract_features(model, val_set.images, device, config.batch_size)
        return torch.cat(feats), val

    def loss(self, config, device) -> nn.Module:
        return FeatureLoss(mse_weight=config.loss_mse_weight, cosine_weight=config.feature_cosine_weight)

    def batch_loss(self, model, loss_fn, x: Tensor, train: bool, config, device, gen, use_amp: bool):
        x = x.to(device).float()
        with torch.autocast(device_type=torch.device(device).type, enabled=use_amp):
            out = model.autoencoder(x)
        return loss_fn({k: v.float() for k, v in out.items()}, x)

    def raw_maps(self, model, images: Tensor, config) -> MapOutput:
        outputs = model(images)
        return MapOutput(maps=feature_error_map(outputs["features"], outputs[1], images.shape[-2:]))


register(FeatureAEFamily())
