"""Model families, one module each, behind one interface (:class:`~colab_utils.models.base.Family`).

``Config.mode`` picks the family through :func:`get_family`; :func:`build_model` builds its model.

- ``unet``: :mod:`colab_utils.models.unet`, the multi-scale pixel U-Net autoencoder (trains by gradient);
- ``feature``: :mod:`colab_utils.models.feature_ae`, a feature autoencoder on a frozen backbone (gradient);
- ``memory_bank``: :mod:`colab_utils.models.memory_bank`, a PatchCore-style patch memory bank (no gradient).
"""

from __future__ import annotations

from torch import nn

from . import feature_ae, memory_bank, unet  # noqa: F401 - importing registers the families
from .base import FAMILIES, Family, MapOutput, get_family, register
from .feature_ae import FeatureAutoencoder, FeatureModel
from .memory_bank import MemoryBankModel, greedy_coreset
from .unet import UNetAutoencoder

__all__ = [
    "FAMILIES", "Family", "FeatureAutoencoder", "FeatureModel", "MapOutput", "MemoryBankModel",
    "UNetAutoencoder", "build_model", "count_parameters", "get_family", "greedy_coreset", "register",
]  # fmt: skip


def build_model(config, pretrained: bool | None = None) -> nn.Module:
    """The model of ``config.mode``'s family, on the CPU (move it with ``.to(device)``).

    ``pretrained`` overrides ``config.pretrained`` (pass ``False`` when the weights are about to be loaded from a
    checkpoint anyway, so no ImageNet file is needed).
    """
    return get_family(config).build(config, pretrained=pretrained)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter values in ``model`` (only those with ``requires_grad`` when ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
