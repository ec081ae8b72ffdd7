"""Mask F1 at the default pixel threshold under each mask rule, for trained runs (benchmarks/README.md, section 12).

    python benchmarks/mask_rule.py --data-root $MVTEC_ROOT --runs outputs/bench/memory_bank-cpu --categories bottle capsule screw

For each run: the mask F1 of the maxima rule's threshold (the run's ``pixel_threshold``) and of the thresholds its
calibration recorded at each share of good pixels (``good_pixel_quantiles``), each alone and with the half-peak rule
(``mask_peak_share=0.5``: a masked pixel also reaches half its image's peak, :func:`colab_utils.scoring.predicted_mask`),
and the pixel F1-max with the share of the test set's good pixels above its threshold. Every threshold but F1-max's
comes from good images only. Prints a table last (benchmarks/README.md, sections 12 and 14).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from colab_utils import metrics as M
from colab_utils.evaluate import evaluate
from colab_utils.runs import TrainedRun
from colab_utils.scoring import predicted_mask


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--runs", required=True, help="folder holding <category>/best.pt (e.g. quality.py's --out)")
    p.add_argument("--categories", nargs="+", required=True)
    args = p.parse_args(argv)
    rows = []
    for category in args.categories:
        run = TrainedRun.load(Path(args.runs) / category, "cpu")
        result = evaluate(run.path, args.data_root, category, progress=False)
        masks = result.masks > 0
        bases = {"maxima rule": run.pixel_threshold, **{f"{100 * float(rate):g} %": threshold for rate, threshold in
                                                        run.calibration.get("good_pixel_quantiles", {}).items()}}
        f1 = {name: M.binary_confusion(masks, result.maps, threshold)["f1"] for name, threshold in bases.items()}
        for name, threshold in bases.items():  # each image's own cut: half its peak, never below the threshold
            f1[f"{name} & half peak"] = M.binary_confusion(masks, predicted_mask(result.maps, threshold, 0.5), 0.5)["f1"]
        best, threshold = M.pixel_f1_max(masks, result.maps)
        good = result.maps[result.labels == 0]
        rows.append((category, f1, best, float((good >= threshold).mean())))
    names = list(rows[0][1])
    print("\n| category | " + " | ".join(names) + " | pixel F1-max (its good-pixel rate on test) |")
    print("|---|" + "---|" * (len(names) + 1))
    for category, f1, best, rate in rows:
        print(f"| {category} | " + " | ".join(f"{100 * f1[n]:.1f}" for n in names) + f" | {100 * best:.1f} ({100 * rate:.2f} %) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
