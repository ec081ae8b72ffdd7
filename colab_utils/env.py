"""Where the code runs: Colab detection, Google Drive, the torch device, folders, seeds.

The rest of the package never names a device: it receives the ``torch.device`` that
:func:`get_device` chose. Folders come from :func:`resolve_paths`: on Colab they live on
Google Drive (so checkpoints survive a disconnect), elsewhere under the current folder.
"""

from __future__ import annotations

import importlib.util
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

PathLike = Union[str, "os.PathLike[str]"]

DRIVE_MOUNTPOINT = "/content/drive"
COLAB_GPU_HINT = "In Colab: Runtime > Change runtime type > T4 GPU, then run the notebook again."
_TRUE = ("1", "true", "yes", "on")


def _colab_installed() -> bool:
    try:
        return importlib.util.find_spec("google.colab") is not None
    except (ImportError, ValueError):
        return False


def in_colab() -> bool:
    """Whether this process runs inside Google Colab."""
    return "google.colab" in sys.modules or bool(os.environ.get("COLAB_RELEASE_TAG")) or _colab_installed()


def mount_drive(mountpoint: PathLike = DRIVE_MOUNTPOINT) -> Optional[Path]:
    """Mount Google Drive at ``mountpoint`` in Colab and return it; ``None`` (and nothing done) elsewhere.

    Idempotent: an already mounted Drive (``<mountpoint>/MyDrive`` exists) is returned as is.
    """
    if not in_colab():
        return None
    mount = Path(mountpoint)
    if (mount / "MyDrive").is_dir():
        return mount
    from google.colab import drive  # only importable in Colab

    try:
        drive.mount(str(mount))
    except Exception as exc:  # noqa: BLE001 - Colab raises several types when the user declines
        raise RuntimeError(
            f"Google Drive could not be mounted at {mount} ({exc}). Run the cell again and allow access, or pass "
            f"explicit local folders (data_root=..., runs_dir=..., outputs_dir=...) to keep everything on the VM"
        ) from exc
    return mount


def get_device(preferred: Union[str, torch.device, None] = None) -> torch.device:
    """The torch device to use: ``preferred`` if given (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, ``"auto"``),
    else CUDA when available, else CPU.

    Raises:
        RuntimeError: a GPU was asked for but is not available (the message says how to get one).
        ValueError: ``preferred`` is not a device name.
    """
    if preferred is None or str(preferred).lower() in ("", "auto"):
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(preferred)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={preferred!r} is not a device name; use 'auto', 'cpu' or 'cuda'") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            hint = COLAB_GPU_HINT if in_colab() else "Install a CUDA build of PyTorch on a machine with an NVIDIA GPU,"
            raise RuntimeError(
                f"device={preferred!r} was requested but CUDA is not available. {hint} or use the CPU (--device cpu; Python: device='cpu')"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device={preferred!r}: only {torch.cuda.device_count()} CUDA device(s) visible; use 'cuda:0'"
            )
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError(f"device={preferred!r} was requested but Apple MPS is not available; use the CPU (--device cpu; Python: device='cpu')")
    return device


def describe_device(device: Union[torch.device, str]) -> str:
    """One line about ``device``: GPU name and memory, or CPU core count (with how to get a GPU on Colab)."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return (
            f"GPU {index}: {props.name}, {props.total_memory / 2**30:.1f} GiB, "
            f"compute capability {props.major}.{props.minor}, CUDA {torch.version.cuda}, torch {torch.__version__}"
        )
    if device.type == "cpu":
        text = f"CPU: {os.cpu_count() or 1} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
        if in_colab():
            text += f". No GPU: training will be slow. {COLAB_GPU_HINT}"
        return text
    return f"{device.type}: torch {torch.__version__}"


@dataclass
class Paths:
    """Folders of a session: ``data_root`` (datasets, read), ``runs_dir`` (checkpoints), ``outputs_dir`` (results)."""

    data_root: Path
    runs_dir: Path
    outputs_dir: Path
    on_drive: bool = False

    def as_dict(self) -> dict[str, str]:
        return {"data_root": str(self.data_root), "runs_dir": str(self.runs_dir), "outputs_dir": str(self.outputs_dir)}


def resolve_paths(
    data_root: Optional[PathLike] = None,
    runs_dir: Optional[PathLike] = None,
    outputs_dir: Optional[PathLike] = None,
    drive_base: str = "MyDrive/anomaly",
    drive_mountpoint: PathLike = DRIVE_MOUNTPOINT,
    create: bool = True,
) -> Paths:
    """The session folders, as absolute paths.

    Explicit arguments win. Otherwise ``data_root`` is ``$MVTEC_ROOT`` when that is set;
    then, in Colab, everything lives on Google Drive (mounted here if needed) under
    ``<drive_mountpoint>/<drive_base>/{data,runs,outputs}``; elsewhere ``./data``,
    ``./outputs/runs`` and ``./outputs`` relative to the current folder. ``create`` makes
    ``runs_dir`` and ``outputs_dir`` (never ``data_root``, which may be read-only).
    """
    env_root = os.environ.get("MVTEC_ROOT") or None
    if data_root is None and env_root:
        data_root = env_root
    on_drive = False
    if in_colab() and None in (data_root, runs_dir, outputs_dir):
        mounted = mount_drive(drive_mountpoint)
        if mounted is not None:
            base = mounted / drive_base
            on_drive = True
            data_root = base / "data" if data_root is None else data_root
            runs_dir = base / "runs" if runs_dir is None else runs_dir
            outputs_dir = base / "outputs" if outputs_dir is None else outputs_dir
    paths = Paths(
        data_root=Path(data_root if data_root is not None else "data").expanduser().absolute(),
        runs_dir=Path(runs_dir if runs_dir is not None else Path("outputs") / "runs").expanduser().absolute(),
        outputs_dir=Path(outputs_dir if outputs_dir is not None else "outputs").expanduser().absolute(),
        on_drive=on_drive,
    )
    if create:
        paths.runs_dir.mkdir(parents=True, exist_ok=True)
        paths.outputs_dir.mkdir(parents=True, exist_ok=True)
    return paths


def seed_everything(seed: int, deterministic: bool = False) -> int:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device); return ``seed``.

    ``deterministic=True`` also asks cuDNN for deterministic kernels (slower).
    """
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)  # a no-op without CUDA
    os.environ["PYTHONHASHSEED"] = str(seed)  # for subprocesses (DataLoader workers started by spawn)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return seed


def running_smoke() -> bool:
    """Whether the environment variable ``SMOKE`` asks for a quick smoke run (``1``, ``true``, ``yes``, ``on``)."""
    return os.environ.get("SMOKE", "").strip().lower() in _TRUE


def display_widget(owner: Any) -> None:
    """Display an object that wraps an ipywidget (``owner.widget``) and has a ``_repr_mimebundle_`` with a static
    fallback: in Colab the widget itself, so Colab's widget display hook adds the metadata its widget manager needs
    (a bundle from another object would not get it); elsewhere the owner's bundle (widget view + fallback)."""
    from IPython.display import display

    if in_colab():
        display(owner.widget)
    else:
        display(owner._repr_mimebundle_(), raw=True)


#: Set (to anything) for plain-text progress bars: the headless notebook runner sets it, so an executed notebook
#: keeps each bar's final line (a widget bar saved without its widget state would show its first state, 0 %).
TEXT_PROGRESS_ENV = "COLAB_UTILS_TEXT_PROGRESS"


def progress_bar(*args: Any, **kwargs: Any):
    """A tqdm progress bar: the notebook widget where one can be shown (tqdm.auto), plain text when
    :data:`TEXT_PROGRESS_ENV` is set."""
    if os.environ.get(TEXT_PROGRESS_ENV):
        from tqdm.std import tqdm
    else:
        from tqdm.auto import tqdm
    return tqdm(*args, **kwargs)
