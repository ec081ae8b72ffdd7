"""The one configuration dataclass of the suite.

Every number that shapes data loading, the model, training, scoring and
thresholds lives in :class:`Config`. Notebooks set it in their single
``parameters`` cell, the command line reads it from flags or a JSON/YAML file,
and it is stored inside every checkpoint and every ``results.json``.

Per-category settings are allowed only through :data:`CATEGORY_OVERRIDES`
(applied by :meth:`Config.for_category`), so they are recorded in the config
that is saved with the model, never hidden in code paths.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .geometry import GEOMETRIES, tile_grid

#: The 15 categories of MVTec AD (Bergmann et al., CVPR 2019).
MVTEC_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)  # fmt: skip

MODES = ("unet", "feature", "memory_bank")
IMAGE_SCORES = ("max", "topk_mean")
IMAGE_SCORE_NORMS = ("auto", "position", "global")
AUGMENTATIONS = ("hflip", "vflip", "rot90", "rotate", "translate", "brightness", "contrast", "gamma")
CORRUPTIONS = ("perlin", "cutpaste", "scratch")
#: Where a Perlin defect's foreign texture comes from (colab_utils.corruption), and the default mix (the one the
#: U-Net's benchmark figures were measured with).
TEXTURE_SOURCES = ("noise", "stripes", "other", "recolour")
DEFAULT_TEXTURES = ("noise", "stripes", "other")

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

#: Other per-category settings, applied by :meth:`Config.for_category` and
#: listed in the README. Keep this small and justified by measurement.
#: screw: feature mode on mobilenet_v2 strides 2/4/8 (``features[1]``, ``[3]``, ``[6]``) instead of
#: the default 4/8/16: screw defects are a few pixels wide and the stride-16 layer alone ranks good
#: test images above defective ones (image AUROC 0.49); measured on 256 px MVTec screw the change
#: raises image / pixel AUROC / AU-PRO from 0.60 / 0.963 / 0.863 to 0.66 / 0.970 / 0.886
#: (benchmarks/README.md). It hurts bottle (0.98 -> 0.88) and capsule, hence per category only.
CATEGORY_OVERRIDES: dict[str, dict[str, Any]] = {
    "screw": {"feature_layers": (1, 3, 6)},
}

#: Hardware profiles: overrides applied by :meth:`Config.for_category` when a
#: profile is named. ``smoke`` shrinks the work to seconds (tests, CI),
#: ``cpu`` fits about ten minutes of training per category on 2 CPU cores,
#: ``gpu`` is the full setting for a Colab T4 or better. Per mode.
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {
        "feature": {"image_size": 64, "epochs": 2, "batch_size": 8, "smooth_sigma": 1.0},
        "unet": {"image_size": 64, "epochs": 2, "batch_size": 8, "base_width": 8, "head_width": 4, "smooth_sigma": 1.0},
        "memory_bank": {"image_size": 64, "epochs": 1, "batch_size": 8, "smooth_sigma": 1.0},
    },
    "cpu": {
        "feature": {"image_size": 256, "epochs": 15, "batch_size": 16, "max_minutes": 10.0},
        "unet": {"image_size": 128, "epochs": 40, "batch_size": 16, "base_width": 16, "head_width": 8, "max_minutes": 10.0},
        "memory_bank": {"image_size": 256, "epochs": 1, "batch_size": 16},
    },
    "gpu": {
        "feature": {"image_size": 256, "epochs": 100, "batch_size": 16},
        "unet": {"image_size": 256, "epochs": 300, "batch_size": 16, "base_width": 32, "head_width": 32},
        "memory_bank": {"image_size": 256, "epochs": 1, "batch_size": 16},
    },
}

#: Default ``threshold_percentile`` per mode (recorded resolved in every saved config). The memory bank calibrates
#: on leave-one-image-out scores of all its training images, which sit above those of unseen good images (the
#: coreset keeps each image's rare patches), so its 95th percentile is a false-alarm budget of at most 5 %:
#: measured, 0-4 % of good test images flagged with defect recall 50-100 %, where the 99th flagged none and
#: recalled 17-98 % (benchmarks/README.md, section 9). The autoencoders calibrate on about 20 held-out images,
#: where a 95th percentile would be the second-highest score; they keep the 99th.
THRESHOLD_PERCENTILE: dict[str, float] = {"memory_bank": 95.0}

#: Fields that may change between a run and its resumption without making the
#: saved weights incompatible (how long to train, how often to save, how to
#: score). Everything else must match for ``fit`` to resume.
RESUMABLE_FIELDS = frozenset(
    {
        "epochs",
        "max_minutes",
        "checkpoint_every_epochs",
        "checkpoint_every_minutes",
        "smooth_sigma",
        "image_score",
        "image_score_norm",
        "map_norm",
        "topk_fraction",
        "threshold_percentile",
        "map_l2_weight",
        "map_ssim_weight",
        "map_gms_weight",
        "map_perceptual_weight",
        "map_scale_weights",
        "normalize_maps",
        "amp",
        "bank_reweight_neighbors",
        "bank_search",
        "head_recon_map_weight",
    }
)


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the fix."""


@dataclass
class Config:
    """All settings of one training and evaluation run.

    Tensor conventions used throughout the package: images are float32 in
    [0, 1] with shape (B, C, H, W); masks are float32 in {0, 1} with shape
    (B, 1, H, W); anomaly maps are float32, shape (B, 1, H, W), higher means
    more anomalous.
    """

    # --- what to run -------------------------------------------------------
    category: str = "bottle"
    mode: str = "memory_bank"  # model family: "memory_bank" patch memory, "feature" feature autoencoder, "unet" pixel U-Net

    # --- data --------------------------------------------------------------
    image_size: int = 256  # side in pixels of the square the model sees: the whole image ("resize") or one tile
    geometry: str = "auto"  # "resize" (squeeze to the square), "tile" (canvas cut into tiles); "auto": chosen from the training images at fit
    canvas: tuple[int, ...] = ()  # (height, width) every image is resized to before tiling; () = chosen from the training images
    tile_overlap: float = 0.125  # least overlap of neighbouring tiles, as a share of the tile side
    channels: int = 3  # 1 or 3; grayscale images are repeated to 3, RGB reduced to luminance for 1
    val_fraction: float = 0.1  # share of good training images held out (validation + threshold)
    seed: int = 0

    # --- pixel U-Net (mode="unet") ------------------------------------------
    base_width: int = 32  # channels of the first encoder stage; doubled at each stage
    depth: int = 4  # number of down-sampling stages
    skip_levels: int = 2  # skips kept from the deepest stages up; the finest ones are dropped
    out_scales: tuple[int, ...] = (1, 2, 4)  # reconstructions produced at these down-sampling factors

    # --- feature autoencoder (mode="feature", and the perceptual loss) ------
    backbone: str = "mobilenet_v2"
    pretrained: bool = True  # ImageNet weights through torchvision's weights API
    feature_layers: tuple[int, ...] = ()  # backbone stage indices; () = the backbone's default
    feature_latent: int = 64  # bottleneck channels of the feature autoencoder
    feature_pool: int = 0  # local average pooling (k x k, stride 1) of backbone features; 0 = off
    feature_downsample: bool = False  # feature autoencoder with one stride-2 3x3 level (spatial context)
    feature_cosine_weight: float = 0.0  # extra (1 - cosine similarity) term of the feature loss

    # --- patch memory bank (mode="memory_bank"; also uses backbone, pretrained) ---
    bank_layers: tuple[int, ...] = ()  # backbone stages; () = the backbone's default (mobilenet_v2: strides 4, 8, 16)
    bank_stride: int = 8  # grid stride of the patch features (8: 32 x 32 patches at 256 px)
    bank_neighbourhood: int = 3  # local average window of each stage's features (PatchCore's 3)
    coreset_ratio: float = 0.01  # share of training patches kept by the greedy k-center coreset (1 = all)
    coreset_projection: int = 64  # random-projection dimension the coreset distances are computed in (0 = none)
    coreset_chunk: int = 0  # composable coreset over blocks of this many patches (faster, measured less accurate); 0 = one pass
    bank_reweight_neighbors: int = 0  # PatchCore's image-score re-weighting over this many bank neighbours; 0 = off (measured better)
    bank_search: str = "auto"  # nearest-neighbour search: "auto" (= torch), "torch" or "faiss" (faiss-cpu)

    # --- loss ----------------------------------------------------------------
    loss_mse_weight: float = 1.0
    loss_ssim_weight: float = 1.0  # on kornia's SSIMLoss, which is (1 - SSIM) / 2
    loss_perceptual_weight: float = 0.0
    loss_scale_weights: tuple[float, ...] = (1.0, 0.5, 0.25)  # one per entry of out_scales
    ssim_window: int = 11

    # --- synthetic defects for training (mode="unet") -----------------------
    corruption_prob: float = 0.5  # share of training images that get a synthetic defect
    corruptions: tuple[str, ...] = CORRUPTIONS
    corruption_textures: tuple[str, ...] = DEFAULT_TEXTURES  # Perlin defects' textures, from TEXTURE_SOURCES

    # --- discriminative head on the U-Net (mode="unet"; DRAEM, ICCV 2021) ------
    discriminative_head: bool = False  # segment synthetic defects from (input, reconstruction); off: measured worse on the cpu profile
    head_width: int = 16  # channels of the head's first stage (a full-skip U-Net of the same depth)
    head_loss_weight: float = 1.0  # focal loss of the head, added to the reconstruction loss
    head_focal_gamma: float = 2.0  # focal loss exponent (0 = binary cross-entropy)
    head_recon_map_weight: float = 0.0  # add this times the reconstruction-error map to the head's probability map

    # --- augmentation: None = the category's default from CATEGORY_AUGMENT --
    augment: tuple[str, ...] | None = None

    # --- optimisation ----------------------------------------------------------
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
    map_l2_weight: float = 1.0  # per-pixel squared error
    map_ssim_weight: float = 1.0  # per-pixel (1 - SSIM)
    map_gms_weight: float = 1.0  # per-pixel gradient-magnitude dissimilarity (U-Net; measured in benchmarks/README.md)
    map_perceptual_weight: float = 0.0  # backbone-feature distance of input and reconstruction (U-Net mode)
    map_scale_weights: tuple[float, ...] = (1.0, 1.0, 1.0)  # one per entry of out_scales
    smooth_sigma: float = 4.0  # Gaussian smoothing of the map, in pixels at 256 px
    normalize_maps: bool = True  # standardise maps with statistics of held-out good images
    image_score: str = "max"  # "max" or "topk_mean" of the smoothed map
    map_norm: str = "global"  # heatmaps standardised "global"ly, or per "position" with good training maps (aligned parts)
    image_score_norm: str = "auto"  # image score from maps standardised "position"-wise or "global"ly; "auto" = the family's choice
    topk_fraction: float = 0.01  # share of pixels averaged by "topk_mean"
    threshold_percentile: float | None = None  # of good calibration scores, the default threshold; None: per mode

    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes stored with the run

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                setattr(self, f.name, tuple(value))
        if self.threshold_percentile is None:
            self.threshold_percentile = THRESHOLD_PERCENTILE.get(self.mode, 99.0)
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the bad field and the allowed values."""

        def bad(name: str, why: str) -> None:
            raise ConfigError(f"Config.{name}={getattr(self, name)!r}: {why}")

        if self.mode not in MODES:
            bad("mode", f"must be one of {MODES}")
        if self.channels not in (1, 3):
            bad("channels", "must be 1 (grayscale) or 3 (RGB)")
        if self.mode == "feature" and self.channels != 3:
            bad("channels", "feature mode feeds an ImageNet backbone and needs channels=3")
        if self.image_size < 32 or self.image_size % 32:
            bad("image_size", "must be a multiple of 32 and at least 32 (e.g. 128, 256, 512)")
        if self.image_size % (2**self.depth):
            bad("image_size", f"must be divisible by 2**depth = {2 ** self.depth}")
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
        if self.depth < 2 or self.depth > 6:
            bad("depth", "must lie in 2..6")
        if not 0 <= self.skip_levels <= self.depth:
            bad("skip_levels", f"must lie in 0..depth ({self.depth})")
        if not self.out_scales or any(s < 1 or s & (s - 1) or s > 2 ** (self.depth - 1) for s in self.out_scales):
            bad("out_scales", f"must be powers of two between 1 and {2 ** (self.depth - 1)}")
        if len(self.loss_scale_weights) != len(self.out_scales):
            bad("loss_scale_weights", f"needs one weight per out_scales entry ({len(self.out_scales)})")
        if len(self.map_scale_weights) != len(self.out_scales):
            bad("map_scale_weights", f"needs one weight per out_scales entry ({len(self.out_scales)})")
        if self.ssim_window < 3 or self.ssim_window % 2 == 0:
            bad("ssim_window", "must be an odd number >= 3")
        if unknown := set(self.corruptions) - set(CORRUPTIONS):
            bad("corruptions", f"unknown {sorted(unknown)}; choose from {CORRUPTIONS}")
        if self.augment is not None and (unknown := set(self.augment) - set(AUGMENTATIONS)):
            bad("augment", f"unknown {sorted(unknown)}; choose from {AUGMENTATIONS}")
        if unknown := set(self.corruption_textures) - set(TEXTURE_SOURCES):
            bad("corruption_textures", f"unknown {sorted(unknown)}; choose from {TEXTURE_SOURCES}")
        if not self.corruption_textures:
            bad("corruption_textures", f"needs at least one of {TEXTURE_SOURCES}")
        if self.mode == "unet" and self.discriminative_head and 1 not in self.out_scales:
            bad("discriminative_head", "needs the full-size reconstruction: add 1 to out_scales, or set it False")
        if not 0.0 <= self.corruption_prob <= 1.0:
            bad("corruption_prob", "must lie in [0, 1]")
        if self.image_score not in IMAGE_SCORES:
            bad("image_score", f"must be one of {IMAGE_SCORES}")
        if self.map_norm not in ("global", "position"):
            bad("map_norm", "must be 'global' or 'position'")
        if self.image_score_norm not in IMAGE_SCORE_NORMS:
            bad("image_score_norm", f"must be one of {IMAGE_SCORE_NORMS}")
        if not 0.0 < self.coreset_ratio <= 1.0:
            bad("coreset_ratio", "must lie in (0, 1]; 1 keeps every training patch")
        if self.bank_neighbourhood < 0 or (self.bank_neighbourhood > 1 and self.bank_neighbourhood % 2 == 0):
            bad("bank_neighbourhood", "must be 0 or 1 (off) or an odd window such as 3")
        if self.bank_stride not in (4, 8, 16):
            bad("bank_stride", "must be 4, 8 or 16")
        if self.bank_search not in ("auto", "torch", "faiss"):
            bad("bank_search", "must be 'auto', 'torch' or 'faiss'")
        for name in ("coreset_projection", "bank_reweight_neighbors", "coreset_chunk"):
            if getattr(self, name) < 0:
                bad(name, "must not be negative")
        if not 0.0 < self.topk_fraction <= 1.0:
            bad("topk_fraction", "must lie in (0, 1]")
        if not 50.0 <= self.threshold_percentile <= 100.0:
            bad("threshold_percentile", "must lie in [50, 100]")
        for name in ("epochs", "batch_size", "checkpoint_every_epochs", "base_width", "feature_latent", "head_width"):
            if getattr(self, name) < 1:
                bad(name, "must be at least 1")
        for name in ("lr", "smooth_sigma", "max_minutes", "checkpoint_every_minutes", "grad_clip", "weight_decay",
                     "head_focal_gamma", "head_loss_weight", "head_recon_map_weight"):  # fmt: skip
            if getattr(self, name) < 0:
                bad(name, "must not be negative")
        if self.lr == 0:
            bad("lr", "must be positive")

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
        """A config for ``category`` with its recorded per-category settings applied.

        Precedence, lowest first: dataclass defaults, the hardware ``profile``
        (a key of :data:`PROFILES`, for the mode in ``overrides`` or the default
        mode), the category's :data:`CATEGORY_OVERRIDES`, then ``overrides``.
        The augmentation list is written out explicitly, so the saved config
        says exactly what ran.
        """
        values: dict[str, Any] = {}
        if profile is not None:
            if profile not in PROFILES:
                raise ConfigError(f"profile {profile!r} unknown; choose from {sorted(PROFILES)}")
            mode = overrides.get("mode", CATEGORY_OVERRIDES.get(category, {}).get("mode", cls.mode))
            values.update(PROFILES[profile].get(mode, {}))
        values.update(CATEGORY_OVERRIDES.get(category, {}))
        values.update(overrides)
        values["category"] = category
        cfg = cls(**values)
        if cfg.augment is None:
            cfg.augment = cfg.augmentations
        return cfg

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)

    # -------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Build from a dict; unknown keys raise a :class:`ConfigError` naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown config keys {unknown}; valid keys are listed in colab_utils/config.py (Config)"
            )
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
            raise ConfigError(f"config file {path} does not exist; write one with Config().save({str(path)!r})")
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
        mine, theirs = self.to_dict(), other.to_dict()
        skip = {"extra"}
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
