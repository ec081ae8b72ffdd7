"""Execute the notebooks headless (``make demo``, the notebook tests).

Parameters are injected the way papermill does it: a new cell, tagged
``injected-parameters``, right after the cell tagged ``parameters``, so the
notebook's own defaults stay visible and the overrides are recorded in the
executed copy. Needs the dev extras (nbclient, nbformat, nbconvert, ipykernel).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .env import TEXT_PROGRESS_ENV

NOTEBOOKS = ("01_data_exploration", "02_training", "03_evaluation", "04_heatmap_gallery", "05_inspect_new_images")
NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"

#: Categories the demo trains on real data, by profile (the first four MVTec
#: categories that are present under MVTEC_ROOT are taken, up to this many).
DEMO_CATEGORY_LIMIT = {"smoke": 1, "cpu": 1, "gpu": 4}
DEMO_PREFERRED = ("bottle", "capsule", "hazelnut", "screw")


def inject_parameters(nb: Any, params: dict[str, Any]) -> Any:
    """Insert ``NAME = value`` lines after the ``parameters`` cell (in place); returns ``nb``."""
    import nbformat

    if not params:
        return nb
    index = next(
        (i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])),
        None,
    )
    if index is None:
        raise ValueError("notebook has no cell tagged 'parameters'; tag its config cell so parameters can be injected")
    source = "# Parameters injected by colab_utils.runner\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    nb.cells.insert(index + 1, cell)
    return nb


def declared_parameters(path: str | Path) -> set[str]:
    """Names assigned in the notebook's cell tagged ``parameters``."""
    import ast

    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        raise ValueError(f"{path} has no cell tagged 'parameters'; tag its config cell so parameters can be injected")
    tree = ast.parse(cells[0].source)
    return {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}


def params_for(path: str | Path, params: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``params`` that the notebook at ``path`` declares (so one set can drive every notebook)."""
    declared = declared_parameters(path)
    return {k: v for k, v in params.items() if k in declared}


def _kernel_transport() -> tuple[Any, Path | None]:
    """(traitlets config, socket folder): the kernel on local IPC sockets where the system has them (no TCP port,
    so the kernel has no plain-text transport to warn about), in a private folder; TCP elsewhere."""
    from traitlets.config import Config as TraitletsConfig

    config = TraitletsConfig()
    if os.name == "nt":
        return config, None
    # an absolute socket path: the kernel runs in the notebook's folder, the client here
    sockets = Path(tempfile.mkdtemp(prefix="colab_utils-kernel-"))
    config.KernelManager.transport = "ipc"
    config.KernelManager.ip = str(sockets / "kernel")
    return config, sockets


def _coalesced(nb: Any) -> Any:
    """Each cell's consecutive stream outputs merged and carriage returns applied (nbconvert's own
    preprocessor), so a text progress bar is saved as its final line."""
    from nbconvert.preprocessors import CoalesceStreamsPreprocessor

    coalesce = CoalesceStreamsPreprocessor()
    for index, cell in enumerate(nb.cells):
        if cell.get("cell_type") == "code":
            coalesce.preprocess_cell(cell, {}, index)
    return nb


def execute_notebook(
    path: str | Path,
    params: dict[str, Any] | None = None,
    out_path: str | Path | None = None,
    html: bool = False,
    timeout: int = 1800,
    cwd: str | Path | None = None,
    env_vars: dict[str, str] | None = None,
) -> Any:
    """Run a notebook top to bottom in a fresh Jupyter kernel and return the executed notebook.

    Raises ``nbclient.exceptions.CellExecutionError`` (with the failing cell's
    traceback) when a cell fails. With ``out_path`` the executed copy is
    written there, and with ``html`` an HTML rendering beside it.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(str(path), as_version=4)
    inject_parameters(nb, params or {})
    workdir = Path(cwd or Path(path).parent)
    workdir.mkdir(parents=True, exist_ok=True)
    env_vars = {TEXT_PROGRESS_ENV: "1", **(env_vars or {})}  # a saved bar keeps its final line, not its first
    saved = {k: os.environ.get(k) for k in env_vars}
    os.environ.update(env_vars)
    kernel_config, sockets = _kernel_transport()
    try:
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(workdir)}},
            config=kernel_config,
        )
        try:
            client.execute()
        finally:
            if sockets is not None:
                shutil.rmtree(sockets, ignore_errors=True)
            nb = _coalesced(nb)
            if out_path is not None:
                out_path = Path(out_path)
                out_path.parent.mkdir(parents=True, exist_ok=True)
                nbformat.write(nb, str(out_path))
                if html:
                    from nbconvert import HTMLExporter

                    # Without the saved widget state, nbconvert shows each widget's fallback (the gallery's
                    # picture, a progress bar's text) instead of a view that needs JavaScript from a CDN.
                    static = nbformat.from_dict(nb)
                    static.metadata.pop("widgets", None)
                    body, _ = HTMLExporter().from_notebook_node(static)
                    out_path.with_suffix(".html").write_text(body, encoding="utf-8")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def demo_plan(out: str | Path, profile: str = "auto") -> dict[str, Any]:
    """Decide data, categories and profile for ``make demo``.

    Real data when ``MVTEC_ROOT`` points at an MVTec AD folder, otherwise the
    built-in sample; ``auto`` picks ``gpu`` with CUDA and the reduced ``cpu``
    profile without.
    """
    import torch

    from .data import find_categories
    from .sample import make_sample

    out = Path(out).resolve()
    if profile == "auto":
        profile = "gpu" if torch.cuda.is_available() else "cpu"
    root = os.environ.get("MVTEC_ROOT")
    if root and Path(root).is_dir():
        data_root = Path(root).resolve()
        found = find_categories(data_root)
        categories = [c for c in DEMO_PREFERRED if c in found] or found
        categories = categories[: DEMO_CATEGORY_LIMIT[profile]]
    else:
        data_root = make_sample(out / "data", seed=0).parent
        categories = ["sample"]
    return {"data_root": data_root, "categories": categories, "profile": profile, "out": out}


def demo_mode(mode: str | None = None, log: Any = print) -> str:
    """The model family the demo trains: ``mode`` (default: ``Config``'s), or the first registered family that
    needs no ImageNet weights when that one needs weights that are neither on disk nor downloadable (said in two
    plain lines)."""
    from .backbones import weights_cache_path, weights_file_name, weights_obtainable
    from .config import MODES, Config
    from .models import get_family

    cfg = Config(mode=mode) if mode else Config()
    if not get_family(cfg).needs_weights(cfg) or weights_obtainable(cfg.backbone):
        return cfg.mode
    offline = next(m for m in MODES if not get_family(m).needs_weights(Config(mode=m)))
    log(
        f"The ImageNet weights that mode {cfg.mode!r} needs ({weights_file_name(cfg.backbone)}) are not at "
        f"{weights_cache_path(cfg.backbone).parent} and cannot be downloaded (no network)."
    )
    log(
        f"The demo trains mode {offline!r} instead, which needs none. To use {cfg.mode!r}, put the file there "
        "or run `make demo SHARED_WEIGHTS=/folder/with/the/file` (README: 'ImageNet weights')."
    )
    return offline


class NotebookFailed(RuntimeError):
    """A notebook cell raised; the message is short (notebook, cell, exception) and names the full log."""


def failed_cell(nb: Any) -> tuple[int, str, str]:
    """(code-cell number counted from 1, exception name, message) of the first cell with an error output."""
    number = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        number += 1
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return number, output.get("ename", "Error"), output.get("evalue", "")
    return 0, "Error", ""


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


def run_notebook(path: Path, params: dict[str, Any], out: Path) -> None:
    """Execute one notebook into ``out/notebooks`` (.ipynb + .html); a failing cell raises :class:`NotebookFailed`
    with a few lines, and the full traceback goes to ``out/notebooks/<name>.error.log``."""
    from nbclient.exceptions import CellExecutionError

    executed = out / "notebooks" / f"{path.stem}.ipynb"
    try:
        execute_notebook(path, params, executed, html=True, cwd=out)
    except CellExecutionError as exc:
        import nbformat

        log_path = executed.with_suffix(".error.log")
        log_path.write_text(_strip_ansi(str(exc)), encoding="utf-8")
        number, ename, evalue = failed_cell(nbformat.read(str(executed), as_version=4))
        message = _strip_ansi(evalue).strip().splitlines()
        raise NotebookFailed(
            f"notebook {path.name} failed in code cell {number}: {ename}: {message[0] if message else ''}"
            + ("".join(f"\n  {line}" for line in message[1:4]))
            + f"\nfull traceback: {log_path}\nexecuted notebook: {executed.with_suffix('.html')}"
        ) from None


def run_demo(out: str | Path = "outputs", profile: str = "auto", log: Any = print, mode: str | None = None) -> int:
    """Execute the five notebooks into ``out/notebooks`` (executed .ipynb + .html); returns 0 on success.

    A failing notebook is reported in a few lines (:class:`NotebookFailed`'s message) and returns 1.
    """
    plan = demo_plan(out, profile)
    out = plan["out"]
    params = {
        "CATEGORIES": plan["categories"],
        "DATA_ROOT": str(plan["data_root"]),
        "RUNS_DIR": str(out / "runs"),
        "OUTPUTS_DIR": str(out),
        "PROFILE": plan["profile"],
        "MODE": demo_mode(mode, log),
    }
    if plan["profile"] == "cpu":
        log("No GPU found: using the reduced 'cpu' profile (fewer epochs, smaller U-Net); expect lower figures.")
    log(f"demo: {plan['categories']} from {plan['data_root']} in mode {params['MODE']!r} with profile "
        f"{plan['profile']!r} -> {out}")  # fmt: skip
    for name in NOTEBOOKS:
        start = time.monotonic()
        path = NOTEBOOK_DIR / f"{name}.ipynb"
        try:
            run_notebook(path, params_for(path, params), out)
        except NotebookFailed as exc:
            log(f"demo failed: {exc}")
            return 1
        log(f"  {name}: {time.monotonic() - start:.0f} s -> {out / 'notebooks' / (name + '.html')}")
    summary = out / "runs" / "summary.md"
    if summary.exists():
        log(summary.read_text())
    return 0
