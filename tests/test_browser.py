"""The suite in a real browser: JupyterLab and the widgets in headless Chromium.

JupyterLab serves throw-away copies of the notebooks (parameters shrunk to the 64 px
tiny model, as in ``test_notebooks.py``) under ``make lab``'s settings overrides, and
Playwright drives Debian's Chromium in a 1400x900 window with the file browser open.
Each test fails on any uncaught JavaScript error, console error or widget error, and
leaves screenshots in ``test-artifacts/browser/`` (the path is printed at the end of the
run); every screenshot is checked for widget labels cut off by their box.

A notebook is run once and its page shared by the tests on it (the ``ran`` fixture,
parametrised by notebook name: pytest groups the tests by notebook, and one kernel runs
at a time); a test that changes a widget leaves it changed for the next one on that
notebook, so the tests on a notebook are written in the order they run.

Without Chromium these tests skip, except in CI (``CI`` set), where they fail: ``.ci/run``
installs Debian's ``chromium`` package. Set ``E4E_CHROMIUM`` to use another binary.
"""

from __future__ import annotations

import json
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
SHORT_SKIP = 180  # a finished panel run of 20 denoising steps
VIEWPORT = {"width": 1400, "height": 900}  # issue 12's window


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


@pytest.fixture(scope="module")
def ran(request, browser, lab_server, artifacts):
    """A page on which the notebook ``request.param`` ran, shared by the tests on it;
    its kernel is shut down before the next notebook's page opens."""
    context = browser.new_context(viewport=VIEWPORT)
    lp = LabPage(context.new_page(), lab_server, artifacts)
    try:
        run_notebook(lp, request.param)
        yield lp
    finally:
        try:
            lp.shutdown_kernel()
        finally:
            context.close()


def on(*names: str):
    """Run the test on the shared page of each notebook in ``names``."""
    return pytest.mark.parametrize("ran", names, indirect=True)


def run_notebook(lp: LabPage, name: str) -> None:
    lp.open(f"notebooks/{name}.ipynb")
    lp.run_all()
    errors = [f"{o['ename']}: {o['evalue']}" for cell in lp.outputs() for o in cell
              if o["output_type"] == "error"]
    assert not errors, f"{name}: error outputs {errors}\nconsole: {lp.console_errors}"


def assert_no_console_errors(lp: LabPage) -> None:
    assert not lp.console_errors, "errors in the browser console:\n" + "\n".join(
        lp.console_errors)


# ------------------------------------------------------- the cut-label check --

CUT_PAGE = """<style>
  .jupyter-button { width: 60px; overflow: hidden; text-overflow: ellipsis;
                    white-space: nowrap; }
  .widget-label { width: 40px; overflow: hidden; text-overflow: ellipsis;
                  white-space: nowrap; display: inline-block; }
  select { width: 50px; }
</style>
<div class="jp-OutputArea-output"><div class="jupyter-widgets">
  <button class="jupyter-button">Compare selected</button>
  <button class="jupyter-button">Run</button>
  <label class="widget-label">heat opacity</label>
  <label class="widget-label">seed</label>
  <select><option>a rather long option</option></select>
  <select style="width: 300px"><option>short</option></select>
  <button class="jupyter-button" style="display: none">Hidden and very long</button>
</div></div>"""


def test_the_cut_label_check_names_what_is_cut(browser, tmp_path):
    """The check every screenshot runs: it names the button, the label and the drop-down
    whose text does not fit, and nothing that fits or is hidden (its screenshot goes to a
    temporary folder, not to the artifacts, which show no cut label)."""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        page.set_content(CUT_PAGE)
        lp = LabPage(page, None, tmp_path)
        cut = lp.truncated()
        assert len(cut) == 3, cut
        for text in ("Compare selected", "heat opacity", "a rather long option"):
            assert any(text in c for c in cut), (text, cut)
        with pytest.raises(AssertionError, match="heat opacity"):
            lp.screenshot("0-cut-label-check")
    finally:
        context.close()


# ---------------------------------------------------------------- scenario 1 --

@on(*EXPECTED)
def test_notebook_runs_in_jupyterlab(ran, request):
    """Run all cells in JupyterLab: no error output, every widget view rendered."""
    lp, name = ran, request.node.callspec.params["ran"]
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


@on("02_boxes_and_masks")
def test_box_drawn_and_resized_by_mouse(ran):
    lp = ran
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


WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


@on("02_boxes_and_masks")
def test_saved_notebook_reopens_with_widget_snapshots(ran, lab_server):
    """Under ``make lab``'s settings (the server installs lab-settings/overrides.json as
    the Makefile does) a saved, already-run notebook keeps its widgets: reopened with a
    new kernel, which holds none of them, every widget output shows its snapshot, not
    'Error displaying widget: model not found'."""
    lp, path = ran, "notebooks/02_boxes_and_masks.ipynb"
    expected = lp.widget_views().count()
    assert expected >= 2, "the notebook shows no widgets to save"
    lp.save()
    saved = json.loads((lab_server.root / path).read_text(encoding="utf-8"))
    state = saved["metadata"].get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    assert state, "the saved notebook holds no widget state (is saveState on?)"

    lp.reopen(path)
    deadline = time.monotonic() + 60
    while (problems := lp.widget_problems()) and time.monotonic() < deadline:
        time.sleep(0.5)  # the views render one by one from the saved state
    assert not problems, problems
    assert lp.widget_views().count() == expected
    assert lp.kernel_json("'drawer' in globals()") is False, "not a new kernel"
    drawer = lp.page.locator(".e4e-pairboxdrawer").first
    assert drawer.is_visible()
    assert "Clear box" in drawer.inner_text()
    lp.screenshot("2-reopened")
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


@on("03_correspondence_explorer")
def test_correspondence_click_matches_nearest_neighbors(ran):
    lp = ran
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


# --------------------------------------------------------- attention viewer --

_JS_TOP_ELEMENT = """([x, y, canvas]) => {
  const el = document.elementFromPoint(x, y);
  return canvas.contains(el) ? '' : `${el.tagName.toLowerCase()}.${[...el.classList].join('.')}`;
}"""


def _dropdown(container, label: str):
    """The <select> of the Dropdown described by ``label``."""
    return container.locator(".widget-dropdown").filter(
        has=container.page.locator("label", has_text=re.compile(f"^{label}$"))).locator("select")


def _options(select) -> list[str]:
    return select.locator("option").all_inner_texts()


def _option_named(select, part: str) -> str:
    """The text of ``select``'s one option that contains ``part``."""
    texts = [t for t in _options(select) if part in t]
    assert len(texts) == 1, (part, _options(select))
    return texts[0]


@on("04_attention_and_injection")
def test_attention_viewer_clicks_every_quarter_and_offers_its_menus(ran):
    """In a 1400x900 window with the file browser open, the query image is shown whole
    and on top: a real click in each quarter of it moves the query there; the layer and
    step menus offer what the notebook recorded, the branch menu what its text names."""
    lp = ran
    viewer = lp.page.locator(".e4e-attentionviewer").first
    query = viewer.locator(".e4e-canvas").first
    query.scroll_into_view_if_needed()
    assert lp.page.locator("#filebrowser").is_visible()
    w, h = lp.kernel_json("list(viewer.size)")
    scale = lp.kernel_json("viewer.query_view.scale")
    box = query.bounding_box()
    assert box["width"] == pytest.approx(w * scale, abs=1), f"query image squeezed: {box}"
    lp.screenshot("4-attention-viewer", viewer)

    handle = query.element_handle()
    quarters = [(fx * w, fy * h) for fy in (0.25, 0.75) for fx in (0.25, 0.75)]
    covered = {xy: lp.page.evaluate(_JS_TOP_ELEMENT, [*_page_point(box, scale, *xy), handle])
               for xy in quarters}
    covered = {xy: el for xy, el in covered.items() if el}
    assert not covered, f"parts of the query image lie under other elements: {covered}"
    for x, y in quarters:
        lp.page.mouse.click(*_page_point(query.bounding_box(), scale, x, y))
        got = lp.wait_kernel(f"viewer.query and abs(viewer.query[0] - {x}) <= 1 and "
                             f"abs(viewer.query[1] - {y}) <= 1 and list(viewer.query)", timeout=30)
        assert got == pytest.approx([x, y], abs=1)
        lp.page.wait_for_function(  # the status line says where the query went
            "([el, text]) => el.innerText.includes(text)",
            arg=[viewer.element_handle(), f"query pixel x={got[0]:.0f}, y={got[1]:.0f}"],
            timeout=30_000)

    layers, steps = lp.kernel_json("[len(layers), steps]")
    assert len(_options(_dropdown(viewer, "layer"))) == layers >= 2
    step = _dropdown(viewer, "step")
    assert [int(t) for t in _options(step)] == steps and len(steps) >= 2
    assert "mean" in _options(_dropdown(viewer, "head"))
    assert set(_options(_dropdown(viewer, "branch"))) >= {"output", "plain", "appearance",
                                                         "structure"}
    other = next(s for s in steps if s != lp.kernel_json("viewer.step.value"))
    step.select_option(str(other))
    lp.wait_kernel(f"viewer.step.value == {other}", timeout=30)
    lp.page.wait_for_function("([el, text]) => el.innerText.includes(text)",
                              arg=[viewer.element_handle(), f"step {other},"], timeout=30_000)
    lp.screenshot("4-attention-clicked", viewer)
    assert_no_console_errors(lp)


# ---------------------------------------------------------------- scenario 4 --

def _progress(panel) -> float:
    """The progress bar's filled share in percent, read from the page."""
    style = panel.locator(".progress-bar").first.get_attribute("style") or ""
    m = re.search(r"width:\s*([\d.]+)%", style)
    return float(m.group(1)) if m else 0.0


@on(PANEL_NOTEBOOK)
def test_panel_run_stop_run(ran):
    lp = ran
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

    # the run after Stop need not be long: 20 of the 200 steps (the inversion is cached)
    lp.kernel(f"panel.set(skip_steps={SHORT_SKIP})")
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


def _slider(container, label: str):
    """The slider (``.widget-slider``) described by ``label``."""
    return container.locator(".widget-slider").filter(
        has=container.page.locator("label", has_text=re.compile(f"^{label}$")))


def _drag_handle(lp: LabPage, slider, dx: float) -> None:
    handle = slider.locator(".noUi-handle").first
    b = handle.bounding_box()
    x, y = b["x"] + b["width"] / 2, b["y"] + b["height"] / 2
    lp.drag((x, y), (x + dx, y), steps=6)


def _wait_done(lp: LabPage, panel, runs: int) -> None:
    state = lp.wait_kernel(f"panel.state if panel.state in ('done', 'failed') and "
                           f"panel.runs >= {runs} else ''", timeout=300)
    assert state == "done", lp.kernel_json("repr(panel.error)")


@on(PANEL_NOTEBOOK)
def test_panel_stop_marks_the_strip_stale_and_cross_image_disables_its_controls(ran):
    """After a finished run, a stopped one leaves the strip of the finished run on show,
    dimmed under a note that says it is the previous run's; in cross-image mode the
    guidance slider, the AdaIN range and the matching are disabled (a drag moves
    nothing) with a note saying what the mode uses instead, and enabled again after."""
    lp = ran
    panel = lp.page.locator(".e4e-transferpanel").first
    result = panel.locator("img.e4e-result")
    note = panel.locator(".widget-html").filter(has_text="showing the previous run")
    if lp.kernel_json("panel.result is None"):  # run alone: first a finished run
        lp.kernel(f"panel.set(skip_steps={SHORT_SKIP})")
        panel.get_by_role("button", name="Run").click()
        _wait_done(lp, panel, 1)
    runs = lp.kernel_json("panel.runs")
    lp.page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                              arg=result.element_handle(), timeout=30_000)
    result.scroll_into_view_if_needed()
    finished = result.screenshot()
    assert not note.is_visible()

    lp.kernel(f"panel.set(skip_steps={PANEL_PARAMETERS['skip_steps']})")  # a long run
    panel.get_by_role("button", name="Run").click()
    lp.wait_kernel("panel.state == 'running' and 0 < panel.steps_done", timeout=120)
    panel.get_by_role("button", name="Stop").click()
    assert lp.wait_kernel("panel.state in ('cancelled', 'done') and panel.state",
                          timeout=60) == "cancelled"
    note.wait_for(state="visible", timeout=30_000)
    assert f"stopped - showing the previous run (run {runs}), not this one" in note.inner_text()
    lp.page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                              arg=result.element_handle(), timeout=30_000)
    assert result.screenshot() != finished, "the previous run's strip is not dimmed"
    assert lp.kernel_json("panel.runs") == runs
    lp.screenshot("4-panel-stale", panel)

    panel.get_by_role("button", name="cross-image", exact=True).click()
    lp.wait_kernel("panel.injection.value == 'cross-image'")
    ignored = {"guidance": _slider(panel, "guidance"), "AdaIN range": _slider(panel, "AdaIN range")}
    mode_note = panel.get_by_text("cross-image uses its own guidance schedule")
    mode_note.wait_for(state="visible", timeout=30_000)
    before = lp.kernel_json("[panel.guidance.value, list(panel.adain_range.value)]")
    for label, slider in ignored.items():
        slider.scroll_into_view_if_needed()
        assert slider.locator(".noUi-target[disabled]").count() == 1, f"{label} is enabled"
        _drag_handle(lp, slider, 80)
    matching = panel.locator(".widget-toggle-buttons").filter(has_text="DIFT field")
    assert matching.locator("button:disabled").count() == matching.locator("button").count() >= 2
    lp.screenshot("4-panel-cross-image", panel)
    assert lp.kernel_json("[panel.guidance.value, list(panel.adain_range.value)]") == before

    panel.get_by_role("button", name="v", exact=True).click()
    lp.wait_kernel("panel.injection.value == 'v'")
    mode_note.wait_for(state="hidden", timeout=30_000)
    for label, slider in ignored.items():
        assert slider.locator(".noUi-target[disabled]").count() == 0, f"{label} stays disabled"
    _drag_handle(lp, ignored["guidance"], 60)
    lp.wait_kernel(f"panel.guidance.value != {before[0]}", timeout=30)
    assert_no_console_errors(lp)


# ------------------------------------------------------------------- upload --

def _choose_file(lp: LabPage, button, path: Path) -> None:
    """Click ``button`` and answer the browser's file chooser with ``path``."""
    with lp.page.expect_file_chooser(timeout=30_000) as chooser:
        button.click()
    chooser.value.set_files(str(path))


def _stable(text: str) -> str:
    """``text`` on one line, with object addresses (``0x7f...``) blanked."""
    return re.sub(r"0x[0-9a-f]+", "0x?", " ".join(text.split()))


@on(PANEL_NOTEBOOK)
def test_upload_replaces_an_image_and_refuses_a_text_file(ran, tmp_path):
    """The transfer panel's structure Upload, through the browser's file chooser: an
    image is taken (the panel runs on it, the thumbnail shows it); a text file is
    refused with the library's own message, shown, and the image in use stays."""
    from e4e_lab.errors import ImageError
    from e4e_lab.method.images import load_image

    lp = ran
    panel = lp.page.locator(".e4e-transferpanel").first
    source = panel.locator(".e4e-imagesource").nth(1)  # appearance, then structure
    upload = source.get_by_role("button", name="Upload")
    thumb = source.locator("img").first
    source.scroll_into_view_if_needed()
    old_thumb = thumb.screenshot()
    assert lp.kernel_json("panel.pair.structure.name") != "bird_structure.png"

    _choose_file(lp, upload, ROOT / "example" / "toy" / "bird_structure.png")
    lp.wait_kernel("panel.pair.structure.name == 'bird_structure.png'", timeout=60)
    status = source.get_by_text("loaded bird_structure.png")
    status.wait_for(state="visible", timeout=30_000)
    assert panel.get_by_text("new structure image 'bird_structure.png'").is_visible()
    lp.page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                              arg=thumb.element_handle(), timeout=30_000)
    assert thumb.screenshot() != old_thumb, "the thumbnail still shows the old image"
    lp.screenshot("5-upload-image", source)

    text_file = tmp_path / "notes.txt"
    text_file.write_text("a text file, not an image\n")
    with pytest.raises(ImageError) as refused:
        load_image(text_file.read_bytes(), (128, 128), name="notes.txt")
    message = " ".join(str(refused.value).split())
    _choose_file(lp, upload, text_file)
    shown = source.locator(".widget-html").filter(has_text="notes.txt")
    shown.wait_for(state="visible", timeout=30_000)
    assert _stable(shown.inner_text()) == _stable(message)  # (an object's address differs)
    assert shown.locator("span").evaluate("el => getComputedStyle(el).color") == \
        "rgb(176, 0, 32)", "the error is not shown in the error colour"
    assert lp.kernel_json("panel.pair.structure.name") == "bird_structure.png"
    lp.screenshot("5-upload-refused", source)
    assert_no_console_errors(lp)


# -------------------------------------------------------------------- sweep --

_JS_INK = """([img, boxes]) => {
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext('2d');
  ctx.drawImage(img, 0, 0);
  return boxes.map(([x0, y0, x1, y1]) => {
    const d = ctx.getImageData(x0, y0, x1 - x0, y1 - y0).data;
    let dark = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] < 240) dark++;
    return dark;
  });
}"""

SHEET_LABELS = """
from e4e_lab.analysis.sweep import sheet_layout as _sheet_layout
_lay = _sheet_layout(sweep.result, sweep.cell)
_boxes = []
for _c, _t in enumerate(_lay.column_labels):  # a text line over each column
    _x0, _y0, _x1, _ = _lay.cell_box(0, _c)
    _boxes.append([_x0, _y0 - 16, _x1, _y0])
for _r, _t in enumerate(_lay.row_labels):  # left of each row, around its middle
    _x0, _y0, _, _y1 = _lay.cell_box(_r, 0)
    _boxes.append([0, _y0, _x0, _y1])
"""


@on(PANEL_NOTEBOOK)
def test_sweep_from_the_browser_shows_a_contact_sheet_with_its_values(ran):
    """Pick two axes and their values in the sweep panel, press Run: the grid runs in the
    background and the contact sheet on show is the panel's, 2 x 2 cells with each
    axis's values written over the columns and down the rows."""
    lp = ran
    sweep = lp.page.locator(".e4e-sweeppanel").first
    sweep.scroll_into_view_if_needed()
    rows, columns = _dropdown(sweep, "rows"), _dropdown(sweep, "columns")
    values = sweep.locator(".widget-text input")
    # short runs: the panel notebook denoises 160 steps; skipping 190 or 194 of its 200
    # leaves 10 and 6
    rows.select_option(label=_option_named(rows, "(skip_steps)"))
    values.nth(0).fill("190, 194")
    values.nth(0).press("Enter")
    columns.select_option(label=_option_named(columns, "(guidance)"))
    values.nth(1).fill("1, 3")
    values.nth(1).press("Enter")
    lp.wait_kernel("[a.field for a in sweep.axes()] == ['skip_steps', 'guidance'] and "
                   "[a.labels() for a in sweep.axes()] == [['190', '194'], ['1', '3']]", timeout=30)
    sweep.get_by_role("button", name="Run").click()
    state = lp.wait_kernel("sweep.state if sweep.state in ('done', 'failed', 'cancelled') "
                           "else ''", timeout=300)
    assert state == "done", lp.kernel_json("repr(sweep.error)")
    sweep.get_by_text("done: 4 cells").wait_for(state="visible", timeout=30_000)

    image = sweep.locator("img").last
    shape = lp.kernel_json("list(sweep.sheet.shape[:2])")
    lp.page.wait_for_function(  # the sheet on show is the finished one
        "([img, h, w]) => img.complete && img.naturalHeight === h && img.naturalWidth === w",
        arg=[image.element_handle(), *shape], timeout=30_000)
    assert image.bounding_box()["width"] == pytest.approx(shape[1], abs=1), \
        "the contact sheet is shown stretched"
    lp.kernel(SHEET_LABELS)
    labels = lp.kernel_json("[_lay.column_labels, _lay.row_labels, _lay.title]")
    assert labels[:2] == [["1", "3"], ["190", "194"]]
    assert "skip_steps" in labels[2] and "guidance" in labels[2]
    ink = lp.page.evaluate(_JS_INK, [image.element_handle(), lp.kernel_json("_boxes")])
    assert all(n >= 5 for n in ink), f"an axis label is not drawn (dark pixels {ink})"
    lp.screenshot("5-sweep", sweep)
    assert_no_console_errors(lp)
