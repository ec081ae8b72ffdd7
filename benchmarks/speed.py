"""Speed benchmark: inference latency and throughput, training throughput, metric suite time.

    python benchmarks/speed.py [--data-root $MVTEC_ROOT] [--device cpu|cuda] [--threads N]

``--memory-bank screw`` instead fits the memory bank on that real category and prints its fit time (features,
coreset, calibration), peak memory, batched inference throughput with torch and faiss search, onnxruntime on the
exported graph, and ``predict`` throughput on the test files (read from disk, overlays written).

``--scaling`` instead fits the memory bank, as whole ``train`` processes (loading, features, coreset,
calibration, checkpoints; default threads), on 200, 800 and 3,200 good images made from screw's 320 with
label-preserving flips, rotations by 90 degrees and a brightness change, and prints fit seconds and peak memory
(the process's maximum resident set) at each size with the ratio fit(3,200) / fit(800), then screw's image AUROC
trained and evaluated at its own 320 images (``--sizes`` changes the sizes).

Measures, for every mode at 256 px with the default config: inference latency at
batch 1 and throughput at batch 16; training throughput (images/s) of the
default U-Net at 128 and 256 px; the time of one
U-Net epoch on bottle (with --data-root); and the full metric suite on a
category-sized set of maps. Peak memory is the process's maximum resident set
on the CPU, or the CUDA allocator's peak on a GPU. Figures are printed last, as
a markdown table.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from colab_utils.config import MODES, Config
from colab_utils.env import get_device
from colab_utils.models import build_model, get_family
from colab_utils.scoring import anomaly_maps


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeat: int) -> float:
    fn()  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeat


def inference(cfg: Config, device: torch.device, repeat: int, bank: int = 3277) -> dict:
    """Latency at batch 1 and throughput at batch 16 of whole images at ``cfg.work_size`` (random weights and,
    for the memory bank, a random bank of ``bank`` entries: screw's 1 % coreset by default; speed only)."""
    model = build_model(cfg, pretrained=False).to(device).eval()
    if get_family(cfg).cross_fits:
        model.set_bank(torch.randn(bank, model.extractor.out_channels))
    one = torch.rand(1, cfg.channels, *cfg.work_size, device=device)
    batch = torch.rand(16, cfg.channels, *cfg.work_size, device=device)
    latency = timed(lambda: anomaly_maps(model, one, cfg), device, repeat)
    per_batch = timed(lambda: anomaly_maps(model, batch, cfg), device, max(1, repeat // 4))
    return {"latency_ms": 1000 * latency, "images_per_s": 16 / per_batch}


def train_step_rate(cfg: Config, device: torch.device, steps: int) -> float:
    """Images per second of a full training step of a gradient family (the U-Net: augment + corrupt + forward +
    loss + backward), through the family's own batch loss."""
    family = get_family(cfg)
    model = build_model(cfg, pretrained=False).to(device).train()
    loss_fn = family.loss(cfg, device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (cfg.batch_size, cfg.channels, cfg.image_size, cfg.image_size), dtype=torch.uint8)

    def step():
        loss, _ = family.batch_loss(model, loss_fn, x, True, cfg, device, gen, False)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return cfg.batch_size / timed(step, device, steps)



def metric_suite_seconds() -> float:
    from colab_utils.evaluate import compute_metrics

    rng = np.random.default_rng(0)
    n, size = 150, 256
    masks = np.zeros((n, size, size), np.uint8)
    labels = (np.arange(n) >= 30).astype(np.int64)
    for i in np.flatnonzero(labels):
        y, x = rng.integers(20, size - 40, 2)
        masks[i, y : y + 24, x : x + 30] = 1
    maps = rng.normal(size=masks.shape).astype(np.float32) + 2.0 * masks
    scores = maps.reshape(n, -1).max(1)
    types = ["good" if label == 0 else f"type{i % 3}" for i, label in enumerate(labels)]
    start = time.perf_counter()
    compute_metrics(labels, scores, masks, maps, types)
    return time.perf_counter() - start


def memory_bank_rows(data_root: str, category: str, device: torch.device) -> list[tuple[str, str]]:
    """Fit the memory bank on a real category (features, coreset, leave-one-out calibration), then time batched
    inference with each search backend on the fitted bank, features included; onnxruntime on the exported
    graph (CPU); and ``predict`` on the test image files (read from disk, overlays and masks written)."""
    import tempfile

    from colab_utils.data import load_split
    from colab_utils.inspector import Inspector
    from colab_utils.models.coreset import faiss_available
    from colab_utils.train import fit

    cfg = Config.for_category(category, mode="memory_bank")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = fit(cfg, data_root, tmp, device, progress=False, log=lambda _m: None)
        total = time.perf_counter() - start
        info = result.fit_info
        rows.append((f"memory bank fit on {category} ({info['images']} images, {info['patches_seen']:,} patches -> "
                     f"{info['bank_size']:,}), features / coreset / all incl. calibration",
                     f"{info['feature_seconds']:.1f} / {info['coreset_seconds']:.1f} / {total:.1f} s"))  # fmt: skip
        rows.append(("peak memory after the memory bank fit", f"{peak_mb(device):.0f} MB"))
        test = load_split(data_root, category, "test", cfg.image_size, cfg.channels)
        batch = test.images[:16].to(device).float().div_(255.0)
        model = result.model
        bare = {}
        for search in ("torch", "faiss"):
            if search == "faiss" and (not faiss_available() or device.type != "cpu"):
                continue
            model.search = search
            per_batch = timed(lambda: anomaly_maps(model, batch, cfg), device, 3)
            bare[search] = 16 / per_batch
            rows.append((f"inference memory_bank 256 px, batch 16, {search} search", f"{bare[search]:.1f} images/s"))
        rows += onnx_rows(tmp, batch.cpu().numpy(), bare["torch"])
        inspector = Inspector.load(tmp, device)
        files = test.paths[:64]
        inspector.predict(files[:16], out=f"{tmp}/warm", progress=False)
        report = inspector.predict(files, out=f"{tmp}/predict", batch_size=16, progress=False)
        rate = len(files) / report.seconds
        rows.append((f"predict: {len(files)} PNG files from disk -> verdicts, overlays and masks written, batch 16",
                     f"{rate:.1f} images/s ({rate / bare['torch']:.0%} of bare torch inference)"))  # fmt: skip
        try:
            inspector.use_onnx(f"{tmp}/model.onnx", threads=torch.get_num_threads())
        except RuntimeError as exc:  # onnxruntime missing
            rows.append(("predict --backend onnx", str(exc)))
        else:
            report = inspector.predict(files, out=f"{tmp}/predict_onnx", batch_size=16, progress=False)
            rows.append(("predict --backend onnx: the same files",
                         f"{len(files) / report.seconds:.1f} images/s"))  # fmt: skip
    return rows


def onnx_rows(run_dir: str, batch: np.ndarray, torch_rate: float) -> list[tuple[str, str]]:
    """Export the run to ONNX and time onnxruntime on the CPU at batch 16, with torch's thread count."""
    from colab_utils.export import export_onnx, onnx_session

    try:
        start = time.perf_counter()
        onnx_path, _ = export_onnx(run_dir)
        export_s = time.perf_counter() - start
        session = onnx_session(onnx_path, torch.get_num_threads())
    except RuntimeError as exc:  # onnx or onnxruntime missing: the message says what to install
        return [("ONNX export and onnxruntime", str(exc))]
    feed = {"images": np.ascontiguousarray(batch, dtype=np.float32)}
    session.run(None, feed)
    start = time.perf_counter()
    for _ in range(3):
        session.run(None, feed)
    rate = 3 * len(batch) / (time.perf_counter() - start)
    return [("ONNX export of the fitted run", f"{export_s:.1f} s, {onnx_path.stat().st_size / 1e6:.1f} MB"),
            (f"onnxruntime CPU, batch {len(batch)}, {torch.get_num_threads()} threads",
             f"{rate:.1f} images/s (torch: {torch_rate:.1f})")]  # fmt: skip


def _scaled_screw(data_root: str, n: int, folder: Path) -> Path:
    """A category folder of ``n`` good training images made from screw's: its 320, then their 7 other flips and
    quarter turns, then brightness x0.9 and x1.1 of the originals (label-preserving for screw; CATEGORY_AUGMENT).
    Two test images so the folder has the official layout."""
    import numpy as np
    from PIL import Image

    sources = sorted((Path(data_root) / "screw" / "train" / "good").glob("*.png"))
    originals = [np.asarray(Image.open(f)) for f in sources]
    variants = [lambda a: a, *[lambda a, k=k: np.rot90(a, k) for k in (1, 2, 3)], np.fliplr, np.flipud,
                lambda a: np.rot90(np.fliplr(a)), lambda a: np.rot90(np.flipud(a)),
                lambda a: np.clip(a * 0.9, 0, 255).astype(np.uint8), lambda a: np.clip(a * 1.1, 0, 255).astype(np.uint8)]  # fmt: skip
    good = folder / "screw_scaled" / "train" / "good"
    good.mkdir(parents=True)
    count = 0
    for make in variants:
        for array in originals:
            if count == n:
                break
            Image.fromarray(np.ascontiguousarray(make(array))).save(good / f"{count:05d}.png", compress_level=1)
            count += 1
    test = folder / "screw_scaled" / "test" / "good"
    test.mkdir(parents=True)
    for f in sources[:2]:
        Image.open(f).save(test / f.name)
    return folder


def _timed_command(args: list[str]) -> tuple[float, float]:
    """(seconds, peak resident MB) of ``python -m colab_utils ARGS`` run as its own process."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryFile("w+") as log:  # progress bars and messages, shown only when the command fails
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "colab_utils", *args], stdout=log, stderr=log)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            log.seek(0)
            raise SystemExit(f"python -m colab_utils {' '.join(args)} failed ({proc.returncode}):\n{log.read()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024


def scaling_rows(data_root: str, sizes: list[int], quality: bool = True) -> list[tuple[str, str]]:
    """Whole ``train`` processes of the memory bank (cpu profile) on growing sets of screw-made good images, and
    (``quality``) screw's image AUROC at its own 320."""
    import json
    import tempfile

    rows, seconds = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            data = _scaled_screw(data_root, n, Path(tmp) / f"data{n}")
            runs = Path(tmp) / f"runs{n}"
            secs, peak = _timed_command(["train", "--data-root", str(data), "--category", "screw_scaled", "--out",
                                         str(runs), "--mode", "memory_bank", "--profile", "cpu", "--device", "cpu"])  # fmt: skip
            info = json.loads((runs / "screw_scaled" / "config.json").read_text())
            fit_info = torch.load(runs / "screw_scaled" / "best.pt", weights_only=False)["fit_info"]
            seconds[n] = secs
            rows.append((f"fit {n:,} images ({fit_info['patches_seen']:,} patches, {fit_info['coreset_candidates']:,} "
                         f"coreset candidates, bank {fit_info['bank_size']:,}, features {fit_info['feature_dtype']}; "
                         f"{info['mode']})", f"{secs:.0f} s, peak {peak:,.0f} MB"))  # fmt: skip
            shutil.rmtree(data, ignore_errors=True)
        if len(sizes) > 1:
            big, mid = sizes[-1], sizes[-2]
            rows.append((f"fit({big:,}) / fit({mid:,})", f"{seconds[big] / seconds[mid]:.2f}"))
        if not quality:
            return rows
        runs = Path(tmp) / "screw320"
        _timed_command(["train", "--data-root", data_root, "--category", "screw", "--out", str(runs), "--mode",
                        "memory_bank", "--profile", "cpu", "--device", "cpu"])  # fmt: skip
        _timed_command(["evaluate", "--data-root", data_root, "--category", "screw", "--out", str(runs),
                        "--device", "cpu", "--profile", "cpu"])  # fmt: skip
        auroc = json.loads((runs / "screw" / "results.json").read_text())["image_auroc"]
        rows.append(("screw image AUROC at its 320 images (seed 0)", f"{100 * auroc:.1f}"))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=os.environ.get("MVTEC_ROOT"))
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeat", type=int, default=8)
    p.add_argument("--memory-bank", metavar="CATEGORY", default=None,
                   help="only fit the memory bank on CATEGORY (needs --data-root) and time it (own peak memory)")
    p.add_argument("--scaling", action="store_true", help="only time whole memory-bank fits on 200, 800 and 3,200 images")
    p.add_argument("--sizes", type=int, nargs="+", default=[200, 800, 3200], help="image counts of --scaling")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = get_device(args.device)
    rows = []
    if args.memory_bank:
        if not args.data_root:
            p.error("--memory-bank needs --data-root (or MVTEC_ROOT)")
        rows = memory_bank_rows(args.data_root, args.memory_bank, device)
        return _print(rows, device)
    if args.scaling:
        if not args.data_root:
            p.error("--scaling needs --data-root (or MVTEC_ROOT) holding screw")
        return _print(scaling_rows(args.data_root, sorted(args.sizes)), device)
    for mode in MODES:
        cfg = Config(mode=mode)
        r = inference(cfg, device, args.repeat)
        rows.append((f"inference {mode} 256 px, batch 1", f"{r['latency_ms']:.0f} ms/image"))
        rows.append((f"inference {mode} 256 px, batch 16", f"{r['images_per_s']:.1f} images/s"))
    # a KolektorSDD photo (500 x ~1,260 px) under the geometry auto picks for it: a 648 x 256 canvas, 3 tiles,
    # against the bank size its 1 % coreset has
    cfg = Config(mode="memory_bank", geometry="tile", canvas=(648, 256), channels=3)
    r = inference(cfg, device, args.repeat, bank=8509)
    rows.append(("inference memory_bank, tall photo on a 648x256 canvas (3 tiles), bank 8,509, batch 1",
                 f"{r['latency_ms']:.0f} ms/photo"))  # fmt: skip
    rows.append(("inference memory_bank, tall photo on a 648x256 canvas (3 tiles), bank 8,509, batch 16",
                 f"{r['images_per_s']:.1f} photos/s"))  # fmt: skip
    for size in (128, 256):
        cfg = Config(mode="unet", image_size=size, batch_size=8)
        rows.append((f"train U-Net (width {cfg.model.base_width}) {size} px, batch 8", f"{train_step_rate(cfg, device, 3):.1f} images/s"))
    if args.data_root:
        from colab_utils.train import load_data

        cfg = Config.for_category("bottle", mode="unet", image_size=256, batch_size=8)
        train_set, _ = load_data(cfg, args.data_root)
        rate = train_step_rate(cfg, device, 3)
        rows.append((f"one U-Net epoch on bottle ({len(train_set)} images, 256 px)", f"{len(train_set) / rate:.0f} s"))
    rows.append(("metric suite, 150 maps of 256x256 (~10 M pixels)", f"{metric_suite_seconds():.2f} s"))
    rows.append(("peak memory", f"{peak_mb(device):.0f} MB"))
    return _print(rows, device)


def _print(rows: list[tuple[str, str]], device: torch.device) -> int:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n### Speed on {where} (torch {torch.__version__})\n")
    print("| measurement | figure |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
