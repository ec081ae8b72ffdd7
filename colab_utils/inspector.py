"""Inspect new, unlabelled images with a trained run: a verdict, a heatmap and a defect mask per image.

    report = Inspector.load("runs/bottle").predict("new_photos/", out="inspections/bottle")
    print(report.summary())            # "12 images: 9 OK, 3 DEFECT (image threshold 2.91)"

:meth:`Inspector.predict` reads PNG, JPEG, BMP and TIFF files of any size, gray or RGB (converted to the
channel count the model was trained on, as in training: gray repeated to RGB, RGB to luminance), resizes each
to the model's square input, and maps the anomaly map back to the file's own resolution, so the heatmap
overlay and the predicted mask lie on the original photo. Verdicts use the run's default thresholds, which
came from good training images only: ``DEFECT`` when ``score >= image threshold``; the mask is
``map >= pixel threshold``. An unreadable file is reported and skipped; the rest are still predicted.

With ``out``: ``predictions.csv``, ``overlays/<name>.png`` and ``masks/<name>.png`` (0/255, the source size),
named by each file's path below the inputs' common folder, and ``skipped.csv`` (path, reason) when files were
skipped. A run is a transaction (:mod:`colab_utils.outputs`): everything is staged in a fresh folder and
replaces the previous result only when the run succeeded; a run that read no file, failed or was interrupted
leaves the previous result as it was; a write failure midway keeps the finished part as
``out/unfinished-<time>`` and says so. The folder is checked for writing before any scoring. The same call backs
``python -m colab_utils predict`` and notebook 05.
"""

from __future__ import annotations

import csv
import glob
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import IMAGE_EXTENSIONS, DataError, natural_key, read_image, resize_image
from .geometry import MAX_ASPECT
from .outputs import StagedOutput
from .runs import TrainedRun
from .scoring import predicted_mask

#: Images with a shorter side below this are skipped by ``predict`` with the reason (a 1 x 1 file is no photo).
MIN_SIDE = 16

__all__ = ["CSV_COLUMNS", "OUTPUT_NAMES", "InspectionReport", "Inspector", "Prediction", "find_images"]

#: What one predict run writes into its ``out`` folder, replaced together (colab_utils.outputs).
OUTPUT_NAMES = ("predictions.csv", "skipped.csv", "overlays", "masks")

CSV_COLUMNS = ("path", "score", "threshold", "margin", "verdict", "defect_area_percent", "width", "height",
               "overlay", "mask")  # fmt: skip


@dataclass
class Prediction:
    """The verdict on one image.

    ``score``: the image score; ``threshold``: the run's default image threshold; ``margin = score - threshold``
    (>= 0 means DEFECT, in score units); ``defect_area_percent``: share of the image's pixels in the predicted
    mask, in [0, 100]; ``width``, ``height``: the source image's size; ``overlay``/``mask``: written files or "".
    ``anomaly_map``: float32 (height, width) at the source resolution, kept only with ``keep_maps=True``.
    """

    path: str
    score: float
    threshold: float
    verdict: str
    defect_area_percent: float
    width: int
    height: int
    overlay: str = ""
    mask: str = ""
    anomaly_map: np.ndarray | None = field(default=None, repr=False)

    @property
    def margin(self) -> float:
        return self.score - self.threshold

    @property
    def is_defect(self) -> bool:
        return self.verdict == "DEFECT"

    def row(self) -> dict[str, Any]:
        values = {k: getattr(self, k) for k in CSV_COLUMNS}
        for k in ("score", "threshold", "margin"):
            values[k] = f"{values[k]:.6g}"
        values["defect_area_percent"] = f"{self.defect_area_percent:.3f}"
        return values


@dataclass
class InspectionReport:
    """What :meth:`Inspector.predict` did: ``predictions`` (input order), ``skipped`` ([(path, reason)]),
    the thresholds used, ``csv`` (the written file, or None: nothing written) and ``skipped_csv``."""

    predictions: list[Prediction]
    skipped: list[tuple[str, str]]
    image_threshold: float
    pixel_threshold: float
    csv: Path | None = None
    seconds: float = 0.0
    skipped_csv: Path | None = None

    @property
    def n_defect(self) -> int:
        return sum(p.is_defect for p in self.predictions)

    @property
    def n_ok(self) -> int:
        return len(self.predictions) - self.n_defect

    def summary(self) -> str:
        """One line: counts of OK and DEFECT, skipped files, the thresholds and the speed."""
        n = len(self.predictions)
        line = f"{n} image{'s' if n != 1 else ''}: {self.n_ok} OK, {self.n_defect} DEFECT"
        if self.skipped:
            line += f"; {len(self.skipped)} unreadable file{'s' if len(self.skipped) != 1 else ''} skipped"
        line += f" (image threshold {self.image_threshold:.4g}, pixel threshold {self.pixel_threshold:.4g}"
        if self.seconds > 0 and n:
            line += f", {n / self.seconds:.1f} images/s"
        return line + ")"


def find_images(source: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """The image files named by ``source``: a folder (searched recursively, hidden entries skipped), a glob
    pattern (``**`` allowed), one file, or a list of any of these; natural name order, no duplicates.

    Raises :class:`~colab_utils.data.DataError` when nothing matches, naming what was searched.
    """
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    found: list[Path] = []
    for item in items:
        text = os.path.expanduser(str(item))
        path = Path(text)
        if path.is_dir():
            found += sorted(
                (p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                 and not any(part.startswith(".") for part in p.relative_to(path).parts)),
                key=lambda p: natural_key(str(p.relative_to(path))),
            )  # fmt: skip
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(text):
            found += sorted(
                (Path(p) for p in glob.glob(text, recursive=True) if Path(p).suffix.lower() in IMAGE_EXTENSIONS),
                key=lambda p: natural_key(str(p)),
            )
        elif not path.exists():
            raise DataError(f"{text} does not exist; pass a folder of images, an image file or a glob pattern")
    unique = list(dict.fromkeys(found))
    if not unique:
        raise DataError(
            f"no images found in {', '.join(str(i) for i in items)}; put {'/'.join(IMAGE_EXTENSIONS)} files there, "
            "or pass a glob pattern such as 'photos/**/*.jpg'"
        )
    return unique


class Inspector:
    """A trained run, loaded for inference on new images.

    Build it with :meth:`load`. ``image_threshold`` and ``pixel_threshold`` are the run's default thresholds
    (from good images only); change them on the instance to trade false alarms against missed defects.
    """

    def __init__(self, run: TrainedRun) -> None:
        self.run = run
        self.model, self.config, self.device, self.source = run.model, run.config, run.device, str(run.path)
        self.normalizer, self.position = run.normalizer, run.position
        self.image_threshold = run.image_threshold
        self.pixel_threshold = run.pixel_threshold
        self.calibration_source = run.calibration.get("source", "held_out")
        self.onnx_session: Any = None  # set by use_onnx(); score_batch then runs onnxruntime

    @classmethod
    def load(cls, run: str | os.PathLike, device: Any = None) -> Inspector:
        """From a run folder (``RUNS/<category>``, holding ``best.pt``) or a checkpoint file
        (:meth:`colab_utils.runs.TrainedRun.load`, whose errors say how to fix a missing or unfinished run)."""
        return cls(TrainedRun.load(run, device))

    def use_onnx(self, onnx_path: str | os.PathLike | None = None, threads: int | None = None) -> Inspector:
        """Score with onnxruntime on the CPU instead of torch (measured 2-4x faster on CPUs; benchmarks/README.md).

        ``onnx_path``: an exported graph; default the run's ``model.onnx``, exported first when it is missing or
        was exported from another ``best.pt`` (its sidecar's sha256). Needs onnx and onnxruntime. Returns self.
        """
        import json

        from .export import export_run, onnx_session

        if onnx_path is None:
            onnx_path = Path(self.source).parent / "model.onnx"
            sidecar = onnx_path.with_suffix(".json")
            current = self.run.checkpoint_sha256
            stale = not onnx_path.is_file() or not sidecar.is_file()
            if not stale:
                stale = json.loads(sidecar.read_text()).get("checkpoint_sha256") != current
            if stale:
                onnx_path, _ = export_run(self.run, onnx_path.parent)
        self.onnx_session = onnx_session(onnx_path, threads)
        return self

    @property
    def category(self) -> str:
        return self.config.category

    # --------------------------------------------------------------------------------------- arrays
    @torch.no_grad()
    def score_batch(self, images: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores and maps of images already at the model's input size.

        images: uint8 (B, C, H, W) with C = ``config.channels`` and (H, W) = ``config.work_size`` (the
        ``image_size`` square, or the tile canvas), or float in [0, 1].
        Returns (scores float32 (B,), normalised maps float32 (B, H, W)), as :func:`colab_utils.evaluate.evaluate`
        computes them. A wrong channel count or size raises ``ValueError`` naming the expected shape.
        """
        from .scoring import predict

        x = torch.as_tensor(images)
        c, (h, w) = self.config.channels, self.config.work_size
        if x.dim() != 4 or x.shape[1] != c or tuple(x.shape[-2:]) != (h, w):
            raise ValueError(
                f"this model was trained on {c}-channel {h}x{w} images ({'RGB' if c == 3 else 'gray'}); got a batch "
                f"of shape {tuple(x.shape)}. Pass (B, {c}, {h}, {w}), or pass image files to predict(), which "
                "converts and resizes them"
            )
        if x.dtype != torch.uint8:
            x = (x.float().clamp(0, 1) * 255.0).round().to(torch.uint8)
        if self.onnx_session is not None:
            maps, scores = self.onnx_session.run(None, {"images": x.float().div_(255.0).numpy()})
            return scores.astype(np.float32), maps.astype(np.float32)
        out = predict(self.model, x, self.config, self.device, self.normalizer, len(x), keep_recons=False,
                      position=self.position)  # fmt: skip
        return out["scores"].astype(np.float32), out["maps"].astype(np.float32)

    # ---------------------------------------------------------------------------------------- files
    def predict(
        self,
        images: str | os.PathLike | Iterable[str | os.PathLike],
        out: str | os.PathLike | None = None,
        batch_size: int = 16,
        progress: bool = True,
        keep_maps: bool = False,
        log: Any = print,
        alpha: float = 0.5,
    ) -> InspectionReport:
        """Verdicts, heatmaps and masks for image files (see the module docstring).

        images: a folder (recursive), a glob pattern, a file, or a list of them. out: folder for
        ``predictions.csv``, ``overlays/`` and ``masks/`` (None: nothing written). keep_maps: keep each
        source-resolution anomaly map on its :class:`Prediction`. log: where skipped files are reported.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: must be a whole number of at least 1 (--batch-size)")
        files = find_images(images)
        if out is None:
            return self._predict_files(files, None, None, batch_size, progress, keep_maps, log, alpha, [])
        done: list[Prediction] = []
        with StagedOutput(out, OUTPUT_NAMES) as stage:  # refuses an unwritable folder before any work
            try:
                report = self._predict_files(files, stage.path, stage.out, batch_size, progress, keep_maps, log,
                                             alpha, done)  # fmt: skip
                if not report.predictions:  # nothing to show: the previous result stays as it was
                    return report
                write_predictions_csv(report.predictions, stage.path / "predictions.csv")
                if report.skipped:
                    write_skipped_csv(report.skipped, stage.path / "skipped.csv")
            except OSError as exc:
                if done:
                    write_predictions_csv(done, stage.path / "predictions.csv")
                kept = stage.keep() if done else None
                raise OSError(
                    f"writing the results to {stage.out} failed after {len(done)} of {len(files)} images "
                    f"({type(exc).__name__}: {exc.strerror or exc}); "
                    + (f"the finished ones are in {kept}; " if kept else "")
                    + f"the previous results in {stage.out} are untouched. Free space or choose another --out, "
                    "and run again"
                ) from exc
            stage.publish()
        report.csv = stage.out / "predictions.csv"
        report.skipped_csv = stage.out / "skipped.csv" if report.skipped else None
        return report

    def _predict_files(self, files: list[Path], write_dir: Path | None, final_dir: Path | None, batch_size: int,
                       progress: bool, keep_maps: bool, log: Any, alpha: float, done: list) -> InspectionReport:  # fmt: skip
        """Score ``files`` in batches; overlays and masks go to ``write_dir`` under the names they will have in
        ``final_dir``. ``done`` collects the predictions as they finish (what a failed write leaves)."""
        import time

        from .env import progress_bar as tqdm

        names = _output_names(files)
        skipped: list[tuple[str, str]] = []
        started = time.perf_counter()
        bar = tqdm(total=len(files), desc=f"inspect {self.category}", unit="img", disable=not progress)
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            loaded = []
            for k, path in enumerate(chunk):
                try:
                    loaded.append((start + k, path, self._read(path)))
                except DataError as exc:
                    skipped.append((str(path), str(exc)))
                    log(f"skipped {path}: {exc}")
            if loaded:
                batch = np.stack([resize_image(img, self.config.work_size) for _, _, img in loaded])
                scores, maps = self.score_batch(batch)
                for (i, path, img), score, amap in zip(loaded, scores, maps):
                    done.append(self._one(path, img, float(score), amap, write_dir, final_dir, names[i], keep_maps,
                                          alpha))  # fmt: skip
            bar.update(len(chunk))
        bar.close()
        return InspectionReport(list(done), skipped, self.image_threshold, self.pixel_threshold,
                                seconds=time.perf_counter() - started)  # fmt: skip

    def _read(self, path: Path) -> np.ndarray:
        """The file at its own size, uint8 (C, H, W); too small or too thin a picture raises :class:`DataError`."""
        img = read_image(path, self.config.channels)
        h, w = img.shape[-2:]
        if min(h, w) < MIN_SIDE:
            raise DataError(f"{path} is {w}x{h} px, too small to inspect: a verdict needs at least "
                            f"{MIN_SIDE} px a side; check it is the photo you meant")  # fmt: skip
        if max(h, w) > MAX_ASPECT * min(h, w):
            raise DataError(f"{path} is {w}x{h} px, an aspect of more than {MAX_ASPECT:g}:1 that no "
                            "geometry can inspect; crop it to the part")  # fmt: skip
        return img

    def _one(self, path: Path, img: np.ndarray, score: float, amap: np.ndarray, write_dir: Path | None,
             final_dir: Path | None, name: str, keep_map: bool, alpha: float) -> Prediction:  # fmt: skip
        from PIL import Image

        height, width = img.shape[-2:]
        full = np.asarray(Image.fromarray(amap, mode="F").resize((width, height), Image.Resampling.BILINEAR))
        mask = predicted_mask(full, self.pixel_threshold, self.config.mask_peak_share)
        verdict = "DEFECT" if score >= self.image_threshold else "OK"
        pred = Prediction(str(path.resolve()), score, self.image_threshold, verdict, 100.0 * float(mask.mean()), width, height,
                          anomaly_map=full if keep_map else None)  # fmt: skip
        if write_dir is not None:
            pred.overlay = str(final_dir / "overlays" / f"{name}.png")
            pred.mask = str(final_dir / "masks" / f"{name}.png")
            overlay, mask_file = write_dir / "overlays" / f"{name}.png", write_dir / "masks" / f"{name}.png"
            overlay.parent.mkdir(parents=True, exist_ok=True)
            mask_file.parent.mkdir(parents=True, exist_ok=True)
            _write_png(overlay_picture(img, full, mask, self.pixel_threshold, pred, alpha), str(overlay))
            _write_png(mask.astype(np.uint8) * 255, str(mask_file))
        return pred


def overlay_picture(
    image: np.ndarray, amap: np.ndarray, mask: np.ndarray, pixel_threshold: float, pred: Prediction, alpha: float = 0.5
) -> np.ndarray:
    """The heatmap over the photo at its own size, the predicted mask's outline in white, and a verdict line.

    image uint8 (C, H, W); amap float (H, W) normalised; mask bool (H, W). Colour scale: 0 (a typical good pixel)
    to twice the pixel threshold, so the threshold sits mid-bar. Returns uint8 (H, W, 3).
    """
    from PIL import Image, ImageDraw

    from .panels import heatmap_overlay, pil_font, to_u8

    vmax = 2.0 * pixel_threshold if pixel_threshold > 0 else max(float(amap.max()), 1e-6)
    rgb = to_u8(heatmap_overlay(image, amap, 0.0, vmax, alpha))
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    rgb[mask & ~inner] = 255
    picture = Image.fromarray(rgb)
    size = max(10, min(picture.size) // 20)
    text = f"{pred.verdict}  score {pred.score:.3g} / {pred.threshold:.3g}"
    draw = ImageDraw.Draw(picture)
    font = pil_font(size)
    box = draw.textbbox((4, 4), text, font=font)
    draw.rectangle((0, 0, box[2] + 4, box[3] + 4), fill=(200, 30, 30) if pred.is_defect else (30, 130, 60))
    draw.text((4, 4), text, fill=(255, 255, 255), font=font)
    return np.asarray(picture)


def write_predictions_csv(predictions: Sequence[Prediction], path: str | os.PathLike) -> Path:
    """``predictions.csv`` with :data:`CSV_COLUMNS`, written atomically (a temporary file, then a rename)."""
    path = Path(path)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for p in predictions:
        writer.writerow(p.row())
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_skipped_csv(skipped: Sequence[tuple[str, str]], path: str | os.PathLike) -> Path:
    """``skipped.csv``: one row per file that was not inspected, with the reason (path, reason)."""
    path = Path(path)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "reason"])
    writer.writerows(skipped)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    os.replace(tmp, path)
    return path


def _write_png(array: np.ndarray, path: str) -> None:
    from PIL import Image

    tmp = f"{path}.tmp"
    Image.fromarray(array).save(tmp, format="PNG", compress_level=1)
    os.replace(tmp, path)


def _output_names(files: Sequence[Path]) -> list[str]:
    """A unique output name per input file: its path below the inputs' common folder, ending in ``.png``
    (``test/crack/000.png`` -> ``crack/000.png``), with ``-2``, ``-3`` ... where two inputs would clash."""
    parents = [str(f.resolve().parent) for f in files]
    base = Path(os.path.commonpath(parents)) if parents else Path(".")
    seen: dict[str, int] = {}
    names = []
    for f in files:
        stem = f.resolve().relative_to(base).with_suffix("").as_posix()
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names
