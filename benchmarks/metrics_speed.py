"""Speed and memory of colab_utils.metrics on synthetic MVTec-sized data.

    python benchmarks/metrics_speed.py                     # one category: 150 test images at 256 px (~10 M pixels)
    python benchmarks/metrics_speed.py --pixels 100000000  # also a ~100 M pixel set (15 categories' worth)

The synthetic set imitates an MVTec AD test split: a third of the images are good (empty masks), the others carry
1-3 elliptic defects and sometimes a thin diagonal scratch; maps are float32 Gaussian noise raised inside the defects;
image scores are the maximum of each map. Each metric is called once on the whole set; wall time and the peak of
numpy memory allocated during the call (tracemalloc; the inputs are not counted) are reported, together with the
process's peak resident memory (ru_maxrss, inputs included). The markdown table is printed last.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from colab_utils import metrics as M  # noqa: E402

MIB = 2**20


def synthetic_set(n_images: int, size: int, seed: int) -> dict[str, Any]:
    """masks uint8 (N, H, W) {0,1}, maps float32 (N, H, W), labels int64 (N,), scores float32 (N,), defect types."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_images, size, size), dtype=np.uint8)
    maps = np.empty((n_images, size, size), dtype=np.float32)
    labels = (np.arange(n_images) % 3 != 0).astype(np.int64)
    kinds = np.array(["crack", "hole", "scratch", "stain"])
    defect_types = np.where(labels == 1, kinds[rng.integers(0, len(kinds), n_images)], "good").tolist()
    for i in range(n_images):
        rng.standard_normal(out=maps[i], dtype=np.float32)
        if not labels[i]:
            continue
        mask = masks[i]
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.uniform(0, size, 2)
            ry, rx = rng.uniform(2, size / 7, 2)
            y0, y1 = max(0, int(cy - ry)), min(size, int(cy + ry) + 1)
            x0, x1 = max(0, int(cx - rx)), min(size, int(cx + rx) + 1)
            yy, xx = np.ogrid[y0:y1, x0:x1]
            mask[y0:y1, x0:x1] |= (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1).astype(np.uint8)
        if defect_types[i] == "scratch":  # one-pixel diagonal line: 8-connected, many 4-connected pieces
            start = int(rng.integers(0, size // 2))
            length = int(rng.integers(size // 8, size // 3))
            steps = np.arange(length)
            mask[start + steps, start + steps // 2 + steps % 2] = 1
        maps[i] += mask * np.float32(rng.uniform(0.5, 3.0))
    scores = maps.reshape(n_images, -1).max(axis=1)
    return {"masks": masks, "maps": maps, "labels": labels, "scores": scores, "defect_types": defect_types}


def results_json_suite(d: dict[str, Any]) -> dict[str, Any]:
    """Everything evaluate.py puts in results.json, computed with one pixel sort."""
    good = d["labels"] == 0
    out: dict[str, Any] = {
        "image_auroc": M.image_auroc(d["labels"], d["scores"]),
        "image_f1_max": M.f1_max(d["labels"], d["scores"]),
        "per_defect_image_auroc": M.per_defect_image_auroc(d["labels"], d["scores"], d["defect_types"]),
        "image_default": M.threshold_from_good(d["scores"][good], 99.0),
        "pixel_default": M.threshold_from_good(d["maps"][good], 99.0),
    }
    out.update(M.pixel_metrics(d["masks"], d["maps"]))
    return out


def cases(d: dict[str, Any], sklearn: bool) -> list[tuple[str, Callable[[], Any]]]:
    masks, maps = d["masks"], d["maps"]
    reference = []
    if sklearn:
        from sklearn.metrics import average_precision_score, roc_auc_score

        reference = [
            ("(reference) sklearn roc_auc_score on all pixels", lambda: roc_auc_score(masks.ravel(), maps.ravel())),
            (
                "(reference) sklearn average_precision_score",
                lambda: average_precision_score(masks.ravel(), maps.ravel()),
            ),
        ]
    return reference + [
        ("pixel_auroc", lambda: M.pixel_auroc(masks, maps)),
        ("pixel_average_precision", lambda: M.pixel_average_precision(masks, maps)),
        ("pixel_f1_max", lambda: M.pixel_f1_max(masks, maps)),
        ("au_pro (exact)", lambda: M.au_pro(masks, maps)),
        ("pro_curve", lambda: M.pro_curve(masks, maps)),
        ("label_8_connected_regions", lambda: M.label_8_connected_regions(masks)),
        ("threshold_from_good (good maps)", lambda: M.threshold_from_good(maps[d["labels"] == 0], 99.0)),
        ("image metrics (AUROC, F1-max, per-defect)", lambda: image_metrics(d)),
        ("pixel_metrics (one sort: AUROC, AP, F1, AU-PRO)", lambda: M.pixel_metrics(masks, maps)),
        ("full results.json suite", lambda: results_json_suite(d)),
    ]


def image_metrics(d: dict[str, Any]) -> tuple[Any, ...]:
    return (
        M.image_auroc(d["labels"], d["scores"]),
        M.f1_max(d["labels"], d["scores"]),
        M.per_defect_image_auroc(d["labels"], d["scores"], d["defect_types"]),
    )


def measure(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(seconds, peak numpy MiB allocated during the call, result); tracemalloc is on for the call."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return seconds, peak / MIB, result


def run_set(name: str, n_images: int, size: int, seed: int, sklearn: bool = False, quiet: bool = False):
    start = time.perf_counter()
    d = synthetic_set(n_images, size, seed)
    gen_s = time.perf_counter() - start
    n_pixels = d["maps"].size
    n_regions = M.label_8_connected_regions(d["masks"][: min(n_images, 200)])[1]
    say = (lambda *a, **k: None) if quiet else print
    say(
        f"[{name}] {n_images} images x {size}x{size} = {n_pixels / 1e6:.1f} M pixels, "
        f"{d['masks'].mean() * 100:.2f} % anomalous, inputs {(d['maps'].nbytes + d['masks'].nbytes) / MIB:.0f} MiB, "
        f"generated in {gen_s:.1f} s ({n_regions} regions in the first {min(n_images, 200)} images)",
        flush=True,
    )
    rows = {}
    for label, fn in cases(d, sklearn):
        seconds, peak, result = measure(fn)
        rows[label] = (seconds, peak)
        say(f"  {label:<50} {seconds:7.2f} s  {peak:8.0f} MiB", flush=True)
        if label == "full results.json suite":
            shown = {k: round(v, 4) for k, v in result.items() if isinstance(v, float)}
            say(f"  values: {shown}", flush=True)
    del d
    return {"name": name, "pixels": n_pixels, "rows": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=150, help="test images in the category-sized set")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--pixels", type=float, default=0, help="also run a set of about this many pixels (1e8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sklearn", action="store_true", help="also time sklearn on the category set (slow)")
    args = parser.parse_args(argv)

    run_set("warm-up", 4, 32, args.seed, sklearn=args.sklearn, quiet=True)  # first calls pay for imports
    sets = [run_set("category", args.images, args.size, args.seed, sklearn=args.sklearn)]
    if args.pixels:
        n_big = math.ceil(args.pixels / args.size**2)
        sets.append(run_set("large", n_big, args.size, args.seed + 1))
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    print()
    print(
        f"numpy {np.__version__}, Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPU(s); one call per metric, tracemalloc on. Process peak RSS (inputs included): "
        f"{max_rss:.0f} MiB."
    )
    print()
    header = "| metric |" + "".join(f" {s['pixels'] / 1e6:.0f} M px: time | peak extra memory |" for s in sets)
    print(header)
    print("|---|" + "---:|---:|" * len(sets))
    for label in sets[0]["rows"]:
        cells = "".join(
            f" {s['rows'][label][0]:.2f} s | {s['rows'][label][1]:.0f} MiB |" if label in s["rows"] else " not run | |"
            for s in sets
        )
        print(f"| {label} |{cells}")


if __name__ == "__main__":
    main()
