"""Training that a Colab user can trust with an hour of GPU time.

:func:`fit` trains one category into ``run_dir`` and survives disconnects:

- ``last.pt`` is written atomically every ``checkpoint_every_epochs`` epochs or
  ``checkpoint_every_minutes`` minutes, whichever comes first, and when the
  time budget ``max_minutes`` runs out; ``best.pt`` whenever the validation
  loss on held-out good images improves.
- Calling :func:`fit` again with the same config resumes from ``last.pt``
  (model, optimizer, scheduler, scaler, epoch, loss history and RNG states).
  A config that changes the model or the data refuses to resume, naming the
  fields. A corrupt ``last.pt`` falls back to ``last.pt.prev``.
- A non-finite loss stops training with :class:`TrainingDiverged`; the last
  good checkpoint on disk is left untouched.

The loop never asks which family it trains (:mod:`colab_utils.models`): a
family that trains by gradient gives it its inputs (``prepare``), its loss and
one batch's loss (``batch_loss``); the loop owns AdamW, AMP, the schedule,
checkpoints, resume, progress and the NaN guard. A family that fits without
gradients (the memory bank) is fitted in one call and checkpointed the same
way. Either way the run ends with calibration on held-out good images.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from . import checkpoint as ckpt
from . import geometry
from .config import Config
from .data import DataError, ImageSet, clear_cache, image_sizes, load_split, reload, split_paths, split_train_val
from .models import build_model, get_family
from .runs import BEST, LAST, is_finished, load_trained  # noqa: F401 - part of this module's API
from .scoring import calibrate


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    """What :func:`fit` produced. ``model`` holds the best weights, in eval mode."""

    run_dir: Path
    config: Config
    model: nn.Module
    history: dict[str, list[float]]  # per-epoch losses (gradient families), empty otherwise
    epochs_done: int
    best_val_loss: float
    status: str  # "completed", "time_limit" or "already_done"
    seconds: float
    calibration: dict[str, Any] = field(default_factory=dict)
    fit_info: dict[str, Any] = field(default_factory=dict)  # what direct fitting did (memory bank: patches, bank size)

    @property
    def best_path(self) -> Path:
        return self.run_dir / BEST

    @property
    def last_path(self) -> Path:
        return self.run_dir / LAST


def _lr_lambda(config: Config, steps_per_epoch: int) -> Callable[[int], float]:
    """Linear warm-up over the first epoch (at most 5% of training), then cosine decay to 1%."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = max(1, min(steps_per_epoch, total // 20))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def settle_geometry(
    config: Config, paths: list[str], log: Callable[[str], None] = print, fallback: ImageSet | None = None
) -> Config:
    """``config`` with its input geometry settled for the training images at ``paths`` (``geometry="auto"``
    resolved, a tile canvas chosen; :func:`colab_utils.geometry.choose`), printed with the reason.

    ``fallback``: an in-memory set whose own size stands in when the files at ``paths`` cannot be read (sets
    built in memory)."""
    try:
        sizes = image_sizes(paths)
    except DataError:
        if fallback is None:
            raise
        h, w = fallback.images.shape[-2:]
        sizes = [(int(w), int(h))] * len(paths)
    try:
        config, why = geometry.choose(config, sizes, paths)
    except geometry.GeometryError as exc:
        raise DataError(str(exc)) from None
    log(f"{config.category}: {why}")
    if small := geometry.upscaled(config, sizes):
        log(f"note: {len(small)} of {len(sizes)} training images are under half the size the model works at "
            f"({config.work_size[1]}x{config.work_size[0]}) and are upscaled, e.g. {paths[small[0]]} "
            f"({sizes[small[0]][0]}x{sizes[small[0]][1]} px); their detail is what the camera gave")  # fmt: skip
    odd = geometry.odd_sizes(config, sizes)
    for kind, why in (("tiny", f"under {geometry.MIN_TRAIN_SIDE} px a side: an icon or a broken export, which "
                                "teaches the model nothing about the part; remove it from the good images"),
                      ("stretched", "of an aspect far from the others': resizing to the work size distorts the "
                                    "part; crop it like the others, or train it as a separate category")):  # fmt: skip
        if idx := odd[kind]:
            named = ", ".join(f"{paths[i]} ({sizes[i][0]}x{sizes[i][1]} px)" for i in idx[:3])
            log(f"warning: {config.category}: {len(idx)} training image{'s are' if len(idx) > 1 else ' is'} {why}: "
                f"{named}{' ...' if len(idx) > 3 else ''}")
    return config


def load_data(config: Config, data_root: str | Path) -> tuple[ImageSet, ImageSet]:
    """The category's good training images split into (train, held-out) by ``val_fraction`` and ``seed``, at
    ``config.work_size``."""
    full = load_split(data_root, config.category, "train", config.work_size, config.channels)
    train_idx, val_idx = split_train_val(len(full), config.val_fraction, config.seed)
    return full.subset(train_idx), full.subset(val_idx)


def fit(
    config: Config,
    data_root: str | Path | None,
    run_dir: str | Path,
    device: torch.device | str = "cpu",
    progress: bool = True,
    train_set: ImageSet | None = None,
    val_set: ImageSet | None = None,
    resume: bool = True,
    log: Callable[[str], None] = print,
    on_epoch: Callable[[int, dict[str, list[float]]], None] | None = None,
) -> TrainResult:
    """Train ``config.category`` into ``run_dir`` (``last.pt``, ``best.pt``, ``config.json``).

    Data come from ``data_root`` in the MVTec layout, or from ``train_set`` /
    ``val_set`` (e.g. a user folder via :func:`colab_utils.data.load_user_folder`).
    Resumes from ``run_dir/last.pt`` when it exists and ``resume`` is true.
    ``on_epoch(epoch, history)`` is called after every epoch (live loss curves).
    """
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    try:
        return _fit(config, data_root, run_dir, device, progress, train_set, val_set, resume, log, on_epoch)
    except BaseException:
        if created and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # a failed command leaves no empty run folder behind
        raise


#: Fewer held-out good images than this make the default thresholds (a high percentile) little more than a guess.
MIN_CALIBRATION_IMAGES = 20


def _fit(config, data_root, run_dir, device, progress, train_set, val_set, resume, log, on_epoch) -> TrainResult:
    device = torch.device(device)
    started = time.monotonic()
    config, train_set, val_set = _fit_sets(config, data_root, train_set, val_set, log)
    family = get_family(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    model = build_model(config).to(device)
    if not family.trains_by_gradient:
        return _fit_direct(family, model, config, run_dir, device, train_set, val_set, progress, log, started, resume)
    loop = _GradientLoop(family, model, config, device, n=len(train_set) * family.views(config))
    last_path, best_path = run_dir / LAST, run_dir / BEST
    if resume and (last_path.exists() or ckpt.previous_path(last_path).exists()):
        loop.resume(_resumable_state(last_path, config, device), log)
    config.save(run_dir / "config.json")
    loop.loss_fn = family.loss(config, device)
    if loop.epoch < config.epochs:
        # a gradient family learns from what it will see: the tiles under geometry="tile"
        loop.train_x, loop.val_x = family.prepare(model, train_set.tiles(config), val_set.tiles(config), config,
                                                  device, log)  # fmt: skip
    status = loop.run(run_dir, started, progress, log, on_epoch)
    # The best weights, calibrated on held-out good images, are what evaluation uses.
    best = _read_best(best_path, LAST, device, log)
    if best is not None:
        model.load_state_dict(best["model"])
    else:  # never written (no epoch improved on inf?) or broken: the latest weights become best.pt
        best = {**loop.payload("best"), "rebuilt": True}
    model.eval()
    calibration = calibrate_run(model, config, device, best_path, train_set, val_set, loop.batch_size, best)
    return TrainResult(
        run_dir=run_dir, config=config, model=model, history=loop.history, epochs_done=loop.epoch,
        best_val_loss=loop.best_val, status=status, seconds=time.monotonic() - started, calibration=calibration,
    )  # fmt: skip


def _fit_sets(config, data_root, train_set, val_set, log) -> tuple[Config, ImageSet, ImageSet]:
    """(config with its geometry settled, training images, calibration images) at the settled input size: the
    held-out share of the good images, or for a family that ``cross_fits`` all of them on both sides."""
    if train_set is None:
        if data_root is None:
            raise ValueError("fit needs data_root (an MVTec-layout folder) or train_set")
        config = settle_geometry(config, split_paths(data_root, config.category, "train"), log)
        train_set, val_set = load_data(config, data_root)
    else:
        config = settle_geometry(config, train_set.paths + (val_set.paths if val_set is not None else []), log,
                                 fallback=train_set)  # fmt: skip
        if tuple(train_set.images.shape[-2:]) != config.work_size:
            train_set = reload(train_set, config.work_size)
            val_set = reload(val_set, config.work_size) if val_set is not None else None
    if val_set is None:
        tr, va = split_train_val(len(train_set), config.val_fraction, config.seed)
        train_set, val_set = train_set.subset(tr), train_set.subset(va)
    family = get_family(config)
    if family.cross_fits:  # fitted on every good image, and calibrated on each of them left out in turn
        train_set = val_set = train_set.join(val_set)
        if data_root is not None:  # the joined copy is all the fit needs: drop the cached decode (thousands of images)
            clear_cache()
    if len(val_set) < MIN_CALIBRATION_IMAGES:
        log(
            f"warning: {config.category}: only {len(val_set)} good images calibrate the default thresholds "
            f"(at least {MIN_CALIBRATION_IMAGES} are needed for a {config.threshold_percentile:g}th percentile to "
            "be meaningful); add good images"
            + ("" if family.cross_fits else f" or raise val_fraction (now {config.val_fraction})")
        )
    return config, train_set, val_set


class _GradientLoop:
    """The state of the shared gradient loop (AdamW, AMP, schedule, RNG, history, where it is) and its steps.

    ``payload`` is what ``last.pt`` and ``best.pt`` hold; ``resume`` restores it; ``run`` trains the remaining
    epochs, checkpointing and stopping on the time budget; ``train_x`` / ``val_x`` / ``loss_fn`` are set before
    ``run`` (the family's prepared inputs and loss).
    """

    def __init__(self, family, model: nn.Module, config: Config, device: torch.device, n: int) -> None:
        self.family, self.model, self.config, self.device, self.n = family, model, config, device, n
        self.trainable = family.trainable(model)
        self.params = [p for p in self.trainable.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.use_amp = bool(config.amp and device.type == "cuda")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.gen = torch.Generator(device="cpu").manual_seed(config.seed)
        self.batch_size = min(config.batch_size, n)
        self.steps_per_epoch = max(1, n // self.batch_size)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(config, self.steps_per_epoch))
        self.history: dict[str, list[float]] = {"epoch": [], "train_loss": [], "val_loss": [], "lr": [], "seconds": []}
        self.epoch, self.best_val = 0, math.inf
        self.partial: dict[str, Any] | None = None  # the position inside an epoch a mid-epoch checkpoint stopped at
        self.loss_fn: Any = None
        self.train_x: Any = None
        self.val_x: Any = None
        self.last_saved = time.monotonic()

    def payload(self, kind: str, partial_epoch: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "partial_epoch": partial_epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.use_amp else None,
            "epoch": self.epoch,
            "history": self.history,
            "config": self.config.to_dict(),
            "best_metric": self.best_val,
            "rng": ckpt.rng_state(),
            "generator": self.gen.get_state(),
            "role": kind,
        }

    def resume(self, state: dict[str, Any], log: Callable[[str], None]) -> None:
        self.partial = state.get("partial_epoch")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") and self.use_amp:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.best_val, self.history = state["epoch"], state["best_metric"], state["history"]
        ckpt.set_rng_state(state["rng"])
        if "generator" in state:
            self.gen.set_state(state["generator"])
        where = f", step {self.partial['step']}/{self.steps_per_epoch} of epoch {self.epoch + 1}" if self.partial else ""
        log(f"resumed {self.config.category} from {state['loaded_from']} at epoch {self.epoch}/{self.config.epochs}{where}")

    def batch(self, x: Tensor, train: bool) -> tuple[Tensor, dict[str, float]]:
        """Loss of one batch; the forward pass runs under autocast on CUDA, the loss in float32."""
        return self.family.batch_loss(self.model, self.loss_fn, x, train, self.config, self.device, self.gen,
                                      self.use_amp)  # fmt: skip

    def run(self, run_dir: Path, started: float, progress: bool, log, on_epoch) -> str:
        """Train until ``config.epochs`` or the time budget; returns the status ("completed", "time_limit",
        "already_done")."""
        from .env import progress_bar as tqdm

        config = self.config
        status = "already_done" if self.epoch >= config.epochs else "completed"
        self.last_saved = time.monotonic()
        bar = tqdm(total=config.epochs, initial=self.epoch, desc=f"train {config.category}", disable=not progress)
        try:
            while self.epoch < config.epochs:
                epoch_start, train_loss, count, parts_sum = self._train_epoch(run_dir)
                val_loss = self._validate()
                self._record(epoch_start, train_loss, count, parts_sum, val_loss)
                bar.update(1)
                bar.set_postfix(loss=f"{self.history['train_loss'][-1]:.4f}", val=f"{val_loss:.4f}")
                if on_epoch is not None:
                    on_epoch(self.epoch, self.history)
                if val_loss < self.best_val:
                    self.best_val = val_loss
                    ckpt.save_checkpoint(run_dir / BEST, self.payload("best"), keep_previous=False)
                out_of_time = config.max_minutes > 0 and (time.monotonic() - started) / 60 >= config.max_minutes
                due = self.epoch % config.checkpoint_every_epochs == 0 or (
                    time.monotonic() - self.last_saved >= 60 * config.checkpoint_every_minutes
                )
                if due or out_of_time or self.epoch >= config.epochs:
                    ckpt.save_checkpoint(run_dir / LAST, self.payload("last"))
                    self.last_saved = time.monotonic()
                if out_of_time and self.epoch < config.epochs:
                    log(f"{config.category}: time budget of {config.max_minutes} min reached at epoch {self.epoch}; "
                        "run again to resume")  # fmt: skip
                    return "time_limit"
        finally:
            bar.close()
        return status

    def _train_epoch(self, run_dir: Path) -> tuple[float, float, int, dict[str, float]]:
        """One epoch of steps (from where a mid-epoch checkpoint stopped, if it did); returns (start time,
        summed loss, images, summed loss parts)."""
        config, bs = self.config, self.batch_size
        epoch_start = time.monotonic()
        self.trainable.train()
        if self.partial is not None:  # resume inside the epoch a mid-epoch checkpoint interrupted
            p = self.partial
            order, first_step, total, count, parts_sum = p["order"], p["step"], p["total"], p["count"], dict(p["parts_sum"])
            epoch_start -= p["seconds"]
            self.partial = None
        else:
            order, first_step = torch.randperm(self.n, generator=self.gen), 0
            total, count, parts_sum = 0.0, 0, {}
        for step in range(first_step, self.steps_per_epoch):
            idx = order[step * bs : (step + 1) * bs]
            loss, parts = self.batch(self.train_x[idx], train=True)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"{config.category}: loss became {loss.item()} at epoch {self.epoch + 1}, step {step + 1}. "
                    f"The last good checkpoint in {run_dir} is kept; lower lr (now {config.lr}) or set amp=False"
                )
            self._step(loss)
            total += loss.item() * len(idx)
            count += len(idx)
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v * len(idx)
            if step + 1 < self.steps_per_epoch and time.monotonic() - self.last_saved >= 60 * config.checkpoint_every_minutes:
                # a long epoch: save where we are inside it, so a disconnect loses at most that interval
                inside = {"step": step + 1, "order": order, "total": total, "count": count,
                          "parts_sum": dict(parts_sum), "seconds": time.monotonic() - epoch_start}  # fmt: skip
                ckpt.save_checkpoint(run_dir / LAST, self.payload("last", inside))
                self.last_saved = time.monotonic()
        return epoch_start, total, count, parts_sum

    def _step(self, loss: Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    def _validate(self) -> float:
        self.trainable.eval()
        bs = self.batch_size
        with torch.no_grad():
            losses = [self.batch(self.val_x[s : s + bs], train=False)[0].item() for s in range(0, len(self.val_x), bs)]
        return float(sum(losses) / max(1, len(losses)))

    def _record(self, epoch_start: float, total: float, count: int, parts_sum: dict[str, float], val_loss: float) -> None:
        self.epoch += 1
        h = self.history
        h["epoch"].append(self.epoch)
        h["train_loss"].append(total / max(1, count))
        h["val_loss"].append(val_loss)
        h["lr"].append(self.optimizer.param_groups[0]["lr"])
        h["seconds"].append(time.monotonic() - epoch_start)
        for k, v in parts_sum.items():
            h.setdefault(f"train_{k}", []).append(v / max(1, count))


def describe_fit(result: TrainResult) -> str:
    """One line on what fitting did: epochs and best loss, or the family's own line on its direct fit."""
    if result.fit_info:
        return get_family(result.config).describe_fit(result.fit_info)
    return f"{result.epochs_done} epochs, best val loss {result.best_val_loss:.5f}"


def _resumable_state(last_path: Path, config: Config, device: torch.device) -> dict[str, Any]:
    """``last.pt`` (or its ``.prev``), refusing a config that changes the model or the data."""
    state = ckpt.load_checkpoint(last_path, map_location=device)
    saved = Config.from_dict(state["config"])
    diff = config.mismatches(saved)
    if diff:
        listed = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (b, a) in diff.items())
        raise ckpt.CheckpointError(
            f"{last_path} was trained with a different config ({listed}). Use the saved settings to resume, "
            "or train into a new run folder (or delete that folder to start over)"
        )
    return state


def _fit_direct(family, model, config, run_dir, device, train_set, val_set, progress, log, started, resume):
    """Fit a family without gradients (e.g. the memory bank) and checkpoint it like any other run.

    ``last.pt`` and ``best.pt`` hold the same fitted state (``epoch`` = ``config.epochs`` marks it finished), so
    resume, ``is_finished``, evaluation and the checkpoint checks work unchanged. A finished run is loaded,
    not refitted.
    """
    last_path, best_path = run_dir / LAST, run_dir / BEST
    info: dict[str, Any] = {}
    status = "completed"
    state = None
    if resume and (last_path.exists() or ckpt.previous_path(last_path).exists()):
        state = _resumable_state(last_path, config, device)
        model.load_state_dict(state["model"])
        info = dict(state.get("fit_info") or {})
        status = "already_done"
        log(f"{config.category}: loaded the fitted {config.mode} from {state['loaded_from']}")
    config.save(run_dir / "config.json")
    if state is None:
        model.eval()
        info = family.fit(model, train_set, config, device, progress=progress, log=log)
        state = {
            "model": model.state_dict(),
            "epoch": config.epochs,
            "history": {},
            "config": config.to_dict(),
            "best_metric": float("nan"),
            "rng": ckpt.rng_state(),
            "fit_info": info,
            "role": "last",
        }
        ckpt.save_checkpoint(last_path, state)
    model.eval()
    best = _read_best(best_path, LAST, device, log) or {**state, "rebuilt": True}
    calibration = calibrate_run(model, config, device, best_path, train_set, val_set, config.batch_size, best)
    return TrainResult(
        run_dir=run_dir,
        config=config,
        model=model,
        history={},
        epochs_done=config.epochs,
        best_val_loss=float("nan"),
        status=status,
        seconds=time.monotonic() - started,
        calibration=calibration,
        fit_info=info,
    )


def _read_best(best_path: Path, last_name: str, device, log: Callable[[str], None]) -> dict[str, Any] | None:
    """``best.pt``, or ``None`` when it is missing or broken (then it is rebuilt from ``last.pt``, said in one line)."""
    if not best_path.exists():
        return None
    try:
        return ckpt.load_checkpoint(best_path, map_location=device)
    except ckpt.CheckpointError as exc:
        log(f"{best_path} is unreadable ({str(exc).split(';')[0][:120]}); rebuilding it from {last_name}, no retraining")
        return None


def calibrate_run(model, config, device, best_path, train_set, val_set, batch_size, best) -> dict[str, Any]:
    """The calibration stored in ``best`` (``best.pt``'s payload), recomputed and saved to ``best_path`` when the
    weights or scoring settings changed since, when ``best_path`` does not exist, or when ``best.pt`` had to be
    rebuilt. ``best`` is updated in place (calibration, the config it holds and was calibrated for)."""
    calibration = best.get("calibration") or {}
    stale = best.get("calibrated_epoch") != best["epoch"] or best.get("calibrated_config") != config.to_dict()
    if not calibration or stale or not best_path.exists() or best.get("rebuilt"):
        calibration = calibrate(model, val_set.images, config, device, batch_size, train_images_uint8=train_set.images,
                                leave_one_out=get_family(config).cross_fits)  # fmt: skip
        best["calibration"] = calibration
        best["calibrated_epoch"] = best["epoch"]
        best["calibrated_config"] = config.to_dict()
        best["config"] = config.to_dict()  # evaluation scores with the settings it was calibrated for
        best["role"] = "best"
        for key in ("loaded_from", "rebuilt"):
            best.pop(key, None)
        ckpt.save_checkpoint(best_path, best, keep_previous=False)
    return calibration


def train_all(
    categories: list[str],
    data_root: str | Path,
    runs_dir: str | Path,
    device: torch.device | str = "cpu",
    config: Config | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    **overrides: Any,
) -> dict[str, TrainResult | None]:
    """Train several categories one after another into ``runs_dir/<category>``.

    Categories already finished are skipped (``None`` in the result); an
    interrupted one resumes. Each uses ``Config.for_category`` with the fields
    of ``config`` (if given) and ``overrides``.
    """
    base = config.to_dict() if config else {}
    base.pop("category", None)
    base.pop("augment", None)
    base.update(overrides)
    results: dict[str, TrainResult | None] = {}
    for category in categories:
        cfg = Config.for_category(category, **base)
        run_dir = Path(runs_dir) / category
        if is_finished(run_dir, cfg):
            log(f"{category}: already trained in {run_dir}, skipping")
            results[category] = None
            continue
        results[category] = fit(cfg, data_root, run_dir, device=device, progress=progress, log=log)
    return results
