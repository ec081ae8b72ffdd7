"""Tests of colab_utils.augment: ranges, exact flips and quarter turns, per-image parameters, determinism."""

from __future__ import annotations

import pytest
import torch

from colab_utils.augment import AUGMENTATION_NAMES, augment_batch
from colab_utils.config import AUGMENTATIONS, CATEGORY_AUGMENT


def _images(b=8, c=3, h=32, w=32, seed=0) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_names_match_config():
    assert AUGMENTATION_NAMES == AUGMENTATIONS
    assert all(set(names) <= set(AUGMENTATION_NAMES) for names in CATEGORY_AUGMENT.values())


@pytest.mark.parametrize("name", AUGMENTATION_NAMES)
@pytest.mark.parametrize("channels, size", [(3, (32, 32)), (1, (32, 48))])
def test_each_augmentation_keeps_shape_dtype_and_range(name, channels, size):
    x = _images(c=channels, h=size[0], w=size[1])
    original = x.clone()
    y = augment_batch(x, (name,), _seeded(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0 and y.max() <= 1
    assert torch.equal(x, original)
    assert not torch.equal(y, x)  # with 8 images at least one is changed


def test_all_together_on_extreme_values_stay_in_range():
    x = torch.cat([torch.zeros(4, 3, 32, 32), torch.ones(4, 3, 32, 32), _images(b=8)])
    y = augment_batch(x, AUGMENTATION_NAMES, _seeded(1), brightness=0.5, contrast=0.5, gamma=0.5)
    assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1


def test_hflip_twice_with_the_same_seed_is_identity_and_per_image():
    x = _images(b=16)
    once = augment_batch(x, ("hflip",), _seeded(3))
    assert torch.equal(augment_batch(once, ("hflip",), _seeded(3)), x)
    flipped = [torch.equal(once[i], x[i].flip(-1)) for i in range(16)]
    kept = [torch.equal(once[i], x[i]) for i in range(16)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def test_rot90_is_an_exact_quarter_turn_per_image():
    x = _images(b=16)
    y = augment_batch(x, ("rot90",), _seeded(4))
    turns = []
    for i in range(16):
        matches = [k for k in range(4) if torch.equal(y[i], torch.rot90(x[i], k, dims=(-2, -1)))]
        assert len(matches) == 1
        turns.append(matches[0])
    assert len(set(turns)) > 1
    four = x
    for _ in range(4):
        four = augment_batch(four, ("rot90",), _seeded(4))
    assert torch.equal(four, x)


def test_zero_strength_warp_is_identity_and_warp_moves_content():
    x = _images()
    same = augment_batch(x, ("rotate", "translate"), _seeded(5), max_angle=0.0, max_shift=0.0)
    torch.testing.assert_close(same, x, rtol=0, atol=1e-5)
    # a bright square moves under translation but keeps (nearly) its total brightness
    square = torch.zeros(4, 1, 64, 64)
    square[:, :, 24:40, 24:40] = 1.0
    moved = augment_batch(square, ("translate",), _seeded(6), max_shift=0.1)
    assert not torch.equal(moved, square)
    torch.testing.assert_close(moved.sum(dim=(1, 2, 3)), square.sum(dim=(1, 2, 3)), rtol=0.02, atol=0)


def test_brightness_is_a_per_image_gain_within_bounds():
    x = 0.2 + 0.4 * _images(b=8)  # no clipping at 1.1 x
    y = augment_batch(x, ("brightness",), _seeded(7), brightness=0.1)
    ratio = y / x
    per_image = ratio.flatten(1)
    torch.testing.assert_close(per_image.amin(1), per_image.amax(1))
    assert per_image.min() >= 0.9 - 1e-6 and per_image.max() <= 1.1 + 1e-6
    assert per_image[:, 0].unique().numel() == 8


def test_determinism_and_errors():
    x = _images()
    a = augment_batch(x, AUGMENTATION_NAMES, _seeded(9))
    b = augment_batch(x, tuple(reversed(AUGMENTATION_NAMES)), _seeded(9))  # order given does not matter
    c = augment_batch(x, AUGMENTATION_NAMES, _seeded(10))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert augment_batch(x, (), _seeded(0)) is x
    with pytest.raises(ValueError, match="unknown augmentations"):
        augment_batch(x, ("solarize",), _seeded(0))
