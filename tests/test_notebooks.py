"""Every notebook runs top to bottom in a real Jupyter kernel (SMOKE profile) and leaves its products behind."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from colab_utils.runner import NOTEBOOK_DIR, NOTEBOOKS, execute_notebook, inject_parameters, params_for

REPO = Path(__file__).resolve().parents[1]


def _run_suite(data_root: Path, category: str, out: Path, torch_home: Path) -> dict[str, object]:
    params = {
        "CATEGORIES": [category],
        "DATA_ROOT": str(data_root),
        "OUTPUTS_DIR": str(out),
        "RUNS_DIR": str(out / "runs"),
        "PROFILE": "smoke",
    }
    env = {"SMOKE": "1", "TORCH_HOME": str(torch_home), "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    executed = {}
    for name in NOTEBOOKS:
        path = NOTEBOOK_DIR / f"{name}.ipynb"
        executed[name] = execute_notebook(
            path, params_for(path, params), out / "executed" / f"{name}.ipynb", cwd=out, env_vars=env
        )
    return executed


def _images_in(nb) -> int:
    return sum(
        1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {})
    )


def _check_products(executed, out: Path, category: str) -> None:
    run = out / "runs" / category
    assert (run / "best.pt").exists() and (run / "last.pt").exists()
    results = json.loads((run / "results.json").read_text())
    assert results["category"] == category and results["image_auroc"] is not None
    assert (out / "runs" / "summary.md").exists()
    assert (run / "roc.png").stat().st_size > 1000
    assert (out / "gallery" / f"{category}.html").stat().st_size > 1000
    assert (out / "gallery" / f"{category}.png").stat().st_size > 1000
    # figures were drawn: counts + samples in 01, loss curves in 02, curves and histograms in 03
    assert _images_in(executed["01_data_exploration"]) >= 2
    assert _images_in(executed["02_training"]) >= 2
    assert _images_in(executed["03_evaluation"]) >= 4
    # the gallery cell displayed a widget
    gallery_outputs = [
        o for c in executed["04_heatmap_gallery"].cells if c.cell_type == "code" for o in c.get("outputs", [])
    ]
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in gallery_outputs)
    # 03 reported what the default thresholds do on the test set
    text = "".join(str(o.get("data", {}).get("text/markdown", "")) for c in executed["03_evaluation"].cells
                   for o in c.get("outputs", []))  # fmt: skip
    assert "good flagged %" in text and "defect recall %" in text and "mask F1 %" in text
    assert "budget %" in text and "95% interval %" in text and "flagged / good" in text and "set by" in text
    # 05 inspected the category's test images with the run: one CSV row per image, overlays shown
    rows = (run / "inspections" / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("path,score,threshold,margin,verdict") and len(rows) - 1 == results["n_images"]
    assert _images_in(executed["05_inspect_new_images"]) >= 1
    _check_reads_as_finished(executed)


def _check_reads_as_finished(executed) -> None:
    """Saved notebooks show each progress bar's final line and no bare widget repr such as ``Output()``."""
    bars = 0
    for nb in executed.values():
        for cell in nb.cells:
            for o in cell.get("outputs", []) if cell.cell_type == "code" else []:
                assert o.get("data", {}).get("text/plain", "").strip() not in ("Output()", "HBox(children=())")
                if o.get("output_type") == "stream":
                    for line in o["text"].splitlines():
                        if "%|" in line:
                            bars += 1
                            assert "100%|" in line, line
    assert bars >= 1


def test_notebooks_on_builtin_sample(sample_root, offline_torch_home, tmp_path):
    executed = _run_suite(sample_root, "sample", tmp_path / "out", offline_torch_home)
    _check_products(executed, tmp_path / "out", "sample")


def test_notebooks_on_real_bottle(mvtec_root, offline_torch_home, tmp_path):
    executed = _run_suite(mvtec_root, "bottle", tmp_path / "out", offline_torch_home)
    _check_products(executed, tmp_path / "out", "bottle")


def test_rerunning_training_notebook_resumes(sample_root, offline_torch_home, tmp_path):
    """A second run of 02 (as after a Colab disconnect) loads the finished run instead of retraining."""
    out = tmp_path / "out"
    params = {"CATEGORIES": ["sample"], "DATA_ROOT": str(sample_root), "OUTPUTS_DIR": str(out),
              "RUNS_DIR": str(out / "runs"), "PROFILE": "smoke"}
    env = {"SMOKE": "1", "TORCH_HOME": str(offline_torch_home)}
    execute_notebook(NOTEBOOK_DIR / "02_training.ipynb", params, cwd=out, env_vars=env)
    mtime = (out / "runs" / "sample" / "last.pt").stat().st_mtime_ns
    nb = execute_notebook(NOTEBOOK_DIR / "02_training.ipynb", params, cwd=out, env_vars=env)
    assert (out / "runs" / "sample" / "last.pt").stat().st_mtime_ns == mtime
    assert _images_in(nb) >= 2


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_skeleton_and_clean_outputs(name):
    nb = nbformat.read(str(NOTEBOOK_DIR / f"{name}.ipynb"), as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    assert "colab.research.google.com/github/" in first.source and f"notebooks/{name}.ipynb" in first.source
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one config cell tagged 'parameters'"
    setup = [c for c in nb.cells if c.cell_type == "code" and "session.setup()" in c.source]
    assert len(setup) == 1 and "google.colab" in setup[0].source
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, "commit notebooks without outputs"
            assert "def " not in cell.source and "class " not in cell.source, "functions belong in colab_utils"
            assert len(cell.source.splitlines()) <= 15, "keep cells short; move logic to colab_utils"
    headings = [c.source.splitlines()[0] for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("## ")]
    assert len(headings) >= 4


def test_parameters_are_injected_after_the_tagged_cell():
    nb = nbformat.read(str(NOTEBOOK_DIR / "02_training.ipynb"), as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    inject_parameters(nb, {"EPOCHS": 3, "CATEGORIES": ["screw"]})
    injected = nb.cells[index + 1]
    assert injected.metadata["tags"] == ["injected-parameters"]
    assert "EPOCHS = 3" in injected.source and "CATEGORIES = ['screw']" in injected.source
    with pytest.raises(ValueError, match="parameters"):
        inject_parameters(nbformat.v4.new_notebook(), {"A": 1})


def test_demo_plan_uses_real_data_when_given(mvtec_root, tmp_path, monkeypatch):
    from colab_utils.runner import demo_plan

    monkeypatch.setenv("MVTEC_ROOT", str(mvtec_root))
    plan = demo_plan(tmp_path, profile="cpu")
    assert plan["data_root"] == mvtec_root.resolve() and plan["categories"] == ["bottle"]
    assert demo_plan(tmp_path, profile="gpu")["categories"] == ["bottle", "capsule", "screw"]


def test_demo_plan_falls_back_to_builtin_sample(tmp_path, monkeypatch):
    from colab_utils.runner import demo_plan

    monkeypatch.delenv("MVTEC_ROOT", raising=False)
    plan = demo_plan(tmp_path, profile="smoke")
    assert plan["categories"] == ["sample"]
    assert (plan["data_root"] / "sample" / "train" / "good").is_dir()


def test_folders_keep_runs_beside_chosen_outputs(sample_root, tmp_path, monkeypatch):
    from colab_utils.session import folders

    monkeypatch.chdir(tmp_path)
    f = folders(sample_root, None, tmp_path / "out")
    assert f.runs_dir == tmp_path / "out" / "runs" and f.data_root == sample_root
    assert not (tmp_path / "outputs").exists()  # nothing written to the default folder


def test_params_for_keeps_only_declared_names():
    params = {"CATEGORIES": ["bottle"], "RUNS_DIR": "runs", "PROFILE": "smoke", "DATA_ROOT": "d"}
    assert set(params_for(NOTEBOOK_DIR / "01_data_exploration.ipynb", params)) == {"CATEGORIES", "DATA_ROOT"}
    assert set(params_for(NOTEBOOK_DIR / "02_training.ipynb", params)) == set(params)
    assert "PROFILE" not in params_for(NOTEBOOK_DIR / "03_evaluation.ipynb", params)


def test_demo_without_weights_falls_back_to_unet_in_two_lines(tmp_path, monkeypatch):
    """No weights file and no network: the demo says so plainly, trains the U-Net and still succeeds."""
    from colab_utils import backbones
    from colab_utils.runner import run_demo

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))  # the weights file is deliberately absent
    monkeypatch.setattr(backbones, "_download_possible", lambda url, timeout=0: False)  # and there is no network
    monkeypatch.setenv("SMOKE", "1")
    monkeypatch.delenv("MVTEC_ROOT", raising=False)
    lines: list[str] = []
    assert run_demo(tmp_path / "out", profile="smoke", log=lines.append, mode="memory_bank") == 0
    text = "\n".join(lines)
    assert "mobilenet_v2-b0353104.pth" in text and "cannot be downloaded" in text and "SHARED_WEIGHTS" in text
    assert "Traceback" not in text
    config = json.loads((tmp_path / "out" / "runs" / "sample" / "config.json").read_text())
    assert config["mode"] == "unet"
    page = (tmp_path / "out" / "notebooks" / "04_heatmap_gallery.html").read_text()
    assert "data:image/png;base64," in page  # the gallery cell shows its static picture, not an empty cell
    training = (tmp_path / "out" / "notebooks" / "02_training.html").read_text()
    assert "Output()" not in training and "live loss curves" in training  # the live curves' static line
    assert "train sample: 100%|" in training  # the saved progress bar shows where training ended


def test_a_failing_notebook_is_reported_in_a_few_lines(tmp_path):
    from colab_utils.runner import NotebookFailed, run_notebook

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("X = 1", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_markdown_cell("## Fail"),
        nbformat.v4.new_code_cell("raise ValueError('the data folder is empty; run make-sample')"),
    ]
    path = tmp_path / "broken.ipynb"
    nbformat.write(nb, str(path))
    with pytest.raises(NotebookFailed) as info:
        run_notebook(path, {}, tmp_path / "out")
    message = str(info.value)
    assert message.startswith("notebook broken.ipynb failed in code cell 2: ValueError: the data folder is empty")
    assert len(message.splitlines()) <= 6 and "\x1b[" not in message
    log = tmp_path / "out" / "notebooks" / "broken.error.log"
    assert str(log) in message and "ValueError" in log.read_text()


def test_training_notebook_keeps_the_profiles_time_cap_unless_told_otherwise():
    from colab_utils import session

    nb = nbformat.read(NOTEBOOK_DIR / "02_training.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params: dict[str, object] = {}
    exec(cell.source, params)  # the notebook's own parameters cell, as a user gets it
    cfg = session.make_config("bottle", "cpu", mode="unet", max_minutes=params["MAX_MINUTES"])
    assert cfg.max_minutes == 10.0  # the cpu profile's cap, not "no limit"
    assert session.make_config("bottle", "cpu", mode="unet", max_minutes=0).max_minutes == 0.0  # asked for
