"""Does the memory bank's leave-one-out calibration keep its false-alarm budget on good images it never saw?
Checked on the good *training* images alone: no test image, no label (benchmarks/README.md, section 14).

    python benchmarks/calibration_check.py --data-root $MVTEC_ROOT --categories bottle capsule screw --seeds 0 1 2

For each category and seed, the good training images are split (seeded) into a fitting share (80 %) and an unseen
share (20 %). The bank is fitted on the first and calibrated leave-one-out on it, as training does; the unseen
good images are then scored like new parts. Printed per category, pooled over seeds: the unseen good images at or
above the default image threshold (count and exact 95 % interval) against the budget, and the median score of
the calibration (leave-one-out) and of the unseen images. A calibration that matches unseen images has equal
medians and flags about the budget. ``--set stand_ins='"none"'`` shows the calibration without stand-ins.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from colab_utils.config import Config
from colab_utils.metrics import binomial_interval
from colab_utils.runs import TrainedRun
from colab_utils.scoring import predict
from colab_utils.train import fit, load_data

UNSEEN_SHARE = 0.2


def check(data_root: str, category: str, seed: int, profile: str, overrides: dict, work: Path) -> dict:
    """One category and seed: {"flagged", "unseen", "calibration_median", "unseen_median", "threshold"}."""
    config = Config.for_category(category, profile=profile, mode="memory_bank", seed=seed, **overrides)
    train, held = load_data(config, data_root)
    good = train.join(held)
    order = torch.randperm(len(good), generator=torch.Generator().manual_seed(10_000 + seed))
    k = max(1, round(UNSEEN_SHARE * len(good)))
    unseen, fitted = good.subset(order[:k].sort().values), good.subset(order[k:].sort().values)
    result = fit(config, None, work / f"{category}-{seed}", train_set=fitted, progress=False, log=lambda m: None)
    run = TrainedRun.load(result.run_dir, "cpu")
    scores = predict(run.model, unseen.images, run.config, "cpu", run.normalizer, position=run.position,
                     keep_recons=False)["scores"]  # fmt: skip
    return {
        "flagged": int((scores >= run.image_threshold).sum()),
        "unseen": len(scores),
        "calibration_median": float(np.median(run.calibration["good_scores"])),
        "unseen_median": float(np.median(scores)),
        "threshold": run.image_threshold,
        "budget": 1.0 - run.config.threshold_percentile / 100.0,
    }


def main(argv: list[str] | None = None) -> int:
    from quality import parse_overrides

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--categories", nargs="+", required=True)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--profile", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads on the CPU")
    p.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="Config overrides (JSON values)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = parse_overrides(args.set)
    print(f"| category | budget % | unseen good flagged (95% interval) | median score: leave-one-out / unseen |"
          f"  seeds {' '.join(map(str, args.seeds))}, {', '.join(args.set) or 'defaults'}")  # fmt: skip
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for category in args.categories:
            rows = [check(args.data_root, category, s, args.profile, overrides, Path(tmp)) for s in args.seeds]
            flagged, n = sum(r["flagged"] for r in rows), sum(r["unseen"] for r in rows)
            low, high = binomial_interval(flagged, n)
            cal = np.mean([r["calibration_median"] for r in rows])
            new = np.mean([r["unseen_median"] for r in rows])
            print(f"| {category} | {100 * rows[0]['budget']:g} | {flagged} / {n} = {100 * flagged / n:.1f} % "
                  f"({100 * low:.1f}–{100 * high:.1f}) | {cal:.2f} / {new:.2f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
