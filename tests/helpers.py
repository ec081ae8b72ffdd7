"""Helpers shared by test files: small synthetic EvalResults (64 px, 6 test images) for the figure and gallery
tests, and a TORCH_HOME with the offline ImageNet weights for module-scoped fixtures."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from colab_utils.evaluate import EvalResult

SIZE = 64


def _disc(cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _blob(cy: int, cx: int, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * sigma**2)).astype(np.float32)


def make_result(category: str, defect_types: list[str], channels: int, with_recons: bool, seed: int) -> EvalResult:
    """6 test images: 3 good, 3 defective. Defects are discs with a matching Gaussian bump in the map.

    Good image 2 carries a strong spurious bump (a false positive); the last defective image a weak one
    (a false negative at image_default = 2.0).
    """
    rng = np.random.default_rng(seed)
    n = len(defect_types)
    labels = np.array([t != "good" for t in defect_types], dtype=np.int64)
    images = rng.integers(40, 200, (n, channels, SIZE, SIZE), dtype=np.uint8)
    maps = rng.normal(0.0, 0.2, (n, SIZE, SIZE)).astype(np.float32)
    masks = np.zeros((n, SIZE, SIZE), np.uint8)
    strengths = {0: 0.5, 1: 0.8, 2: 3.0, 3: 5.0, 4: 4.0, 5: 1.2}
    for i in range(n):
        cy, cx = 16 + 6 * i, 48 - 5 * i
        maps[i] += strengths[i] * _blob(cy, cx, 5.0)
        if labels[i]:
            masks[i][_disc(cy, cx, 7)] = 1
    scores = maps.max(axis=(1, 2)).astype(np.float32)
    recons = None
    if with_recons:
        recons = np.clip(images.astype(np.int16) + rng.integers(-10, 10, images.shape), 0, 255).astype(np.uint8)
    per_defect = {t: 0.5 + 0.1 * k for k, t in enumerate(sorted({t for t in defect_types if t != "good"}))}
    return EvalResult(
        category=category,
        images=images,
        recons=recons,
        maps=maps,
        masks=masks,
        labels=labels,
        scores=scores,
        defect_types=list(defect_types),
        paths=[f"{category}/test/{t}/{i:03d}.png" for i, t in enumerate(defect_types)],
        metrics={
            "image_auroc": 0.889,
            "pixel_auroc": 0.95,
            "au_pro": 0.8,
            "image_f1_max": 0.857,
            "pixel_f1_max": 0.6,
            "pixel_ap": 0.55,
            "per_defect_image_auroc": per_defect,
        },
        thresholds={"image_default": 2.0, "image_f1_optimal": 1.1, "pixel_default": 1.0, "pixel_f1_optimal": 1.5},
        config={"mode": "unet" if with_recons else "memory_bank"},
    )


WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"


@contextmanager
def offline_torch_home(weights_dir: Path, home: Path):
    """TORCH_HOME set to ``home``, whose hub/checkpoints links the offline MobileNetV2 weights, for the block."""
    (home / "hub" / "checkpoints").mkdir(parents=True, exist_ok=True)
    link = home / "hub" / "checkpoints" / WEIGHTS_FILE
    if not link.exists():
        link.symlink_to(Path(weights_dir) / WEIGHTS_FILE)
    saved = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(home)
    try:
        yield home
    finally:
        if saved is None:
            os.environ.pop("TORCH_HOME", None)
        else:
            os.environ["TORCH_HOME"] = saved
