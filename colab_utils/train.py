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

Pixel U-Net (``mode="unet"``): each batch is augmented (label-preserving,
per-category list in the config), then a share ``corruption_prob`` of it gets
synthetic defects; the model reconstructs the *clean* image from the
corrupted one, so it learns to remove defects rather than copy them.

Feature mode (``mode="feature"``): backbone features of the (augmented)
training images are extracted once and cached, so an epoch costs only the
small feature autoencoder.
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
from .augment import augment_batch
from .config import Config
from .corruption import synthesize_defects
from .data import ImageSet, load_split, split_train_val
from .losses import build_loss
from .model import build_model
from .scoring import calibrate, to_float

LAST = "last.pt"
BEST = "best.pt"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    """What :func:`fit` produced. ``model`` holds the best weights, in eval mode."""

    run_dir: Path
    config: Config
    model: nn.Module
    history: dict[str, list[float]]
    epochs_done: int
    best_val_loss: float
    status: str  # "completed", "time_limit" or "already_done"
    seconds: float
    calibration: dict[str, Any] = field(default_factory=dict)

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


def _trainable(model: nn.Module) -> nn.Module:
    """The part of the model that trains (the feature autoencoder in feature mode)."""
    return getattr(model, "autoencoder", model)


def load_data(config: Config, data_root: str | Path) -> tuple[ImageSet, ImageSet]:
    """The category's good training images split into (train, held-out) by ``val_fraction`` and ``seed``."""
    full = load_split(data_root, config.category, "train", config.image_size, config.channels)
    train_idx, val_idx = split_train_val(len(full), config.val_fraction, config.seed)
    return full.subset(train_idx), full.subset(val_idx)


@torch.no_grad()
def _extract(model: nn.Module, images: Tensor, device: torch.device, batch_size: int) -> Tensor:
    """Cached backbone features (N,F,h,w) float16 on the CPU, for uint8 images (N,3,H,W) (float in [0,1] ok)."""
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device)
        batch = batch.float().div(255.0) if batch.dtype == torch.uint8 else batch.float()
        out.append(model.extractor(batch).to(torch.float16).cpu())
    return torch.cat(out)


def _feature_cache(model: nn.Module, images: Tensor, config: Config, device: torch.device, gen: torch.Generator):
    """Features of the training images plus one augmented view per image when augmentations are on."""
    feats = [_extract(model, images, device, config.batch_size)]
    if config.augmentations:
        aug = augment_batch(images.float().div(255.0), config.augmentations, gen)
        feats.append(_extract(model, aug, device, config.batch_size))
    return torch.cat(feats)


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
    from tqdm.auto import tqdm

    device = torch.device(device)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    if train_set is None:
        if data_root is None:
            raise ValueError("fit needs data_root (an MVTec-layout folder) or train_set")
        train_set, val_set = load_data(config, data_root)
    elif val_set is None:
        tr, va = split_train_val(len(train_set), config.val_fraction, config.seed)
        train_set, val_set = train_set.subset(tr), train_set.subset(va)

    torch.manual_seed(config.seed)
    model = build_model(config).to(device)
    trainable = _trainable(model)
    params = [p for p in trainable.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    use_amp = bool(config.amp and device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    gen = torch.Generator(device="cpu").manual_seed(config.seed)

    views = 2 if config.mode == "feature" and config.augmentations else 1
    n = len(train_set) * views
    batch_size = min(config.batch_size, n)
    steps_per_epoch = max(1, n // batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, steps_per_epoch))

    history: dict[str, list[float]] = {"epoch": [], "train_loss": [], "val_loss": [], "lr": [], "seconds": []}
    epoch, best_val = 0, math.inf
    last_path, best_path = run_dir / LAST, run_dir / BEST
    if resume and (last_path.exists() or ckpt.previous_path(last_path).exists()):
        state = ckpt.load_checkpoint(last_path, map_location=device)
        saved = Config.from_dict(state["config"])
        diff = config.mismatches(saved)
        if diff:
            listed = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (b, a) in diff.items())
            raise ckpt.CheckpointError(
                f"{last_path} was trained with a different config ({listed}). Use the saved settings to resume, "
                "or train into a new run folder (or delete that folder to start over)"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") and use_amp:
            scaler.load_state_dict(state["scaler"])
        epoch, best_val, history = state["epoch"], state["best_metric"], state["history"]
        ckpt.set_rng_state(state["rng"])
        if "generator" in state:
            gen.set_state(state["generator"])
        log(f"resumed {config.category} from {state['loaded_from']} at epoch {epoch}/{config.epochs}")
    config.save(run_dir / "config.json")

    train_x, val_x = train_set.images, val_set.images
    perceptual = None
    if config.mode == "unet" and config.loss_perceptual_weight > 0:
        from .backbones import FeatureExtractor

        perceptual = FeatureExtractor(config.backbone, config.feature_layers, config.pretrained).to(device)
    loss_fn = build_loss(config, perceptual_extractor=perceptual)
    if epoch < config.epochs and config.mode == "feature":
        log(f"extracting {config.backbone} features of {len(train_set)} training images (once)")
        cache_gen = torch.Generator(device="cpu").manual_seed(config.seed + 1)  # same views on every resume
        train_x = _feature_cache(model, train_set.images, config, device, cache_gen)
        val_x = _extract(model, val_set.images, device, config.batch_size)

    def payload(kind: str) -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if use_amp else None,
            "epoch": epoch,
            "history": history,
            "config": config.to_dict(),
            "best_metric": best_val,
            "rng": ckpt.rng_state(),
            "generator": gen.get_state(),
            "role": kind,
        }

    def run_batch(x: Tensor, train: bool) -> tuple[Tensor, dict[str, float]]:
        """Loss of one batch; the forward pass runs under autocast on CUDA, the loss in float32."""

        def fp32(out: dict) -> dict:
            return {k: v.float() for k, v in out.items()}

        if config.mode == "feature":
            x = x.to(device).float()
            with torch.autocast(device_type=device.type, enabled=use_amp):
                out = model.autoencoder(x)
            return loss_fn(fp32(out), x)
        clean = to_float(x, device)
        inputs = clean
        if train:
            clean = augment_batch(clean, config.augmentations, gen)
            inputs, _ = synthesize_defects(clean, gen, config.corruption_prob, config.corruptions)
        with torch.autocast(device_type=device.type, enabled=use_amp):
            out = model(inputs)
        return loss_fn(fp32(out), clean)

    status = "already_done" if epoch >= config.epochs else "completed"
    last_saved = time.monotonic()
    bar = tqdm(total=config.epochs, initial=epoch, desc=f"train {config.category}", disable=not progress)
    while epoch < config.epochs:
        epoch_start = time.monotonic()
        trainable.train()
        order = torch.randperm(n, generator=gen)
        total, count, parts_sum = 0.0, 0, {}
        for step in range(steps_per_epoch):
            idx = order[step * batch_size : (step + 1) * batch_size]
            loss, parts = run_batch(train_x[idx], train=True)
            if not torch.isfinite(loss):
                bar.close()
                raise TrainingDiverged(
                    f"{config.category}: loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}. "
                    f"The last good checkpoint in {run_dir} is kept; lower lr (now {config.lr}) or set amp=False"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(params, config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total += loss.item() * len(idx)
            count += len(idx)
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v * len(idx)
        trainable.eval()
        with torch.no_grad():
            val_losses = [run_batch(val_x[s : s + batch_size], train=False)[0].item() for s in range(0, len(val_x), batch_size)]
        val_loss = float(sum(val_losses) / max(1, len(val_losses)))
        epoch += 1
        history["epoch"].append(epoch)
        history["train_loss"].append(total / max(1, count))
        history["val_loss"].append(val_loss)
        history["lr"].append(optimizer.param_groups[0]["lr"])
        history["seconds"].append(time.monotonic() - epoch_start)
        for k, v in parts_sum.items():
            history.setdefault(f"train_{k}", []).append(v / max(1, count))
        bar.update(1)
        bar.set_postfix(loss=f"{history['train_loss'][-1]:.4f}", val=f"{val_loss:.4f}")
        if on_epoch is not None:
            on_epoch(epoch, history)

        if val_loss < best_val:
            best_val = val_loss
            ckpt.save_checkpoint(best_path, payload("best"), keep_previous=False)
        out_of_time = config.max_minutes > 0 and (time.monotonic() - started) / 60 >= config.max_minutes
        due = epoch % config.checkpoint_every_epochs == 0 or (
            time.monotonic() - last_saved >= 60 * config.checkpoint_every_minutes
        )
        if due or out_of_time or epoch >= config.epochs:
            ckpt.save_checkpoint(last_path, payload("last"))
            last_saved = time.monotonic()
        if out_of_time and epoch < config.epochs:
            status = "time_limit"
            log(f"{config.category}: time budget of {config.max_minutes} min reached at epoch {epoch}; run again to resume")
            break
    bar.close()

    # The best weights, calibrated on held-out good images, are what evaluation uses.
    if best_path.exists():
        best = ckpt.load_checkpoint(best_path, map_location=device)
        model.load_state_dict(best["model"])
    else:
        best = payload("best")
    model.eval()
    calibration = best.get("calibration") or {}
    # recalibrate for new best weights, and when scoring settings changed since (they may change on resume)
    stale = best.get("calibrated_epoch") != best["epoch"] or best.get("calibrated_config") != config.to_dict()
    if not calibration or stale:
        calibration = calibrate(model, val_set.images, config, device, batch_size, train_images_uint8=train_set.images)
        best["calibration"] = calibration
        best["calibrated_epoch"] = best["epoch"]
        best["calibrated_config"] = config.to_dict()
        best["config"] = config.to_dict()  # evaluation scores with the settings it was calibrated for
        best.pop("loaded_from", None)
        ckpt.save_checkpoint(best_path, best, keep_previous=False)
    return TrainResult(
        run_dir=run_dir,
        config=config,
        model=model,
        history=history,
        epochs_done=epoch,
        best_val_loss=best_val,
        status=status,
        seconds=time.monotonic() - started,
        calibration=calibration,
    )


def load_trained(run_dir_or_file: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, Config, dict]:
    """Rebuild the model from ``best.pt`` (or the given file) for inference.

    Returns (model in eval mode on ``device``, its Config, the checkpoint payload).
    A checkpoint whose weights do not fit the architecture its config describes
    raises :class:`~colab_utils.checkpoint.CheckpointError`.
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
