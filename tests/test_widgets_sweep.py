"""Sweep panel and gallery: the grid runs in the background with progress and Stop, its
contact sheet is shown, each cell reaches the gallery; runs are deleted and saved runs
read back from their folders."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

pytest.importorskip("ipywidgets")
pytest.importorskip("ipycanvas")

from e4e_lab.analysis.sweep import contact_sheet, run_sweep  # noqa: E402
from e4e_lab.io.saved_runs import SavedRunError, read_run  # noqa: E402
from e4e_lab.method.images import to_uint8  # noqa: E402

from widgets import RunGallery  # noqa: E402
from widgets.sweep import SweepPanel  # noqa: E402

from widget_helpers import serialize_all  # noqa: E402

AXES = [("guidance", [1.0, 2.5]), ("injection", ["feature", "v"])]


@pytest.fixture(scope="module")
def swept(shared_lab, pair, fast_config):
    """A 2x2 sweep through the panel, with a gallery."""
    gallery = RunGallery(shared_lab)
    panel = SweepPanel(shared_lab, pair, fast_config, gallery=gallery, cell=48)
    panel.set_axes(("guidance", "1, 2.5"), ("injection", "feature, v"))
    assert panel.run(block=True) and panel.state == "done", panel.error
    return panel, gallery


def test_the_panel_runs_the_grid_and_shows_its_contact_sheet(shared_lab, pair, fast_config,
                                                             swept):
    panel, _ = swept
    result = panel.result
    assert result.complete and result.values == [(1.0, "feature"), (1.0, "v"),
                                                 (2.5, "feature"), (2.5, "v")]
    alone = run_sweep(shared_lab, pair, fast_config, AXES)  # the library, same seed
    for a, b in zip(result.images, alone.images):
        assert torch.equal(a, b)
    assert np.array_equal(panel.sheet, np.asarray(contact_sheet(result, 48)))
    assert panel.image.layout.display is None and panel.image.value
    assert panel.image.layout.width == f"{panel.sheet.shape[1]}px"  # not stretched
    assert panel.progress.value == panel.progress.max == 4 * fast_config.denoising_steps
    assert "done: 4 cells" in panel.status.value and panel.progress.bar_style == "success"
    serialize_all(panel.widget)


def test_each_cell_reaches_the_gallery_named_by_its_values(swept, fast_config):
    _, gallery = swept
    names = [r.name for r in gallery.runs]
    assert names == ["sweep: guidance=1, injection=feature", "sweep: guidance=1, injection=v",
                     "sweep: guidance=2.5, injection=feature", "sweep: guidance=2.5, injection=v"]
    assert gallery.runs[3].config == fast_config.replace(guidance=2.5, injection="v")


def test_bad_values_are_refused_before_running(shared_lab, pair, fast_config):
    panel = SweepPanel(shared_lab, pair, fast_config)
    panel.set_axes(("guidance", "1, lots"))
    assert not panel.run() and panel.state == "failed"
    assert "lots" in panel.status.value and not panel.running
    panel.set_axes(("feat_start", "4, 99"), ("injection", "v"))
    assert not panel.run() and "feat_range" in panel.status.value
    panel.fields[1].value = "(none)"
    assert panel.values[1].disabled


def test_stop_ends_the_sweep_with_the_cells_done_so_far(shared_lab, pair, fast_config):
    panel = SweepPanel(shared_lab, pair, fast_config, cell=32)
    panel.set_axes(("guidance", "1, 2.5"), ("injection", "feature, v"))
    second = threading.Event()
    original = panel._on_step

    def on_step(event):  # Stop pressed during the second cell's third step
        original(event)
        if panel.steps_done == fast_config.denoising_steps + 3:
            second.set()
            panel.stop()
    panel._on_step = on_step
    assert panel.run(block=True)
    assert second.is_set() and panel.state == "cancelled"
    assert len(panel.result.cells) == 1 and not panel.result.complete
    assert "stopped after 1 of 4 cells" in panel.status.value
    assert "about" not in panel.status.value and panel.progress.bar_style == "warning"
    assert not panel.running and not panel.run_button.disabled


def test_the_status_gives_a_time_estimate_while_running(shared_lab, pair, fast_config):
    panel = SweepPanel(shared_lab, pair, fast_config, cell=32)
    panel.set_axes(("skip_steps", "6"))
    statuses = []
    original = panel._on_step
    panel._on_step = lambda ev: (original(ev), statuses.append(panel.status.value))
    assert panel.run(block=True) and panel.state == "done"
    assert "cell 1/1 (6): step 1/14 - about" in statuses[0] and statuses[0].endswith("left</span>")


def test_the_gallery_deletes_runs_and_reloads_saved_ones(shared_lab, swept, tmp_path):
    _, source = swept
    gallery = RunGallery(shared_lab, export_dir=tmp_path / "runs")
    for rec in source.runs:
        gallery.add(rec.result, rec.pair, name=rec.name)
    gallery.select([0, 3])
    paths = gallery.export_selected()
    assert [p.name for p in paths] == ["sweep-guidance-1-injection-feature",
                                       "sweep-guidance-2.5-injection-v"]
    assert gallery.delete([1, "sweep: guidance=2.5, injection=v"]) == [
        "sweep: guidance=1, injection=v", "sweep: guidance=2.5, injection=v"]
    assert [r.name for r in gallery.runs] == ["sweep: guidance=1, injection=feature",
                                              "sweep: guidance=2.5, injection=feature"]
    assert len(gallery.selector.options) == 2 and "deleted" in gallery.status.value
    gallery.select([])
    assert gallery.delete() == [] and "select the runs" in gallery.status.value

    fresh = RunGallery(shared_lab, export_dir=tmp_path / "runs")
    added = fresh.reload()
    assert [r.name for r in added] == ["sweep: guidance=1, injection=feature",
                                       "sweep: guidance=2.5, injection=v"]
    assert "reloaded 2 saved run(s)" in fresh.status.value
    assert fresh.reload() == []  # already held: not added twice
    back, orig = fresh.runs[1], source.runs[3]
    assert back.config == orig.config and back.pair is None
    saved_pixels = torch.from_numpy(to_uint8(orig.result.image)).permute(2, 0, 1) / 255
    assert torch.equal(back.result.image, saved_pixels.float())  # the PNG, 8-bit
    assert back.result.strip.shape[2] == 3 * back.result.image.shape[2]
    assert fresh.compare([0, 1]) == [r.name for r in added]  # no inputs, the results
    copied = fresh.export(1, tmp_path / "again")
    assert read_run(copied).config == orig.config


def test_reloading_a_folder_that_holds_no_run_says_so(shared_lab, tmp_path):
    gallery = RunGallery(shared_lab)
    assert gallery.reload(tmp_path / "missing") == []
    assert "missing" in gallery.status.value and "#b00020" in gallery.status.value
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"config": {}}))
    with pytest.raises(SavedRunError, match="result.png"):
        read_run(bad)
    assert gallery.reload(bad) == [] and "result.png" in gallery.status.value


def test_cells_already_in_the_gallery_are_taken_not_run_again(shared_lab, pair, fast_config):
    """The notebook's case: two panel runs, then a sweep whose grid holds both settings
    runs only the two others (05 stays within its time budget this way)."""
    from widgets import TransferPanel

    gallery = RunGallery(shared_lab)
    panel = TransferPanel(shared_lab, pair, fast_config, gallery=gallery)
    panel.run(block=True)
    panel.set(injection="v", guidance=1.0)
    panel.run(block=True)
    assert panel.state == "done" and len(gallery.runs) == 2
    earlier = [r.result for r in gallery.runs]
    sweep = SweepPanel(shared_lab, pair, fast_config, gallery=gallery, cell=48)
    sweep.set_axes(("guidance", f"1, {fast_config.guidance.scale}"), ("injection", "feature, v"))
    assert sweep.run(block=True) and sweep.state == "done", sweep.error
    cells = sweep.result.cells
    assert [c.reused for c in cells] == [False, True, True, False]
    assert cells[1].result is earlier[1] and cells[2].result is earlier[0]
    # only the two new cells were run, counted and added to the gallery
    assert sweep.progress.max == 2 * fast_config.denoising_steps
    assert len(gallery.runs) == 4 and "2 taken from the gallery" in sweep.status.value
    fresh = run_sweep(shared_lab, pair, fast_config, [("guidance", [1.0]),
                                                      ("injection", ["v"])])
    assert torch.equal(fresh.images[0], cells[1].image)  # what re-running would give
