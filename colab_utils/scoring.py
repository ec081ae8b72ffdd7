"""From a family's raw anomaly maps to smoothed, normalised maps and image scores.

Every model family (:mod:`colab_utils.models`) turns images into raw maps (B, 1, H, W); this module never asks
which family it holds. The maps are smoothed with a Gaussian (``smooth_sigma`` pixels at 256 px, scaled with
the image size), and standardised with a :class:`MapNormalizer` fitted on held-out *good* training images, so
that heatmaps of different images and the thresholds share one scale. Maps are never min-max normalised per
image: that makes every good image look defective.

Image score: the family's own score when it has one (the memory bank's PatchCore score), else the maximum of
the map, or the mean of its top ``topk_fraction`` pixels (``image_score="topk_mean"``), taken on the map
standardised per position (:class:`PositionStats`, ``image_score_norm="position"``) or globally.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import kornia
import numpy as np
import torch
from torch import Tensor, nn

from . import geometry
from .config import Config
from .models import get_family
from .models.base import MapOutput


@dataclass
class MapNormalizer:
    """Affine standardisation of anomaly maps: ``(map - center) / scale``.

    Fitted on maps of held-out good images: ``center`` is their pixel mean and
    ``scale`` their pixel standard deviation, so a normalised value of 3 means
    "three standard deviations above a normal pixel".
    """

    center: float = 0.0
    scale: float = 1.0

    @classmethod
    def fit(cls, maps: Tensor | np.ndarray) -> MapNormalizer:
        """Fit on good-image maps of any shape (float)."""
        values = torch.as_tensor(maps, dtype=torch.float64).flatten()
        std = float(values.std()) if values.numel() > 1 else 1.0
        return cls(center=float(values.mean()), scale=std if std > 1e-12 else 1.0)

    def __call__(self, maps: Tensor) -> Tensor:
        return (maps - self.center) / self.scale

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, float] | None) -> MapNormalizer:
        return cls(**data) if data else cls()


def gaussian_smooth(maps: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of (B,1,H,W) maps with std ``sigma`` pixels (no-op for sigma <= 0)."""
    if sigma <= 0:
        return maps
    radius = max(1, int(math.ceil(3.0 * sigma)))
    size = min(2 * radius + 1, 2 * (min(maps.shape[-2:]) // 2) - 1)
    return kornia.filters.gaussian_blur2d(maps, (size, size), (sigma, sigma), border_type="reflect")


@torch.no_grad()
def anomaly_maps(model: nn.Module, images: Tensor, config: Config, exclude: Tensor | None = None) -> MapOutput:
    """Smoothed, un-normalised anomaly maps for a batch.

    images: (B,C,H,W) float in [0,1] on the model's device, at ``config.work_size``. Returns a
    :class:`~colab_utils.models.base.MapOutput`: ``maps`` (B,1,H,W) float32, ``recon`` (B,C,H,W) in [0,1] or
    ``None`` (families without a pixel reconstruction), ``scores`` (B,) the family's own image scores or ``None``.
    ``exclude`` (B,): training-image indices left out of the model (only for families with ``cross_fits``).

    Under ``geometry="tile"`` the family sees each image's tiles (:mod:`colab_utils.geometry`); maps and
    reconstructions are stitched back to the whole image (overlaps averaged) and the family's own score of an
    image is the maximum over its tiles, so every output is per image, never per tile. Smoothing
    (``smooth_sigma`` pixels at a 256 px model input) runs on the stitched map.
    """
    family = get_family(config)
    b = images.shape[0]
    tiled = config.geometry == "tile"
    x = geometry.cut(images, config.image_size, config.tile_overlap) if tiled else images
    per = x.shape[0] // max(1, b)
    if exclude is not None and per > 1:
        exclude = exclude.repeat_interleave(per)
    out = family.raw_maps(model, x, config) if exclude is None else family.raw_maps(model, x, config, exclude)
    maps = out.maps.float()
    recon = out.recon.float().clamp(0, 1) if out.recon is not None else None
    scores = out.scores
    if tiled:
        canvas = config.work_size
        maps = geometry.stitch(maps, canvas, config.tile_overlap)
        recon = geometry.stitch(recon, canvas, config.tile_overlap) if recon is not None else None
        scores = scores.reshape(b, per).amax(1) if scores is not None else None
    sigma = config.smooth_sigma * x.shape[-1] / 256.0
    return MapOutput(maps=gaussian_smooth(maps, sigma), recon=recon, scores=scores)


def score_norm(config: Config) -> str:
    """``config.image_score_norm`` with ``"auto"`` resolved to the family's default ("position" or "global")."""
    if config.image_score_norm == "auto":
        return get_family(config).score_norm_for(config)
    return config.image_score_norm


def image_scores(maps: Tensor, config: Config) -> Tensor:
    """Image scores (B,) from maps (B,1,H,W): the max, or the mean of the top-k pixels."""
    flat = maps.flatten(1)
    if config.image_score == "max":
        return flat.max(1).values
    k = max(1, int(round(config.topk_fraction * flat.shape[1])))
    return flat.topk(k, dim=1).values.mean(1)


def to_float(images_uint8: Tensor, device: torch.device | str) -> Tensor:
    """uint8 (B,C,H,W) 0..255 -> float32 (B,C,H,W) in [0,1] on ``device``."""
    return images_uint8.to(device, non_blocking=True).float().div_(255.0)


class PositionStats:
    """Per-position standardisation of anomaly maps, for the image score.

    Some places of a part are always hard to reconstruct (printed text, sharp
    edges, specular highlights); their error is high on good images too, and a
    global maximum then ranks good images above defective ones. Standardising
    each pixel position with the mean and standard deviation of the maps of
    good *training* images removes that, for the image decision only: heatmaps
    keep the global scale of :class:`MapNormalizer`. ``mean``/``std``: float32
    (H, W); the std is floored at 5 % of its mean so flat regions don't explode.
    """

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        self.mean = torch.as_tensor(mean, dtype=torch.float32)
        std = torch.as_tensor(std, dtype=torch.float32)
        self.floor = 0.05 * float(std.mean()) + 1e-12
        self.std = std.clamp_min(self.floor)

    @classmethod
    def fit(cls, maps: Tensor | np.ndarray) -> PositionStats:
        """From good-image maps (N, H, W)."""
        m = torch.as_tensor(maps, dtype=torch.float32)
        return cls(m.mean(0), m.std(0) if len(m) > 1 else torch.ones_like(m[0]))

    def without_each(self, maps: Tensor, chunk: int = 32) -> Tensor:
        """The maps (N, 1, H, W) these statistics were fitted on -> each one's z-scores (same shape, float32) under
        the mean and std of the *other* N - 1 maps (from the sums, in float64; the same std floor).

        In-sample, an image's own unusual value widens the std of its position and so shrinks its own z-score:
        calibration scores then sit below those of unseen good images (benchmarks/README.md, section 14)."""
        n = maps.shape[0]
        if n < 3:
            return self(maps)
        s1 = maps.double().sum(0)
        s2 = maps.double().square().sum(0)
        out = torch.empty(maps.shape, dtype=torch.float32)
        for i in range(0, n, chunk):
            m = maps[i : i + chunk].double()
            mean = (s1 - m) / (n - 1)
            var = (s2 - m * m - (n - 1) * mean * mean) / (n - 2)
            std = var.clamp_min_(0).sqrt_().clamp_min_(self.floor)
            out[i : i + chunk] = ((m - mean) / std).float()
        return out

    def __call__(self, maps: Tensor) -> Tensor:
        """(B,1,H,W) raw maps -> per-position z-scores, same shape."""
        return (maps - self.mean.to(maps.device)) / self.std.to(maps.device)

    def to_dict(self) -> dict[str, Tensor]:
        return {"mean": self.mean.clone(), "std": self.std.clone()}

    @classmethod
    def from_calibration(cls, calibration: dict[str, Any] | None) -> PositionStats | None:
        data = (calibration or {}).get("position")
        return cls(data["mean"], data["std"]) if data else None


def scored_maps(
    out: MapOutput, config: Config, normalizer: MapNormalizer | None = None, position: PositionStats | None = None
) -> tuple[Tensor, Tensor]:
    """From :func:`anomaly_maps`' output to (maps (B,1,H,W), normalised when ``normalizer`` is given; image
    scores (B,)): from the per-position standardised raw map when ``position`` is given and the image score
    norm is ``"position"``, else the family's own scores when it has them, else from ``maps``. Heatmaps are the
    raw maps, or their per-position z-scores under ``map_norm="position"``, through ``normalizer``. Traceable (the ONNX export runs it inside the graph)."""
    z = position(out.maps) if position is not None else None
    base = z if z is not None and config.map_norm == "position" else out.maps
    maps = normalizer(base) if normalizer is not None else base
    if z is not None and score_norm(config) == "position":
        return maps, image_scores(z, config)
    if out.scores is not None:
        return maps, out.scores.float()
    return maps, image_scores(maps, config)


@torch.no_grad()
def predict(
    model: nn.Module,
    images_uint8: Tensor,
    config: Config,
    device: torch.device | str,
    normalizer: MapNormalizer | None = None,
    batch_size: int = 16,
    keep_recons: bool = True,
    progress: bool = False,
    desc: str = "inference",
    position: PositionStats | None = None,
    leave_one_out: bool | Tensor = False,
) -> dict[str, Any]:
    """Run the model over cached images in batches.

    ``leave_one_out``: ``images_uint8`` are the training images of a ``cross_fits`` family, in the order it was
    fitted on (or, given as int64 indices (N,), those of its training images), and each is scored without its own
    contribution to the model.

    images_uint8: (N,C,H,W) uint8. Returns a dict of numpy arrays:
    ``maps`` float32 (N,H,W) (normalised when ``normalizer`` is given),
    ``scores`` float32 (N,) (from the per-position standardised map when
    ``position`` is given, else from ``maps``), ``recons`` uint8 (N,C,H,W) or ``None``.
    """
    from .env import progress_bar as tqdm

    was_training = model.training
    model.eval()
    maps_out, scores_out, recons_out = [], [], []
    starts = range(0, len(images_uint8), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        batch = to_float(images_uint8[start : start + batch_size], device)
        if isinstance(leave_one_out, Tensor):
            exclude = leave_one_out[start : start + len(batch)]
        else:
            exclude = torch.arange(start, start + len(batch)) if leave_one_out else None
        out = anomaly_maps(model, batch, config, exclude)
        recon = out.recon
        maps, scores = scored_maps(out, config, normalizer, position)
        scores_out.append(scores.cpu())
        maps_out.append(maps[:, 0].cpu())
        if recon is not None and keep_recons:
            recons_out.append((recon * 255.0).round().to(torch.uint8).cpu())
    model.train(was_training)
    empty = torch.zeros(0, *images_uint8.shape[-2:])
    return {
        "maps": torch.cat(maps_out).numpy() if maps_out else empty.numpy(),
        "scores": torch.cat(scores_out).numpy() if scores_out else np.zeros(0, np.float32),
        "recons": torch.cat(recons_out).numpy() if recons_out else None,
    }


def predicted_mask(maps: Any, threshold: float, peak_share: float = 0.0) -> np.ndarray:
    """The defect mask: bool, the shape of ``maps`` (H, W) or (N, H, W) (a (N, 1, H, W) stack too), normalised
    anomaly maps on one scale. A pixel is masked when it reaches the pixel ``threshold`` and ``peak_share`` of its
    own image's peak (the largest value of its map; 0.5 = the half-maximum width of each anomaly).

    The threshold (from good images only) decides whether anything is masked; the peak share decides how far
    the mask spreads. One global threshold draws the blurred flank of a strong defect into its mask and cuts a
    faint one short; measured, the half-maximum rule reaches or beats the best single pixel threshold chosen on
    the test masks (pixel F1-max) on the dev categories (benchmarks/README.md, section 14).
    """
    maps = np.asarray(maps)
    mask = maps >= threshold
    if peak_share > 0:
        axes = tuple(range(1, maps.ndim)) if maps.ndim >= 3 else None
        mask &= maps >= peak_share * maps.max(axis=axes, keepdims=True)
    return mask


def calibration_sample(n: int, cap: int) -> Tensor | None:
    """Indices (int64, ascending) of at most ``cap`` of ``n`` calibration images, evenly spaced; None when all
    of them calibrate (``cap`` 0 or ``n <= cap``)."""
    if not cap or n <= cap:
        return None
    return torch.linspace(0, n - 1, cap).round().long().unique()


#: Shares of good calibration pixels above a threshold that calibration records the threshold of (for reports).
GOOD_PIXEL_RATES = (0.001, 0.003, 0.01, 0.03)


def good_pixel_quantiles(maps: Tensor, extra: tuple[float, ...] = ()) -> dict[str, float]:
    """{rate: the value that ``rate`` of the pixels of ``maps`` (N, 1, H, W), normalised good maps, lie above}, for
    :data:`GOOD_PIXEL_RATES` and the ``extra`` rates."""
    rates = tuple(dict.fromkeys((*GOOD_PIXEL_RATES, *extra)))
    values = np.quantile(maps.numpy().ravel(), [1 - r for r in rates])
    return {f"{r:g}": float(v) for r, v in zip(rates, values)}


def calibrate(
    model: nn.Module,
    good_images_uint8: Tensor,
    config: Config,
    device: torch.device | str,
    batch_size: int = 16,
    train_images_uint8: Tensor | None = None,
    leave_one_out: bool = False,
) -> dict[str, Any]:
    """Normalisation and default thresholds from good images only.

    ``good_images_uint8`` are held-out good images (never trained on), or, with ``leave_one_out`` (families
    with ``cross_fits``), the training images themselves, each scored without its own contribution;
    ``train_images_uint8`` the good training images, used only for the per-position statistics
    (``image_score_norm="position"`` or ``map_norm="position"``) of a family calibrated on held-out images.
    Returns ``{"normalizer": {...}, "position": {"mean", "std"} | None,
    "image_threshold": float, "pixel_threshold": float, "good_scores": list[float]}``:
    the ``threshold_percentile`` percentile of the held-out images' scores, and
    of their normalised map maxima.
    """
    sample = calibration_sample(len(good_images_uint8), config.max_calibration_images)
    if sample is not None:  # thousands of good images: an evenly spaced sample of them calibrates
        good_images_uint8 = good_images_uint8[sample]
    raw = predict(model, good_images_uint8, config, device, None, batch_size, keep_recons=False,
                  leave_one_out=sample if leave_one_out and sample is not None else leave_one_out)  # fmt: skip
    raw_maps = torch.from_numpy(raw["maps"])[:, None]
    position = None
    if "position" in (score_norm(config), config.map_norm):
        if leave_one_out and len(raw_maps) > 1:  # the training images' own maps, each without its contribution
            position = PositionStats.fit(raw["maps"])
        elif train_images_uint8 is not None and len(train_images_uint8) > 1:
            train_raw = predict(model, train_images_uint8, config, device, None, batch_size, keep_recons=False)
            position = PositionStats.fit(train_raw["maps"])
    # heatmaps: the calibration maps standardised with the statistics they formed. The image scores of the fit's
    # own images (leave_one_out) standardise each map without itself, as an unseen image is: before the bank's
    # stand-ins its leave-one-out maps carried the coreset's holes and this over-shot (bottle's threshold 37
    # against 13, benchmarks/README.md section 11); with them it matches unseen good images (section 14)
    z = position(raw_maps) if position is not None and config.map_norm == "position" else None
    base = raw_maps if z is None else z
    normalizer = MapNormalizer.fit(base) if config.normalize_maps else MapNormalizer()
    maps = normalizer(base)
    if position is not None and score_norm(config) == "position":
        # the fit's own images: each standardised without itself too, as an unseen image is (section 14)
        if leave_one_out:
            z = position.without_each(raw_maps)
        elif z is None:
            z = position(raw_maps)
        scores = image_scores(z, config).numpy()
    elif get_family(config).has_image_score:
        scores = raw["scores"]
    else:
        scores = image_scores(maps, config).numpy()
    maxima = maps.flatten(1).max(1).values.numpy()
    rate = config.mask_pixel_rate
    quantiles = good_pixel_quantiles(maps, (rate,) if rate > 0 else ())  # one pass over the pixels for all rates
    if rate > 0:
        pixel_threshold = quantiles[f"{rate:g}"]
        if rate not in GOOD_PIXEL_RATES:  # the record keeps the reported rates only
            del quantiles[f"{rate:g}"]
    else:
        pixel_threshold = float(np.percentile(maxima, config.threshold_percentile))
    return {
        "normalizer": normalizer.to_dict(),
        "position": position.to_dict() if position is not None else None,
        "image_threshold": float(np.percentile(scores, config.threshold_percentile)),
        "pixel_threshold": pixel_threshold,
        "pixel_threshold_rule": (f"{100 * config.mask_pixel_rate:g} % of good pixels above it"
                                 if config.mask_pixel_rate > 0 else
                                 f"{config.threshold_percentile:g}th percentile of good images' map maxima"),
        "good_pixel_quantiles": quantiles,
        "good_scores": [float(x) for x in scores],
        "source": "leave_one_out" if leave_one_out else "held_out",
    }
