"""Export a trained run to ONNX: one graph from an image batch to the anomaly map and the image score.

    python -m colab_utils export --run RUNS/bottle --format onnx      # -> RUNS/bottle/model.onnx + model.json

The graph takes ``images``: float32 (B, C, H, W) in [0, 1] (B dynamic; C = ``config.channels``, (H, W) =
``config.work_size``: the ``image_size`` square, or under ``geometry="tile"`` the whole canvas) and returns
``anomaly_map``: float32 (B, H, W), normalised as in the evaluation, and
``image_score``: float32 (B,). It holds the whole scoring path of :mod:`colab_utils.scoring` for every family:
the family's raw maps (a memory bank becomes a matrix product and a minimum over the bank inside the graph),
the Gaussian smoothing, the normalisation from good images and the image score. Under ``geometry="tile"`` the
graph itself cuts the canvas into its tiles and stitches their maps back (fixed slices and pads, overlaps
averaged, :mod:`colab_utils.geometry`), so a caller only resizes the photo to the canvas. Verdicts are
``image_score >= thresholds.image`` and masks ``anomaly_map >= thresholds.pixel``; the sidecar JSON holds those
thresholds and the preprocessing (resize to H x W with Lanczos, RGB or luminance, divide by 255).

Needs the optional packages ``onnx`` (and ``onnxruntime`` to run or check the file): ``pip install onnx
onnxruntime``.
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .runs import TrainedRun
from .scoring import anomaly_maps, scored_maps

__all__ = ["OPSETS", "ScoringGraph", "export_onnx", "export_run", "onnx_session", "run_onnx"]

#: ONNX opsets the graph exports to (it needs opset 14's operators; torch's exporter writes up to 20).
OPSETS = range(14, 21)


class ScoringGraph(nn.Module):
    """A :class:`~colab_utils.runs.TrainedRun`'s scoring as one module: images (B, C, H, W) in [0, 1] at
    ``config.work_size`` -> (normalised anomaly maps (B, H, W), image scores (B,)), equal to what
    ``Inspector.score_batch`` returns."""

    def __init__(self, run: TrainedRun) -> None:
        super().__init__()
        self.model = run.model
        self.config = run.config
        self.normalizer = run.normalizer
        self.position = run.position

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps, scores = scored_maps(anomaly_maps(self.model, images, self.config), self.config, self.normalizer,
                                   self.position)  # fmt: skip
        return maps[:, 0], scores


def export_onnx(run: str | os.PathLike, out: str | os.PathLike | None = None, opset: int = 17) -> tuple[Path, Path]:
    """Write ``model.onnx`` and its sidecar ``model.json`` (default: into the run folder); returns both paths.

    Files are written to temporary names and renamed, so an interrupted export leaves no half file.
    """
    _check_opset(opset)
    trained = TrainedRun.load(run, "cpu")
    return export_run(trained, Path(out) if out is not None else trained.path.parent, opset)


def _check_opset(opset: int) -> None:
    if not isinstance(opset, int) or opset not in OPSETS:
        raise ValueError(f"--opset {opset}: the graph exports to ONNX opsets {OPSETS.start}-{OPSETS.stop - 1}; "
                         "leave it out for the default 17")  # fmt: skip


def export_run(run: TrainedRun, folder: str | os.PathLike, opset: int = 17) -> tuple[Path, Path]:
    """:func:`export_onnx` of an already loaded run into ``folder``."""
    _check_opset(opset)
    try:
        import onnx  # noqa: F401 - the exporter needs it
    except ImportError as exc:
        raise RuntimeError("ONNX export needs the optional package onnx: pip install onnx onnxruntime") from exc
    config = run.config
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path, side_path = folder / "model.onnx", folder / "model.json"
    graph = ScoringGraph(run).eval()
    height, width = config.work_size
    example = torch.rand(2, config.channels, height, width, device=run.device)
    tmp = onnx_path.with_name(onnx_path.name + ".tmp")
    options = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with run.family.exportable(run.model), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape checks that are constant for a fixed input size
        torch.onnx.export(
            graph, (example,), str(tmp), input_names=["images"], output_names=["anomaly_map", "image_score"],
            dynamic_axes={"images": {0: "batch"}, "anomaly_map": {0: "batch"}, "image_score": {0: "batch"}},
            opset_version=opset, **options,
        )  # fmt: skip
    os.replace(tmp, onnx_path)
    sidecar = {
        "format": "onnx",
        "category": config.category,
        "mode": config.mode,
        "inputs": {"images": {"shape": ["batch", config.channels, height, width],
                              "dtype": "float32", "range": [0.0, 1.0]}},  # fmt: skip
        "outputs": {"anomaly_map": {"shape": ["batch", height, width], "dtype": "float32"},
                    "image_score": {"shape": ["batch"], "dtype": "float32"}},  # fmt: skip
        "preprocessing": {
            "color": "RGB" if config.channels == 3 else "L (luminance)",
            "resize": f"to {height}x{width} (height x width) with Lanczos (aspect ratio not kept)",
            "geometry": config.geometry,
            "tiles": "cut and stitched inside the graph" if config.geometry == "tile" else "none",
            "scale": "uint8 / 255",
            "layout": "NCHW",
        },
        "thresholds": {"image": run.image_threshold, "pixel": run.pixel_threshold,
                       "mask_peak_share": config.mask_peak_share,
                       "source": run.calibration.get("source", "held_out")},  # fmt: skip
        "verdict": ("DEFECT when image_score >= thresholds.image; defect mask: anomaly_map >= thresholds.pixel and "
                    ">= thresholds.mask_peak_share x that image's largest anomaly_map value"),
        "checkpoint": str(run.path),
        "checkpoint_sha256": run.checkpoint_sha256,
        "config": config.to_dict(),
    }
    tmp = side_path.with_name(side_path.name + ".tmp")
    tmp.write_text(json.dumps(sidecar, indent=2) + "\n")
    os.replace(tmp, side_path)
    return onnx_path, side_path


def onnx_session(onnx_path: str | os.PathLike, threads: int | None = None) -> Any:
    """An onnxruntime CPU session for an exported graph (``threads``: intra-op threads; default onnxruntime's)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise RuntimeError("running an ONNX file needs the optional package onnxruntime: pip install onnxruntime") from exc
    if not Path(onnx_path).is_file():
        raise FileNotFoundError(f"{onnx_path} does not exist; write it with: python -m colab_utils export --run RUN")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def run_onnx(onnx_path: str | os.PathLike, images: Any, threads: int | None = None) -> tuple[Any, Any]:
    """Run an exported graph with onnxruntime on the CPU: images float32 (B, C, S, S) in [0, 1] -> (maps, scores)
    as numpy arrays."""
    import numpy as np

    maps, scores = onnx_session(onnx_path, threads).run(None, {"images": np.ascontiguousarray(images, dtype=np.float32)})
    return maps, scores
