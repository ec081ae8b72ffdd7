"""Execute the notebooks headless (``make demo``, the notebook tests).

Parameters are injected the way papermill does it: a new cell, tagged
``injected-parameters``, right after the cell tagged ``parameters``, so the
notebook's own defaults stay visible and the overrides are recorded in the
executed copy. Needs the dev extras (nbclient, nbformat, nbconvert, ipykernel).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

NOTEBOOKS = ("01_data_exploration", "02_training", "03_evaluation", "04_heatmap_gallery")
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
    saved = {k: os.environ.get(k) for k in (env_vars or {})}
    os.environ.update(env_vars or {})
    try:
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(workdir)}},
        )
        try:
            client.execute()
        finally:
            if out_path is not None:
                out_path = Path(out_path)
                out_path.parent.mkdir(parents=True, exist_ok=True)
                nbformat.write(nb, str(out_path))
                if html:
                    from nbconvert import HTMLExporter

                    body, _ = HTMLExporter().from_notebook_node(nb)
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


def run_demo(out: str | Path = "outputs", profile: str = "auto", log: Any = print) -> int:
    """Execute the four notebooks into ``out/notebooks`` (executed .ipynb + .html); returns 0 on success."""
    plan = demo_plan(out, profile)
    out = plan["out"]
    params = {
        "CATEGORIES": plan["categories"],
        "DATA_ROOT": str(plan["data_root"]),
        "RUNS_DIR": str(out / "runs"),
        "OUTPUTS_DIR": str(out),
        "PROFILE": plan["profile"],
    }
    if plan["profile"] == "cpu":
        log("No GPU found: using the reduced 'cpu' profile (fewer epochs, smaller U-Net); expect lower figures.")
    log(f"demo: {plan['categories']} from {plan['data_root']} with profile {plan['profile']!r} -> {out}")
    for name in NOTEBOOKS:
        start = time.monotonic()
        path = NOTEBOOK_DIR / f"{name}.ipynb"
        execute_notebook(path, params_for(path, params), out / "notebooks" / f"{name}.ipynb", html=True, cwd=out)
        log(f"  {name}: {time.monotonic() - start:.0f} s -> {out / 'notebooks' / (name + '.html')}")
    summary = out / "runs" / "summary.md"
    if summary.exists():
        log(summary.read_text())
    return 0
