"""colab_utils.env: Colab detection, Drive, device choice, folders, seeds."""

from __future__ import annotations

import random
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from colab_utils import env
from colab_utils.env import (
    Paths,
    describe_device,
    get_device,
    in_colab,
    mount_drive,
    resolve_paths,
    running_smoke,
    seed_everything,
)


@pytest.fixture()
def not_colab(monkeypatch):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(env, "_colab_installed", lambda: False)


@pytest.fixture()
def fake_colab(monkeypatch, tmp_path):
    """Pretend to be in Colab: a `google.colab.drive` whose mount() makes <mountpoint>/MyDrive."""
    calls = []

    def mount(mountpoint):
        calls.append(mountpoint)
        (Path(mountpoint) / "MyDrive").mkdir(parents=True, exist_ok=True)

    drive = types.SimpleNamespace(mount=mount)
    colab = types.ModuleType("google.colab")
    colab.drive = drive
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    return calls


def test_in_colab_detection(not_colab, monkeypatch):
    assert in_colab() is False
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20250101")
    assert in_colab() is True


def test_in_colab_with_module(fake_colab):
    assert in_colab() is True


def test_mount_drive_is_a_noop_outside_colab(not_colab, tmp_path):
    assert mount_drive(tmp_path / "drive") is None
    assert not (tmp_path / "drive").exists()


def test_mount_drive_in_colab_is_idempotent(fake_colab, tmp_path):
    mp = tmp_path / "drive"
    assert mount_drive(mp) == mp and (mp / "MyDrive").is_dir()
    assert mount_drive(mp) == mp
    assert fake_colab == [str(mp)]  # mounted once


def test_mount_failure_says_what_to_do(monkeypatch, tmp_path):
    def refuse(mountpoint):
        raise ValueError("mount failed: user declined")

    colab = types.ModuleType("google.colab")
    colab.drive = types.SimpleNamespace(mount=refuse)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    with pytest.raises(RuntimeError, match="allow access"):
        mount_drive(tmp_path / "drive")


def test_get_device_choices(monkeypatch, not_colab):
    assert get_device("cpu") == torch.device("cpu")
    auto = get_device()
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert get_device("auto") == auto
    with pytest.raises(ValueError, match="not a device name"):
        get_device("gpu-please")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert get_device() == torch.device("cpu")
    with pytest.raises(RuntimeError, match="CUDA is not available.*device='cpu'"):
        get_device("cuda")


def test_cuda_request_in_colab_without_gpu(monkeypatch, fake_colab):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"Runtime > Change runtime type > T4 GPU"):
        get_device("cuda")


def test_describe_device_cpu(not_colab):
    text = describe_device(torch.device("cpu"))
    assert text.startswith("CPU") and "cores" in text and "Runtime" not in text


def test_describe_device_cpu_in_colab(fake_colab):
    assert "Runtime > Change runtime type > T4 GPU" in describe_device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_describe_device_gpu():
    text = describe_device(get_device("cuda"))
    assert torch.cuda.get_device_name(0) in text and "GiB" in text


def test_resolve_paths_local_defaults(not_colab, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MVTEC_ROOT", raising=False)
    p = resolve_paths()
    assert isinstance(p, Paths) and not p.on_drive
    assert p.data_root == tmp_path / "data"
    assert p.runs_dir == tmp_path / "outputs" / "runs" and p.runs_dir.is_dir()
    assert p.outputs_dir == tmp_path / "outputs" and p.outputs_dir.is_dir()
    assert not p.data_root.exists()  # never created: it may be read-only
    assert set(p.as_dict()) == {"data_root", "runs_dir", "outputs_dir"}


def test_resolve_paths_env_and_explicit(not_colab, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MVTEC_ROOT", str(tmp_path / "mvtec"))
    assert resolve_paths(create=False).data_root == tmp_path / "mvtec"
    p = resolve_paths(data_root="mine", runs_dir=tmp_path / "r", outputs_dir=tmp_path / "o", create=False)
    assert p.data_root == tmp_path / "mine" and p.runs_dir == tmp_path / "r" and p.outputs_dir == tmp_path / "o"
    assert not (tmp_path / "r").exists()


def test_resolve_paths_on_drive_in_colab(fake_colab, monkeypatch, tmp_path):
    monkeypatch.delenv("MVTEC_ROOT", raising=False)
    mp = tmp_path / "drive"
    p = resolve_paths(drive_mountpoint=mp, drive_base="MyDrive/anomaly")
    base = mp / "MyDrive" / "anomaly"
    assert p.on_drive and p.data_root == base / "data"
    assert p.runs_dir == base / "runs" and p.outputs_dir == base / "outputs" and p.runs_dir.is_dir()
    assert fake_colab == [str(mp)]
    monkeypatch.setenv("MVTEC_ROOT", str(tmp_path / "local_copy"))
    assert resolve_paths(drive_mountpoint=mp, create=False).data_root == tmp_path / "local_copy"


def test_seed_everything_repeats_draws():
    def draw():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    assert seed_everything(123) == 123
    first = draw()
    seed_everything(123)
    assert draw() == first
    seed_everything(124)
    assert draw() != first


@pytest.mark.parametrize(
    "value,expected", [("1", True), ("true", True), (" YES ", True), ("0", False), ("", False), ("no", False)]
)
def test_running_smoke(monkeypatch, value, expected):
    monkeypatch.setenv("SMOKE", value)
    assert running_smoke() is expected


def test_running_smoke_unset(monkeypatch):
    monkeypatch.delenv("SMOKE", raising=False)
    assert running_smoke() is False


def test_library_names_no_device_outside_get_device():
    import inspect

    import colab_utils.data as data
    import colab_utils.download as download
    import colab_utils.sample as sample

    for mod in (data, sample, download):
        src = inspect.getsource(mod)
        assert '"cuda"' not in src and "'cuda'" not in src and ".cuda(" not in src, mod.__name__
