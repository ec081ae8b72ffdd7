"""Glue the notebooks call, so their cells stay short: setup, folders, profiles, tables.

Everything here is a thin composition of the layers below (env, data, sample,
config, train, evaluate); nothing here trains or scores by itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import env
from .config import PROFILES, Config
from .data import DataError, count_table, find_categories, load_split
from .models import get_family
from .sample import make_sample


@dataclass
class Session:
    """What the Setup cell found: where we run and on what."""

    in_colab: bool
    device: torch.device
    description: str


def setup(seed: int = 0, mount: bool = True, log: Any = print) -> Session:
    """Mount Drive (Colab only), pick the device, seed everything, and say what was found."""
    colab = env.in_colab()
    if colab and mount:
        env.mount_drive()
    device = env.get_device()
    env.seed_everything(seed)
    description = env.describe_device(device)
    log(f"{'Colab' if colab else 'local'} session on {description}")
    return Session(in_colab=colab, device=device, description=description)


def pick_profile(profile: str, device: torch.device | str, smoke: bool | None = None) -> str:
    """Resolve ``"auto"``: ``"smoke"`` when the SMOKE environment variable is set, else ``"gpu"``/``"cpu"``."""
    if smoke is None:
        smoke = env.running_smoke()
    if smoke:
        return "smoke"
    if profile == "auto":
        return "gpu" if torch.device(device).type == "cuda" else "cpu"
    if profile not in PROFILES:
        raise ValueError(f"PROFILE={profile!r} unknown; use 'auto' or one of {list(PROFILES)}")
    return profile


def resolve_data_root(data_root: str | Path | None, fallback_dir: str | Path) -> Path:
    """The data folder to use.

    ``data_root`` when given (it must exist). Otherwise ``$MVTEC_ROOT`` when
    set; otherwise the built-in ``sample`` category, generated once under
    ``fallback_dir``.
    """
    if data_root is not None:
        root = Path(data_root).expanduser()
        if not root.is_dir():
            raise DataError(
                f"DATA_ROOT={str(root)!r} does not exist. Download MVTec AD there "
                f"(python -m colab_utils download {root}) or set DATA_ROOT = None to use the built-in sample"
            )
        return root
    if os.environ.get("MVTEC_ROOT"):
        return resolve_data_root(os.environ["MVTEC_ROOT"], fallback_dir)
    return make_sample(Path(fallback_dir), seed=0).parent


def check_categories(data_root: str | Path, categories: list[str] | None) -> list[str]:
    """The categories to work on: ``categories`` (each must exist) or every one found."""
    found = find_categories(data_root)
    if categories is None:
        if not found:
            raise DataError(f"no category folders (<name>/train/good) under {data_root}; check DATA_ROOT")
        return found
    missing = [c for c in categories if c not in found]
    if missing:
        raise DataError(
            f"categories {missing} not found under {data_root} (found: {found or 'none'}). "
            "Download them (python -m colab_utils download) or edit CATEGORIES"
        )
    return list(categories)


def make_config(category: str, profile: str, **overrides: Any) -> Config:
    """``Config.for_category`` with the profile applied; ``None`` overrides are ignored."""
    return Config.for_category(category, profile=profile, **{k: v for k, v in overrides.items() if v is not None})


def format_table(rows: list[dict[str, Any]], columns: list[str] | None = None, digits: int = 3) -> str:
    """A markdown table of ``rows`` (dicts), floats rounded to ``digits``."""
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "–" if not np.isfinite(v) else f"{v:.{digits}f}"
        return "–" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def counts(data_root: str | Path, categories: list[str]) -> list[dict[str, Any]]:
    """Count rows (category, split, defect type, count) for every category."""
    return [row for c in categories for row in count_table(data_root, c)]


def category_stats(data_root: str | Path, category: str, image_size: int = 256) -> dict[str, Any]:
    """Source sizes, colour mode and intensity statistics, train-good versus test-good.

    Reads each file's header for the size and mode, and the cached uint8 images
    for the per-channel mean and standard deviation (in [0, 1]).
    """
    from PIL import Image

    train = load_split(data_root, category, "train", image_size, 3)
    test = load_split(data_root, category, "test", image_size, 3)
    sizes, modes = set(), set()
    for path in train.paths[:20] + test.paths[:20]:
        with Image.open(path) as im:
            sizes.add(im.size)
            modes.add(im.mode)
    good = test.subset([i for i, t in enumerate(test.defect_types) if t == "good"])

    def stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
        x = images.float() / 255.0
        return x.mean((0, 2, 3)).tolist(), x.std((0, 2, 3)).tolist()

    train_mean, train_std = stats(train.images)
    good_mean, good_std = stats(good.images) if len(good) else ([float("nan")] * 3, [float("nan")] * 3)
    return {
        "category": category,
        "source_sizes": sorted(sizes),
        "modes": sorted(modes),
        "train_mean": train_mean,
        "train_std": train_std,
        "test_good_mean": good_mean,
        "test_good_std": good_std,
        "brightness_shift": float(np.mean(good_mean) - np.mean(train_mean)),
    }


def geometry_rows(data_root: str | Path, categories: list[str], image_size: int = 256,
                  geometry: str = "auto") -> list[dict[str, Any]]:  # fmt: skip
    """Per category: the training images' sizes and aspects (from file headers, nothing decoded) and the input
    geometry training will use (:func:`colab_utils.geometry.choose`, the rule ``train`` applies and prints)."""
    from statistics import median

    from . import geometry as geom
    from .data import image_sizes, split_paths

    rows = []
    for category in categories:
        paths = split_paths(data_root, category, "train")
        sizes = image_sizes(paths)
        cfg, why = geom.choose(Config(image_size=image_size, geometry=geometry, category=category), sizes, paths)
        widths, heights = [w for w, _ in sizes], [h for _, h in sizes]
        rows.append({
            "category": category,
            "images": len(sizes),
            "width px": f"{min(widths)}–{max(widths)}" if min(widths) != max(widths) else str(widths[0]),
            "height px": f"{min(heights)}–{max(heights)}" if min(heights) != max(heights) else str(heights[0]),
            "median aspect": float(median(max(w, h) / min(w, h) for w, h in sizes)),
            "geometry": cfg.geometry,
            "model input": (f"{cfg.canvas[0]}x{cfg.canvas[1]} canvas, {geom.tiles_per_image(cfg)} tiles of "
                            f"{image_size} px" if cfg.geometry == "tile" else f"{image_size}x{image_size}"),
            "why": why.split(": ", 1)[-1],
        })  # fmt: skip
    return rows


@dataclass
class Folders:
    """The three folders a notebook works with."""

    data_root: Path
    runs_dir: Path
    outputs_dir: Path


def folders(data_root: str | Path | None, runs_dir: str | Path | None, outputs_dir: str | Path | None) -> Folders:
    """Resolve DATA_ROOT / RUNS_DIR / OUTPUTS_DIR of a config cell.

    ``None`` means the default: Drive folders in Colab, local ``outputs/``
    elsewhere (see :func:`colab_utils.env.resolve_paths`); runs go to
    ``OUTPUTS_DIR/runs`` when only the outputs folder is given. A data root that
    does not exist falls back to ``$MVTEC_ROOT`` and then to the built-in
    sample only when the user left ``DATA_ROOT = None``.
    """
    if runs_dir is None and outputs_dir is not None:
        runs_dir = Path(outputs_dir) / "runs"  # keep runs beside the outputs the user chose
    paths = env.resolve_paths(data_root=data_root, runs_dir=runs_dir, outputs_dir=outputs_dir, create=False)
    outputs = Path(paths.outputs_dir)
    if data_root is not None:
        root = resolve_data_root(data_root, outputs / "data")
    elif Path(paths.data_root).is_dir() and find_categories(paths.data_root):
        root = Path(paths.data_root)
    else:
        root = resolve_data_root(None, outputs / "data")
    runs = Path(paths.runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    outputs.mkdir(parents=True, exist_ok=True)
    return Folders(data_root=root, runs_dir=runs, outputs_dir=outputs)


def examples(
    data_root: str | Path, category: str, per_type: int, image_size: int = 256, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``per_type`` test images of every defect type (good first): uint8 images (N,C,H,W), masks (N,1,H,W), titles."""
    test = load_split(data_root, category, "test", image_size, 3)
    rng = np.random.default_rng(seed)
    types = sorted(set(test.defect_types), key=lambda t: (t != "good", t))
    picked: list[int] = []
    for t in types:
        idx = [i for i, d in enumerate(test.defect_types) if d == t]
        picked += sorted(rng.choice(idx, size=min(per_type, len(idx)), replace=False).tolist())
    titles = [f"{category}/{test.defect_types[i]}" for i in picked]
    return test.images[picked], test.masks[picked], titles


def stats_rows(stats: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flatten :func:`category_stats` results into table rows (means of the channels)."""
    return [
        {
            "category": s["category"],
            "source size": ", ".join(f"{w}x{h}" for w, h in s["source_sizes"]),
            "mode": ", ".join(s["modes"]),
            "train mean": float(np.mean(s["train_mean"])),
            "test-good mean": float(np.mean(s["test_good_mean"])),
            "train std": float(np.mean(s["train_std"])),
            "test-good std": float(np.mean(s["test_good_std"])),
            "brightness shift": s["brightness_shift"],
        }
        for s in stats
    ]


def config_row(cfg: Config) -> dict[str, Any]:
    """The settings a user checks before training, as one table row."""
    return {
        "category": cfg.category,
        "mode": cfg.mode,
        "image size": cfg.image_size,
        "geometry": cfg.geometry + (f" {cfg.canvas[0]}x{cfg.canvas[1]}" if cfg.canvas else ""),
        "epochs": cfg.epochs,
        "batch": cfg.batch_size,
        "lr": cfg.lr,
        "augment": ", ".join(cfg.augmentations) or "none",
        "backbone": cfg.backbone if get_family(cfg).needs_backbone else "none (from scratch)",
    }


def train(cfg: Config, paths: Folders, device: torch.device | str, progress: bool = True, on_epoch: Any = None) -> Any:
    """Train (or resume, or load when finished) ``cfg.category`` into ``paths.runs_dir/<category>``."""
    from .train import fit

    return fit(cfg, paths.data_root, paths.runs_dir / cfg.category, device=device, progress=progress, on_epoch=on_epoch)


def holdout_preview(result: Any, data_root: str | Path, n: int = 4) -> dict[str, Any]:
    """Scores of ``n`` good training images the model did not see: images, reconstructions (U-Net) and maps.

    Held-out images, or for a family that ``cross_fits`` (the memory bank) the first training images, each
    scored without its own contribution. Returns ``{"images": uint8 (n,C,H,W), "recons": uint8 (n,C,H,W) | None,
    "maps": float32 (n,H,W), "threshold": float}``; maps are normalised with the
    run's calibration, so values above ``threshold`` would be flagged.
    """
    from .scoring import MapNormalizer, predict
    from .train import load_data

    train_set, val_set = load_data(result.config, data_root)
    leave_one_out = get_family(result.config).cross_fits
    device = next(result.model.parameters()).device
    images = (train_set if leave_one_out else val_set).images[:n]
    normalizer = MapNormalizer.from_dict(result.calibration.get("normalizer"))
    pred = predict(result.model, images, result.config, device, normalizer, leave_one_out=leave_one_out)
    return {
        "images": images.numpy(),
        "recons": pred["recons"],
        "maps": pred["maps"],
        "threshold": float(result.calibration.get("pixel_threshold", float("nan"))),
    }


def evaluate_all(
    categories: list[str],
    paths: Folders,
    device: torch.device | str,
    export: str | None = None,
    batch_size: int = 16,
    write: bool = True,
) -> dict[str, Any]:
    """Evaluate every category's run; with ``write``, save results.json, figures and the summary table."""
    from .evaluate import evaluate, summarize_runs

    evals = {}
    for category in categories:
        run = paths.runs_dir / category
        out = paths.runs_dir if write else None
        evals[category] = evaluate(run, paths.data_root, category, out, device, batch_size, export=export if write else None)
        if write:
            from .report import save_report

            save_report(evals[category], run)
    if write:
        summarize_runs(paths.runs_dir, list(categories))
    return evals


def anchor_table() -> dict[str, dict[str, tuple[float | None, float | None]]]:
    """Published reference figures (percent) to show beside ours."""
    from .anchors import ANCHORS

    return ANCHORS


def images_to_inspect(images: str | Path | None, paths: Folders, category: str, upload: bool = False) -> Any:
    """What notebook 05 inspects for one category: files uploaded in Colab (``upload=True``: a file picker;
    they are saved under ``OUTPUTS/uploads/<category>/``), else ``images`` (a folder, a Drive folder, a file or
    a glob), else the category's test images under the data root (the built-in sample's in ``make demo``)."""
    if upload and env.in_colab():
        from google.colab import files  # type: ignore[import-not-found]

        folder = Path(paths.outputs_dir) / "uploads" / category
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in files.upload().items():
            (folder / Path(name).name).write_bytes(content)
        return folder
    if images is not None:
        return images
    return Path(paths.data_root) / category / "test"


def inspect_all(
    categories: list[str], images: str | Path | None, paths: Folders, device: torch.device | str, upload: bool = False
) -> dict[str, Any]:
    """Inspect new images with every category's trained run (:class:`colab_utils.inspector.Inspector`); the CSV,
    overlays and masks go next to the run, in ``RUNS/<category>/inspections/``. Prints one summary per category."""
    from .inspector import Inspector

    reports = {}
    for category in categories:
        inspector = Inspector.load(Path(paths.runs_dir) / category, device)
        source = images_to_inspect(images, paths, category, upload)
        reports[category] = inspector.predict(source, out=Path(paths.runs_dir) / category / "inspections")
        print(f"{category}: {reports[category].summary()} -> {reports[category].csv}")
    return reports


def _mask_rule(config: dict[str, Any]) -> str:
    """How the mask was set, from a saved config: a share of good pixels, or the maxima percentile, and the share
    of each image's peak a masked pixel reaches."""
    rate = float(config.get("mask_pixel_rate") or 0.0)
    share = float(config.get("mask_peak_share") or 0.0)
    if rate > 0:
        rule = f"{100 * rate:g} % of good pixels above"
    else:
        rule = f"p{float(config.get('threshold_percentile') or 99):g} of good maxima"
    return rule + (f", >= {share:g} x peak" if share > 0 else "")


def operating_rows(evals: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per category: what the default thresholds (from good images only) do on its labelled test set,
    in %: the false-alarm budget the calibration allowed, good images flagged (count, and the exact 95 % interval
    of that rate), defect recall, predicted-mask F1 and IoU, beside the pixel F1-max (the best any single pixel
    threshold reaches on the test set)."""
    rows = []
    keys = ("false_alarm_budget", "good_flagged_rate", "good_flagged_ci_low", "good_flagged_ci_high", "defect_recall",
            "mask_f1", "mask_iou")  # fmt: skip
    for category, result in evals.items():
        op = result.metrics.get("at_default_thresholds", {})
        pct = {k: 100.0 * float(op.get(k, float("nan"))) for k in keys}
        rows.append({
            "category": category,
            "image threshold": float(result.thresholds["image_default"]),
            "budget %": pct["false_alarm_budget"],
            "good flagged %": pct["good_flagged_rate"],
            "flagged / good": f"{int(op.get('good_flagged', 0))} / {int(op.get('good_count', 0))}",
            "95% interval %": f"{pct['good_flagged_ci_low']:.1f}-{pct['good_flagged_ci_high']:.1f}",
            "defect recall %": pct["defect_recall"],
            "pixel threshold": float(result.thresholds["pixel_default"]),
            "set by": _mask_rule(result.config),
            "mask F1 %": pct["mask_f1"],
            "mask IoU %": pct["mask_iou"],
            "pixel F1-max %": 100.0 * float(result.metrics.get("pixel_f1_max", float("nan"))),
        })  # fmt: skip
    return rows
