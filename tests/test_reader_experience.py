"""End to end, as a reader sees it: JupyterLab in headless Chromium runs chapters and moves widgets.

A real JupyterLab server is started on 127.0.0.1 (token auth on) over a temporary copy of the
notebooks (so autosave never touches the committed files); Debian's Chromium, driven by Playwright,
opens each chapter, runs all cells, saves, and the saved notebook is checked for errors. Sliders are
moved and the figure next to them must change. Screenshots land in executed/screenshots/.

Needs Chromium (`apt-get install chromium`; .ci/run installs it) and the `playwright` package from the
test extra; without Chromium the tests are skipped with that reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from slmbook import notebooks

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "executed" / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_CHAPTERS = ["00_from_scratch", "07_embeddings_rope", "09_kv_cache", "13_mixture_of_experts"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server over a copy of notebooks/, plus a notebook that exercises a widget."""
    root = tmp_path_factory.mktemp("lab")
    for path in notebooks.notebooks_dir().glob("*.ipynb"):
        shutil.copy(path, root / path.name)
    _write_widget_notebook(root / "widget_probe.ipynb")
    port, token = _free_port(), "slmbook-e2e-token"
    settings = root / ".settings"
    (settings / "@jupyterlab" / "notebook-extension").mkdir(parents=True)
    # Render every cell (no virtual scrolling) so the test sees all prompts and outputs.
    (settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        json.dumps({"windowingMode": "none"}))
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false"}))
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(root / ".config"), JUPYTER_RUNTIME_DIR=str(root / ".runtime"),
               JUPYTERLAB_WORKSPACES_DIR=str(root / ".workspaces"),
               JUPYTERLAB_SETTINGS_DIR=str(settings), MPLBACKEND="module://matplotlib_inline.backend_inline")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.port={port}", "--ServerApp.ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly",
         "--allow-root"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("JupyterLab did not start within 60 s")
            time.sleep(0.5)
    yield {"base": base, "token": token, "root": root}
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


def _write_widget_notebook(path: Path) -> None:
    source = ("import ipywidgets as widgets\nimport matplotlib.pyplot as plt\n"
              "from slmbook.widgets import interactive_figure\n\n"
              "def draw(angle):\n    fig, ax = plt.subplots(figsize=(3, 3))\n"
              "    ax.plot([0, angle], [0, 1]); ax.set_title(f'angle {angle}')\n"
              "    ax.set_xlabel('x (units)'); ax.set_ylabel('y (units)')\n    return fig\n\n"
              "controls = interactive_figure(draw, angle=widgets.IntSlider(value=1, min=0, max=9))")
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": "probe", "metadata": {}, "outputs": [],
                     "source": source}],
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))


def _open_and_run_all(browser, lab, name: str, timeout_s: float = 1200, stall_s: float = 300):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    # A workspace of its own, reset, so no notebook opened earlier comes back as a hidden tab.
    page.goto(f"{lab['base']}/lab/workspaces/e2e-{Path(name).stem}/tree/{name}?reset&token={lab['token']}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    # The kernel is ready when the status bar says so; only then does "Run All Cells" run anything.
    page.wait_for_selector(".jp-StatusBar-TextItem:text-matches('\\| Idle$')", timeout=120_000)
    for _attempt in range(3):  # a click that lands while the page is still settling can be lost
        page.wait_for_timeout(1000)
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()
        page.wait_for_timeout(3000)
        if any(p.strip() != "[ ]:" for p in page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()):
            break
    # The limit is on a stall, not on the whole run: on a loaded machine a chapter may take several
    # times its idle minute, but a cell that makes no progress for `stall_s` is a hang. `timeout_s`
    # caps the whole run so a slow leak of progress still ends.
    start = time.time()
    last_progress, done_before = start, -1
    while True:
        prompts = page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()
        busy = page.locator(".jp-Notebook-ExecutionIndicator[data-status='busy']").count()
        done = sum(bool(re.fullmatch(r"\[\d+\]:", p.strip())) for p in prompts)
        if prompts and not busy and done == len(prompts):
            break
        now = time.time()
        if done != done_before:
            last_progress, done_before = now, done
        if now - last_progress > stall_s or now - start > timeout_s:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / f"failed_{Path(name).stem}.png"))
            pytest.fail(f"{name}: {done} of {len(prompts)} cells done after {now - start:.0f} s, none finished in the "
                        f"last {now - last_progress:.0f} s (stall limit {stall_s} s, total limit {timeout_s} s; "
                        f"busy {busy})")
        page.wait_for_timeout(1000)
    print(f"{name}: all cells ran in JupyterLab in {time.time() - start:.0f} s")
    page.keyboard.press("Control+s")
    page.wait_for_timeout(1500)
    return page


def _stored_errors(path: Path) -> list[str]:
    nb = json.loads(path.read_text())
    return [f"{o.get('ename')}: {o.get('evalue')}" for c in nb["cells"] if c["cell_type"] == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "error"]


def _slider_moves_figure(page, cell) -> bool:
    """Press the right arrow on the cell's first slider; True when the image next to it changes."""
    image = cell.locator(".jp-OutputArea-output img").first
    before = image.get_attribute("src")
    handle = cell.locator(".widget-slider .noUi-handle").first
    handle.focus()
    for _ in range(3):
        handle.press("ArrowRight")
    for _ in range(60):
        page.wait_for_timeout(500)
        if image.get_attribute("src") != before:
            return True
    return False


def test_widget_slider_redraws_figure_in_jupyterlab(browser, lab):
    page = _open_and_run_all(browser, lab, "widget_probe.ipynb", timeout_s=120)
    cell = page.locator(".jp-CodeCell").first
    cell.locator(".widget-slider").first.wait_for(timeout=30_000)
    assert cell.locator(".jp-OutputArea-output img").count() == 1
    assert _slider_moves_figure(page, cell), "moving the slider did not change the figure"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "widget_probe.png"))
    page.close()


@pytest.mark.parametrize("stem", BROWSER_CHAPTERS)
def test_chapter_runs_in_jupyterlab(browser, lab, stem):
    name = f"{stem}.ipynb"
    if not (lab["root"] / name).exists():
        pytest.skip(f"{name} is not written yet")
    page = _open_and_run_all(browser, lab, name)
    assert _stored_errors(lab["root"] / name) == []
    assert page.locator(".jp-OutputArea-output img").count() > 0, "no figure appeared"
    sliders = page.locator(".jp-CodeCell", has=page.locator(".widget-slider"))
    for i in range(sliders.count()):
        cell = sliders.nth(i)
        if cell.locator(".jp-OutputArea-output img").count():
            cell.scroll_into_view_if_needed()
            assert _slider_moves_figure(page, cell), f"{name}: slider {i} did not change its figure"
    if sliders.count():
        sliders.first.scroll_into_view_if_needed()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{stem}.png"))
    page.close()
