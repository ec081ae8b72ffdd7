"""The one configuration of the suite: the fields every model family shares, and the family's own settings.

Every number that shapes data loading, the model, training, scoring and thresholds lives in :class:`Config`.
The fields every family shares are its own; the settings of the family it names (``mode``) are nested in
``config.model``, a dataclass declared by that family's module (:mod:`colab_utils.models`). Notebooks set it in
their single ``parameters`` cell, the command line reads it from flags or a JSON/YAML file, and it is stored
inside every checkpoint and every ``results.json``.

This module never asks which family it holds: the family's settings class, profiles, default threshold
percentile, resumable fields and checks come from the registry (:func:`colab_utils.models.get_family`).
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .geometry import GEOMETRIES, tile_grid
from .models import FAMILIES, FLAT_FORMAT_FIELDS, PROFILE_NAMES, RETIRED_FAMILIES, RETIRED_FIELDS, get_family
from .settings import ConfigError, Settings

__all__ = ["Config", "ConfigError", "MODES", "PROFILES", "MVTEC_CATEGORIES", "CATEGORY_AUGMENT", "AUGMENTATIONS"]

#: The 15 categories of MVTec AD (Bergmann et al., CVPR 2019).
MVTEC_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)  # fmt: skip

#: The model families (``Config.mode``), from the one registry.
MODES = tuple(FAMILIES)
#: The hardware profiles (each family says what each one sets: ``Family.profiles``).
PROFILES = PROFILE_NAMES
IMAGE_SCORES = ("max", "topk_mean")
IMAGE_SCORE_NORMS = ("auto", "position", "global")
AUGMENTATIONS = ("hflip", "vflip", "rot90", "rotate", "translate", "brightness", "contrast", "gamma")

#: Normal variation seen in each MVTec AD category, as augmentations that keep
#: a good image good. Flips and rotations are only listed where the object or
#: texture is symmetric under them (a transistor flipped is a defect).
CATEGORY_AUGMENT: dict[str, tuple[str, ...]] = {
    "bottle": ("hflip", "vflip", "rot90", "brightness"),
    "cable": ("brightness",),
    "capsule": ("brightness", "contrast"),
    "carpet": ("hflip", "vflip", "rot90", "brightness"),
    "grid": ("hflip", "vflip", "brightness"),
    "hazelnut": ("hflip", "vflip", "rotate", "brightness"),
    "leather": ("hflip", "vflip", "rot90", "brightness"),
    "metal_nut": ("rotate", "brightness"),
    "pill": ("brightness",),
    "screw": ("hflip", "vflip", "rotate", "translate", "brightness", "contrast", "gamma"),
    "tile": ("hflip", "vflip", "rot90", "brightness"),
    "toothbrush": ("hflip", "brightness"),
    "transistor": ("brightness",),
    "wood": ("hflip", "vflip", "brightness"),
    "zipper": ("hflip", "vflip", "brightness"),
    "sample": ("hflip", "brightness", "contrast"),
}

#: Fields that may change between a run and its resumption without making the
#: saved weights incompatible (how long to train, how often to save, how to
#: score). Everything else must match for ``fit`` to resume.
RESUMABLE_FIELDS = frozenset({
    "epochs", "max_minutes", "checkpoint_every_epochs", "checkpoint_every_minutes", "smooth_sigma", "image_score",
    "image_score_norm", "map_norm", "topk_fraction", "threshold_percentile", "mask_pixel_rate", "normalize_maps", "amp",
    "max_calibration_images", "mask_peak_share",
})  # fmt: skip


@dataclass(init=False)
class Config:
    """All settings of one training and evaluation run: the shared fields below, and ``model``, the settings of
    the family ``mode`` names (e.g. ``config.model.coreset_ratio``).

    ``Config(mode="unet", base_width=8, epochs=3)`` takes the family's fields by name next to the shared ones and
    puts them into ``model``; a field of another family is refused with the family it belongs to.

    Tensor conventions used throughout the package: images are float32 in [0, 1] with shape (B, C, H, W); masks
    are float32 in {0, 1} with shape (B, 1, H, W); anomaly maps are float32, shape (B, 1, H, W), higher means
    more anomalous.
    """

    # --- what to run -------------------------------------------------------
    category: str = "bottle"
    mode: str = "memory_bank"  # model family (colab_utils.models): "memory_bank" patch memory, "unet" pixel U-Net

    # --- data --------------------------------------------------------------
    image_size: int = 256  # side in pixels of the square the model sees: the whole image ("resize") or one tile
    geometry: str = "auto"  # "resize" (squeeze to the square), "tile" (canvas cut into tiles); "auto": chosen from the training images at fit
    canvas: tuple[int, ...] = ()  # (height, width) every image is resized to before tiling; () = chosen from the training images
    tile_overlap: float = 0.125  # least overlap of neighbouring tiles, as a share of the tile side
    channels: int = 3  # 1 or 3; grayscale images are repeated to 3, RGB reduced to luminance for 1
    val_fraction: float = 0.1  # share of good training images held out (validation + threshold)
    seed: int = 0

    # --- the frozen ImageNet backbone of families that use one ---------------
    backbone: str = "mobilenet_v2"
    pretrained: bool = True  # ImageNet weights through torchvision's weights API

    # --- augmentation: None = the category's default from CATEGORY_AUGMENT --
    augment: tuple[str, ...] | None = None

    # --- optimisation (families that train by gradient) -------------------------
    epochs: int = 60
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    amp: bool = True  # mixed precision; only ever used on CUDA
    max_minutes: float = 0.0  # stop (and checkpoint) after this much training time; 0 = no limit
    checkpoint_every_epochs: int = 1
    checkpoint_every_minutes: float = 5.0

    # --- scoring ---------------------------------------------------------------
    smooth_sigma: float = 4.0  # Gaussian smoothing of the map, in pixels at 256 px
    normalize_maps: bool = True  # standardise maps with statistics of held-out good images
    image_score: str = "max"  # "max" or "topk_mean" of the smoothed map
    map_norm: str = "global"  # heatmaps standardised "global"ly, or per "position" with good training maps (aligned parts)
    image_score_norm: str = "auto"  # image score from maps standardised "position"-wise or "global"ly; "auto" = the family's choice
    topk_fraction: float = 0.01  # share of pixels averaged by "topk_mean"
    threshold_percentile: float | None = None  # of good calibration scores, the default threshold; None: the family's
    mask_pixel_rate: float = 0.0  # mask threshold: this share of good calibration pixels above it; 0 = the percentile of good images' map maxima
    mask_peak_share: float = 0.5  # a masked pixel also reaches this share of its image's peak (0.5: half maximum); 0 = off
    max_calibration_images: int = 500  # at most this many good images (evenly spaced) calibrate; 0 = all

    # --- the family's own settings (a dataclass of its module) ------------------
    model: Settings | None = None  # None = the family's defaults

    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes stored with the run

    def __init__(self, model: Settings | dict[str, Any] | None = None, **values: Any) -> None:
        shared = _shared_fields()
        own = {k: values.pop(k) for k in list(values) if k not in shared}
        for f in fields(self):
            if f.name == "model":
                continue
            if f.name in values:
                value = values[f.name]
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            else:
                value = f.default
            setattr(self, f.name, tuple(value) if isinstance(value, list) else value)
        self.model = _family_settings(self.mode, model, own)
        if self.threshold_percentile is None:
            self.threshold_percentile = get_family(self.mode).threshold_percentile
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the bad field and the allowed values (the family checks its own)."""

        def bad(name: str, why: str) -> None:
            raise ConfigError(f"Config.{name}={getattr(self, name)!r}: {why}")

        for name in ("image_size", "epochs", "batch_size", "checkpoint_every_epochs", "seed", "channels",
                     "max_calibration_images"):  # fmt: skip
            if not isinstance(getattr(self, name), numbers.Integral) or isinstance(getattr(self, name), bool):
                bad(name, "must be a whole number")
        for name in ("lr", "smooth_sigma", "max_minutes", "checkpoint_every_minutes", "grad_clip", "weight_decay",
                     "tile_overlap", "val_fraction", "topk_fraction", "threshold_percentile", "mask_pixel_rate",
                     "mask_peak_share"):  # fmt: skip
            if not isinstance(getattr(self, name), numbers.Real) or isinstance(getattr(self, name), bool):
                bad(name, "must be a number")
        if self.channels not in (1, 3):
            bad("channels", "must be 1 (grayscale) or 3 (RGB)")
        if self.image_size < 32 or self.image_size % 32:
            bad("image_size", "must be a multiple of 32 and at least 32 (e.g. 128, 256, 512)")
        if self.geometry not in GEOMETRIES:
            bad("geometry", f"must be one of {GEOMETRIES}")
        if not 0.0 <= self.tile_overlap < 0.9:
            bad("tile_overlap", "must lie in [0, 0.9)")
        if self.canvas and (len(self.canvas) != 2 or min(self.canvas) < self.image_size):
            bad("canvas", f"must be (height, width), each at least image_size ({self.image_size}), or () to choose")
        if self.geometry == "tile" and self.canvas and len(tile_grid(self.canvas, self.image_size, self.tile_overlap)) > 256:
            bad("canvas", "would cut each image into more than 256 tiles; choose a smaller canvas or a larger image_size")
        if not 0.0 < self.val_fraction < 0.9:
            bad("val_fraction", "must lie in (0, 0.9)")
        if self.augment is not None and (unknown := set(self.augment) - set(AUGMENTATIONS)):
            bad("augment", f"unknown {sorted(unknown)}; choose from {AUGMENTATIONS}")
        if self.image_score not in IMAGE_SCORES:
            bad("image_score", f"must be one of {IMAGE_SCORES}")
        if self.map_norm not in ("global", "position"):
            bad("map_norm", "must be 'global' or 'position'")
        if self.image_score_norm not in IMAGE_SCORE_NORMS:
            bad("image_score_norm", f"must be one of {IMAGE_SCORE_NORMS}")
        if not 0.0 < self.topk_fraction <= 1.0:
            bad("topk_fraction", "must lie in (0, 1]")
        if not 50.0 <= self.threshold_percentile <= 100.0:
            bad("threshold_percentile", "must lie in [50, 100]")
        if self.max_calibration_images < 0 or 0 < self.max_calibration_images < 20:
            bad("max_calibration_images", "must be 0 (all) or at least 20")
        if not 0.0 <= self.mask_pixel_rate < 0.5:
            bad("mask_pixel_rate", "must lie in [0, 0.5); 0 keeps the percentile of good images' map maxima")
        if not 0.0 <= self.mask_peak_share < 1.0:
            bad("mask_peak_share", "must lie in [0, 1); 0 masks every pixel above the pixel threshold")
        for name in ("epochs", "batch_size", "checkpoint_every_epochs"):
            if getattr(self, name) < 1:
                bad(name, "must be at least 1")
        for name in ("lr", "smooth_sigma", "max_minutes", "checkpoint_every_minutes", "grad_clip", "weight_decay"):
            if getattr(self, name) < 0:
                bad(name, "must not be negative")
        if self.lr == 0:
            bad("lr", "must be positive")
        self.model.check(self)

    # ------------------------------------------------------------ derived values
    @property
    def work_size(self) -> tuple[int, int]:
        """(height, width) every image is resized to: the canvas under ``geometry="tile"``, else the square."""
        if self.geometry == "tile":
            return int(self.canvas[0]), int(self.canvas[1])
        return int(self.image_size), int(self.image_size)

    @property
    def augmentations(self) -> tuple[str, ...]:
        """The augmentations in force: ``augment`` or the category's default."""
        if self.augment is not None:
            return tuple(self.augment)
        return CATEGORY_AUGMENT.get(self.category, ("brightness",))

    @classmethod
    def for_category(cls, category: str, profile: str | None = None, **overrides: Any) -> Config:
        """A config for ``category``, with a hardware ``profile``'s settings applied.

        Precedence, lowest first: the defaults (shared and the family's), the ``profile`` (one of
        :data:`PROFILES`; what it sets is the family's ``profiles[profile]``), then ``overrides`` (shared fields
        or the family's, by name). The augmentation list is written out explicitly, so the saved config says
        exactly what ran.
        """
        values: dict[str, Any] = {}
        if profile is not None:
            if profile not in PROFILES:
                raise ConfigError(f"profile {profile!r} unknown; choose from {list(PROFILES)}")
            family = get_family(overrides.get("mode", cls.mode))
            if profile not in family.profiles:
                raise ConfigError(f"the {family.name!r} family declares no {profile!r} profile; add it to its module")
            values.update(family.profiles[profile])
        model = overrides.pop("model", None)  # a family's settings given whole (a saved config) win over the profile
        if model is not None:
            values.update(asdict(model) if isinstance(model, Settings) else dict(model))
        values.update(overrides)
        values["category"] = category
        cfg = cls(**values)
        if cfg.augment is None:
            cfg.augment = cfg.augmentations
        return cfg

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied (validated); the family's fields may be named directly. A new ``mode``
        starts from that family's defaults."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["extra"] = dict(self.extra)
        if changes.get("mode", self.mode) != self.mode:
            values["model"] = None
        return type(self)(**{**values, **changes})

    # -------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Build from a dict (``to_dict``'s, a hand-written one with the family's fields flat or under
        ``"model"``, or the flat config of an older checkpoint); unknown keys raise a :class:`ConfigError`."""
        data = dict(data)
        if "model" not in data and _is_legacy(data):
            data = _from_legacy(data)
        return cls(**data)

    def save(self, path: str | Path) -> Path:
        """Write as JSON (``.json``) or YAML (``.yaml``/``.yml``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix in (".yaml", ".yml"):
            import yaml

            path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        else:
            path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Config:
        """Read a JSON or YAML file written by :meth:`save` (or by hand)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; check the path given to --config, or write one "
                              f"(Python: Config().save({str(path)!r}))")
        text = path.read_text()
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                data = json.loads(text)
        except Exception as exc:  # noqa: BLE001 - any parse failure gets the same advice
            raise ConfigError(f"config file {path} could not be parsed ({exc}); fix its syntax") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of field names to values")
        return cls.from_dict(data)

    def mismatches(self, other: Config) -> dict[str, tuple[Any, Any]]:
        """Fields that differ and make saved weights incompatible: {name: (self, other)}."""
        mine, theirs = _flat(self), _flat(other)
        skip = {"extra"} | get_family(self.mode).resumable
        # "auto" geometry and an empty canvas mean "as the training images say", which a saved run has settled
        if "auto" in (self.geometry, other.geometry):
            skip |= {"geometry", "canvas"}
        if not self.canvas or not other.canvas:
            skip.add("canvas")
        return {
            k: (mine[k], theirs.get(k))
            for k in mine
            if k not in RESUMABLE_FIELDS and k not in skip and mine[k] != theirs.get(k)
        }


def _shared_fields() -> frozenset[str]:
    return frozenset(f.name for f in fields(Config)) - {"model"}


def _family_settings(mode: str, model: Any, own: dict[str, Any]) -> Settings:
    """``mode``'s settings from ``model`` (its settings, a dict of them, or None = defaults) and ``own`` (fields
    named directly), refusing a field of another family or a retired one with the reason."""
    family = get_family(mode)
    if isinstance(model, family.settings):
        values = asdict(model)
    elif isinstance(model, dict):
        values = dict(model)
    elif model is None:
        values = {}
    else:
        raise ConfigError(f"Config.model: expected the {mode!r} family's settings or a dict, got {type(model).__name__}")
    values.update(own)
    for name in [k for k in values if k in family.retired]:
        if values.pop(name) and family.retired[name]:
            raise ConfigError(family.retired[name])
    if unknown := sorted(set(values) - family.settings.names()):
        owners = {k: f.name for f in FAMILIES.values() for k in f.settings.names()}
        name = unknown[0]
        if name in owners:
            raise ConfigError(
                f"Config.{name} is a setting of the {owners[name]!r} family, and this config's mode is {mode!r}; "
                f"set mode={owners[name]!r} to use it, or remove it"
            )
        raise ConfigError(
            f"unknown config keys {unknown}; the shared ones are listed in colab_utils/config.py (Config), the "
            f"{mode!r} family's in its module ({family.settings.__module__}.{family.settings.__name__})"
        )
    try:
        return family.settings(**values)
    except TypeError as exc:  # a wrong-typed value in a hand-written file
        raise ConfigError(f"Config.model of {mode!r}: {exc}") from exc


def _is_legacy(data: dict[str, Any]) -> bool:
    """A flat config as saved before the families owned their settings: it held every family's fields."""
    return FLAT_FORMAT_FIELDS <= set(data)


def _from_legacy(data: dict[str, Any]) -> dict[str, Any]:
    """The old flat dict as today's: the family's fields kept (shared ones too), the other families' and the
    retired fields dropped; a retired family or a retired option that was on is refused with the reason."""
    mode = data.get("mode", Config.mode)
    if mode in RETIRED_FAMILIES:
        raise ConfigError(RETIRED_FAMILIES[mode])
    family = get_family(mode)
    keep = _shared_fields() | family.settings.names() | set(family.retired)
    foreign = {k for f in FAMILIES.values() for k in f.settings.names() | set(f.retired)} | RETIRED_FIELDS
    return {k: v for k, v in data.items() if k in keep or k not in foreign}


def _flat(config: Config) -> dict[str, Any]:
    """Shared fields and the family's in one JSON-ready dict (for comparing two configs)."""
    data = config.to_dict()
    return {**{k: v for k, v in data.items() if k != "model"}, **data["model"]}
