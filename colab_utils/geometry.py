"""Input geometry: how a photo of any size and aspect becomes what a model sees, and how its map comes back.

Two geometries (``Config.geometry``; ``"auto"`` picks one from the training images, see :func:`choose`):

- ``"resize"``: every image is resized to ``image_size x image_size`` (aspect not kept). Right for square
  images of about that size (the 256 px MVTec AD copies).
- ``"tile"``: every image is resized to the *canvas* ``Config.canvas`` = (height, width), which keeps the
  training photos' aspect and sets the working scale, then cut into overlapping ``image_size`` square tiles.
  The model scores each tile; the tile maps are stitched back into one map of the whole canvas, and the image
  score is taken on the whole photo (the maximum over its tiles' scores, or of the stitched map). So thresholds,
  calibration and the false-alarm budget are per photo, never per tile.

Tiles (:func:`tile_origins`): along each side of length L, ``n = ceil((L - T) / (T (1 - overlap))) + 1`` tiles
of side T, evenly spaced from 0 to L - T (rounded to whole pixels), so neighbours overlap by at least
``tile_overlap`` of a tile and the last tile ends exactly at the border. Every canvas pixel is covered.

Stitching (:func:`stitch`): where tiles overlap, the stitched value is the **mean** of the overlapping tiles'
values (each pixel divided by the number of tiles covering it). Maps are smoothed after stitching, so seams are
not sharpened. Both :func:`cut` and :func:`stitch` are slicing, padding and adding with sizes fixed by the
config, so they trace into the exported ONNX graph: the graph takes the canvas, (B, C, H, W), and returns the
stitched map.

Resolution of metrics: evaluation compares maps and masks at the canvas size (masks resized there with nearest
neighbour); ``predict`` resizes maps and masks back to each source image's own size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import median
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

GEOMETRIES = ("auto", "resize", "tile")

#: ``auto`` tiles when the training photos' median aspect (long / short side) reaches this ...
ELONGATED_ASPECT = 1.3
#: ... or when their median shorter side is more than this many times ``image_size`` (4: photos over 1,024 px at
#: the 256 px default; MVTec AD's own 700-1,024 px images and the built-in sample keep ``resize``).
LARGE_FACTOR = 4.0
#: An image whose long side is more than this many times its short side is refused (a strip, not a photo).
MAX_ASPECT = 20.0
#: ``auto`` never makes a canvas whose shorter side exceeds this many times ``image_size`` (4: 1,024 px at 256) ...
MAX_SCALE_STEPS = 4
#: ... nor one of more tiles than this (``Config`` refuses more than 256 tiles per image).
MAX_TILES = 64


class GeometryError(ValueError):
    """Images whose shape no geometry can handle; the message names the file and the fix."""


def tile_origins(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of the tiles along one side: evenly spaced, first 0, last ``length - tile``.

    ``length >= tile``; neighbouring tiles overlap by at least ``overlap`` (a fraction of ``tile``, in [0, 1)).
    """
    if length < tile:
        raise ValueError(
            f"a side of {length} px is shorter than the tile ({tile} px); resize the images to Config.work_size "
            f"(a canvas at least image_size on each side) before cutting"
        )
    if length == tile:
        return [0]
    stride = max(1.0, tile * (1.0 - overlap))
    n = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def tile_grid(canvas: Sequence[int], tile: int, overlap: float) -> list[tuple[int, int]]:
    """(y, x) origins of every tile of a (height, width) canvas, row by row."""
    return [(y, x) for y in tile_origins(canvas[0], tile, overlap) for x in tile_origins(canvas[1], tile, overlap)]


def cut(images: Tensor, tile: int, overlap: float) -> Tensor:
    """(B, C, H, W) -> (B * n, C, tile, tile): each image's n tiles in :func:`tile_grid` order, image by image.

    The grid depends only on (H, W), read as plain ints (constants in a traced graph)."""
    grid = tile_grid([int(v) for v in images.shape[-2:]], tile, overlap)
    tiles = [images[:, :, y : y + tile, x : x + tile] for y, x in grid]
    return torch.stack(tiles, dim=1).flatten(0, 1)


def coverage(canvas: Sequence[int], tile: int, overlap: float) -> Tensor:
    """(H, W) float32: how many tiles cover each canvas pixel (>= 1 everywhere)."""
    h, w = int(canvas[0]), int(canvas[1])
    count = torch.zeros(h, w)
    for y, x in tile_grid((h, w), tile, overlap):
        count[y : y + tile, x : x + tile] += 1
    return count


def stitch(tiles: Tensor, canvas: Sequence[int], overlap: float) -> Tensor:
    """(B * n, K, T, T) tile values -> (B, K, H, W) on the canvas, overlaps averaged.

    The inverse of :func:`cut` for any per-pixel quantity (maps, reconstructions).
    """
    h, w = int(canvas[0]), int(canvas[1])
    t = int(tiles.shape[-1])
    grid = tile_grid((h, w), t, overlap)
    per = tiles.reshape(-1, len(grid), *tiles.shape[1:])
    total = sum(F.pad(per[:, i], (x, w - t - x, y, h - t - y)) for i, (y, x) in enumerate(grid))
    return total / coverage((h, w), t, overlap).to(tiles.device, tiles.dtype)


def tiles_per_image(config: Any) -> int:
    """How many tiles the model sees per image under ``config`` (1 unless ``geometry="tile"``)."""
    if config.geometry != "tile":
        return 1
    return len(tile_grid(config.canvas, config.image_size, config.tile_overlap))


def upscaled(config: Any, sizes: Sequence[tuple[int, int]]) -> list[int]:
    """Indices of the images of ``sizes`` [(width, height)] that reach ``config.work_size`` only by more than
    doubling both sides (a thumbnail among photos): worth a note, not an error."""
    h, w = config.work_size
    return [i for i, (iw, ih) in enumerate(sizes) if iw * 2 < w and ih * 2 < h]


#: Smallest side of a training image worth learning from; smaller ones get a warning naming them.
MIN_TRAIN_SIDE = 16
#: An image whose aspect differs from the work size's by more than this factor is strongly stretched.
STRETCH_FACTOR = 1.5


def odd_sizes(config: Any, sizes: Sequence[tuple[int, int]]) -> dict[str, list[int]]:
    """Indices of the images of ``sizes`` [(width, height)] worth a warning at fit: ``"tiny"`` (a side under
    :data:`MIN_TRAIN_SIDE` px: an icon or a broken export) and ``"stretched"`` (an aspect more than
    :data:`STRETCH_FACTOR` times off the work size's, so resizing distorts the part)."""
    h, w = config.work_size
    target = w / h
    tiny = [i for i, (iw, ih) in enumerate(sizes) if min(iw, ih) < MIN_TRAIN_SIDE]
    stretched = [i for i, (iw, ih) in enumerate(sizes) if i not in tiny and ih > 0 and iw > 0
                 and max((iw / ih) / target, target / (iw / ih)) > STRETCH_FACTOR]  # fmt: skip
    return {"tiny": tiny, "stretched": stretched}


def _round8(x: float) -> int:
    return max(8, int(round(x / 8.0)) * 8)


def choose(config: Any, sizes: Sequence[tuple[int, int]], paths: Sequence[str] | None = None) -> tuple[Any, str]:
    """The config with its geometry settled for training images of ``sizes`` [(width, height)], and why.

    ``geometry="auto"``: square-ish images (median aspect below :data:`ELONGATED_ASPECT`) whose shorter side is
    at most :data:`LARGE_FACTOR` x ``image_size`` keep ``"resize"``; others get ``"tile"``. A tiled canvas keeps the
    photos' median aspect and orientation; its shorter side is ``image_size`` times the photos' median shorter
    side over 2 x ``image_size``, rounded, at least 1 (500 px photos at ``image_size`` 256: one tile across,
    a scale of about 0.5). ``"tile"`` without a canvas gets one by the same rule. A set canvas is kept.

    Raises :class:`GeometryError` naming the first image whose aspect exceeds :data:`MAX_ASPECT`.
    """
    if not sizes:
        raise GeometryError("no training images to choose a geometry from; add good images")
    for i, (w, h) in enumerate(sizes):
        if min(w, h) < 1 or max(w, h) / min(w, h) > MAX_ASPECT:
            name = paths[i] if paths else f"image {i}"
            raise GeometryError(
                f"{name} is {w}x{h} px, an aspect of more than {MAX_ASPECT:g}:1 that no geometry can inspect; "
                f"crop it to the part, or remove it from the folder"
            )
    short = median(min(w, h) for w, h in sizes)
    aspect = median(max(w, h) / min(w, h) for w, h in sizes)
    portrait = median(h for _, h in sizes) > median(w for w, _ in sizes)
    s = config.image_size
    described = f"{len(sizes)} images, median {int(median(w for w, _ in sizes))}x{int(median(h for _, h in sizes))} px"
    if config.geometry == "resize":
        return config, f"geometry 'resize' (set): {described} resized to {s}x{s}"
    if config.geometry == "tile" and config.canvas:
        n = tiles_per_image(config)
        return config, f"geometry 'tile' (set): {described} on a {config.canvas[0]}x{config.canvas[1]} canvas, {n} tiles of {s} px"
    if config.geometry == "auto" and aspect < ELONGATED_ASPECT and short <= LARGE_FACTOR * s:
        return config.replace(geometry="resize"), (
            f"geometry 'resize' (auto): {described}, square-ish (median aspect {aspect:.2f}) and at most "
            f"{LARGE_FACTOR * s:.0f} px: resized to {s}x{s}"
        )
    for m in range(min(MAX_SCALE_STEPS, max(1, round(short / (2 * s)))), 0, -1):  # the largest canvas under the cap
        short_c = s * m
        long_c = max(short_c, _round8(short_c * aspect))
        canvas = (long_c, short_c) if portrait else (short_c, long_c)
        if len(tile_grid(canvas, s, config.tile_overlap)) <= MAX_TILES:
            break
    else:
        raise GeometryError(
            f"photos of median aspect {aspect:.1f}:1 need more than {MAX_TILES} tiles of {s} px each; raise "
            f"image_size, or crop the photos to the part"
        )
    out = config.replace(geometry="tile", canvas=canvas)
    why = f"median aspect {aspect:.2f}" if aspect >= ELONGATED_ASPECT else f"median shorter side {short:.0f} px"
    return out, (
        f"geometry 'tile' ({'auto' if config.geometry == 'auto' else 'set'}): {described} ({why}): resized to a "
        f"{canvas[0]}x{canvas[1]} canvas (scale {short_c / short:.2f}), {tiles_per_image(out)} tiles of {s} px "
        f"with at least {config.tile_overlap:.0%} overlap; set geometry='resize' to squeeze instead"
    )
