"""A finished run, loaded: the one object evaluation, inspection, export and the notebooks read a trained model
through, whatever its family.

    run = TrainedRun.load("RUNS/bottle")        # or a best.pt file
    run.model, run.config, run.family, run.normalizer, run.position, run.image_threshold, run.pixel_threshold

A run folder holds ``best.pt`` (the calibrated model) and ``last.pt`` (where training resumes). Only training
writes them (:mod:`colab_utils.train`); everything else reads them here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoint as ckpt
from .config import Config
from .models import Family, build_model, get_family
from .scoring import MapNormalizer, PositionStats

#: File names inside a run folder.
BEST = "best.pt"
LAST = "last.pt"

__all__ = ["BEST", "LAST", "TrainedRun", "is_finished", "load_trained"]


def load_trained(run_dir_or_file: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, Config, dict]:
    """Rebuild the model from ``best.pt`` (or the given file) for inference.

    Returns (model in eval mode on ``device``, its Config, the checkpoint payload). A checkpoint whose weights do
    not fit the architecture its config describes raises :class:`~colab_utils.checkpoint.CheckpointError`; one
    whose config names a retired family or option raises :class:`~colab_utils.config.ConfigError` saying why.
    """
    path = Path(run_dir_or_file)
    if path.is_dir():
        path = path / BEST
    state = ckpt.load_checkpoint(path, map_location=device)
    config = Config.from_dict(state["config"])
    model = build_model(config, pretrained=False).to(device)  # all weights come from the checkpoint
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ckpt.CheckpointError(
            f"{path}: weights do not match the model its config describes ({str(exc).splitlines()[0]}); "
            "the file was probably edited or written by another version. Retrain into a new folder"
        ) from exc
    model.eval()
    return model, config, state


def is_finished(run_dir: str | Path, config: Config) -> bool:
    """True when ``run_dir`` holds a calibrated ``best.pt`` and ``last.pt`` has reached ``config.epochs``."""
    run_dir = Path(run_dir)
    if not (run_dir / LAST).exists() or not (run_dir / BEST).exists():
        return False
    try:
        last = ckpt.load_checkpoint(run_dir / LAST)
        best = ckpt.load_checkpoint(run_dir / BEST)
    except ckpt.CheckpointError:
        return False
    return last["epoch"] >= config.epochs and bool(best.get("calibration")) and not config.mismatches(
        Config.from_dict(last["config"])
    )


@dataclass
class TrainedRun:
    """A calibrated model ready to score: what ``best.pt`` holds, rebuilt on ``device``.

    ``normalizer`` and ``position`` standardise its maps as calibration did; ``image_threshold`` and
    ``pixel_threshold`` are its default thresholds (from good images only); ``calibration`` is the stored dict
    (``source``: "held_out" or "leave_one_out", the percentiles, the good scores), ``payload`` the whole
    checkpoint, ``path`` the ``best.pt`` it came from.
    """

    model: nn.Module
    config: Config
    calibration: dict[str, Any]
    device: torch.device
    path: Path
    payload: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        self.path = Path(self.path)
        self.normalizer = MapNormalizer.from_dict(self.calibration["normalizer"])
        self.position = PositionStats.from_calibration(self.calibration)

    @property
    def family(self) -> Family:
        return get_family(self.config)

    @property
    def image_threshold(self) -> float:
        return float(self.calibration["image_threshold"])

    @property
    def pixel_threshold(self) -> float:
        return float(self.calibration["pixel_threshold"])

    @property
    def checkpoint_sha256(self) -> str:
        return ckpt.file_sha256(self.payload.get("loaded_from", self.path))

    @classmethod
    def load(cls, run: str | os.PathLike, device: Any = None) -> TrainedRun:
        """From a run folder (``RUNS/<category>``, holding ``best.pt``) or a checkpoint file.

        ``device``: default the GPU when there is one (:func:`colab_utils.env.get_device`). Raises
        ``FileNotFoundError`` for a missing run or an unfinished one (no ``best.pt``), and ``ValueError`` for
        a checkpoint without calibration; each message says how to fix it.
        """
        from .env import get_device

        path = Path(run).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"run {path} does not exist: train first, or pass the folder that training wrote (RUNS/<category>, holding {BEST}), "
                "e.g. train one with: python -m colab_utils train --data-root DATA --category bottle --out RUNS"
            )
        ckpt_file = path / BEST if path.is_dir() else path
        if not ckpt_file.is_file():
            unfinished = (path / LAST).is_file()
            raise FileNotFoundError(
                f"run {path} has no finished model ({BEST} is missing"
                + (f"; {LAST} shows training started but did not finish" if unfinished else "")
                + "). Finish training first: run the same `python -m colab_utils train` command (or notebook 02) "
                "again; it resumes where it stopped"
            )
        device = get_device() if device is None else device
        model, config, state = load_trained(ckpt_file, device)
        calibration = state.get("calibration") or {}
        if not calibration:
            raise ValueError(
                f"{ckpt_file} holds a model but no thresholds (its calibration is missing); rerun the training "
                "command for this run: it calibrates from good images and rewrites the file"
            )
        return cls(model, config, calibration, device, ckpt_file, state)
