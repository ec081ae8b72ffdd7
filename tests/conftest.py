"""Shared fixtures: real MVTec data, offline ImageNet weights, the built-in sample category."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"

# One intra-op thread: on a 2-core machine, two OpenMP threads next to any other busy process
# make small kernels (SSIM, 64 px convolutions) tens of times slower.
torch.set_num_threads(int(os.environ.get("TEST_TORCH_THREADS", "1")))


def _require(what: str, fix: str = "set MVTEC_ROOT to an MVTec AD folder") -> None:
    """Skip with a message that says how to provide the resource, or fail when CI says it must be there."""
    if os.environ.get("REQUIRE_MVTEC"):
        pytest.fail(f"{what} is required in CI (REQUIRE_MVTEC=1) but missing; {fix}")
    pytest.skip(f"{what} not available; {fix} to run this test")


@pytest.fixture(scope="session")
def mvtec_root() -> Path:
    """Root of a real MVTec AD copy (CI: ../shared/mvtec_ad, 256 px bottle/capsule/screw)."""
    root = os.environ.get("MVTEC_ROOT")
    if not root:
        _require("MVTEC_ROOT")
    path = Path(root)
    if not (path / "bottle" / "train" / "good").is_dir():
        _require(f"MVTec bottle category under MVTEC_ROOT={root}")
    return path


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    """Folder holding torchvision's MobileNetV2 ImageNet weights file."""
    folder = Path(os.environ.get("SHARED_WEIGHTS", SHARED / "weights"))
    if not (folder / WEIGHTS_FILE).is_file():
        _require(f"{WEIGHTS_FILE} (in {folder})", f"set SHARED_WEIGHTS to a folder holding {WEIGHTS_FILE}")
    return folder


@pytest.fixture()
def offline_torch_home(tmp_path, weights_dir, monkeypatch) -> Path:
    """TORCH_HOME pointing at a temp folder whose hub/checkpoints links the offline weights."""
    home = tmp_path / "torch_home"
    ckpt = home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / WEIGHTS_FILE).symlink_to(weights_dir / WEIGHTS_FILE)
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> Path:
    """A data root holding the built-in procedurally generated `sample` category."""
    from colab_utils.sample import make_sample

    root = tmp_path_factory.mktemp("sample_data")
    make_sample(root, seed=0)
    return root


@pytest.fixture(scope="module")
def alpha():
    """Synthetic grayscale U-Net EvalResult (with reconstructions), 6 images of 64 px (tests/helpers.py)."""
    from helpers import make_result

    return make_result("alpha", ["good", "good", "good", "crack", "crack", "hole"], 1, True, 0)


@pytest.fixture(scope="module")
def beta():
    """Synthetic RGB memory-bank EvalResult (recons=None), 6 images of 64 px."""
    from helpers import make_result

    return make_result("beta", ["good", "good", "good", "scratch", "dent", "dent"], 3, False, 1)
