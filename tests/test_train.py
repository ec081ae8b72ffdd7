"""Training: the loss goes down on real images, and runs survive interruptions, corruption and NaNs."""

from __future__ import annotations

import pytest
import torch

from colab_utils import checkpoint as ckpt
from colab_utils import train as train_mod
from colab_utils.config import Config
from colab_utils.models import get_family
from colab_utils.train import LAST, TrainingDiverged, fit, is_finished, load_trained, train_all


def tiny_unet(category: str = "sample", **kw) -> Config:
    values = dict(mode="unet", image_size=64, base_width=8, depth=3, skip_levels=1, out_scales=(1, 2),
                  loss_scale_weights=(1.0, 0.5), map_scale_weights=(1.0, 1.0), epochs=2, batch_size=8,
                  smooth_sigma=1.0, lr=2e-3)
    values.update(kw)
    return Config.for_category(category, **values)


def test_unet_loss_goes_down_on_real_bottle_images(mvtec_root, tmp_path):
    cfg = tiny_unet("bottle", epochs=4, corruption_prob=0.0, augment=())
    result = fit(cfg, mvtec_root, tmp_path / "run", progress=False, log=lambda m: None)
    losses = result.history["train_loss"]
    assert len(losses) == 4 and result.status == "completed"
    assert losses[-1] < 0.7 * losses[0], losses
    assert result.history["val_loss"][-1] < result.history["val_loss"][0]
    # per-term parts are recorded for the notebook's curves
    assert any(k.startswith("train_") and k != "train_loss" for k in result.history)
    assert (tmp_path / "run" / "best.pt").exists() and (tmp_path / "run" / "config.json").exists()


def _params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


class Disconnect(Exception):
    """Stands in for a Colab runtime disconnect."""


def test_interrupted_run_resumes_exactly(sample_root, tmp_path, monkeypatch):
    cfg = tiny_unet(epochs=4)
    reference = fit(cfg, sample_root, tmp_path / "ref", progress=False, log=lambda m: None)

    real_save = ckpt.save_checkpoint
    saves = {"n": 0}

    def save_then_disconnect(path, payload, keep_previous=True):
        real_save(path, payload, keep_previous)
        if path.name == LAST:
            saves["n"] += 1
            if saves["n"] == 2:
                raise Disconnect()

    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_disconnect)
    with pytest.raises(Disconnect):
        fit(cfg, sample_root, tmp_path / "run", progress=False, log=lambda m: None)
    monkeypatch.setattr(ckpt, "save_checkpoint", real_save)
    saved = ckpt.load_checkpoint(tmp_path / "run" / LAST)
    assert saved["epoch"] == 2 and len(saved["history"]["train_loss"]) == 2

    messages = []
    resumed = fit(cfg, sample_root, tmp_path / "run", progress=False, log=messages.append)
    assert any("resumed" in m and "epoch 2" in m for m in messages)
    assert resumed.history["train_loss"][:2] == saved["history"]["train_loss"]
    assert resumed.epochs_done == 4
    # same data order, augmentations, defects and optimizer state: the same weights as the uninterrupted run
    for name, value in _params(reference.model).items():
        assert torch.allclose(value.float(), resumed.model.state_dict()[name].float(), atol=1e-5), name
    assert resumed.history["train_loss"] == pytest.approx(reference.history["train_loss"], rel=1e-4)


def test_finished_run_is_not_retrained(sample_root, tmp_path):
    cfg = tiny_unet(epochs=1)
    fit(cfg, sample_root, tmp_path / "run", progress=False, log=lambda m: None)
    assert is_finished(tmp_path / "run", cfg)
    again = fit(cfg, sample_root, tmp_path / "run", progress=False, log=lambda m: None)
    assert again.status == "already_done" and again.epochs_done == 1
    assert not is_finished(tmp_path / "run", cfg.replace(epochs=3))


def test_corrupt_last_checkpoint_falls_back_to_previous(sample_root, tmp_path):
    cfg = tiny_unet(epochs=2)
    fit(cfg, sample_root, tmp_path / "run", progress=False, log=lambda m: None)
    last = tmp_path / "run" / LAST
    last.write_bytes(last.read_bytes()[:1000])  # truncated by a disconnect during an upload
    messages = []
    with pytest.warns(RuntimeWarning, match="previous good copy"):
        result = fit(cfg.replace(epochs=3), sample_root, tmp_path / "run", progress=False, log=messages.append)
    assert any("resumed" in m and "epoch 1" in m for m in messages)
    assert result.epochs_done == 3


def test_config_mismatch_refuses_to_resume(sample_root, tmp_path):
    cfg = tiny_unet(epochs=1)
    fit(cfg, sample_root, tmp_path / "run", progress=False, log=lambda m: None)
    with pytest.raises(ckpt.CheckpointError, match="base_width"):
        fit(cfg.replace(base_width=16, epochs=2), sample_root, tmp_path / "run", progress=False, log=lambda m: None)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(sample_root, tmp_path, monkeypatch):
    cfg = tiny_unet(epochs=3)
    train_set, val_set = train_mod.load_data(cfg, sample_root)
    first_epoch_calls = len(train_set) // cfg.batch_size + -(-len(val_set) // cfg.batch_size)
    family = get_family(cfg)
    real_build = family.loss
    calls = {"n": 0}

    def poisoned(config, device):
        loss = real_build(config, device)

        def fn(outputs, target):
            total, parts = loss(outputs, target)
            calls["n"] += 1
            if calls["n"] > first_epoch_calls:  # after the first epoch and its validation
                total = total * float("nan")
            return total, parts

        return fn

    monkeypatch.setattr(family, "loss", poisoned)
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        fit(cfg, sample_root, tmp_path / "run", progress=False, log=lambda m: None)
    state = ckpt.load_checkpoint(tmp_path / "run" / LAST)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_time_budget_checkpoints_and_stops(sample_root, tmp_path):
    cfg = tiny_unet(epochs=50, max_minutes=1e-4)
    result = fit(cfg, sample_root, tmp_path / "run", progress=False, log=lambda m: None)
    assert result.status == "time_limit" and result.epochs_done == 1
    assert ckpt.load_checkpoint(tmp_path / "run" / LAST)["epoch"] == 1


def test_train_all_skips_finished_categories(sample_root, tmp_path):
    base = tiny_unet(epochs=1)
    first = train_all(["sample"], sample_root, tmp_path, config=base, progress=False, log=lambda m: None)
    assert first["sample"] is not None and first["sample"].epochs_done == 1
    messages = []
    second = train_all(["sample"], sample_root, tmp_path, config=base, progress=False, log=messages.append)
    assert second["sample"] is None and any("skipping" in m for m in messages)


def test_load_trained_rejects_mismatched_weights(sample_root, tmp_path):
    cfg = tiny_unet(epochs=1)
    fit(cfg, sample_root, tmp_path / "run", progress=False, log=lambda m: None)
    state = ckpt.load_checkpoint(tmp_path / "run" / "best.pt")
    state["config"]["base_width"] = 16  # the weights no longer fit the architecture the config describes
    state.pop("loaded_from")
    ckpt.save_checkpoint(tmp_path / "bad.pt", state)
    with pytest.raises(ckpt.CheckpointError, match="do not match"):
        load_trained(tmp_path / "bad.pt")
    model, config, _ = load_trained(tmp_path / "run")
    assert config == cfg.replace(geometry="resize") and not model.training  # the saved config records the settled geometry


def test_changed_scoring_settings_recalibrate_a_finished_run(sample_root, tmp_path):
    cfg = tiny_unet(epochs=1)
    fit(cfg, sample_root, tmp_path / "run", progress=False, log=lambda m: None)
    before = ckpt.load_checkpoint(tmp_path / "run" / "best.pt")
    rescored = cfg.replace(smooth_sigma=3.0, image_score_norm="global")
    again = fit(rescored, sample_root, tmp_path / "run", progress=False, log=lambda m: None)
    after = ckpt.load_checkpoint(tmp_path / "run" / "best.pt")
    assert again.status == "already_done"
    assert after["config"]["smooth_sigma"] == 3.0 and after["calibration"]["position"] is None
    assert before["calibration"]["position"] is not None
    assert after["calibration"]["image_threshold"] != before["calibration"]["image_threshold"]
    _, loaded, _ = load_trained(tmp_path / "run")
    assert loaded.smooth_sigma == 3.0


_KILLABLE_RUN = """
import sys, torch
torch.set_num_threads(1)
from colab_utils.config import Config
from colab_utils.train import fit
cfg = Config.from_dict({cfg!r})
fit(cfg, {root!r}, {run!r}, progress=False, log=lambda m: None)
"""


def test_killed_mid_epoch_run_resumes_from_inside_the_epoch(sample_root, tmp_path):
    """A real SIGKILL in the middle of a long epoch loses at most checkpoint_every_minutes of work."""
    import os
    import signal
    import subprocess
    import sys
    import time

    cfg = tiny_unet(epochs=1, batch_size=2, checkpoint_every_minutes=0.002)  # a save every ~0.1 s inside the epoch
    reference = fit(cfg, sample_root, tmp_path / "ref", progress=False, log=lambda m: None)
    run = tmp_path / "run"
    code = _KILLABLE_RUN.format(cfg=cfg.to_dict(), root=str(sample_root), run=str(run))
    proc = subprocess.Popen([sys.executable, "-c", code])
    step = 0
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (run / LAST).exists():
                try:
                    partial = ckpt.load_checkpoint(run / LAST, fallback=False).get("partial_epoch")
                except ckpt.CheckpointError:
                    partial = None
                if partial and partial["step"] >= 3:
                    step = partial["step"]
                    break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and step >= 3, "the run was not caught mid-epoch"
    state = ckpt.load_checkpoint(run / LAST)
    assert state["epoch"] == 0 and state["partial_epoch"]["step"] >= step
    messages = []
    resumed = fit(cfg, sample_root, run, progress=False, log=messages.append)
    assert any("resumed" in m and f"step {state['partial_epoch']['step']}/" in m for m in messages), messages
    # model, optimizer, scheduler, RNG and the epoch's order restored: the same weights as the uninterrupted run
    for name, value in _params(reference.model).items():
        assert torch.allclose(value.float(), resumed.model.state_dict()[name].float(), atol=1e-5), name
    assert resumed.history["train_loss"] == pytest.approx(reference.history["train_loss"], rel=1e-4)


def test_broken_best_checkpoint_is_rebuilt_from_last(sample_root, tmp_path):
    cfg = tiny_unet(epochs=1)
    fit(cfg, sample_root, tmp_path / "run", progress=False, log=lambda m: None)
    best = tmp_path / "run" / "best.pt"
    best.write_bytes(best.read_bytes()[:500])
    assert not is_finished(tmp_path / "run", cfg)
    messages = []
    result = fit(cfg, sample_root, tmp_path / "run", progress=False, log=messages.append)
    rebuilt = [m for m in messages if "rebuilding it from last.pt" in m]
    assert len(rebuilt) == 1 and result.status == "already_done"
    model, _, state = load_trained(tmp_path / "run")
    assert state["calibration"]["image_threshold"] == result.calibration["image_threshold"]
    assert is_finished(tmp_path / "run", cfg)


def test_corrupt_checkpoint_warning_is_printed_once(sample_root, tmp_path):
    import warnings

    cfg = tiny_unet(epochs=2)
    fit(cfg, sample_root, tmp_path / "run", progress=False, log=lambda m: None)
    last = tmp_path / "run" / LAST
    last.write_bytes(last.read_bytes()[:1000])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            ckpt.load_checkpoint(last)
    assert sum("previous good copy" in str(w.message) for w in caught) == 1


def test_too_few_good_images_for_calibration_are_warned_about(sample_root, tmp_path):
    from colab_utils.data import load_split

    full = load_split(sample_root, "sample", "train", 64, 3)
    messages = []
    fit(tiny_unet(epochs=1), None, tmp_path / "run", train_set=full.subset(list(range(18))),
        progress=False, log=messages.append)  # fmt: skip
    assert any("warning" in m and "good images calibrate" in m for m in messages)
