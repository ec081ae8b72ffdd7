"""Evaluation: inference in batches -> anomaly maps -> metrics -> results.json.

:func:`evaluate` loads a trained run, scores every test image of a category,
computes the standard MVTec AD metrics (image and pixel AUROC, AU-PRO up to
FPR 0.3, F1-max, pixel AP, per-defect-type image AUROC) and writes
``results.json`` with per-image records, so anyone can recompute the image
metrics from the file. :func:`write_summary` tabulates several categories.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class EvalResult:
    """Everything one evaluation of one category produced.

    Arrays are numpy, aligned by test-image index ``i``:

    - ``images``: uint8 (N, C, H, W), the test images as the model saw them.
    - ``recons``: uint8 (N, C, H, W) pixel reconstructions, or ``None`` for a family without them (the memory bank).
    - ``maps``: float32 (N, H, W) anomaly maps (normalised when ``config["normalize_maps"]``), higher = worse.
    - ``masks``: uint8 (N, H, W) ground truth in {0, 1}.
    - ``labels``: int64 (N,), 1 = defective.
    - ``scores``: float32 (N,) image scores.
    - ``defect_types``, ``paths``: lists of length N.
    - ``metrics``: ``image_auroc``, ``pixel_auroc``, ``au_pro``, ``image_f1_max``, ``pixel_f1_max``, ``pixel_ap``
      (floats, NaN where undefined, e.g. no defective images), ``per_defect_image_auroc`` (dict) and
      ``at_default_thresholds`` (:func:`operating_points`: false-positive rate, recall, mask F1 and IoU).
    - ``thresholds``: ``image_default`` and ``pixel_default`` (from held-out good images only),
      ``image_f1_optimal`` and ``pixel_f1_optimal`` (from the test labels, for reference).
    """

    category: str
    images: np.ndarray
    recons: np.ndarray | None
    maps: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    defect_types: list[str]
    paths: list[str]
    metrics: dict[str, Any]
    thresholds: dict[str, float]
    config: dict[str, Any]
    checkpoint_sha256: str = ""
    calibration_source: str = "held_out"  # "held_out" good images, or "leave_one_out" over all training images
    timings: dict[str, float] = field(default_factory=dict)
    trained_category: str = ""  # the category the run was trained on ("" = ``category``)


def compute_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray | None,
    maps: np.ndarray,
    defect_types: list[str],
) -> tuple[dict[str, Any], dict[str, float]]:
    """All standard metrics, plus the F1-optimal thresholds (for reference only).

    labels (N,) {0,1}; scores (N,); masks (N,H,W) {0,1} or None (image labels only);
    maps (N,H,W). Undefined metrics (a single class present) are NaN.
    """
    from . import metrics as M

    nan = float("nan")
    out: dict[str, Any] = {}
    thresholds: dict[str, float] = {}
    both = 0 < labels.sum() < len(labels)
    out["image_auroc"] = M.image_auroc(labels, scores) if both else nan
    if both:
        out["image_f1_max"], thresholds["image_f1_optimal"] = M.f1_max(labels, scores)
    else:
        out["image_f1_max"], thresholds["image_f1_optimal"] = nan, nan
    out["per_defect_image_auroc"] = M.per_defect_image_auroc(labels, scores, defect_types) if both else {}
    if masks is not None and masks.any() and not masks.all():
        pixel = M.pixel_metrics(masks, maps, fpr_limit=0.3)  # one sort of all pixels for all four
        out["pixel_auroc"], out["au_pro"] = pixel["pixel_auroc"], pixel["au_pro"]
        out["pixel_f1_max"], thresholds["pixel_f1_optimal"] = pixel["pixel_f1_max"], pixel["pixel_f1_threshold"]
        out["pixel_ap"] = pixel["pixel_ap"]
    else:
        out.update(pixel_auroc=nan, au_pro=nan, pixel_f1_max=nan, pixel_ap=nan)
        thresholds["pixel_f1_optimal"] = nan
    return out, thresholds


def operating_points(
    labels: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray | None,
    maps: np.ndarray,
    image_threshold: float,
    pixel_threshold: float,
    false_alarm_budget: float = float("nan"),
    peak_share: float = 0.0,
) -> dict[str, float]:
    """What the default thresholds (set from good images only) do on a labelled test set, as fractions in [0, 1].

    ``good_flagged_rate``: share of good images scored ``>= image_threshold`` (the false-positive rate), with
    its count (``good_flagged`` of ``good_count``) and exact 95 % interval (``good_flagged_ci_low``,
    ``good_flagged_ci_high``), beside ``false_alarm_budget``, the share the calibration allowed
    (``1 - threshold_percentile / 100``); ``budget_kept`` is 1 when the count is consistent with the budget (its
    interval reaches down to it or below), 0 when the rate is significantly above it;
    ``defect_recall``: share of defective images flagged; ``mask_f1`` and ``mask_iou``: of the predicted mask
    (:func:`~colab_utils.scoring.predicted_mask`: ``maps >= pixel_threshold`` and ``peak_share`` of each
    image's peak) against ``masks`` (N,H,W) over all pixels (NaN without masks). NaN where a class
    is absent.
    """
    from . import metrics as M

    nan = float("nan")
    image = M.binary_confusion(labels, scores, image_threshold)
    good = image["fp"] + image["tn"]
    low, high = M.binomial_interval(image["fp"], good)
    out = {
        "image_threshold": float(image_threshold),
        "false_alarm_budget": float(false_alarm_budget),
        "good_flagged_rate": image["fp"] / good if good else nan,
        "good_flagged": image["fp"],
        "good_count": good,
        "good_flagged_ci_low": low,
        "good_flagged_ci_high": high,
        "budget_kept": float(low <= false_alarm_budget) if good and false_alarm_budget == false_alarm_budget else nan,
        "defect_recall": image["recall"],
        "pixel_threshold": float(pixel_threshold),
        "mask_f1": nan,
        "mask_iou": nan,
    }
    if masks is not None and masks.any():
        from .scoring import predicted_mask

        pixel = M.binary_confusion(masks > 0, predicted_mask(maps, pixel_threshold, peak_share), 0.5)
        out["mask_f1"] = pixel["f1"]
        out["mask_iou"] = pixel["tp"] / (pixel["tp"] + pixel["fp"] + pixel["fn"])
    return {k: float(v) for k, v in out.items()}


def evaluate(
    run: str | Path,
    data_root: str | Path | None = None,
    category: str | None = None,
    out_dir: str | Path | None = None,
    device: Any = "cpu",
    batch_size: int = 16,
    export: str | None = None,
    progress: bool = True,
    test_set: Any = None,
    allow_other_category: bool = False,
) -> EvalResult:
    """Evaluate a trained run on its category's test split.

    ``run``: a run folder (holding ``best.pt``) or a checkpoint file. Test images
    come from ``data_root`` (MVTec layout) or ``test_set`` (an ImageSet, e.g. a
    user folder). Thresholds and normalisation come from the checkpoint's
    calibration on held-out good training images; the F1-optimal thresholds are
    computed on the test set and reported for reference only.

    A ``category`` other than the one the run was trained on raises ``ValueError`` naming both (scoring a bottle
    with a screw's model gives meaningless figures), unless ``allow_other_category``; ``results.json`` then
    records both (``category`` evaluated, ``trained_category``).

    With ``out_dir`` the result is written to ``out_dir/<category>/results.json``;
    ``export="npy"`` or ``"png16"`` also writes one anomaly map per test image.
    """
    from .runs import TrainedRun

    trained = TrainedRun.load(run, device)
    category = _checked_category(trained, category, allow_other_category)
    test_set = _test_set(trained.config, category, data_root, test_set)
    start = time.perf_counter()
    pred = _predict(trained, test_set.images, batch_size, progress, f"eval {category}")
    infer_s = time.perf_counter() - start
    result = _result(trained, category, test_set, pred, infer_s)
    if out_dir is not None:
        write_results(result, Path(out_dir) / category, checkpoint=str(trained.payload.get("loaded_from", trained.path)))
        if export:
            export_maps(result, Path(out_dir) / category / "maps", export)
    return result


def _checked_category(trained: Any, category: str | None, allow_other: bool) -> str:
    """The category to evaluate: the run's own unless another is asked for on purpose."""
    trained_on = trained.config.category
    category = category or trained_on
    if category != trained_on and not allow_other:
        raise ValueError(
            f"{trained.path} was trained on category {trained_on!r}, not {category!r}: its scores on {category!r} "
            f"would mean nothing. Evaluate the run trained on {category!r} (train it first), or pass "
            f"--allow-other-category (Python: allow_other_category=True) to score it there on purpose"
        )
    return category


def _test_set(config: Any, category: str, data_root: Any, test_set: Any) -> Any:
    """The test images at the run's input size: ``test_set`` (reloaded when it was loaded at another size, e.g.
    before ``fit`` settled the geometry) or the category's test split under ``data_root``."""
    from .data import load_split, reload

    if test_set is None:
        if data_root is None:
            raise ValueError("evaluate needs data_root (an MVTec-layout folder) or test_set")
        return load_split(data_root, category, "test", config.work_size, config.channels)
    if tuple(test_set.images.shape[-2:]) != config.work_size:
        return reload(test_set, config.work_size)
    return test_set


def _predict(trained: Any, images: Any, batch_size: int, progress: bool, desc: str) -> dict[str, Any]:
    """:func:`colab_utils.scoring.predict` with the run's normalisation, finished before it returns (CUDA)."""
    import torch

    from .scoring import predict

    pred = predict(trained.model, images, trained.config, trained.device, trained.normalizer, batch_size,
                   progress=progress, desc=desc, position=trained.position)  # fmt: skip
    if trained.device.type == "cuda":
        torch.cuda.synchronize()
    return pred


def _result(trained: Any, category: str, test_set: Any, pred: dict[str, Any], infer_s: float) -> EvalResult:
    """Metrics at every threshold and at the run's defaults, as an :class:`EvalResult`."""
    labels = test_set.labels.numpy().astype(np.int64)
    masks = test_set.masks[:, 0].numpy().astype(np.uint8)
    used_masks = masks if getattr(test_set, "has_masks", True) else None
    start = time.perf_counter()
    metrics, thresholds = compute_metrics(labels, pred["scores"], used_masks, pred["maps"], list(test_set.defect_types))
    metrics_s = time.perf_counter() - start
    thresholds.update(image_default=trained.image_threshold, pixel_default=trained.pixel_threshold)
    budget = 1.0 - trained.config.threshold_percentile / 100.0
    metrics["at_default_thresholds"] = operating_points(
        labels, pred["scores"], used_masks, pred["maps"], thresholds["image_default"], thresholds["pixel_default"],
        budget, trained.config.mask_peak_share,
    )
    return EvalResult(
        category=category,
        images=test_set.images.numpy(),
        recons=pred["recons"],
        maps=pred["maps"].astype(np.float32),
        masks=masks,
        labels=labels,
        scores=pred["scores"].astype(np.float32),
        defect_types=list(test_set.defect_types),
        paths=[str(p) for p in test_set.paths],
        metrics=metrics,
        thresholds={k: float(v) for k, v in thresholds.items()},
        config=trained.config.to_dict(),
        checkpoint_sha256=trained.checkpoint_sha256,
        calibration_source=trained.calibration.get("source", "held_out"),
        trained_category=trained.config.category,
        timings={
            "inference_seconds": infer_s,
            "images_per_second": len(labels) / infer_s if infer_s > 0 else float("nan"),
            "metrics_seconds": metrics_s,
        },
    )


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN -> None, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def results_dict(result: EvalResult, checkpoint: str = "") -> dict[str, Any]:
    """The ``results.json`` content: metrics, thresholds, config, checkpoint hash, per-image records."""
    image_threshold = result.thresholds.get("image_default", float("nan"))
    records = [
        {
            "path": path,
            "label": int(label),
            "defect_type": dtype,
            "score": float(score),
            "predicted": int(score >= image_threshold),
        }
        for path, label, dtype, score in zip(result.paths, result.labels, result.defect_types, result.scores)
    ]
    data = {
        "category": result.category,
        "trained_category": result.trained_category or result.category,
        **{k: result.metrics[k] for k in METRIC_KEYS},
        "per_defect_image_auroc": result.metrics.get("per_defect_image_auroc", {}),
        "at_default_thresholds": result.metrics.get("at_default_thresholds", {}),
        "thresholds": result.thresholds,
        "calibration_source": result.calibration_source,
        "n_images": len(result.labels),
        "n_defective": int(result.labels.sum()),
        "timings": result.timings,
        "checkpoint": checkpoint,
        "checkpoint_sha256": result.checkpoint_sha256,
        "config": result.config,
        "records": records,
    }
    return _clean(data)


METRIC_KEYS = ("image_auroc", "pixel_auroc", "au_pro", "image_f1_max", "pixel_f1_max", "pixel_ap")


def write_results(result: EvalResult, folder: str | Path, checkpoint: str = "") -> Path:
    """Write ``folder/results.json`` atomically; returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results_dict(result, checkpoint), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a ``results.json`` (a file or the folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"no results at {path}; run evaluate first (python -m colab_utils evaluate ...)")
    return json.loads(path.read_text())


def export_maps(result: EvalResult, folder: str | Path, fmt: str = "npy") -> Path:
    """One anomaly map per test image: ``<defect_type>/<stem>.npy`` (float32) or ``.png`` (16-bit).

    16-bit PNGs map the range [min, max] of all maps of the category linearly to
    0..65535 (one shared scale, stored in ``scale.json``), so the official MVTec
    evaluation script, or any other tool, can score them independently.
    """
    from PIL import Image

    if fmt not in ("npy", "png16"):
        raise ValueError(f"export format {fmt!r} unknown; use 'npy' or 'png16'")
    folder = Path(folder)
    lo, hi = float(result.maps.min()), float(result.maps.max())
    span = hi - lo if hi > lo else 1.0
    for amap, dtype, path in zip(result.maps, result.defect_types, result.paths):
        target = folder / dtype
        target.mkdir(parents=True, exist_ok=True)
        stem = Path(path).stem
        if fmt == "npy":
            np.save(target / f"{stem}.npy", amap.astype(np.float32))
        else:
            scaled = np.round((amap - lo) / span * 65535.0).astype(np.uint16)
            Image.fromarray(scaled).save(target / f"{stem}.png")
    (folder / "scale.json").write_text(json.dumps({"min": lo, "max": hi, "format": fmt}) + "\n")
    return folder


def summary_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per category plus a ``mean`` row, from results.json dicts."""
    rows = [{"category": r["category"], **{k: r.get(k) for k in METRIC_KEYS}} for r in results]
    if rows:
        mean = {"category": "mean"}
        for k in METRIC_KEYS:
            vals = [row[k] for row in rows if row[k] is not None]
            mean[k] = float(np.mean(vals)) if vals else None
        rows.append(mean)
    return rows


def write_summary(results: list[dict[str, Any]], folder: str | Path) -> tuple[Path, Path]:
    """Write ``summary.md`` and ``summary.csv`` across categories (with the mean); returns both paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = summary_rows(results)

    def fmt(v: Any) -> str:
        return "–" if v is None else f"{100 * v:.1f}"

    header = ["category", *METRIC_KEYS]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join([row["category"]] + [fmt(row[k]) for k in METRIC_KEYS]) + " |" for row in rows]
    csv_lines = [",".join(header)] + [
        ",".join([row["category"]] + ["" if row[k] is None else f"{row[k]:.6f}" for k in METRIC_KEYS]) for row in rows
    ]
    md_path, csv_path = folder / "summary.md", folder / "summary.csv"
    md_path.write_text("Figures in %.\n\n" + "\n".join(md) + "\n")
    csv_path.write_text("\n".join(csv_lines) + "\n")
    return md_path, csv_path


def summarize_runs(folder: str | Path, categories: list[str] | None = None) -> tuple[Path, Path] | None:
    """Write ``summary.md``/``summary.csv`` of every ``folder/*/results.json`` (only those of ``categories`` when
    given: a run's summary holds its own categories, not an earlier run's); ``None`` when there is none."""
    found = sorted(Path(folder).glob("*/results.json"))
    if categories is not None:
        found = [p for p in found if p.parent.name in set(categories)]
    return write_summary([load_results(p) for p in found], folder) if found else None
