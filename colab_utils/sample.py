"""The built-in ``sample`` category: procedurally generated images of a machined part.

:func:`make_sample` writes ``<out_dir>/sample/`` in the official MVTec AD layout, so every
notebook and test can run without downloading anything::

    sample/train/good/000.png ...                 defect-free parts
    sample/test/good/000.png ...
    sample/test/<defect_type>/000.png ...         scratch, spot, crack, missing
    sample/ground_truth/<defect_type>/000_mask.png  0/255, exactly the pixels the defect changed
    sample/.complete                              written last (JSON of the settings)

The part is a turned steel flange (a disc with a centre bore, a machined hub ring and
four bolt holes) on a dark mat, with concentric turning marks, an anisotropic sheen,
bevelled edges and a soft shadow. Every image gets a small random pose (shift,
rotation, scale) and lighting (gain, light direction, gamma). Defects are small, as in
real inspection data: a thin scratch, a stain spot, a hairline crack from an edge, a
piece broken out of the rim.

Everything is vectorised numpy and deterministic by ``seed``; the default set
(80 train, 15 good test, 6 per defect type, 256 px) is about 8 MB and takes a few
seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image

CATEGORY = "sample"
DEFECT_TYPES = ("scratch", "spot", "crack", "missing")
MARKER = ".complete"
_FORMAT = 1  # bump when the images change, so old copies are regenerated

# Geometry of the part, in units of half the image side (the image spans [-1, 1]).
_R_OUT = 0.70  # outer radius
_R_BORE = 0.22  # centre bore
_R_HUB = 0.32  # machined hub ring (step) radius
_R_PITCH = 0.48  # bolt-hole circle
_R_BOLT = 0.065  # bolt-hole radius
_BOLT_ANGLES = np.deg2rad([45.0, 135.0, 225.0, 315.0])
_BEVEL = 0.03  # width of the edge chamfers


def _coverage(signed_dist: np.ndarray, px: float) -> np.ndarray:
    """Antialiased inside-coverage of a shape from its signed distance (negative inside), 1 px ramp."""
    return np.clip(0.5 - signed_dist / px, 0.0, 1.0)


def _seg_distance(x: np.ndarray, y: np.ndarray, pts: np.ndarray, reach: float) -> np.ndarray:
    """Distance of every pixel (x, y) to the polyline through ``pts`` (K, 2); ``inf`` beyond ``reach`` of its box."""
    pts = np.asarray(pts, np.float32)
    lo, hi = pts.min(0) - reach, pts.max(0) + reach
    near = (x >= lo[0]) & (x <= hi[0]) & (y >= lo[1]) & (y <= hi[1])
    out = np.full(x.shape, np.inf, np.float32)
    xs, ys = x[near][:, None], y[near][:, None]
    a, b = pts[:-1], pts[1:]
    d = b - a
    length2 = np.maximum((d**2).sum(1), 1e-12)
    px, py = xs - a[:, 0], ys - a[:, 1]
    t = np.clip((px * d[:, 0] + py * d[:, 1]) / length2, 0.0, 1.0)
    out[near] = np.sqrt((px - t * d[:, 0]) ** 2 + (py - t * d[:, 1]) ** 2).min(-1) if xs.size else np.inf
    return out


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1], (size, size), bicubic upsampling of a coarse grid."""
    coarse = rng.normal(0.0, 1.0, (cells, cells)).astype(np.float32)
    return np.asarray(
        Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32
    )


def _pick_surface_point(rng: np.random.Generator, r_lo: float, r_hi: float, margin: float) -> tuple[float, float]:
    """A point on the flat metal (local frame), ``margin`` away from the bolt holes."""
    for _ in range(100):
        r = rng.uniform(r_lo, r_hi)
        th = rng.uniform(0.0, 2 * np.pi)
        x, y = r * np.cos(th), r * np.sin(th)
        bolt_d = np.hypot(x - _R_PITCH * np.cos(_BOLT_ANGLES), y - _R_PITCH * np.sin(_BOLT_ANGLES)).min()
        if bolt_d > _R_BOLT + margin:
            return float(x), float(y)
    return float(0.5 * (r_lo + r_hi)), 0.0


def render_image(seed: int, image_size: int = 256, defect: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
    """Render one part: ``(image uint8 (H, W, 3) 0..255, mask bool (H, W))``.

    ``seed`` fixes the pose, lighting and texture; ``defect`` (one of :data:`DEFECT_TYPES`
    or ``None``) adds a defect drawn from its own random stream, so the same ``seed``
    with and without a defect gives the same part, and the two images differ exactly
    on ``mask`` (the pixels the defect changed; all ``False`` without a defect).
    """
    if defect is not None and defect not in DEFECT_TYPES:
        raise ValueError(f"defect={defect!r} is not known; choose from {DEFECT_TYPES}")
    s = int(image_size)
    rng = np.random.default_rng([seed, 0])
    px = 2.0 / s
    coords = ((np.arange(s) + 0.5) * px - 1.0).astype(np.float32)
    x, y = np.meshgrid(coords, coords)  # image frame, y down; float32 arrays with Python-float scalars stay float32

    # pose and lighting
    cx, cy = (float(v) for v in rng.uniform(-0.04, 0.04, 2))
    rot = float(np.deg2rad(rng.uniform(-12.0, 12.0)))
    scale = float(rng.uniform(0.97, 1.03))
    gain = float(rng.uniform(0.9, 1.1))
    light = float(np.deg2rad(rng.uniform(20.0, 50.0)))
    gamma = float(rng.uniform(0.92, 1.08))

    dx, dy = x - cx, y - cy
    c, sn = float(np.cos(rot)), float(np.sin(rot))
    lx = (c * dx + sn * dy) / scale  # part (local) frame
    ly = (-sn * dx + c * dy) / scale
    r = np.hypot(lx, ly)
    th_world = np.arctan2(dy, dx)
    lpx = px / scale

    # shape: disc minus bore minus bolt holes
    bolt_d = np.full_like(r, np.inf)
    for a in _BOLT_ANGLES.tolist():
        bolt_d = np.minimum(bolt_d, np.hypot(lx - _R_PITCH * float(np.cos(a)), ly - _R_PITCH * float(np.sin(a))))
    obj = _coverage(r - _R_OUT, lpx) * _coverage(_R_BORE - r, lpx) * _coverage(_R_BOLT - bolt_d, lpx)

    # metal shading
    n_rings = max(64, s)
    rings = np.convolve(rng.normal(0.0, 1.0, n_rings + 4), np.ones(3) / 3.0, mode="valid")[:n_rings]
    pos = np.minimum(r, 1.0) * (n_rings - 2)  # linear interpolation of the ring profile at radius r
    i0 = pos.astype(np.int64)
    frac = pos - i0
    rings = rings.astype(np.float32)
    metal = 0.60 + 0.022 * (rings[i0] * (1.0 - frac) + rings[i0 + 1] * frac)
    metal += 0.10 * np.cos(2.0 * (th_world - light)) * np.clip(r / _R_OUT, 0.0, 1.0)  # sheen of turning marks
    metal -= 0.08 * (r / _R_OUT) ** 2
    metal += 0.05 * _coverage(r - _R_HUB, lpx)  # raised hub ring
    metal -= 0.18 * np.exp(-(((r - _R_HUB) / (1.2 * lpx)) ** 2))  # groove at the step
    slope = np.cos(th_world - light)  # chamfers lit from one side
    outer_bevel = np.clip((r - (_R_OUT - _BEVEL)) / _BEVEL, 0.0, 1.0)
    bore_bevel = np.clip(((_R_BORE + _BEVEL) - r) / _BEVEL, 0.0, 1.0)
    bolt_bevel = np.clip(((_R_BOLT + 0.6 * _BEVEL) - bolt_d) / (0.6 * _BEVEL), 0.0, 1.0)
    metal += 0.22 * slope * outer_bevel - 0.22 * slope * bore_bevel - 0.15 * slope * bolt_bevel
    metal = metal[..., None] * np.array([0.98, 1.0, 1.04], np.float32)  # cool steel tint

    # background: dark mat, soft vignette, shadow of the part
    bg = 0.17 + 0.012 * _smooth_noise(rng, s, 6) - 0.04 * (x**2 + y**2)
    sx, sy = x - (cx + 0.035 * float(np.cos(light))), y - (cy + 0.035 * float(np.sin(light)))
    shadow = np.clip((_R_OUT + 0.03 - np.hypot(sx, sy)) / 0.08, 0.0, 1.0) * np.clip(
        (np.hypot(sx, sy) - _R_BORE + 0.02) / 0.08, 0.0, 1.0
    )
    bg = (bg * (1.0 - 0.45 * shadow))[..., None] * np.array([1.0, 1.0, 0.97], np.float32)
    noise = rng.normal(0.0, 0.0045, (s, s, 1)).astype(np.float32)

    # defects, from their own random stream so the part is the same with and without one
    changed = np.zeros((s, s), bool)
    if defect is not None:
        drng = np.random.default_rng([seed, 1, DEFECT_TYPES.index(defect)])
        metal, obj, changed = _add_defect(defect, drng, metal, obj, lx, ly, r, bolt_d, lpx, light)

    img = bg * (1.0 - obj[..., None]) + metal * obj[..., None]
    img = np.clip(img * gain, 0.0, 1.0) ** gamma + noise
    out = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return out, changed


def _hard(alpha: np.ndarray) -> np.ndarray:
    """Drop faint antialiasing fringes, so the changed pixels are exactly ``alpha > 0``."""
    return np.where(alpha >= 0.25, alpha, 0.0)


def _add_defect(
    kind: str,
    rng: np.random.Generator,
    metal: np.ndarray,
    obj: np.ndarray,
    lx: np.ndarray,
    ly: np.ndarray,
    r: np.ndarray,
    bolt_d: np.ndarray,
    lpx: float,
    light: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply one defect in the part's frame; returns (metal, object alpha, changed-pixel mask)."""
    if kind == "scratch":
        x0, y0 = _pick_surface_point(rng, 0.36, 0.60, 0.05)
        length = rng.uniform(0.12, 0.26)
        phi = rng.uniform(0.0, np.pi)
        bend = rng.uniform(-0.25, 0.25) * length
        t = np.linspace(-0.5, 0.5, 7)
        ux, uy = np.cos(phi), np.sin(phi)
        pts = np.stack(
            [x0 + t * length * ux - (1 - 4 * t**2) * bend * uy, y0 + t * length * uy + (1 - 4 * t**2) * bend * ux], 1
        )
        width = max(rng.uniform(0.012, 0.02), 1.6 * lpx)
        alpha = _hard(_coverage(_seg_distance(lx, ly, pts, width + 2 * lpx) - width / 2, lpx))
        delta = (0.28 if rng.random() < 0.5 else -0.26) * np.ones(3)
        metal = metal + alpha[..., None] * delta
    elif kind == "spot":
        x0, y0 = _pick_surface_point(rng, 0.36, 0.62, 0.08)
        radius = rng.uniform(0.03, 0.055)
        ang = np.arctan2(ly - y0, lx - x0)
        wobble = sum(rng.uniform(0.0, 0.18) * np.cos(k * ang + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
        rho = radius * (1.0 + wobble)
        dist = np.hypot(lx - x0, ly - y0)
        alpha = _hard(_coverage(dist - rho, lpx))
        depth = 0.75 + 0.25 * np.clip(1.0 - (dist / rho) ** 2, 0.0, 1.0)  # darker towards the centre
        tint = np.array([0.55, 0.45, 0.33], np.float32)  # rust / oil stain
        metal = metal * (1.0 - (alpha * depth)[..., None] * (1.0 - tint))
    elif kind == "crack":
        start_outer = rng.random() < 0.6
        th = rng.uniform(0.0, 2 * np.pi)
        r0 = _R_OUT + 0.01 if start_outer else _R_BORE - 0.01
        heading = th + (np.pi if start_outer else 0.0)  # inwards from the rim / outwards from the bore
        pts = [(r0 * np.cos(th), r0 * np.sin(th))]
        for _ in range(int(rng.integers(6, 10))):
            heading += rng.normal(0.0, 0.45)
            step = rng.uniform(0.018, 0.03)
            pts.append((pts[-1][0] + step * np.cos(heading), pts[-1][1] + step * np.sin(heading)))
        width = max(rng.uniform(0.008, 0.013), 1.3 * lpx)
        alpha = _hard(_coverage(_seg_distance(lx, ly, np.array(pts), width + 2 * lpx) - width / 2, lpx))
        metal = metal * (1.0 - 0.72 * alpha[..., None])
    elif kind == "missing":
        th = rng.uniform(0.0, 2 * np.pi)
        rc = _R_OUT + rng.uniform(-0.01, 0.03)
        radius = rng.uniform(0.06, 0.10)
        ang = np.arctan2(ly - rc * np.sin(th), lx - rc * np.cos(th))
        jag = radius * (1.0 + 0.08 * np.cos(7 * ang + rng.uniform(0, 2 * np.pi)))
        dist = np.hypot(lx - rc * np.cos(th), ly - rc * np.sin(th))
        cut = _hard(_coverage(dist - jag, lpx))
        edge = _hard(_coverage(np.abs(dist - jag - 1.5 * lpx) - 1.5 * lpx, lpx)) * (1.0 - cut)  # fresh fracture face
        metal = metal + (0.25 * np.cos(np.arctan2(ly, lx) - light) * edge)[..., None]
        alpha = np.maximum(cut, edge)
        obj_new = obj * (1.0 - cut)
        return metal, obj_new, (alpha > 0) & (obj > 0)
    else:  # pragma: no cover - checked by the caller
        raise ValueError(kind)
    return metal, obj, (alpha > 0) & (obj > 0)


# --------------------------------------------------------------------------- writing
def _settings(
    seed: int, image_size: int, n_train: int, n_test_good: int, n_per_defect: int, defect_types: Sequence[str]
) -> dict:
    return {
        "format": _FORMAT,
        "category": CATEGORY,
        "seed": int(seed),
        "image_size": int(image_size),
        "n_train": int(n_train),
        "n_test_good": int(n_test_good),
        "n_per_defect": int(n_per_defect),
        "defect_types": list(defect_types),
    }


def _read_marker(folder: Path) -> Optional[dict]:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _image_seed(seed: int, group: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, group, index]).generate_state(1)[0])


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=3)


def make_sample(
    out_dir: Union[str, os.PathLike[str]],
    seed: int = 0,
    image_size: int = 256,
    n_train: int = 80,
    n_test_good: int = 15,
    n_per_defect: int = 6,
    defect_types: Sequence[str] = DEFECT_TYPES,
) -> Path:
    """Write the ``sample`` category under ``out_dir`` (official MVTec AD layout); return ``out_dir/sample``.

    Images are RGB PNGs of ``image_size`` px; masks are 0/255 PNGs marking exactly the
    pixels each defect changed. Deterministic by ``seed``. If ``out_dir/sample`` is already
    complete with the same settings (its ``.complete`` marker), nothing is done. The set is
    built in a temporary sibling folder, the marker written last, then renamed into place,
    so an interrupted run never leaves a folder that looks complete. A different-settings
    sample made earlier is replaced; a ``sample`` folder not made by this function is never
    touched (``FileExistsError``).
    """
    if unknown := [d for d in defect_types if d not in DEFECT_TYPES]:
        raise ValueError(f"make_sample: unknown defect_types {unknown}; choose from {DEFECT_TYPES}")
    if image_size < 32:
        raise ValueError(f"make_sample: image_size={image_size} must be at least 32 (e.g. 256)")
    if n_train < 1 or n_test_good < 0 or n_per_defect < 0:
        raise ValueError("make_sample: n_train must be >= 1, n_test_good and n_per_defect >= 0")
    root = Path(out_dir).expanduser()
    target = root / CATEGORY
    settings = _settings(seed, image_size, n_train, n_test_good, n_per_defect, defect_types)
    if target.exists():
        marker = _read_marker(target)
        if marker == settings:
            return target
        if marker is None and any(target.iterdir()):
            raise FileExistsError(
                f"{target} exists but was not made by make_sample (no {MARKER} marker); move it away or pass "
                f"another out_dir"
            )
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{CATEGORY}.tmp-", dir=root))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the final folder should look like any other
    try:
        jobs = [("train/good", None, 0, n_train), ("test/good", None, 1, n_test_good)]
        jobs += [(f"test/{d}", d, 2 + DEFECT_TYPES.index(d), n_per_defect) for d in defect_types]
        tasks = []
        for folder, defect, group, count in jobs:
            (tmp / folder).mkdir(parents=True)
            if defect is not None:
                (tmp / "ground_truth" / defect).mkdir(parents=True)
            tasks += [(folder, defect, group, i) for i in range(count)]

        def write(task: tuple[str, Optional[str], int, int]) -> None:
            folder, defect, group, i = task
            img, mask = render_image(_image_seed(seed, group, i), image_size, defect)
            _save_png(img, tmp / folder / f"{i:03d}.png")
            if defect is not None:
                _save_png(mask.astype(np.uint8) * 255, tmp / "ground_truth" / defect / f"{i:03d}_mask.png")

        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:  # numpy and zlib release the GIL
            list(pool.map(write, tasks))
        (tmp / MARKER).write_text(json.dumps(settings, indent=1) + "\n")
        if target.exists():  # an older sample made with other settings (or an empty folder): replace it
            trash = Path(tempfile.mkdtemp(prefix=f".{CATEGORY}.old-", dir=root))
            os.replace(target, trash / CATEGORY)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if _read_marker(target) != settings:  # not another process finishing the same job first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _remove_stale_temps(root: Path, max_age_s: float = 3600.0) -> None:
    """Remove temporary folders of interrupted earlier runs (older than an hour, so never a running one's)."""
    now = time.time()
    for p in root.glob(f".{CATEGORY}.*-*"):
        try:
            if p.is_dir() and now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass
