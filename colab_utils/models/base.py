"""The interface every model family implements, and the one registry ``Config.mode`` picks from.

A family is a small object (one per module under ``colab_utils/models/``) that knows how to

- ``build(config, pretrained=None) -> nn.Module``: the model, on the CPU; its ``state_dict()`` is ALL of its
  state (weights, frozen backbone, memory bank), so a checkpoint is self-contained;
- fit it on good images, either by gradient (``trains_by_gradient = True``: the shared loop in
  :mod:`colab_utils.train` calls :meth:`Family.prepare`, :meth:`Family.loss` and :meth:`Family.batch_loss`) or
  directly (``trains_by_gradient = False``: :meth:`Family.fit`, e.g. the memory bank);
- ``raw_maps(model, images, config) -> MapOutput``: images (B, C, H, W) float in [0, 1] -> raw (unsmoothed,
  un-normalised) anomaly maps (B, 1, H, W), the full-size reconstruction (B, C, H, W) in [0, 1] or ``None``,
  and optionally the family's own image scores (B,). A family with ``cross_fits = True`` also takes
  ``exclude`` (B,) int64: the index, in the fit's training set, of each image, whose own contribution to the
  model is left out (leave-one-image-out scores for calibration).

Calibration: by default the shared code holds out ``val_fraction`` of the good images and calibrates on them. A
family with ``cross_fits = True`` is fitted on every good training image instead and calibrated on all of them,
each scored by ``raw_maps(..., exclude=...)`` without its own contribution (the memory bank: without the
bank entries it contributed), which gives many more calibration scores than a small held-out split.

A family also owns its settings: ``settings`` (a :class:`~colab_utils.settings.Settings` dataclass, nested in the
one saved config as ``config.model``), ``profiles`` (what each hardware profile sets, shared fields included),
``threshold_percentile`` (its default), ``resumable`` (its fields that may change when a run resumes), and
``retired`` (old fields it refuses, each with the reason).

Scoring, calibration, evaluation, results.json, the gallery, the command line and the notebooks only ever
talk to this interface.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from ..settings import ConfigError, Settings

#: The hardware profiles every family declares: ``smoke`` shrinks the work to seconds (tests, CI), ``cpu`` fits
#: about ten minutes per category on 2 CPU cores, ``gpu`` is the full setting for a Colab T4 or better.
PROFILE_NAMES = ("smoke", "cpu", "gpu")

#: Families that were removed, with the measurements that retired them; a config or checkpoint naming one gets
#: this message.
RETIRED_FAMILIES = {
    "feature": (
        "mode 'feature' (the feature autoencoder) was retired: it scored below the memory bank on every category "
        "tried (image AUROC 87.1 against 97.6 on bottle, capsule and screw; 77.8 against 93.6 on a held-out "
        "category) and trained 5-7 minutes where the bank fits in one (benchmarks/README.md). Use "
        "mode='memory_bank' (the default), or retrain with it"
    ),
}
#: The family fields every config of the old flat format held side by side (whatever its mode): a dict without
#: ``"model"`` that holds them all is such a config (fields added since are not required).
FLAT_FORMAT_FIELDS = frozenset({
    "base_width", "depth", "skip_levels", "out_scales", "loss_mse_weight", "loss_ssim_weight", "corruption_prob",
    "map_l2_weight", "map_scale_weights", "bank_layers", "bank_stride", "coreset_ratio", "coreset_projection",
    "bank_search", "feature_latent", "discriminative_head",
})  # fmt: skip
#: The retired families' own fields, which the old flat configs held for every mode: dropped when one loads.
RETIRED_FIELDS = frozenset({"feature_latent", "feature_pool", "feature_downsample", "feature_cosine_weight"})


@dataclass
class MapOutput:
    """What a family returns for a batch: raw maps (B,1,H,W) >= 0-ish reals, recon (B,C,H,W) | None, scores (B,) | None."""

    maps: Tensor
    recon: Tensor | None = None
    scores: Tensor | None = None


class Family:
    """Base class of a model family; subclasses set the class attributes and override what applies."""

    name: str = ""
    settings: ClassVar[type[Settings]] = Settings  # the family's own fields (Config.model)
    profiles: ClassVar[dict[str, dict[str, Any]]] = {}  # PROFILE_NAMES -> values (shared or the family's fields)
    threshold_percentile: float = 99.0  # default Config.threshold_percentile (of good calibration scores)
    resumable: ClassVar[frozenset[str]] = frozenset()  # own fields that may change between a run and its resumption
    retired: ClassVar[dict[str, str | None]] = {}  # old own fields: name -> why it is refused when set, or None (dropped)
    trains_by_gradient: bool = True
    needs_backbone: bool = False  # needs ImageNet weights when ``config.pretrained``
    has_reconstruction: bool = False  # raw_maps returns a pixel reconstruction (shown by the gallery)
    default_score_norm: str = "position"  # what ``image_score_norm="auto"`` means for this family
    has_image_score: bool = False  # raw_maps returns the family's own image scores (then they are the scores)
    cross_fits: bool = False  # fit on all good images; calibrate on each without its own contribution (exclude=)

    def build(self, config, pretrained: bool | None = None) -> nn.Module:
        raise NotImplementedError

    def score_norm_for(self, config) -> str:
        """What ``image_score_norm="auto"`` means for this config (default: :attr:`default_score_norm`)."""
        return self.default_score_norm

    def needs_weights(self, config) -> bool:
        """Whether building this config's model (and its loss) loads ImageNet weights (a download, or a local file)."""
        return bool(self.needs_backbone and config.pretrained)

    def describe_fit(self, info: dict) -> str:
        """One line on what a direct :meth:`fit` did, from the dict it returned (gradient families: unused)."""
        return ", ".join(f"{k} {v}" for k, v in info.items())

    @contextmanager
    def exportable(self, model: nn.Module):
        """The model set up so that an ONNX trace can follow it (default: as it is)."""
        yield model

    # ---- gradient families --------------------------------------------------
    def trainable(self, model: nn.Module) -> nn.Module:
        """The part of the model the optimiser updates (and ``train()``/``eval()`` toggles)."""
        return model

    def views(self, config) -> int:
        """How many training inputs :meth:`prepare` makes per training image (an epoch's length)."""
        return 1

    def prepare(self, model: nn.Module, train_set, val_set, config, device, log: Callable[[str], None]):
        """(train inputs, held-out inputs): what :meth:`batch_loss` indexes (rows). Default: the uint8 images."""
        return train_set.images, val_set.images

    def loss(self, config, device) -> Callable:
        raise NotImplementedError

    def batch_loss(self, model, loss_fn, x: Tensor, train: bool, config, device, gen, use_amp: bool):
        """(scalar loss tensor, dict of floats) for one batch ``x`` of what :meth:`prepare` returned."""
        raise NotImplementedError

    # ---- direct fitting ---------------------------------------------------------
    def fit(self, model: nn.Module, train_set, config, device, progress: bool = True, log: Callable = print) -> dict:
        """Fit without gradients; returns a dict of plain numbers describing what was done."""
        raise NotImplementedError

    # ---- inference ----------------------------------------------------------------
    def raw_maps(self, model: nn.Module, images: Tensor, config, exclude: Tensor | None = None) -> MapOutput:
        raise NotImplementedError


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add ``family`` to the registry under ``family.name`` (what ``Config.mode`` names)."""
    FAMILIES[family.name] = family
    return family


def get_family(mode_or_config: Any) -> Family:
    """The family of a ``Config`` (its ``mode``) or of a mode name."""
    mode = getattr(mode_or_config, "mode", mode_or_config)
    if mode in RETIRED_FAMILIES:
        raise ConfigError(RETIRED_FAMILIES[mode])
    if mode not in FAMILIES:
        raise ConfigError(f"Config.mode={mode!r}: unknown model family; choose from {sorted(FAMILIES)}")
    return FAMILIES[mode]


def feature_error_map(features: Tensor, recon: Tensor, size: tuple[int, int]) -> Tensor:
    """Channel-mean squared feature error, (B,F,h,w) x2 -> (B,1,H,W) upsampled to ``size`` (bilinear)."""
    err = ((features.float() - recon.float()) ** 2).mean(1, keepdim=True)
    return F.interpolate(err, size=size, mode="bilinear", align_corners=False)
