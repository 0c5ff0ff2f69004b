"""The suite in a real browser: JupyterLab and the widgets in headless Chromium.

JupyterLab serves throw-away copies of the notebooks (parameters shrunk to the 64 px
tiny model, as in ``test_notebooks.py``) and Playwright drives Debian's Chromium. Each
test fails on any uncaught JavaScript error, console error or widget error, and leaves
screenshots in ``test-artifacts/browser/`` (the path is printed at the end of the run).

Without Chromium these tests skip, except in CI (``CI`` set), where they fail: ``.ci/run``
installs Debian's ``chromium`` package. Set ``E4E_CHROMIUM`` to use another binary.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from browser_lab import CHROMIUM_FLAGS, LabPage, LabServer, find_chromium
from notebook_cases import BANNER, EXPECTED, SMALL, extra_parameters

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
IN_CI = bool(os.environ.get("CI"))

# the panel scenario needs a run long enough to press Stop in the middle of it
PANEL_NOTEBOOK = "05_panel"
PANEL_PARAMETERS = dict(SMALL, num_steps=200, skip_steps=40, feat_range=[2, 150],
                        adain_range=[100, 160], autorun=False)


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"{reason} (required in CI: .ci/run installs Debian's chromium)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = find_chromium()
    if path is None:
        _unavailable("no Chromium found (apt-get install chromium, or set E4E_CHROMIUM)")
    return path


@pytest.fixture(scope="session")
def browser(chromium_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright for Python is not installed (pip install -e '.[dev]')")
    with sync_playwright() as pw:
        # Debian's binary, never one Playwright downloads
        chromium = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_FLAGS,
                                      headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    return ARTIFACTS


@pytest.fixture(scope="session")
def lab_server(tmp_path_factory, _offline_env, models):
    """JupyterLab serving parameterised copies of the notebooks next to ``example/``.

    ``models`` makes sure the tiny model is built in the session's cache before any
    kernel wants it.
    """
    import papermill

    base = tmp_path_factory.mktemp("browser")
    root, home, outputs = base / "root", base / "home", base / "outputs"
    for d in (root / "notebooks", home, outputs):
        d.mkdir(parents=True)
    (root / "example").symlink_to(ROOT / "example", target_is_directory=True)
    copies = {name: dict(SMALL, **extra_parameters(name, outputs)) for name in EXPECTED}
    copies[PANEL_NOTEBOOK] = dict(PANEL_PARAMETERS, **extra_parameters(
        "05_interactive_tuning", outputs / "panel"))
    for name, params in copies.items():
        source = "05_interactive_tuning" if name == PANEL_NOTEBOOK else name
        papermill.execute_notebook(str(ROOT / "notebooks" / f"{source}.ipynb"),
                                   str(root / "notebooks" / f"{name}.ipynb"),
                                   parameters=params, prepare_only=True, progress_bar=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "PYTEST"))}
    env.update(PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
               OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    server = LabServer(root, home, env).start()
    yield server
    server.stop()


@pytest.fixture()
def lab_page(browser, lab_server, artifacts):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    lp = LabPage(context.new_page(), lab_server, artifacts)
    yield lp
    try:  # one kernel at a time: shut this notebook's down
        lp.page.evaluate("""async () => {
          const nb = window.jupyterapp && window.jupyterapp.shell.currentWidget;
          if (nb && nb.sessionContext) await nb.sessionContext.shutdown();
        }""")
    finally:
        context.close()


def run_notebook(lp: LabPage, name: str) -> None:
    lp.open(f"notebooks/{name}.ipynb")
    lp.run_all()
    errors = [f"{o['ename']}: {o['evalue']}" for cell in lp.outputs() for o in cell
              if o["output_type"] == "error"]
    assert not errors, f"{name}: error outputs {errors}\nconsole: {lp.console_errors}"


def assert_no_console_errors(lp: LabPage) -> None:
    assert not lp.console_errors, "errors in the browser console:\n" + "\n".join(
        lp.console_errors)


# ---------------------------------------------------------------- scenario 1 --

@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_runs_in_jupyterlab(lab_page, name):
    """Run all cells in JupyterLab: no error output, every widget view rendered."""
    lp = lab_page
    run_notebook(lp, name)
    problems = lp.widget_problems()
    assert not problems, problems
    assert lp.page.get_by_text(BANNER).count() >= 1, "the tiny-model banner is not shown"
    lp.screenshot(f"1-{name}")
    views = lp.widget_views()
    for n in range(views.count()):
        lp.screenshot(f"1-{name}-widget{n}", views.nth(n))
    assert_no_console_errors(lp)


# ---------------------------------------------------------------- scenario 2 --

def _page_point(canvas_box: dict, scale: float, x: float, y: float) -> tuple[float, float]:
    """The page point over model pixel (x, y) of a canvas with ``scale`` px per pixel."""
    return canvas_box["x"] + x * scale, canvas_box["y"] + y * scale


def test_box_drawn_and_resized_by_mouse(lab_page):
    lp = lab_page
    run_notebook(lp, "02_boxes_and_masks")
    drawer = lp.page.locator(".e4e-pairboxdrawer .e4e-boxdrawer").nth(1)  # the structure's
    drawer.get_by_role("button", name="Clear box").click()
    lp.wait_kernel("drawer.structure.box is None")

    canvas = drawer.locator(".e4e-canvas")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    scale = lp.kernel_json("drawer.structure.view.scale")
    width = lp.kernel_json("drawer.structure.size[0]")
    assert box["width"] == pytest.approx(width * scale, abs=1), "canvas shown at another size"

    lp.drag(_page_point(box, scale, 10, 12), _page_point(box, scale, 40, 50))
    drawn = lp.wait_kernel("drawer.structure.box")
    assert drawn == pytest.approx([10, 12, 40, 50], abs=1), drawn
    lp.screenshot("2-box-drawn", drawer)

    # the south-east handle: the box grows, its top-left corner stays
    box = canvas.bounding_box()  # the screenshot may have scrolled the page
    lp.drag(_page_point(box, scale, drawn[2], drawn[3]), _page_point(box, scale, 52, 58))
    resized = lp.wait_kernel(f"list(drawer.structure.box or ()) != {drawn} and drawer.structure.box")
    assert resized[:2] == drawn[:2]
    assert resized == pytest.approx([drawn[0], drawn[1], 52, 58], abs=1), resized
    assert f"{list(resized)}" in drawer.inner_text()  # the coordinates line shows it
    lp.screenshot("2-box-resized", drawer)
    assert_no_console_errors(lp)


# ---------------------------------------------------------------- scenario 3 --

MATCH_CHECK = """
from e4e_lab.method.correspondence import nearest_neighbors
from e4e_lab.method.masks import mask_at
from e4e_lab.models.dift import dift_features

_ft = dift_features(lab.models, pair.structure, dift_timestep, dift_block, dift_ensemble,
                    config.inversion.prompt, 0).features
_fr = dift_features(lab.models, pair.appearance, dift_timestep, dift_block, dift_ensemble,
                    config.inversion.prompt, 0).features
_c = _ft.shape[0]
_index, _ = nearest_neighbors(_ft.reshape(_c, -1).T, _fr.reshape(_c, -1).T,
                              mask_at(pair.structure_mask, tuple(_ft.shape[1:])).flatten() > 0,
                              mask_at(pair.appearance_mask, tuple(_fr.shape[1:])).flatten() > 0)
"""


def test_correspondence_click_matches_nearest_neighbors(lab_page):
    lp = lab_page
    run_notebook(lp, "03_correspondence_explorer")
    explorer = lp.page.locator(".e4e-correspondenceexplorer").first
    target, ref = explorer.locator(".e4e-canvas").nth(0), explorer.locator(".e4e-canvas").nth(1)
    # a target cell inside the mask, away from the one selected in the notebook
    lp.kernel("from e4e_lab.analysis.grids import cell_center as _cell_center\n"
              "_valid = explorer.lookup.target_valid.nonzero().flatten()\n"
              "_cell = int(_valid[len(_valid) // 4])\n"
              "_xy = _cell_center(_cell, explorer.target_grid, explorer.size)")
    cell, x, y = lp.kernel_json("[_cell, *_xy]")
    assert cell != lp.kernel_json("explorer.cell")
    target.scroll_into_view_if_needed()
    before = (target.screenshot(), ref.screenshot())
    updates = lp.kernel_json("explorer.updates")
    scale = lp.kernel_json("explorer.target_view.scale")
    lp.page.mouse.click(*_page_point(target.bounding_box(), scale, x, y))
    lp.wait_kernel(f"explorer.cell == {cell} and explorer.updates > {updates}")

    lp.kernel(MATCH_CHECK)
    expected = lp.kernel_json(f"int(_index[{cell}])")
    assert expected >= 0
    assert lp.kernel_json("explorer.match") == expected
    lp.page.wait_for_timeout(500)  # let the canvases repaint
    after = (target.screenshot(), ref.screenshot())
    assert after[0] != before[0], "the target marker did not move"
    assert after[1] != before[1], "the reference heatmap / match marker did not change"
    lp.screenshot("3-explorer-clicked", explorer)
    assert_no_console_errors(lp)


# ---------------------------------------------------------------- scenario 4 --

def _progress(panel) -> float:
    """The progress bar's filled share in percent, read from the page."""
    style = panel.locator(".progress-bar").first.get_attribute("style") or ""
    m = re.search(r"width:\s*([\d.]+)%", style)
    return float(m.group(1)) if m else 0.0


def test_panel_run_stop_run(lab_page):
    lp = lab_page
    run_notebook(lp, PANEL_NOTEBOOK)
    panel = lp.page.locator(".e4e-transferpanel").first
    panel.scroll_into_view_if_needed()
    panel.get_by_role("button", name="v", exact=True).click()
    lp.wait_kernel("panel.injection.value == 'v'")

    panel.get_by_role("button", name="Run").click()
    deadline = time.monotonic() + 180
    while _progress(panel) <= 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    started = _progress(panel)
    assert 0 < started < 100, f"the progress bar did not start moving ({started}%)"
    # a denoising step's live preview is drawn before we stop (Stop during the inversion
    # is tested on the Python side: it ends the run before step 0)
    lp.wait_kernel("len(panel.preview_steps) >= 1", timeout=120)
    lp.page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                              arg=panel.locator("img.e4e-preview").element_handle(),
                              timeout=60_000)
    panel.get_by_role("button", name="Stop").click()
    state = lp.wait_kernel("panel.state if panel.state in ('cancelled', 'done', 'failed') "
                           "else ''", timeout=60)
    assert state == "cancelled", f"the run was not stopped mid-way ({state})"
    stopped_at = _progress(panel)
    assert started <= stopped_at < 100
    assert lp.kernel_json("len(panel.preview_steps)") >= 1
    lp.screenshot("4-panel-stopped", panel)

    t0 = time.monotonic()
    assert lp.kernel("print(6 * 7)").strip() == "42"
    assert time.monotonic() - t0 < 10, "the kernel did not answer promptly after Stop"
    assert "stopped before step" in panel.inner_text()

    panel.get_by_role("button", name="Run").click()
    state = lp.wait_kernel("panel.state if panel.state in ('done', 'failed') and "
                           "panel.runs >= 1 else ''", timeout=300)
    assert state == "done", lp.kernel_json("repr(panel.error)")
    lp.page.wait_for_function("el => el.innerText.includes('done in')",
                              arg=panel.element_handle(), timeout=30_000)
    assert _progress(panel) == pytest.approx(100)
    assert lp.kernel_json("panel.config().injection.mode") == "v"
    lp.page.wait_for_function("img => img.complete && img.naturalWidth > 0",  # the result
                              arg=panel.locator("img.e4e-result").element_handle(),
                              timeout=30_000)
    lp.screenshot("4-panel-done", panel)
    assert_no_console_errors(lp)
