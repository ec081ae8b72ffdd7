"""Checkpoints that survive Colab disconnects.

A checkpoint is a plain dict of state_dicts and Python values (never a pickled
module), saved with :func:`torch.save`:

``{"format": 1, "kind": "colab_utils.checkpoint", "model": state_dict, "optimizer": state_dict,
"scheduler": state_dict, "scaler": state_dict | None, "epoch": int (epochs completed),
"history": dict[str, list[float]], "config": dict, "best_metric": float, "rng": dict,
"normalizer": dict | None, "saved_at": float}``

Writing is atomic: the payload goes to a temporary file in the same folder,
is flushed and fsynced, then :func:`os.replace` moves it over the target, so a
disconnect mid-write never leaves a half-written ``last.pt``. The copy it
replaces is kept as ``last.pt.prev``; :func:`load_checkpoint` falls back to it
when the newer file turns out to be truncated or corrupt.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

FORMAT = 1
KIND = "colab_utils.checkpoint"
REQUIRED_KEYS = ("format", "kind", "model", "config", "epoch")


#: (file, mtime) of corrupt files already warned about, so each is reported once.
_WARNED: set[tuple[str, float]] = set()


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not fit; the message says what to do."""


def previous_path(path: str | Path) -> Path:
    """Where the copy replaced by the last save of ``path`` is kept."""
    path = Path(path)
    return path.with_name(path.name + ".prev")


def save_checkpoint(path: str | Path, payload: dict[str, Any], keep_previous: bool = True) -> Path:
    """Atomically write ``payload`` to ``path`` (temp file, fsync, ``os.replace``).

    ``payload`` must hold plain values and state_dicts. The existing file, if any,
    is kept as ``<path>.prev`` (hard link where the file system allows it, else a
    rename just before the replace), so one good copy exists at every instant.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "kind": KIND, "saved_at": time.time(), **payload}
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if keep_previous and path.exists():
            prev = previous_path(path)
            prev_tmp = prev.with_name(prev.name + ".tmp")
            try:
                if prev_tmp.exists():
                    prev_tmp.unlink()
                os.link(path, prev_tmp)
                os.replace(prev_tmp, prev)
            except OSError:  # no hard links (some network file systems): copy bytes instead
                prev_tmp.write_bytes(path.read_bytes())
                os.replace(prev_tmp, prev)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _read(path: Path, map_location: Any) -> dict[str, Any]:
    try:
        data = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - truncated zip, bad pickle, EOF...
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise CheckpointError(
            f"{path} is not a colab_utils checkpoint (expected a dict with kind={KIND!r}); "
            "pass a last.pt/best.pt written by colab_utils.train.fit"
        )
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}; it was written by an incompatible version")
    if data["format"] > FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format {data['format']}, newer than this package understands ({FORMAT}); "
            "upgrade colab_utils"
        )
    return data


def load_checkpoint(path: str | Path, map_location: Any = "cpu", fallback: bool = True) -> dict[str, Any]:
    """Read and validate a checkpoint; on corruption fall back to ``<path>.prev``.

    Returns the payload dict; ``payload["loaded_from"]`` says which file was used.
    Raises :class:`CheckpointError` naming the file and the fix when no good copy exists.
    """
    path = Path(path)
    prev = previous_path(path)
    if not path.exists() and not (fallback and prev.exists()):
        raise CheckpointError(
            f"no checkpoint at {path}; train first (colab_utils.train.fit or `python -m colab_utils train`) "
            "or point to the run folder that holds last.pt/best.pt"
        )
    errors = []
    for candidate in ([path, prev] if fallback else [path]):
        if not candidate.exists():
            continue
        try:
            data = _read(candidate, map_location)
        except CheckpointError as exc:
            errors.append(str(exc))
            continue
        if candidate != path:
            key = (str(path.resolve()), path.stat().st_mtime if path.exists() else 0.0)
            if key not in _WARNED:  # once per broken file, however often it is read
                _WARNED.add(key)
                import warnings

                warnings.warn(
                    f"{path} is corrupt ({errors[0]}); using the previous good copy {candidate}",
                    RuntimeWarning,
                    stacklevel=2,
                )
        data["loaded_from"] = str(candidate)
        return data
    raise CheckpointError(
        "no usable checkpoint: " + "; ".join(errors) + ". If this is best.pt and last.pt is intact, run training "
        "again (`python -m colab_utils train ...` or colab_utils.train.fit): it rebuilds best.pt from last.pt "
        "without retraining. Otherwise delete the broken file(s) and retrain, or restore a copy"
    )


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file (recorded in results.json to tie results to weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def rng_state() -> dict[str, Any]:
    """The RNG states of Python, numpy and torch (CPU and CUDA), for exact resumption."""
    import random

    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA part only where CUDA exists)."""
    import random

    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu() if hasattr(state["torch"], "cpu") else state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except RuntimeError:  # different GPU count after a reconnect: not worth failing a resume
            pass
