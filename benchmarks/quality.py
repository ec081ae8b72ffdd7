"""Quality benchmark on real MVTec AD: train and evaluate each category, print a table last.

    python benchmarks/quality.py --data-root $MVTEC_ROOT --categories bottle capsule screw \
        --mode memory_bank --profile cpu --threads 2 --out outputs/bench/memory_bank-cpu

Writes ``OUT/<category>/results.json`` (the format of ``evaluate``), ``OUT/summary.json``
(per category and mean) and ``OUT/summary.md``. Reruns resume or skip finished
training, so an interrupted benchmark continues where it stopped.
``--set name=value`` overrides any Config field (values parsed as JSON), for experiments.
``--rescore RUNS`` trains nothing: it takes the runs already trained in ``RUNS/<category>`` (a previous ``--out``),
applies the ``--set`` scoring overrides (only fields that keep the weights valid, e.g. ``smooth_sigma``,
``image_score_norm``, ``head_recon_map_weight``), recalibrates on the same good images and evaluates into
``--out``: one training, several ways of scoring it.
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
    if unknown := set(overrides) - RESUMABLE_FIELDS:
        raise SystemExit(f"--rescore changes scoring only; {sorted(unknown)} would need retraining (drop --rescore)")
    model, config, payload = load_trained(source, device)
    config = config.replace(**overrides)
    if get_family(config).cross_fits:
        raise SystemExit("--rescore supports held-out calibration only, not the memory bank's leave-one-out; run the memory bank without --rescore (its fit takes about a minute)")
    train_set, val_set = load_data(config, data_root)
    calibrate_run(model, config, device, target / BEST, train_set, val_set, config.batch_size, payload)
    history = payload.get("history") or {}
    return float(sum(history.get("seconds", []))), int(payload.get("epoch", 0))


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
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = get_device(args.device)
    overrides = parse_overrides(args.set)
    out = Path(args.out)
    rows = []
    for category in args.categories:
        if args.rescore:
            train_seconds, epochs = rescore(Path(args.rescore) / category, out / category, overrides, args.data_root, device)
        else:
            cfg = Config.for_category(category, profile=args.profile, mode=args.mode, **overrides)
            result = fit(cfg, args.data_root, out / category, device=device, progress=False)
            # gradient families: the epochs' seconds; direct fitting (memory bank): the whole fit call, i.e.
            # loading, features, coreset, calibration and checkpoints
            train_seconds = float(sum(result.history.get("seconds", [])) or result.seconds)
            epochs = result.epochs_done
        ev = evaluate(out / category, args.data_root, category, out, device, progress=False)
        data = load_results(out / category)
        data["train_seconds"] = train_seconds
        data["epochs"] = epochs
        (out / category / "results.json").write_text(json.dumps(data, indent=2) + "\n")
        rows.append(
            {
                "category": category,
                **{k: ev.metrics[k] for k in COLUMNS},
                "train_seconds": train_seconds,
                "epochs": epochs,
                "images_per_second": ev.timings["images_per_second"],
            }
        )
        print(f"{category}: " + ", ".join(f"{k} {ev.metrics[k]:.3f}" for k in COLUMNS[:3]), flush=True)

    mean = {"category": "mean"}
    for key in (*COLUMNS, "train_seconds", "images_per_second"):
        mean[key] = sum(r[key] for r in rows) / len(rows)
    summary = {
        "mode": args.mode,
        "profile": args.profile,
        "machine": machine(),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        "overrides": overrides,
        "categories": rows,
        "mean": mean,
        "date": time.strftime("%Y-%m-%d"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_summary([load_results(out / r["category"]) for r in rows], out)

    print(f"\n### {args.mode} mode, {args.profile} profile, on {summary['machine']}\n")
    print("| category | image AUROC | pixel AUROC | AU-PRO | image F1 | pixel F1 | pixel AP | train s | img/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in [*rows, mean]:
        cells = [f"{100 * r[k]:.1f}" for k in COLUMNS]
        print(f"| {r['category']} | " + " | ".join(cells) + f" | {r['train_seconds']:.0f} | {r['images_per_second']:.1f} |")
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
