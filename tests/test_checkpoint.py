"""Atomic checkpoints, validation and fallback to the previous good copy."""

import pytest
import torch

from colab_utils import checkpoint as ckpt


def _payload(epoch):
    model = torch.nn.Linear(3, 2)
    torch.nn.init.constant_(model.weight, float(epoch))
    return {"model": model.state_dict(), "config": {"a": 1}, "epoch": epoch}


def test_round_trip_and_previous_copy(tmp_path):
    path = tmp_path / "run" / "last.pt"
    ckpt.save_checkpoint(path, _payload(1))
    ckpt.save_checkpoint(path, _payload(2))
    data = ckpt.load_checkpoint(path)
    assert data["epoch"] == 2 and data["kind"] == ckpt.KIND
    assert torch.all(data["model"]["weight"] == 2)
    assert ckpt.load_checkpoint(ckpt.previous_path(path), fallback=False)["epoch"] == 1
    # no temporary files are left behind
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt", "last.pt.prev"]


def test_truncated_file_falls_back_to_previous(tmp_path):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, _payload(1))
    ckpt.save_checkpoint(path, _payload(2))
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 3])
    with pytest.warns(RuntimeWarning, match="previous good copy"):
        data = ckpt.load_checkpoint(path)
    assert data["epoch"] == 1
    assert data["loaded_from"].endswith("last.pt.prev")


def test_no_good_copy_raises_clear_error(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="unreadable"):
        ckpt.load_checkpoint(path)
    with pytest.raises(ckpt.CheckpointError, match="train first"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")


def test_foreign_file_is_rejected(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ckpt.CheckpointError, match="not a colab_utils checkpoint"):
        ckpt.load_checkpoint(path)


def test_failed_write_leaves_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, _payload(1))

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(path, _payload(2))
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_rng_state_round_trip():
    state = ckpt.rng_state()
    a = torch.rand(3)
    ckpt.set_rng_state(state)
    assert torch.equal(torch.rand(3), a)


def test_sha256_matches_hashlib(tmp_path):
    import hashlib

    f = tmp_path / "x.bin"
    f.write_bytes(b"abc" * 1000)
    assert ckpt.file_sha256(f) == hashlib.sha256(b"abc" * 1000).hexdigest()
