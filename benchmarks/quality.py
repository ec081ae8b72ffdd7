"""Quality benchmark on real MVTec AD: train and evaluate each category, print a table last.

    python benchmarks/quality.py --data-root $MVTEC_ROOT --categories bottle capsule screw \
        --mode memory_bank --profile cpu --threads 2 --out outputs/bench/memory_bank-cpu

Writes ``OUT/<category>/results.json`` (the format of ``evaluate``), ``OUT/summary.json``
(per category and mean) and ``OUT/summary.md``. Reruns resume or skip finished
training, so an interrupted benchmark continues where it stopped.
``--set name=value`` overrides any Config field (values parsed as JSON), for experiments.
``--seeds 0 1 2`` trains and evaluates every category once per seed (``OUT/seed-<s>/<category>``) and prints, and
writes to ``summary.json``, the mean over seeds with the range (min–max) of every figure.
``--rescore RUNS`` trains nothing: it takes the runs already trained in ``RUNS/<category>`` (a previous ``--out``),
applies the ``--set`` scoring overrides (only fields that keep the weights valid, e.g. ``smooth_sigma``,
``image_score_norm``, ``map_norm``, ``threshold_percentile``), recalibrates on the same good images (the memory
bank: leave-one-out over its training images again) and evaluates into ``--out``: one training, several ways of
scoring it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from colab_utils.anchors import ANCHORS
from colab_utils.config import MODES, RESUMABLE_FIELDS, Config
from colab_utils.env import get_device
from colab_utils.evaluate import evaluate, load_results, write_summary
from colab_utils.metrics import binomial_interval
from colab_utils.models import get_family
from colab_utils.train import BEST, calibrate_run, fit, load_data, load_trained

COLUMNS = ("image_auroc", "pixel_auroc", "au_pro", "image_f1_max", "pixel_f1_max", "pixel_ap")


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        name, _, raw = item.partition("=")
        try:
            out[name] = json.loads(raw)
        except json.JSONDecodeError:
            out[name] = raw
    return out


def rescore(source: Path, target: Path, overrides: dict, data_root: str, device) -> tuple[float, int]:
    """Copy ``source/best.pt`` to ``target/best.pt`` with scoring ``overrides`` applied and recalibrated.

    Returns (training seconds, epochs) of the source run."""
    if unknown := set(overrides) - RESUMABLE_FIELDS - get_family(overrides.get("mode", "memory_bank")).resumable:
        raise SystemExit(f"--rescore changes scoring only; {sorted(unknown)} would need retraining (drop --rescore)")
    model, config, payload = load_trained(source, device)
    config = config.replace(**overrides)
    train_set, val_set = load_data(config, data_root)
    if get_family(config).cross_fits:  # fitted on every good image, in this order: calibrated leave-one-out again
        train_set = val_set = train_set.join(val_set)
    calibrate_run(model, config, device, target / BEST, train_set, val_set, config.batch_size, payload)
    history = payload.get("history") or {}
    return float(sum(history.get("seconds", []))), int(payload.get("epoch", 0))


OPERATING = ("good_flagged_rate", "defect_recall", "mask_f1", "mask_iou")


def run_category(args, category: str, seed: int | None, overrides: dict, out: Path, device) -> dict:
    """Train (or rescore) and evaluate one category into ``out/<category>``; its row of figures."""
    if args.rescore:
        source = Path(args.rescore) / ("" if seed is None else f"seed-{seed}") / category
        train_seconds, epochs = rescore(source, out / category, overrides, args.data_root, device)
    else:
        extra = {} if seed is None else {"seed": seed}
        cfg = Config.for_category(category, profile=args.profile, mode=args.mode, **{**overrides, **extra})
        result = fit(cfg, args.data_root, out / category, device=device, progress=False)
        # gradient families: the epochs' seconds; direct fitting (memory bank): the whole fit call, i.e.
        # loading, features, coreset, calibration and checkpoints
        train_seconds = float(sum(result.history.get("seconds", [])) or result.seconds)
        epochs = result.epochs_done
    ev = evaluate(out / category, args.data_root, category, out, device, progress=False)
    data = load_results(out / category)
    data["train_seconds"] = train_seconds
    data["epochs"] = epochs
    tmp = out / category / "results.json.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(out / category / "results.json")
    at = data.get("at_default_thresholds") or {}
    return {
        "category": category,
        "seed": seed,
        **{k: ev.metrics[k] for k in COLUMNS},
        **{k: float(at.get(k, float("nan"))) for k in OPERATING},
        "false_alarm_budget": float(at.get("false_alarm_budget", float("nan"))),
        "good_flagged": int(at.get("good_flagged", 0)),
        "good_count": int(at.get("good_count", 0)),
        "train_seconds": train_seconds,
        "epochs": epochs,
        "images_per_second": ev.timings["images_per_second"],
    }


def _over_seeds(rows: list[dict]) -> dict:
    """One category's rows (one per seed) -> their mean, with ``range`` {figure: [min, max]} when several."""
    keys = (*COLUMNS, *OPERATING, "train_seconds", "images_per_second")
    out = {"category": rows[0]["category"], **{k: sum(r[k] for r in rows) / len(rows) for k in keys}}
    out["epochs"] = rows[0]["epochs"]
    out["false_alarm_budget"] = rows[0]["false_alarm_budget"]
    out["good_flagged"] = sum(r["good_flagged"] for r in rows)  # pooled over seeds
    out["good_count"] = sum(r["good_count"] for r in rows)
    if len(rows) > 1:
        out["seeds"] = [r["seed"] for r in rows]
        out["range"] = {k: [min(r[k] for r in rows), max(r[k] for r in rows)] for k in (*COLUMNS, *OPERATING)}
    return out


def _cell(row: dict, key: str) -> str:
    """A figure in %, with its range over seeds when there is one: ``97.1 (95.5–98.0)``."""
    text = f"{100 * row[key]:.1f}"
    if "range" in row:
        lo, hi = row["range"][key]
        text += f" ({100 * lo:.1f}–{100 * hi:.1f})"
    return text


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA), torch {torch.__version__}"
    import os

    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--categories", nargs="+", default=["bottle", "capsule", "screw"])
    p.add_argument("--mode", choices=MODES, default="memory_bank")
    p.add_argument("--profile", choices=["smoke", "cpu", "gpu"], default="cpu")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads on the CPU")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="Config overrides")
    p.add_argument("--rescore", default=None, metavar="RUNS", help="score the runs trained in RUNS, train nothing")
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="run every category once per seed; print and save the mean and range over seeds")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = get_device(args.device)
    overrides = parse_overrides(args.set)
    out = Path(args.out)
    seeds = args.seeds or [None]
    per_seed = []
    for seed in seeds:
        folder = out if seed is None else out / f"seed-{seed}"
        for category in args.categories:
            row = run_category(args, category, seed, overrides, folder, device)
            per_seed.append(row)
            print(f"{category}{'' if seed is None else f' (seed {seed})'}: "
                  + ", ".join(f"{k} {row[k]:.3f}" for k in COLUMNS[:3]), flush=True)  # fmt: skip
    rows = [_over_seeds([r for r in per_seed if r["category"] == c]) for c in args.categories]
    mean = {"category": "mean"}
    for key in (*COLUMNS, *OPERATING, "train_seconds", "images_per_second"):
        mean[key] = sum(r[key] for r in rows) / len(rows)
    mean["false_alarm_budget"] = rows[0]["false_alarm_budget"]
    mean["good_flagged"] = sum(r["good_flagged"] for r in rows)
    mean["good_count"] = sum(r["good_count"] for r in rows)
    if args.seeds:  # the mean over categories of each seed, and its range over seeds
        by_seed = [[r for r in per_seed if r["seed"] == s] for s in seeds]
        mean["range"] = {k: [min(sum(r[k] for r in rs) / len(rs) for rs in by_seed),
                             max(sum(r[k] for r in rs) / len(rs) for rs in by_seed)] for k in (*COLUMNS, *OPERATING)}  # fmt: skip
    summary = {
        "mode": args.mode,
        "profile": args.profile,
        "machine": machine(),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        "overrides": overrides,
        "seeds": args.seeds,
        "categories": rows,
        "mean": mean,
        "per_seed": per_seed if args.seeds else None,
        "date": time.strftime("%Y-%m-%d"),
    }
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(out / "summary.json")
    if not args.seeds:
        write_summary([load_results(out / r["category"]) for r in rows], out)

    over = f", mean over seeds {' '.join(map(str, args.seeds))} (range)" if args.seeds else ""
    print(f"\n### {args.mode} mode, {args.profile} profile, on {summary['machine']}{over}\n")
    print("| category | image AUROC | pixel AUROC | AU-PRO | image F1 | pixel F1 | pixel AP | train s | img/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in [*rows, mean]:
        cells = [_cell(r, k) for k in COLUMNS]
        print(f"| {r['category']} | " + " | ".join(cells) + f" | {r['train_seconds']:.0f} | {r['images_per_second']:.1f} |")
    print("\nAt the default thresholds (from good training images only); flagged / good and its exact 95 % interval"
          + (" pooled over seeds" if args.seeds else "") + ":\n")
    print("| category | budget | good flagged | flagged / good (95% interval) | defect recall | mask F1 | pixel F1-max | mask IoU |")
    print("|---|---|---|---|---|---|---|---|")
    for r in [*rows, mean]:
        low, high = binomial_interval(r["good_flagged"], r["good_count"])
        print(f"| {r['category']} | {100 * r['false_alarm_budget']:.0f} | {_cell(r, 'good_flagged_rate')} | "
              f"{r['good_flagged']} / {r['good_count']} ({100 * low:.1f}–{100 * high:.1f}) | {_cell(r, 'defect_recall')} | "
              f"{_cell(r, 'mask_f1')} | {_cell(r, 'pixel_f1_max')} | {_cell(r, 'mask_iou')} |")  # fmt: skip
    anchors = {name: [v[c] for c in args.categories if c in v] for name, v in ANCHORS.items()}
    print("\nPublished (image / pixel AUROC %, same categories):")
    for name, values in anchors.items():
        if len(values) == len(args.categories):
            img = [v[0] for v in values if v[0] is not None]
            pix = [v[1] for v in values if v[1] is not None]
            img_s = f"{sum(img) / len(img):.1f}" if len(img) == len(values) else "–"
            pix_s = f"{sum(pix) / len(pix):.1f}" if len(pix) == len(values) else "–"
            print(f"  {name}: {img_s} / {pix_s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
