"""Model families, one module each, behind one interface (:class:`~colab_utils.models.base.Family`).

``Config.mode`` picks the family through :func:`get_family`; :func:`build_model` builds its model. Each family
module declares its settings, profiles and checks next to its model.

- ``memory_bank``: :mod:`colab_utils.models.memory_bank`, a PatchCore-style patch memory bank (no gradient);
- ``unet``: :mod:`colab_utils.models.unet`, the multi-scale pixel U-Net autoencoder (trains by gradient).

Adding a family: one new module here that subclasses :class:`Family` and calls :func:`register`, and one import
line below (ARCHITECTURE.md, "Adding a family").
"""

from __future__ import annotations

from torch import nn

from . import memory_bank, unet  # noqa: F401 - importing registers the families
from .base import (
    FAMILIES,
    FLAT_FORMAT_FIELDS,
    PROFILE_NAMES,
    RETIRED_FAMILIES,
    RETIRED_FIELDS,
    Family,
    MapOutput,
    get_family,
    register,
)
from .coreset import greedy_coreset
from .memory_bank import MemoryBankModel
from .unet import UNetAutoencoder

__all__ = [
    "FAMILIES", "FLAT_FORMAT_FIELDS", "PROFILE_NAMES", "RETIRED_FAMILIES", "RETIRED_FIELDS", "Family", "MapOutput", "MemoryBankModel", "UNetAutoencoder",
    "build_model", "count_parameters", "get_family", "greedy_coreset", "register",
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
