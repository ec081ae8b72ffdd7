"""Synthetic defects for training the pixel U-Net: the input is corrupted, the target stays clean.

Everything works on batched tensors on any device and is reproducible with a ``torch.Generator``:

- :func:`perlin_noise` / :func:`perlin_masks`: vectorised 2-D Perlin noise and thresholded blob masks
  (as in DRAEM: random resolutions 2**k per axis, random rotation, threshold 0.5);
- :func:`synthesize_defects`: per image, with probability ``prob``, one of
  ``"perlin"`` (Perlin-shaped regions filled with a foreign texture, blended with a random opacity; the
  texture is procedural noise or stripes, another image of the batch, or the image itself, recoloured),
  ``"cutpaste"`` (a colour-jittered rectangle from another image of the batch, or the same
  one, pasted elsewhere) or ``"scratch"`` (thin quadratic Bezier strokes with a random intensity).

Random numbers: all draws go through the given generator, on the generator's own device, and are then moved to
the images' device. A CPU generator therefore gives the same defects whether the images live on the CPU or a
GPU (small transfers per batch); a generator created on the images' device avoids the transfers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

#: The kinds of synthetic defect (``UNetSettings.corruptions``).
CORRUPTIONS = ("perlin", "cutpaste", "scratch")
#: Where a Perlin defect's foreign texture comes from, and the default mix (the one the U-Net's benchmark figures
#: were measured with).
TEXTURE_SOURCES = ("noise", "stripes", "other", "recolour")
DEFAULT_TEXTURES = ("noise", "stripes", "other")

#: Opacity of a Perlin-region texture, uniform in this range (1 = texture replaces the image).
PERLIN_OPACITY = (0.3, 1.0)
#: Area of a cut-paste rectangle as a share of the image, and its aspect-ratio range (h / w).
CUTPASTE_AREA = (0.02, 0.15)
CUTPASTE_ASPECT = (0.3, 3.3)
#: Up to this many strokes per scratch defect.
SCRATCH_MAX_STROKES = 3


# ----------------------------------------------------------------------------------------------- random numbers
def _gen(generator: torch.Generator | None) -> torch.Generator:
    return torch.default_generator if generator is None else generator


def _rand(generator: torch.Generator, size: Sequence[int], device) -> torch.Tensor:
    """Uniform [0, 1) float32 of ``size``, drawn on the generator's device, returned on ``device``."""
    return torch.rand(tuple(size), generator=generator, device=generator.device).to(device)


def _uniform(generator: torch.Generator, size: Sequence[int], low: float, high: float, device) -> torch.Tensor:
    return low + (high - low) * _rand(generator, size, device)


def _randint(generator: torch.Generator, low: int, high: int, size: Sequence[int], device) -> torch.Tensor:
    """Integers in [low, high) (int64), drawn on the generator's device, returned on ``device``."""
    return torch.randint(low, high, tuple(size), generator=generator, device=generator.device).to(device)


# ------------------------------------------------------------------------------------------------------- Perlin
def _fade(t: torch.Tensor) -> torch.Tensor:
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def _perlin_at(u: torch.Tensor, v: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Perlin noise at lattice coordinates ``u`` (x) and ``v`` (y), both (n, H, W).

    ``angles`` (n, L, L): gradient direction at lattice point (row j, column i); indices wrap modulo L.
    Returns (n, H, W) in [-1, 1] (the classic value times sqrt(2)).
    """
    n, lat = angles.shape[0], angles.shape[-1]
    i0f, j0f = torch.floor(u), torch.floor(v)
    fu, fv = u - i0f, v - j0f
    i0, j0 = i0f.long() % lat, j0f.long() % lat
    i1, j1 = (i0 + 1) % lat, (j0 + 1) % lat
    gx, gy = torch.cos(angles).reshape(n, -1), torch.sin(angles).reshape(n, -1)

    def corner(ii: torch.Tensor, jj: torch.Tensor, du: torch.Tensor, dv: torch.Tensor) -> torch.Tensor:
        idx = (jj * lat + ii).reshape(n, -1)
        return (gx.gather(1, idx).view_as(du) * du) + (gy.gather(1, idx).view_as(dv) * dv)

    n00 = corner(i0, j0, fu, fv)
    n10 = corner(i1, j0, fu - 1.0, fv)
    n01 = corner(i0, j1, fu, fv - 1.0)
    n11 = corner(i1, j1, fu - 1.0, fv - 1.0)
    wu, wv = _fade(fu), _fade(fv)
    return math.sqrt(2.0) * torch.lerp(torch.lerp(n00, n10, wu), torch.lerp(n01, n11, wu), wv)


def perlin_noise(
    shape: Sequence[int],
    res: Sequence[int] | torch.Tensor,
    generator: torch.Generator | None,
    device=None,
    angle: torch.Tensor | None = None,
) -> torch.Tensor:
    """Vectorised 2-D Perlin noise.

    Args:
        shape: ``(H, W)`` for one field or ``(B, H, W)`` for a batch.
        res: lattice cells along (y, x): a pair of ints for all fields, or an int tensor (B, 2) per field.
            Any positive value works (H need not be divisible by it); larger = finer blobs.
        generator: source of the random gradients (``None``: torch's default CPU generator).
        device: where the result lives (default: the generator's device).
        angle: optional (B,) rotation of each field in radians (about the image centre).

    Returns:
        float32 (H, W) or (B, H, W), values in [-1, 1] (mostly within +-0.7), smooth, 0 at lattice points.
    """
    g = _gen(generator)
    device = g.device if device is None else device
    single = len(shape) == 2
    b, h, w = (1, *shape) if single else tuple(shape)
    res_t = torch.as_tensor(res, dtype=torch.float32, device=device).reshape(-1, 2).expand(b, 2)
    if (res_t <= 0).any():
        raise ValueError(f"res must be positive, got {res}")
    lat = int(res_t.max().item()) + 2
    angles = _uniform(g, (b, lat, lat), 0.0, 2.0 * math.pi, device)
    ys = torch.arange(h, device=device, dtype=torch.float32) + 0.5
    xs = torch.arange(w, device=device, dtype=torch.float32) + 0.5
    py, px = torch.meshgrid(ys, xs, indexing="ij")
    py, px = py.expand(b, h, w), px.expand(b, h, w)
    if angle is not None:
        a = angle.to(device=device, dtype=torch.float32).view(b, 1, 1)
        cy, cx = h / 2.0, w / 2.0
        dy, dx = py - cy, px - cx
        px = cx + torch.cos(a) * dx - torch.sin(a) * dy
        py = cy + torch.sin(a) * dx + torch.cos(a) * dy
    u = px / w * res_t[:, 1].view(b, 1, 1)
    v = py / h * res_t[:, 0].view(b, 1, 1)
    noise = _perlin_at(u, v, angles)
    return noise[0] if single else noise


def perlin_masks(
    batch: int,
    size: int | Sequence[int],
    generator: torch.Generator | None,
    device=None,
    max_res_exp: int = 5,
    threshold: float = 0.5,
    rotate: bool = True,
) -> torch.Tensor:
    """Blob masks from thresholded Perlin noise of random resolution.

    Per mask the resolution along each axis is ``2**k`` with ``k`` uniform in ``0..max_res_exp`` (capped so a
    cell is at least 8 px), the field is rotated by a random angle when ``rotate`` and thresholded at
    ``threshold``. Some masks come out empty (no value above the threshold); that is allowed: such an image then
    stays clean.

    Returns float32 (B, 1, H, W) with values in {0, 1}, on ``device`` (default: the generator's device).
    """
    g = _gen(generator)
    device = g.device if device is None else device
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    top = max(0, min(max_res_exp, int(math.log2(max(1, min(h, w) // 8)))))
    exps = _randint(g, 0, top + 1, (batch, 2), device)
    res = (2**exps).float()
    angle = _uniform(g, (batch,), 0.0, 2.0 * math.pi, device) if rotate else None
    noise = perlin_noise((batch, h, w), res, g, device=device, angle=angle)
    return (noise > threshold).float().unsqueeze(1)


# ------------------------------------------------------------------------------------------------------ helpers
def _grid(h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    ys = torch.arange(h, device=device).view(1, h, 1)
    xs = torch.arange(w, device=device).view(1, 1, w)
    return ys, xs


def _gather_pixels(images: torch.Tensor, src_y: torch.Tensor, src_x: torch.Tensor) -> torch.Tensor:
    """out[b, :, y, x] = images[b, :, src_y[b, y, x], src_x[b, y, x]]; indices (n, H, W), already in range."""
    n, c, h, w = images.shape
    idx = (src_y * w + src_x).reshape(n, 1, h * w).expand(n, c, h * w)
    return images.reshape(n, c, h * w).gather(2, idx).view(n, c, h, w)


def _donors(batch: int, sel: torch.Tensor, generator: torch.Generator, same_prob: float) -> torch.Tensor:
    """For each selected index, another image of the batch (or itself with ``same_prob``, or when B == 1)."""
    if batch == 1:
        return sel.clone()
    other = (sel + _randint(generator, 1, batch, sel.shape, sel.device)) % batch
    same = _rand(generator, sel.shape, sel.device) < same_prob
    return torch.where(same, sel, other)


# ----------------------------------------------------------------------------------------------------- textures
def _foreign_texture(
    images: torch.Tensor, sel: torch.Tensor, generator: torch.Generator, sources: Sequence[str] = DEFAULT_TEXTURES
) -> torch.Tensor:
    """Per selected image one texture (n, C, H, W) in [0, 1] from one of ``sources``, drawn uniformly per image:

    - ``"noise"``: coloured noise, coarse blobs plus fine grain;
    - ``"stripes"``: stripes of random frequency, direction, phase and two random colours;
    - ``"other"``: another image of the batch, circularly shifted, maybe flipped, with a per-channel gain in
      [0.5, 1.5] and inverted with probability 0.3;
    - ``"recolour"``: the image itself, shifted, flipped and recoloured the same way.
    """
    b, c, h, w = images.shape
    n, dev = sel.numel(), images.device
    coarse = F.interpolate(_rand(generator, (n, c, 8, 8), dev), size=(h, w), mode="bilinear", align_corners=False)
    fine = F.interpolate(_rand(generator, (n, c, max(1, h // 4), max(1, w // 4)), dev), size=(h, w), mode="nearest")
    noise = 0.7 * coarse + 0.3 * fine
    ys, xs = _grid(h, w, dev)
    freq = _uniform(generator, (n, 1, 1), 2.0, 16.0, dev)
    theta = _uniform(generator, (n, 1, 1), 0.0, math.pi, dev)
    phase = _uniform(generator, (n, 1, 1), 0.0, 2.0 * math.pi, dev)
    wave = 0.5 + 0.5 * torch.sin(2 * math.pi * freq * (xs / w * torch.cos(theta) + ys / h * torch.sin(theta)) + phase)
    col_a, col_b = _rand(generator, (n, c, 1, 1), dev), _rand(generator, (n, c, 1, 1), dev)
    stripes = col_a + (col_b - col_a) * wave.unsqueeze(1)
    shift_y, shift_x = _randint(generator, 0, h, (n, 1, 1), dev), _randint(generator, 0, w, (n, 1, 1), dev)
    flip_y, flip_x = _rand(generator, (n, 1, 1), dev) < 0.5, _rand(generator, (n, 1, 1), dev) < 0.5
    src_y = ((torch.where(flip_y, h - 1 - ys, ys) + shift_y) % h).expand(n, h, w)
    src_x = ((torch.where(flip_x, w - 1 - xs, xs) + shift_x) % w).expand(n, h, w)
    gain = _uniform(generator, (n, c, 1, 1), 0.5, 1.5, dev)
    invert = (_rand(generator, (n, 1, 1, 1), dev) < 0.3).to(images.dtype)

    def recoloured(source: torch.Tensor) -> torch.Tensor:
        shifted = (_gather_pixels(source, src_y, src_x) * gain).clamp(0, 1)
        return invert * (1 - shifted) + (1 - invert) * shifted

    made = {"noise": lambda: noise, "stripes": lambda: stripes,
            "other": lambda: recoloured(images[_donors(b, sel, generator, same_prob=0.0)]),
            "recolour": lambda: recoloured(images[sel])}  # fmt: skip
    stack = torch.stack([made[name]().to(images.dtype) for name in sources])  # (S, n, C, H, W)
    pick = _randint(generator, 0, len(sources), (n,), dev)
    return stack[pick, torch.arange(n, device=dev)].clamp(0, 1)


# ------------------------------------------------------------------------------------------------ defect kinds
def _perlin_defect(images: torch.Tensor, sel: torch.Tensor, generator: torch.Generator, sources=DEFAULT_TEXTURES):
    x = images[sel]
    n, _, h, w = x.shape
    masks = perlin_masks(n, (h, w), generator, device=x.device).to(x.dtype)
    texture = _foreign_texture(images, sel, generator, sources)
    opacity = _uniform(generator, (n, 1, 1, 1), *PERLIN_OPACITY, x.device).to(x.dtype)
    blended = x + opacity * (texture - x)
    return torch.where(masks > 0, blended, x), masks


def _cutpaste_defect(images: torch.Tensor, sel: torch.Tensor, generator: torch.Generator):
    b, c, h, w = images.shape
    x, dev = images[sel], images.device
    n = x.shape[0]
    donor = images[_donors(b, sel, generator, same_prob=0.5)]
    area = _uniform(generator, (n,), *CUTPASTE_AREA, dev) * h * w
    aspect = torch.exp(_uniform(generator, (n,), math.log(CUTPASTE_ASPECT[0]), math.log(CUTPASTE_ASPECT[1]), dev))
    ph = torch.sqrt(area * aspect).round().clamp(2, max(2, h - 2)).long().view(n, 1, 1)
    pw = torch.sqrt(area / aspect).round().clamp(2, max(2, w - 2)).long().view(n, 1, 1)

    def corner(limit: int, extent: torch.Tensor) -> torch.Tensor:  # uniform top-left so the patch fits
        return (_rand(generator, (n, 1, 1), dev) * (limit - extent + 1).float()).long()

    sy, sx, dy, dx = corner(h, ph), corner(w, pw), corner(h, ph), corner(w, pw)
    ys, xs = _grid(h, w, dev)
    masks = ((ys >= dy) & (ys < dy + ph) & (xs >= dx) & (xs < dx + pw)).unsqueeze(1)
    flip_y, flip_x = _rand(generator, (n, 1, 1), dev) < 0.5, _rand(generator, (n, 1, 1), dev) < 0.5
    oy, ox = ys - dy, xs - dx  # offset inside the pasted rectangle
    src_y = (sy + torch.where(flip_y, ph - 1 - oy, oy)).clamp(0, h - 1)
    src_x = (sx + torch.where(flip_x, pw - 1 - ox, ox)).clamp(0, w - 1)
    patch = _gather_pixels(donor, src_y.expand(n, h, w), src_x.expand(n, h, w))
    gain = _uniform(generator, (n, c, 1, 1), 0.8, 1.2, dev).to(x.dtype)
    bias = _uniform(generator, (n, c, 1, 1), -0.1, 0.1, dev).to(x.dtype)
    patch = (patch * gain + bias).clamp(0, 1)
    return torch.where(masks, patch, x), masks.to(x.dtype)


def _scratch_defect(images: torch.Tensor, sel: torch.Tensor, generator: torch.Generator):
    x, dev = images[sel], images.device
    n, c, h, w = x.shape
    k = SCRATCH_MAX_STROKES
    size = torch.tensor([w, h], device=dev, dtype=torch.float32)
    p0 = _uniform(generator, (n, k, 1, 2), 0.1, 0.9, dev) * size
    p2 = _uniform(generator, (n, k, 1, 2), 0.1, 0.9, dev) * size
    p1 = (p0 + p2) / 2 + _uniform(generator, (n, k, 1, 2), -0.3, 0.3, dev) * size
    strokes = _randint(generator, 1, k + 1, (n, 1), dev)
    active = (torch.arange(k, device=dev).view(1, k) < strokes).float()  # (n, k): strokes in use
    steps = 6 * max(h, w)
    t = torch.linspace(0.0, 1.0, steps, device=dev).view(1, 1, steps, 1)
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # (n, k, steps, 2) as (x, y)
    px = pts[..., 0].round().long().clamp(0, w - 1)
    py = pts[..., 1].round().long().clamp(0, h - 1)
    flat = torch.arange(n, device=dev).view(n, 1, 1) * h * w + py * w + px
    flat = torch.where(active.view(n, k, 1) > 0, flat, n * h * w).reshape(-1)  # unused strokes: a spare slot
    canvas = torch.zeros(n * h * w + 1, device=dev, dtype=x.dtype).index_fill_(0, flat, 1.0)  # order-free
    masks = canvas[:-1].view(n, 1, h, w)
    thick = _rand(generator, (n, 1, 1, 1), dev) < 0.5
    masks = torch.where(thick, F.max_pool2d(masks, 3, stride=1, padding=1), masks).to(x.dtype)
    # dark strokes on bright images, bright strokes on dark ones; slight colour tint
    dark_image = x.mean(dim=(1, 2, 3), keepdim=True) < 0.5
    level = torch.where(
        dark_image, _uniform(generator, (n, 1, 1, 1), 0.75, 1.0, dev), _uniform(generator, (n, 1, 1, 1), 0.0, 0.25, dev)
    )
    color = (level + _uniform(generator, (n, c, 1, 1), -0.05, 0.05, dev)).clamp(0, 1).to(x.dtype)
    opacity = _uniform(generator, (n, 1, 1, 1), 0.6, 1.0, dev).to(x.dtype)
    return torch.where(masks > 0, x + opacity * (color - x), x), masks


_KINDS = {"perlin": _perlin_defect, "cutpaste": _cutpaste_defect, "scratch": _scratch_defect}


def synthesize_defects(
    images: torch.Tensor,
    generator: torch.Generator | None,
    prob: float = 0.5,
    kinds: Sequence[str] = CORRUPTIONS,
    textures: Sequence[str] = DEFAULT_TEXTURES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt a random share of a batch with synthetic defects.

    Args:
        images: float (B, C, H, W) in [0, 1], any device; C = 1 or 3.
        generator: ``torch.Generator`` for every random choice (``None``: torch's default CPU generator).
        prob: probability that an image gets a defect (independently per image).
        kinds: defect kinds to draw from, uniformly per corrupted image: ``"perlin"``, ``"cutpaste"``,
            ``"scratch"`` (see the module docstring).
        textures: where Perlin defects take their foreign texture from, uniformly per defect:
            ``"noise"``, ``"stripes"``, ``"other"``, ``"recolour"`` (:data:`TEXTURE_SOURCES`).

    Returns:
        ``(corrupted, masks)``: ``corrupted`` (B, C, H, W) in [0, 1], identical to ``images`` outside the mask;
        ``masks`` (B, 1, H, W) in {0, 1}, same dtype, 1 where a pixel may have been changed. Clean images and
        Perlin draws whose mask came out empty have an all-zero mask. The input is not modified.
    """
    if images.ndim != 4:
        raise ValueError(f"expected images (B, C, H, W), got {tuple(images.shape)}")
    unknown = set(kinds) - set(_KINDS)
    if unknown or not kinds:
        raise ValueError(f"kinds={tuple(kinds)}: choose one or more of {CORRUPTIONS}")
    if set(textures) - set(TEXTURE_SOURCES) or not textures:
        raise ValueError(f"textures={tuple(textures)}: choose one or more of {TEXTURE_SOURCES}")
    g = _gen(generator)
    b, _, h, w = images.shape
    dev = images.device
    corrupted = images.clone()
    masks = images.new_zeros((b, 1, h, w))
    apply = _rand(g, (b,), dev) < prob
    choice = _randint(g, 0, len(kinds), (b,), dev)
    for i, name in enumerate(kinds):
        sel = torch.nonzero(apply & (choice == i)).flatten()
        if sel.numel() == 0:
            continue
        out, m = _perlin_defect(images, sel, g, textures) if name == "perlin" else _KINDS[name](images, sel, g)
        corrupted[sel] = out.clamp(0, 1)
        masks[sel] = m
    return corrupted, masks
