"""The in-memory image set every module passes around (:class:`ImageSet`: uint8 images, masks, labels, paths), its
torch Dataset view, and the deterministic train / held-out split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from . import geometry


# --------------------------------------------------------------------------- image sets
@dataclass
class ImageSet:
    """Images, masks and labels of one split, in memory.

    Attributes:
        images: uint8 (N, C, H, W), values 0..255.
        masks: uint8 (N, 1, H, W), values in {0, 1}; all zero for good images.
        labels: int64 (N,), 0 = good, 1 = defective.
        defect_types: N names (``"good"`` for good images).
        paths: N absolute source image paths.
        has_masks: ``False`` when the defective images came without masks (a user
            folder without ``mask_dir``); their masks are then all zero and pixel-level
            metrics must be skipped.

    Tensors may be shared with the loader's cache: treat them as read-only and
    ``clone()`` before any in-place change.
    """

    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    defect_types: list[str]
    paths: list[str]
    has_masks: bool = True
    mask_paths: list[str | None] | None = None  # each image's mask file (None: good / no mask); lets reload() work

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.dim() != 4 or self.images.dtype != torch.uint8:
            raise ValueError(
                f"ImageSet.images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}"
            )
        h, w = self.images.shape[-2:]
        if self.masks.dtype != torch.uint8 or tuple(self.masks.shape) != (n, 1, h, w):
            raise ValueError(
                f"ImageSet.masks must be uint8 {(n, 1, h, w)}, got {self.masks.dtype} {tuple(self.masks.shape)}"
            )
        if self.labels.dtype != torch.int64 or tuple(self.labels.shape) != (n,):
            raise ValueError(
                f"ImageSet.labels must be int64 ({n},), got {self.labels.dtype} {tuple(self.labels.shape)}"
            )
        if len(self.defect_types) != n or len(self.paths) != n:
            raise ValueError(
                f"ImageSet needs {n} defect_types and paths, got {len(self.defect_types)} and {len(self.paths)}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def _index(self, indices: Any) -> torch.Tensor:
        """Any of: int, slice, sequence / numpy array / tensor of ints or bools -> 1-D int64 tensor."""
        n = len(self)
        if isinstance(indices, slice):
            return torch.arange(n)[indices]
        idx = torch.as_tensor(np.asarray(indices) if not isinstance(indices, torch.Tensor) else indices)
        if idx.dtype == torch.bool:
            if idx.shape != (n,):
                raise IndexError(f"boolean index needs shape ({n},), got {tuple(idx.shape)}")
            return idx.nonzero().flatten()
        idx = idx.to(torch.int64).reshape(-1)
        if idx.numel() and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for an ImageSet of {n} images")
        return torch.where(idx < 0, idx + n, idx)

    def subset(self, indices: Any) -> ImageSet:
        """A new ImageSet with the images at ``indices`` (ints, bool mask, slice), in that order."""
        idx = self._index(indices)
        pick = idx.tolist()
        return ImageSet(
            images=self.images[idx],
            masks=self.masks[idx],
            labels=self.labels[idx],
            defect_types=[self.defect_types[i] for i in pick],
            paths=[self.paths[i] for i in pick],
            has_masks=self.has_masks,
            mask_paths=[self.mask_paths[i] for i in pick] if self.mask_paths is not None else None,
        )

    def join(self, other: ImageSet) -> ImageSet:
        """A new ImageSet: these images followed by ``other``'s (same size and channels)."""
        if other.images.shape[1:] != self.images.shape[1:]:
            raise ValueError(
                f"cannot join images of shape {tuple(self.images.shape[1:])} and {tuple(other.images.shape[1:])}; "
                "load both sets with the same image_size and channels"
            )
        return ImageSet(
            images=torch.cat([self.images, other.images]),
            masks=torch.cat([self.masks, other.masks]),
            labels=torch.cat([self.labels, other.labels]),
            defect_types=self.defect_types + other.defect_types,
            paths=self.paths + other.paths,
            has_masks=self.has_masks and other.has_masks,
            mask_paths=self.mask_paths + other.mask_paths
            if self.mask_paths is not None and other.mask_paths is not None
            else None,
        )

    def tiles(self, config: Any) -> ImageSet:
        """This set as the model sees it under ``config``: itself, or under ``geometry="tile"`` every image's
        tiles (``image_size`` squares, :func:`colab_utils.geometry.cut` order) with its label, type and path."""
        if config.geometry != "tile":
            return self
        n = geometry.tiles_per_image(config)
        pick = [i for i in range(len(self)) for _ in range(n)]
        return ImageSet(
            images=geometry.cut(self.images, config.image_size, config.tile_overlap),
            masks=geometry.cut(self.masks, config.image_size, config.tile_overlap),
            labels=self.labels.repeat_interleave(n),
            defect_types=[self.defect_types[i] for i in pick],
            paths=[self.paths[i] for i in pick],
            has_masks=self.has_masks,
        )

    def float_images(self, idx: Any = None) -> torch.Tensor:
        """float32 images in [0, 1]: (N, C, H, W) for ``idx=None`` or a sequence, (C, H, W) for an int."""
        return _as_float(self.images, idx, 1.0 / 255.0)

    def float_masks(self, idx: Any = None) -> torch.Tensor:
        """float32 masks in {0, 1}: (N, 1, H, W) for ``idx=None`` or a sequence, (1, H, W) for an int."""
        return _as_float(self.masks, idx, 1.0)

    @property
    def num_good(self) -> int:
        return int((self.labels == 0).sum())

    @property
    def num_defective(self) -> int:
        return int((self.labels != 0).sum())


def _as_float(t: torch.Tensor, idx: Any, scale: float) -> torch.Tensor:
    if idx is None:
        sel = t
    elif isinstance(idx, (int, np.integer, slice)):
        sel = t[idx]
    else:
        sel = t[torch.as_tensor(np.asarray(idx) if not isinstance(idx, torch.Tensor) else idx)]
    out = sel.to(torch.float32)
    return out.mul_(scale) if scale != 1.0 else out


class AnomalyDataset(Dataset):
    """A torch Dataset over an :class:`ImageSet`.

    Each item is a dict: ``"image"`` float32 (C, H, W) in [0, 1], ``"mask"`` float32
    (1, H, W) in {0, 1}, ``"label"`` int (0 good, 1 defective), ``"defect_type"`` str,
    ``"path"`` str. The default ``DataLoader`` collate stacks them into batches.
    """

    def __init__(self, image_set: ImageSet) -> None:
        self.image_set = image_set

    def __len__(self) -> int:
        return len(self.image_set)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.image_set
        return {
            "image": s.images[i].to(torch.float32).mul_(1.0 / 255.0),
            "mask": s.masks[i].to(torch.float32),
            "label": int(s.labels[i]),
            "defect_type": s.defect_types[i],
            "path": s.paths[i],
        }


def split_train_val(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split ``range(n)`` into (train, validation) index lists, each sorted.

    Deterministic for a given ``seed``. The validation part holds ``round(n * val_fraction)``
    images, at least 1 when ``n >= 2`` and never all of them (``n == 1`` gives no validation).
    """
    if n < 0:
        raise ValueError(f"split_train_val: n={n} must not be negative")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"split_train_val: val_fraction={val_fraction} must lie in (0, 1), e.g. 0.1")
    n_val = 0 if n < 2 else min(n - 1, max(1, int(round(n * val_fraction))))
    perm = np.random.default_rng(seed).permutation(n)
    return sorted(int(i) for i in perm[n_val:]), sorted(int(i) for i in perm[:n_val])
