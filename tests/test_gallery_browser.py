"""Notebook 04's gallery in a real browser: JupyterLab on 127.0.0.1, headless Chromium driven by Playwright.

The kernel-side tests (tests/test_gallery.py) cannot see what users see. This one runs the notebook in a live
Jupyter server and checks the front end: the widget renders (no "Error displaying widget", no JavaScript error),
the image slider changes the picture, the threshold slider changes the predicted-mask panel and nothing else,
and the defect-type and category dropdowns switch what is shown. Screenshots go to outputs/browser_test/.

Data: real MVTec bottle and screw when MVTEC_ROOT is set (CI), else two built-in sample categories; models
are memory banks trained in the smoke profile (U-Nets when the offline ImageNet weights are absent). Chromium is Debian's ``chromium`` (``CHROMIUM`` overrides the
path). Without it the test is skipped with a message; with ``CI`` set, a missing browser is a failure.
"""

from __future__ import annotations

import io
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
from helpers import WEIGHTS_FILE
from PIL import Image

from colab_utils.cli import main as cli
from colab_utils.runner import NOTEBOOK_DIR, inject_parameters, params_for
from colab_utils.sample import make_sample

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = REPO / "outputs" / "browser_test"
NOTEBOOK = "04_heatmap_gallery.ipynb"
PANEL = 256  # the gallery's default panel size; panels are laid out PANEL px wide with GAP px between them
GAP = 6


def _missing(what: str, fix: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI but missing; {fix}")
    pytest.skip(f"{what} not found, so the browser test does not run; {fix}")


@pytest.fixture(scope="module")
def browser_tools():
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        _missing(f"Chromium ({CHROMIUM})", "install it with `apt-get install -y chromium` or set CHROMIUM")
    for module, package in (("playwright.sync_api", "playwright"), ("jupyterlab", "jupyterlab")):
        try:
            __import__(module)
        except ImportError:
            _missing(f"the Python package {package}", "run `pip install -r requirements-dev.txt`")


def _data_and_runs(tmp: Path, mode: str) -> tuple[Path, list[str]]:
    """A data root with two categories and their smoke-profile models of ``mode`` in tmp/runs."""
    root = os.environ.get("MVTEC_ROOT")
    if root and all((Path(root) / c / "test").is_dir() for c in ("bottle", "screw")):
        data, categories = Path(root), ["bottle", "screw"]
    else:
        data, categories = tmp / "data", ["sample", "sample_b"]
        make_sample(data, seed=0)
        shutil.move(str(make_sample(tmp / "other", seed=1)), str(data / "sample_b"))
    for category in categories:
        args = ["--data-root", str(data), "--category", category, "--out", str(tmp / "runs")]
        assert cli(["train", *args, "--mode", mode, "--profile", "smoke"]) == 0
    return data, categories


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_lab(root: Path, tmp: Path, port: int, token: str) -> subprocess.Popen:
    config = tmp / "jupyter_config"
    (config / "labconfig").mkdir(parents=True)  # no "Jupyter news?" prompt over the screenshots
    (config / "labconfig" / "page_config.json").write_text(
        '{"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": true}}'
    )
    env = dict(os.environ)
    env.update(
        {
            "SMOKE": "1",
            "JUPYTER_CONFIG_DIR": str(config),
            "JUPYTER_RUNTIME_DIR": str(tmp / "jupyter_runtime"),
            "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "jupyter_workspaces"),
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        }
    )
    cmd = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", f"--ServerApp.token={token}",
        f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
        "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]  # fmt: skip
    log = open(tmp / "jupyter.log", "w")  # noqa: SIM115 - closed with the process
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    deadline = time.time() + 60
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {server.returncode}:\n{(tmp / 'jupyter.log').read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server
        except OSError:
            time.sleep(0.25)
    server.kill()
    raise RuntimeError(f"jupyter lab did not listen on port {port} within 60 s")


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def _panel(shot: np.ndarray, k: int, n_panels: int) -> np.ndarray:
    """Panel ``k`` of a gallery screenshot (the picture may be scaled to the page: positions are relative)."""
    width = n_panels * PANEL + (n_panels - 1) * GAP
    scale = shot.shape[1] / width
    x0, x1 = int(round(k * (PANEL + GAP) * scale)) + 2, int(round((k * (PANEL + GAP) + PANEL) * scale)) - 2
    y0, y1 = int(round(22 * scale)), int(round((20 + PANEL) * scale)) - 2  # below the titles, above the footers
    return shot[y0:y1, x0:x1]


def _differs(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and float(np.abs(a - b).mean()) > 1.0


def test_gallery_in_jupyterlab_with_headless_chromium(browser_tools, tmp_path, monkeypatch):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright

    started = time.time()
    weights = Path(os.environ.get("SHARED_WEIGHTS", REPO.parent / "shared" / "weights")) / WEIGHTS_FILE
    if weights.is_file():  # the default family; else the U-Net, which needs no ImageNet weights
        home = tmp_path / "torch_home" / "hub" / "checkpoints"
        home.mkdir(parents=True)
        (home / WEIGHTS_FILE).symlink_to(weights)
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    data, categories = _data_and_runs(tmp_path, "memory_bank" if weights.is_file() else "unet")
    root = tmp_path / "lab"
    root.mkdir()
    nb = nbformat.read(str(NOTEBOOK_DIR / NOTEBOOK), as_version=4)
    params = {"CATEGORIES": categories, "DATA_ROOT": str(data), "RUNS_DIR": str(tmp_path / "runs"),
              "OUTPUTS_DIR": str(tmp_path / "outputs"), "GALLERY_SIZE": 4}  # fmt: skip
    inject_parameters(nb, params_for(NOTEBOOK_DIR / NOTEBOOK, params))
    nbformat.write(nb, str(root / NOTEBOOK))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    port, token = _free_port(), secrets.token_hex(16)
    server = _start_lab(root, tmp_path, port, token)
    problems: list[str] = []
    try:
        with sync_playwright() as p:
            args = ["--disable-background-networking", "--disable-component-update", "--no-first-run"]
            if hasattr(os, "geteuid") and os.geteuid() == 0:
                args.append("--no-sandbox")
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
            page = browser.new_page(viewport={"width": 1600, "height": 1200})
            offline: list[str] = []  # resources from the internet (the Colab badge image): unreachable here

            def on_console(message) -> None:
                url = (message.location or {}).get("url", "")
                if message.type != "error":
                    return
                if message.text.startswith("Failed to load resource") and not url.startswith(local):
                    offline.append(url)
                else:
                    problems.append(f"console error: {message.text} ({url})")

            local = f"http://127.0.0.1:{port}/"
            page.on("console", on_console)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.goto(f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK}?token={token}&reset")
            kernel = "window.jupyterapp?.shell?.currentWidget?.sessionContext?.session?.kernel"
            page.wait_for_function(f"{kernel}?.connectionStatus === 'connected' && {kernel}?.status === 'idle'",
                                   timeout=120_000)  # fmt: skip
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")

            picture = page.locator(".jp-OutputArea img.widget-image")
            expect(picture).to_be_visible(timeout=240_000)
            page.wait_for_function(
                "() => { const i = document.querySelector('.jp-OutputArea img.widget-image');"
                " return i && i.complete && i.naturalWidth > 0; }",
                timeout=60_000,
            )
            caption = page.locator(".jp-OutputArea .widget-html").filter(has_text=re.compile("defect type"))
            expect(caption).to_contain_text("1 / ")
            page.screenshot(path=str(SCREENSHOTS / "01_opened.png"), full_page=True)
            assert page.get_by_text("Error displaying widget").count() == 0

            def control(kind: str, label: str):
                return page.locator(f".jp-OutputArea .widget-{kind}").filter(
                    has=page.locator("label.widget-label", has_text=re.compile(f"^{re.escape(label)}$"))
                )

            def shot_after(action, name: str) -> np.ndarray:
                """Do ``action``, wait until the gallery shows a new picture, save and return its screenshot."""
                before = picture.get_attribute("src")
                action()
                try:
                    page.wait_for_function(
                        "old => { const i = document.querySelector('.jp-OutputArea img.widget-image');"
                        " return i.src !== old && i.complete && i.naturalWidth > 0; }",
                        arg=before,
                        timeout=30_000,
                    )
                except PlaywrightTimeout:
                    page.screenshot(path=str(SCREENSHOTS / f"{name}_FAILED.png"), full_page=True)
                    pytest.fail(f"{name}: the gallery showed no new picture within 30 s of the control change")
                page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
                return _pixels(picture.screenshot(path=str(SCREENSHOTS / f"{name}_gallery.png")))

            first = _pixels(picture.screenshot(path=str(SCREENSHOTS / "01_opened_gallery.png")))
            n_panels = 5  # image, reconstruction (a note for the memory bank), heatmap, predicted mask, truth

            # the image slider: one step right shows the next image
            handle = control("slider", "image").locator(".noUi-handle")
            second = shot_after(lambda: (handle.focus(), page.keyboard.press("ArrowRight")), "02_next_image")
            expect(caption).to_contain_text("2 / ")
            assert _differs(_panel(first, 0, n_panels), _panel(second, 0, n_panels)), "the image did not change"

            # the defect-type dropdown: the last type, a defective one
            select = control("dropdown", "defect type").locator("select")
            defect = select.locator("option").all_inner_texts()[-1]
            assert defect not in ("all", "good")
            third = shot_after(lambda: select.select_option(label=defect), "03_defect_type")
            expect(caption).to_contain_text(f"defect type: {defect}")

            # the peak-share and threshold sliders, moved to their lowest values (the mask then takes every pixel
            # of the map above its smallest value): only the predicted-mask panel changes
            share = control("slider", "peak share").locator(".noUi-handle")
            shot_after(lambda: (share.focus(), page.keyboard.press("Home")), "04a_peak_share_off")
            handle = control("slider", "pixel thr.").locator(".noUi-handle")
            fourth = shot_after(lambda: (handle.focus(), page.keyboard.press("Home")), "04_threshold_lowest")
            assert _differs(_panel(third, 3, n_panels), _panel(fourth, 3, n_panels)), "the mask did not change"
            for k in (0, 2, 4):  # image, heatmap and ground truth stay as they were
                assert not _differs(_panel(third, k, n_panels), _panel(fourth, k, n_panels)), f"panel {k} changed"

            # the category dropdown
            select = control("dropdown", "category").locator("select")
            fifth = shot_after(lambda: select.select_option(label=categories[1]), "05_other_category")
            expect(caption).to_contain_text(f"{categories[1]}/test/")
            assert _differs(_panel(fourth, 0, n_panels), _panel(fifth, 0, n_panels))

            assert page.get_by_text("Error displaying widget").count() == 0
            browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    assert not problems, "the browser reported errors:\n" + "\n".join(problems)
    print(f"browser test: {time.time() - started:.1f} s; screenshots in {SCREENSHOTS}; not reachable offline: {offline}")
