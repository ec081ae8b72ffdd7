"""Write a static heatmap gallery of a trained run (the README's pictures), with the gallery code.

    python benchmarks/heatmaps.py --run outputs/bench/memory_bank-cpu/bottle --data-root $MVTEC_ROOT \
        --out docs/heatmaps_bottle.png --per-type 1 --panel 160

Rows: one good image and ``--per-type`` images of every defect type, each with its
heatmap on the category's shared scale, the predicted mask at the default
threshold (from good images only) and the ground truth. Prints the rows it drew.
"""

from __future__ import annotations

import argparse

from colab_utils.evaluate import evaluate
from colab_utils.report import save_gallery_png


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run folder holding best.pt")
    p.add_argument("--data-root", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--per-type", type=int, default=1)
    p.add_argument("--panel", type=int, default=160)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    result = evaluate(args.run, args.data_root, device=args.device, progress=False)
    picked = []
    for dtype in ["good"] + sorted(set(result.defect_types) - {"good"}):
        idx = [i for i, t in enumerate(result.defect_types) if t == dtype]
        # the highest-scoring images of each type: what a user looks at first
        idx.sort(key=lambda i: -float(result.scores[i]))
        picked += idx[: args.per_type]
    path = save_gallery_png(result, args.out, indices=picked, panel_size=args.panel)
    for i in picked:
        print(f"{result.defect_types[i]:>16s}  {result.paths[i].rsplit('/', 1)[-1]}  score {result.scores[i]:.2f}")
    print(f"gallery written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
