"""Command line: the same functions the notebooks call.

    python -m colab_utils train    --data-root DIR --category bottle [--category screw ...] --out RUNS
                                   [--mode memory_bank|feature|unet] [--profile auto|cpu|gpu|smoke]
    python -m colab_utils evaluate --data-root DIR --category bottle --out RUNS [--export npy|png16] [--profile ...]
    python -m colab_utils export   --run RUNS/bottle --format onnx [--out DIR]
    python -m colab_utils summary  --out RUNS
    python -m colab_utils predict  --run RUNS/bottle --images DIR_OR_GLOB --out DIR [--backend torch|onnx]
    python -m colab_utils make-sample DIR
    python -m colab_utils download DEST [--categories bottle screw] [--archive FILE | --url URL | --drive-id ID]
    python -m colab_utils demo     --out outputs [--profile auto|cpu|gpu|smoke]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from .config import MODES, Config, ConfigError


def _config_from_args(args: argparse.Namespace, category: str, profile: str) -> Config:
    """The config of one category: the profile, then the category's recorded settings, then --config, then flags."""
    values: dict[str, Any] = {}
    if args.config:
        values = Config.load(args.config).to_dict()
        values.pop("category", None)
        values.pop("augment", None)  # re-derived per category unless the flags say otherwise
    for name in ("mode", "image_size", "geometry", "canvas", "epochs", "max_minutes", "seed", "batch_size", "lr"):
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    return Config.for_category(category, profile=profile, **values)


def _resolve_profile(requested: str, device: Any, mode: str) -> str:
    """``auto`` -> the profile the demo would pick (``smoke`` with SMOKE set, ``gpu`` with CUDA, else ``cpu``),
    printed with what it sets for ``mode``, so a CPU run never silently takes GPU-sized settings."""
    from .models import get_family
    from .session import pick_profile

    profile = pick_profile(requested, device)
    why = f"chosen by --profile {requested}" if requested == "auto" else "as asked"
    sets = ", ".join(f"{k}={v}" for k, v in get_family(mode).profiles[profile].items()) or "nothing"
    print(f"profile {profile!r} ({why}, device {device}): for mode {mode!r} it sets {sets}")
    return profile


#: Evaluation batch size per profile (the only thing a profile changes at evaluation).
EVAL_BATCH = {"smoke": 8, "cpu": 16, "gpu": 32}


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", required=True, help="folder holding <category>/train, test, ground_truth")
    p.add_argument("--category", action="append", required=True, help="category name; repeat for several")
    p.add_argument("--out", required=True, help="runs folder: RUNS/<category>/ gets checkpoints and results")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--profile",
        default="auto",
        choices=["auto", "cpu", "gpu", "smoke"],
        help="hardware profile (default auto: gpu with CUDA, else the reduced cpu profile; smoke with SMOKE=1)",
    )


def cmd_train(args: argparse.Namespace) -> int:
    from .env import get_device, seed_everything
    from .train import describe_fit, fit, is_finished

    device = get_device(args.device)
    mode = args.mode or (Config.load(args.config).mode if args.config else Config.mode)
    profile = _resolve_profile(args.profile, device, mode)
    for category in args.category:
        cfg = _config_from_args(args, category, profile)
        seed_everything(cfg.seed)
        run_dir = Path(args.out) / category
        if is_finished(run_dir, cfg):
            print(f"{category}: already trained in {run_dir}; delete it or raise --epochs to train more")
            continue
        result = fit(cfg, args.data_root, run_dir, device=device)
        print(f"{category}: {result.status} in {result.seconds:.0f} s, {describe_fit(result)} -> {result.best_path}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .env import get_device
    from .inspector import Inspector

    inspector = Inspector.load(args.run, get_device(args.device))
    if args.backend == "onnx":
        inspector.use_onnx()
    print(f"run {args.run}: {inspector.category}, {inspector.config.mode} mode; image threshold "
          f"{inspector.image_threshold:.4g}, pixel threshold {inspector.pixel_threshold:.4g}")  # fmt: skip
    report = inspector.predict(args.images, out=args.out, batch_size=args.batch_size)
    print(report.summary())
    if not report.predictions:
        print(f"error: none of the {len(report.skipped)} files could be read (see the messages above); nothing was "
              f"written, and any previous results in {args.out} are kept", file=sys.stderr)  # fmt: skip
        return 2
    print(f"verdicts: {report.csv}; overlays and masks: {Path(args.out) / 'overlays'}, {Path(args.out) / 'masks'}")
    if report.skipped_csv:
        print(f"skipped files and why: {report.skipped_csv}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_onnx

    onnx_path, sidecar = export_onnx(args.run, args.out, opset=args.opset)
    print(f"wrote {onnx_path} ({onnx_path.stat().st_size / 1e6:.1f} MB: images (B,C,H,W) in [0,1] -> anomaly_map, "
          f"image_score) and {sidecar} (thresholds, preprocessing)")  # fmt: skip
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .env import get_device
    from .evaluate import evaluate, results_dict, write_summary
    from .report import save_report
    from .session import pick_profile

    device = get_device(args.device)
    profile = pick_profile(args.profile, device)
    batch_size = EVAL_BATCH[profile]
    print(f"profile {profile!r}: batch size {batch_size}; each run is scored with the config saved in its best.pt")
    results = []
    for category in args.category:
        result = evaluate(
            Path(args.out) / category, args.data_root, category, args.out, device, batch_size, export=args.export,
            allow_other_category=args.allow_other_category,
        )
        save_report(result, Path(args.out) / category)
        m = result.metrics
        print(
            f"{category}: image AUROC {m['image_auroc']:.3f}  pixel AUROC {m['pixel_auroc']:.3f}  "
            f"AU-PRO {m['au_pro']:.3f}  -> {Path(args.out) / category / 'results.json'}"
        )
        results.append(results_dict(result))
    md, _ = write_summary(results, args.out)
    print(md.read_text())
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from .evaluate import summarize_runs

    written = summarize_runs(args.out)
    if written is None:
        print(f"no */results.json under {args.out}; run `python -m colab_utils evaluate` first", file=sys.stderr)
        return 2
    md, csv = written
    print(md.read_text())
    print(f"written {md} and {csv}")
    return 0


def cmd_make_sample(args: argparse.Namespace) -> int:
    from .sample import make_sample

    path = make_sample(args.dir, seed=args.seed)
    print(f"sample category written to {path}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from . import download as dl

    if args.drive_id:
        archive = dl.download_from_drive(args.drive_id, Path(args.dest) / "mvtec_anomaly_detection.tar.xz", args.sha256)
        dl.extract_categories(archive, args.dest, args.categories)
    else:
        dl.download_mvtec(args.dest, args.categories, url=args.url, sha256=args.sha256, archive=args.archive)
    print(f"MVTec AD categories ready under {args.dest}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .runner import run_demo

    return run_demo(args.out, profile=args.profile)


def _at_least(low: int):
    """An argparse type: a whole number of at least ``low``, refused with the flag's name and range."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number of at least {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m colab_utils", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train categories (resumes when run again)")
    _add_common(p)
    p.add_argument("--config", help="JSON/YAML config file (fields of colab_utils.config.Config)")
    p.add_argument("--mode", choices=list(MODES))
    p.add_argument("--image-size", type=int, help="side of the square the model sees (the whole image, or a tile)")
    p.add_argument("--geometry", choices=["auto", "resize", "tile"],
                   help="resize: squeeze to the square; tile: resize to a canvas, cut into tiles; auto (default): "
                        "tiles for elongated or large photos, chosen from the training images and printed")  # fmt: skip
    p.add_argument("--canvas", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"),
                   help="with --geometry tile: the size every image is resized to before tiling (default: chosen)")
    p.add_argument("--epochs", type=_at_least(1))
    p.add_argument("--batch-size", type=_at_least(1))
    p.add_argument("--lr", type=float)
    p.add_argument("--max-minutes", type=float)
    p.add_argument("--seed", type=int)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate trained categories, write results.json and figures")
    _add_common(p)
    p.add_argument("--export", choices=["npy", "png16"], help="also write one anomaly map per test image")
    p.add_argument("--allow-other-category", action="store_true",
                   help="score a run on a category other than its own on purpose (results.json records both)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="verdicts, heatmap overlays and masks for new, unlabelled images")
    p.add_argument("--run", required=True, help="a trained run folder, RUNS/<category> (holding best.pt)")
    p.add_argument("--images", required=True, help="a folder (searched recursively), an image file or a glob")
    p.add_argument("--out", required=True, help="folder for predictions.csv, overlays/ and masks/")
    p.add_argument("--batch-size", type=_at_least(1), default=16)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: the GPU when there is one)")
    p.add_argument("--backend", default="torch", choices=["torch", "onnx"],
                   help="onnx: score with onnxruntime on the CPU (exports RUN/model.onnx first when needed)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="write the run as one ONNX graph (images -> anomaly map, image score)")
    p.add_argument("--run", required=True, help="a trained run folder, RUNS/<category> (holding best.pt)")
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--out", default=None, help="folder for model.onnx and model.json (default: the run folder)")
    p.add_argument("--opset", type=int, default=17)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("summary", help="table of every RUNS/*/results.json (markdown + CSV)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("make-sample", help="write the built-in sample category to DIR/sample")
    p.add_argument("dir")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_sample)

    p = sub.add_parser("download", help="download and extract MVTec AD categories")
    p.add_argument("dest")
    p.add_argument("--categories", nargs="*", default=None)
    p.add_argument("--archive", help="an already downloaded mvtec_anomaly_detection.tar.xz")
    p.add_argument("--drive-id", help="Google Drive file id or link of the archive (through gdown)")
    p.add_argument("--sha256", default=None, help="expected sha256 (default: the official archive's)")
    p.add_argument("--url", default=None, help="archive URL (default: the official one)")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("demo", help="execute the five notebooks headless into OUT")
    p.add_argument("--out", default="outputs")
    p.add_argument("--profile", default="auto", choices=["auto", "smoke", "cpu", "gpu"])
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "command", None) == "download":
        from . import download as dl

        args.url = args.url or dl.MVTEC_URL
        args.sha256 = args.sha256 or dl.MVTEC_SHA256
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if os.environ.get("COLAB_UTILS_DEBUG"):
            raise
        again = ("run the same command again to resume from the last checkpoint" if args.command in ("train", "demo")
                 else "run the same command again")  # fmt: skip
        print(f"\ninterrupted (Ctrl-C): {again}", file=sys.stderr)
        return 130
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as exc:
        if os.environ.get("COLAB_UTILS_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only folder: what was saved is kept, the message says where
        if os.environ.get("COLAB_UTILS_DEBUG"):
            raise
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"error: {exc.strerror or exc}{where}: check that the folder exists, is writable and has free "
              "space, then run the same command again (what was already saved is kept)"
              if exc.strerror else f"error: {exc}", file=sys.stderr)  # fmt: skip
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

