"""Reading one image file: decoding with Pillow (8-bit, 16-bit and float files; RGB or luminance) and resizing
exactly as training does (Lanczos, aspect ratio not kept). Every bad file raises :class:`DataError` naming it and
the fix.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

PathLike = Union[str, "os.PathLike[str]"]

#: File endings read as images (compared case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

class DataError(ValueError):
    """Bad input data; the message names the file or folder at fault and the fix."""


# --------------------------------------------------------------------------- decoding
def _too_large(path: Path, what: str, exc: Exception) -> DataError:
    return DataError(
        f"{what} {path} is larger than Pillow's safety limit (Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS:,} "
        f"pixels; {exc}). Shrink the file, or, if you trust it, lift the limit before loading: "
        "PIL.Image.MAX_IMAGE_PIXELS = None"
    )


def open_image(path: Path, what: str) -> Image.Image:
    """The decoded file (``what``: "image" or "mask", for the message); a bad file raises :class:`DataError`."""
    try:
        with Image.open(path) as im:
            im.load()
        return im
    except Image.DecompressionBombError as exc:
        raise _too_large(path, what, exc) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DataError(
            f"cannot read {what} {path} ({type(exc).__name__}: {exc}). The file is unreadable or truncated "
            f"(an interrupted copy or download?); copy it again from the original dataset, or delete it"
        ) from exc


def to_8bit(im: Image.Image) -> Image.Image:
    """16-bit / 32-bit / float single-channel images -> mode "L"."""
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        arr = np.asarray(im).astype(np.float64)
        if im.mode == "F":
            arr = arr * 255.0 if arr.size and arr.max() <= 1.0 else arr
        elif arr.size and arr.max() > 255:
            arr = arr / 257.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    return im


class OddImageWarning(UserWarning):
    """An image that reads, but probably not as meant (fully transparent); the message names the file."""


def read_pil(path: Path, channels: int) -> Image.Image:
    """An image file as 8-bit PIL in mode "RGB" (``channels`` 3; gray files repeated) or "L" (1: luminance).

    Transparency is dropped (the colour values under it are used); a fully transparent file gets an
    :class:`OddImageWarning` naming it, since what it shows is then an accident of the exporter."""
    im = open_image(path, "image")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        alpha = np.asarray(im.convert("RGBA"))[..., 3]
        if alpha.size and alpha.max() == 0:
            warnings.warn(f"{path} is fully transparent: its hidden colour values are used as the image; export it "
                          "without an alpha channel (or remove it)", OddImageWarning, stacklevel=2)  # fmt: skip
    return to_8bit(im).convert("RGB" if channels == 3 else "L")


def size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    """``image_size`` (a square side) or (height, width) -> (height, width)."""
    if isinstance(size, (tuple, list)):
        return int(size[0]), int(size[1])
    return int(size), int(size)


def resized_array(im: Image.Image, size: int | tuple[int, int]) -> np.ndarray:
    """PIL "RGB"/"L" image -> uint8 (C, H, W) at ``size`` (a side, or (height, width)), resized with Lanczos
    (aspect ratio not kept)."""
    h, w = size_hw(size)
    if im.size != (w, h):
        im = im.resize((w, h), Image.Resampling.LANCZOS)
    arr = np.asarray(im)
    return arr.transpose(2, 0, 1) if arr.ndim == 3 else arr[None]


def image_sizes(paths: list[str] | list[Path]) -> list[tuple[int, int]]:
    """(width, height) of each image file, read from its header only (fast). Unreadable files raise
    :class:`DataError` naming them."""
    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                out.append(im.size)
        except Image.DecompressionBombError as exc:
            raise _too_large(Path(p), "image", exc) from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"cannot read image {p} ({type(exc).__name__}: {exc}); copy it again, or delete it") from exc
    return out


def read_image(path: PathLike, channels: int) -> np.ndarray:
    """One image file at its own resolution: uint8 (C, H, W) with C = ``channels`` (1: luminance, 3: RGB; gray
    files are repeated to RGB). 16-bit and float images are scaled to 8 bit as in training. An unreadable file
    raises :class:`DataError` naming it."""
    arr = np.asarray(read_pil(Path(path), channels))
    return arr.transpose(2, 0, 1).copy() if arr.ndim == 3 else arr[None].copy()


def resize_image(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """uint8 (C, H, W) with C in {1, 3} -> (C, h, w) at ``size`` (a side, or (h, w)), resized exactly as the
    training images are."""
    if tuple(image.shape[-2:]) == size_hw(size):
        return image
    return resized_array(Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)), size)
