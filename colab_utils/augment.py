"""Batched, label-preserving augmentations of good training images.

:func:`augment_batch` applies the augmentations named in ``Config.augmentations`` with per-image random
parameters, vectorised over the batch, on any device, reproducible with a ``torch.Generator``. They model the
normal variation of a category (pose, illumination), so an augmented good image is still good; which ones are
safe depends on the category (``config.CATEGORY_AUGMENT``: a flipped transistor is a defect).

Names (the same set as ``config.AUGMENTATIONS``), applied in this order whatever the order given:

geometric   ``hflip``, ``vflip`` (each with probability 0.5), ``rot90`` (k * 90 degrees, k uniform in 0..3;
            only 0/180 for non-square images), ``rotate`` (uniform in +-``max_angle`` degrees) and ``translate``
            (uniform in +-``max_shift`` of the side, per axis); rotate and translate are one affine warp
            (``affine_grid``/``grid_sample``, bilinear, reflection padding, ``align_corners=False``);
photometric ``brightness`` (multiply by 1 +- ``brightness``), ``contrast`` (scale the deviation from the
            image's mean by 1 +- ``contrast``), ``gamma`` (``x ** exp(u)``, u uniform in +-``gamma``).

Random numbers are drawn on the generator's device and moved to the images' device (a CPU generator gives the
same result on every device).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

AUGMENTATION_NAMES = ("hflip", "vflip", "rot90", "rotate", "translate", "brightness", "contrast", "gamma")


def _draw(generator: torch.Generator, n: int, device) -> torch.Tensor:
    """n uniform [0, 1) float32 numbers from ``generator`` (on its device), returned on ``device``."""
    return torch.rand(n, generator=generator, device=generator.device).to(device)


def augment_batch(
    images: torch.Tensor,
    names: Sequence[str],
    generator: torch.Generator | None,
    *,
    max_angle: float = 15.0,
    max_shift: float = 0.05,
    brightness: float = 0.1,
    contrast: float = 0.1,
    gamma: float = 0.2,
) -> torch.Tensor:
    """Randomly augment each image of a batch.

    Args:
        images: float (B, C, H, W) in [0, 1], any device.
        names: augmentations to apply (see the module docstring); ``()`` returns ``images`` unchanged.
        generator: ``torch.Generator`` for every random choice (``None``: torch's default CPU generator).
        max_angle, max_shift, brightness, contrast, gamma: strengths (degrees, share of the side, relative
            factors, log-gamma).

    Returns:
        float (B, C, H, W) in [0, 1], same dtype and device; a new tensor (the input is not modified).
    """
    unknown = set(names) - set(AUGMENTATION_NAMES)
    if unknown:
        raise ValueError(f"unknown augmentations {sorted(unknown)}; choose from {AUGMENTATION_NAMES}")
    if images.ndim != 4:
        raise ValueError(f"expected images (B, C, H, W), got {tuple(images.shape)}")
    if not names:
        return images
    g = torch.default_generator if generator is None else generator
    b, _, h, w = images.shape
    dev, dtype = images.device, images.dtype
    x = images

    def per_image(values: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, 1, 1, 1)
        return values.view(b, 1, 1, 1)

    if "hflip" in names:
        x = torch.where(per_image(_draw(g, b, dev) < 0.5), x.flip(-1), x)
    if "vflip" in names:
        x = torch.where(per_image(_draw(g, b, dev) < 0.5), x.flip(-2), x)
    if "rot90" in names:
        u = _draw(g, b, dev)
        if h == w:
            k = (u * 4).long().clamp(max=3)
            out = x
            for turns in (1, 2, 3):
                out = torch.where(per_image(k == turns), torch.rot90(x, turns, dims=(-2, -1)), out)
            x = out
        else:  # a quarter turn would change the shape: only 0 or 180 degrees
            x = torch.where(per_image(u < 0.5), x.flip(-2, -1), x)
    if "rotate" in names or "translate" in names:
        angle = torch.zeros(b, device=dev)
        shift = torch.zeros(b, 2, device=dev)
        if "rotate" in names:
            angle = (2 * _draw(g, b, dev) - 1) * math.radians(max_angle)
        if "translate" in names:
            shift = (2 * _draw(g, 2 * b, dev).view(b, 2) - 1) * max_shift * 2  # normalised coords span 2
        cos, sin = torch.cos(angle), torch.sin(angle)
        # rotation in pixel space expressed in affine_grid's normalised coordinates (aspect-correct)
        theta = torch.stack(
            [
                torch.stack([cos, -sin * (h / w), shift[:, 0]], dim=1),
                torch.stack([sin * (w / h), cos, shift[:, 1]], dim=1),
            ],
            dim=1,
        )
        grid = F.affine_grid(theta.to(dtype), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if "brightness" in names:
        x = x * per_image(1 + (2 * _draw(g, b, dev) - 1) * brightness).to(dtype)
    if "contrast" in names:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * per_image(1 + (2 * _draw(g, b, dev) - 1) * contrast).to(dtype) + mean
    if "gamma" in names:
        x = x.clamp(0, 1) ** per_image(torch.exp((2 * _draw(g, b, dev) - 1) * gamma)).to(dtype)
    return x.clamp(0, 1)
