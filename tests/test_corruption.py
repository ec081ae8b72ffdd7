"""Tests of colab_utils.corruption: Perlin noise and masks, defects confined to their masks, determinism."""

from __future__ import annotations

import pytest
import torch

from colab_utils.corruption import (
    CORRUPTIONS,
    TEXTURE_SOURCES,
    perlin_masks,
    perlin_noise,
    synthesize_defects,
)


def _images(b=8, c=3, h=64, w=64, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    # smooth images (like real ones) in [0.1, 0.9], so any pasted content or stroke is visible
    low = torch.rand(b, c, h // 8, w // 8, generator=gen)
    return 0.1 + 0.8 * torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)


def _changed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a != b).any(dim=1, keepdim=True)


def test_perlin_noise_shape_range_smoothness_and_determinism():
    g = torch.Generator().manual_seed(0)
    single = perlin_noise((64, 48), (4, 3), g)
    assert single.shape == (64, 48) and single.abs().max() <= 1.0 and single.std() > 0.05
    res = torch.tensor([[1, 1], [2, 8], [16, 16]])
    batch = perlin_noise((3, 64, 64), res, torch.Generator().manual_seed(5))
    again = perlin_noise((3, 64, 64), res, torch.Generator().manual_seed(5))
    assert batch.shape == (3, 64, 64) and torch.equal(batch, again)
    # finer lattices vary faster between neighbouring pixels
    roughness = batch.diff(dim=-1).abs().mean(dim=(1, 2))
    assert roughness[0] < roughness[1] < roughness[2]


def test_perlin_masks_binary_with_some_blobs():
    masks = perlin_masks(16, 64, torch.Generator().manual_seed(0))
    assert masks.shape == (16, 1, 64, 64)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    coverage = masks.mean(dim=(1, 2, 3))
    assert (coverage > 0).sum() >= 8 and coverage.max() < 0.6


@pytest.mark.parametrize("kind", CORRUPTIONS)
@pytest.mark.parametrize("channels, size", [(3, (64, 64)), (1, (64, 96))])
def test_each_kind_changes_pixels_only_inside_its_mask(kind, channels, size):
    images = _images(c=channels, h=size[0], w=size[1])
    original = images.clone()
    corrupted, masks = synthesize_defects(images, torch.Generator().manual_seed(1), prob=1.0, kinds=(kind,))
    assert torch.equal(images, original)  # input untouched
    assert corrupted.shape == images.shape and masks.shape == (8, 1, *size)
    assert corrupted.dtype == masks.dtype == images.dtype
    assert corrupted.min() >= 0 and corrupted.max() <= 1
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    changed = _changed(corrupted, images)
    assert not (changed & (masks == 0)).any()  # differences confined to the mask
    if kind in ("cutpaste", "scratch"):
        assert (masks.sum(dim=(1, 2, 3)) > 0).all()  # every selected image really gets a defect
    # inside the masks most pixels differ visibly
    inside = (corrupted - images).abs().amax(dim=1, keepdim=True)[masks > 0]
    assert (inside > 0.02).float().mean() > 0.5


def test_cutpaste_rectangles_have_the_configured_area():
    _, masks = synthesize_defects(_images(b=16), torch.Generator().manual_seed(2), prob=1.0, kinds=("cutpaste",))
    area = masks.mean(dim=(1, 2, 3))
    assert area.min() > 0.01 and area.max() < 0.2
    rows, cols = masks.amax(dim=3).sum(dim=(1, 2)), masks.amax(dim=2).sum(dim=(1, 2))
    torch.testing.assert_close(rows * cols, masks.sum(dim=(1, 2, 3)))  # filled rectangles


def test_prob_controls_the_share_of_corrupted_images():
    images = _images(b=64, h=32, w=32)
    same, none = synthesize_defects(images, torch.Generator().manual_seed(3), prob=0.0)
    assert torch.equal(same, images) and none.sum() == 0
    corrupted, masks = synthesize_defects(images, torch.Generator().manual_seed(3), prob=0.5)
    hit = (masks.sum(dim=(1, 2, 3)) > 0).float().mean()
    assert 0.2 < hit < 0.7  # Perlin draws may come out empty, so at most ~half
    untouched = masks.sum(dim=(1, 2, 3)) == 0
    assert torch.equal(corrupted[untouched], images[untouched])


def test_same_seed_same_defects_other_seed_other_defects():
    images = _images()
    a = synthesize_defects(images, torch.Generator().manual_seed(7), prob=0.8)
    b = synthesize_defects(images, torch.Generator().manual_seed(7), prob=0.8)
    c = synthesize_defects(images, torch.Generator().manual_seed(8), prob=0.8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_single_image_batch_and_bad_kinds():
    one = _images(b=1)
    for kind in CORRUPTIONS:
        corrupted, masks = synthesize_defects(one, torch.Generator().manual_seed(0), prob=1.0, kinds=(kind,))
        assert corrupted.shape == one.shape and not _changed(corrupted, one)[masks == 0].any()
    with pytest.raises(ValueError, match="kinds"):
        synthesize_defects(one, torch.Generator(), kinds=("rust",))


@pytest.mark.parametrize("source", TEXTURE_SOURCES)
def test_each_texture_source_fills_perlin_defects_from_where_it_says(source):
    """Image 0 is mid-grey, image 1 black: "other" brings black (or inverted, white), "recolour" keeps it grey-ish
    (its own grey times a gain in [0.5, 1.5], maybe inverted), noise and stripes bring colours of their own."""
    images = torch.zeros(2, 3, 64, 64)
    images[0] = 0.5
    corrupted, masks = synthesize_defects(images, torch.Generator().manual_seed(4), prob=1.0, kinds=("perlin",),
                                          textures=(source,))  # fmt: skip
    inside = corrupted[0][:, masks[0, 0] > 0]
    assert inside.numel() > 0
    changed = _changed(corrupted, images)
    assert not (changed & (masks == 0)).any()
    if source == "other":
        far = (inside - 0.5).abs().amin(0)  # black or white blended in with opacity >= 0.3: at least 0.15 away
        assert (far >= 0.15 - 1e-6).all()
    elif source == "recolour":
        assert inside.min() >= 0.25 - 1e-6 and inside.max() <= 0.75 + 1e-6  # 0.5 * gain (or 1 - that), blended
        assert (inside - 0.5).abs().max() > 0.02
    else:
        assert inside.std() > 0.02  # noise or stripes vary inside the region


def test_unknown_texture_source_is_named():
    with pytest.raises(ValueError, match="moss"):
        synthesize_defects(torch.rand(2, 3, 32, 32), torch.Generator(), prob=1.0, textures=("moss",))
