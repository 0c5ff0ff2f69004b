"""The widgets driven from Python, without a browser: construct, call handlers, check state."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("ipywidgets")
pytest.importorskip("ipycanvas")

from e4e_lab.errors import E4ELabWarning  # noqa: E402
from e4e_lab.analysis.grids import cell_center, injected_grids, pixel_to_cell  # noqa: E402
from e4e_lab.analysis.recording import transfer_with_features  # noqa: E402
from e4e_lab.method.attention import InjectionProcessor  # noqa: E402
from e4e_lab.method.correspondence import nearest_neighbors  # noqa: E402
from e4e_lab.method.layers import injected_layers  # noqa: E402
from e4e_lab.method.masks import box_mask, mask_at  # noqa: E402
from e4e_lab.models import BANNERS  # noqa: E402
from e4e_lab.models.dift import dift_features  # noqa: E402

import widgets  # noqa: E402
from widgets import (AttentionViewer, BoxDrawer, CorrespondenceExplorer,  # noqa: E402
                     MaskEditor, PairBoxDrawer, PairMaskEditor, RunGallery, TransferPanel)

from conftest import APP_BOX, SMALL, STRUCT_BOX  # noqa: E402
from widget_helpers import assert_one_banner, frontend_event  # noqa: E402


@pytest.fixture(scope="module")
def finest(shared_lab):
    return injected_layers(shared_lab.models.unet)[-1]  # a layer on the finest grid


@pytest.fixture(scope="module")
def runs(shared_lab, pair, fast_config, finest):
    """feature and v runs recording matches (features at step 3) and attention at step 3."""
    out = {}
    for mode in ("feature", "v"):
        c = fast_config.replace(injection=mode, record_attention_layers=(finest,),
                        record_attention_steps=(3,))
        out[mode] = transfer_with_features(shared_lab, pair, c, feature_steps=(3,))
    return out


# ------------------------------------------------------------------ banner --

def test_every_widget_shows_the_tiny_banner(shared_lab, pair, fast_config, runs):
    assert shared_lab.is_tiny and shared_lab.banner == BANNERS["tiny"]
    built = [
        BoxDrawer(pair.structure, lab=shared_lab),
        PairBoxDrawer.from_pair(shared_lab, pair),
        MaskEditor(pair.structure, STRUCT_BOX, lab=shared_lab),
        PairMaskEditor(shared_lab, pair),
        CorrespondenceExplorer(shared_lab, pair, result=runs["feature"]),
        AttentionViewer(shared_lab, pair, list(runs.values())),
        TransferPanel(shared_lab, pair, fast_config),
        RunGallery(shared_lab),
    ]
    for w in built:
        assert_one_banner(w, BANNERS["tiny"])
    assert BANNERS["tiny"] in widgets.banner_html(shared_lab)


# -------------------------------------------------------------------- boxes --

def test_box_drawer_draw_move_resize(pair):
    d = BoxDrawer(pair.structure, display_size=256)
    assert d.box is None and d.view.scale == 4
    # draw by dragging (from bottom-right to top-left: normalised)
    d.on_mouse_down(40, 50)
    d.on_mouse_move(20, 30)
    assert d.mode == "draw" and d.box is None
    d.on_mouse_up(10, 12)
    assert d.box == (10, 12, 40, 50) and d.mode is None
    assert "[10, 12, 40, 50]" in d.coords.value
    # move by dragging inside
    d.on_mouse_down(25, 30)
    assert d.mode == "move"
    d.on_mouse_move(35, 35)
    d.on_mouse_up(35, 35)
    assert d.box == (20, 17, 50, 55)
    # a move cannot leave the image
    d.on_mouse_down(30, 30)
    d.on_mouse_up(200, 200)
    assert d.box == (34, 26, 64, 64)
    # resize by the north-west corner handle, then by the east edge handle
    d.on_mouse_down(34, 26)
    assert (d.mode, d.handle) == ("resize", "nw")
    d.on_mouse_up(5, 6)
    assert d.box == (5, 6, 64, 64)
    d.on_mouse_down(64, 35)
    assert d.handle == "e"
    d.on_mouse_up(30, 35)
    assert d.box == (5, 6, 30, 64)
    # dragging a corner past the opposite one flips the box instead of inverting it
    d.on_mouse_down(30, 64)
    assert d.handle == "se"
    d.on_mouse_up(2, 3)
    assert d.box == (2, 3, 5, 6)
    # a click outside without dragging keeps the box
    d.on_mouse_down(50, 50)
    d.on_mouse_up(50, 50)
    assert d.box == (2, 3, 5, 6)


def test_box_drawer_converts_canvas_events(pair):
    d = BoxDrawer(pair.structure, display_size=256)
    seen = []
    d.observe(lambda change: seen.append(change.new), names="box")
    frontend_event(d.view.canvas, "mouse_down", 40, 48)  # canvas pixels = 4 x model pixels
    frontend_event(d.view.canvas, "mouse_move", 120, 160)
    frontend_event(d.view.canvas, "mouse_up", 200, 240)
    assert d.box == (10, 12, 50, 60)
    assert seen == [(10, 12, 50, 60)]
    frontend_event(d.view.canvas, "mouse_down", 120, 120)
    frontend_event(d.view.canvas, "mouse_out", 400, 120)  # leaving the canvas ends the drag
    assert d.mode is None and d.box == (24, 12, 64, 60)


def test_pair_boxes_save_load_and_pair(shared_lab, pair, tmp_path):
    d = PairBoxDrawer(shared_lab, pair.appearance, pair.structure, path=tmp_path / "b.json")
    d.appearance.set_box([1, 2, 30, 40])
    d.structure.on_mouse_down(10, 10)
    d.structure.on_mouse_up(50, 60)
    path = d.save()
    data = json.loads(path.read_text())
    assert data == {"_size": SMALL, "app.png": [1, 2, 30, 40], "struct.png": [10, 10, 50, 60]}

    other = PairBoxDrawer(shared_lab, pair.appearance, pair.structure)
    assert other.load(path) == {"app.png": [1, 2, 30, 40], "struct.png": [10, 10, 50, 60]}
    # boxes drawn at another resolution are rescaled through "_size"
    other.load({"_size": 128, "struct.png": [0, 0, 64, 128]})
    assert other.structure.box == (0, 0, 32, 64)
    p = d.pair(mask="box")
    assert p.structure_box == (10, 10, 50, 60) and p.appearance_box == (1, 2, 30, 40)
    assert torch.equal(p.structure_mask, box_mask((10, 10, 50, 60), (SMALL, SMALL)))
    # saving into an existing file keeps other images' boxes and the file's resolution
    shared = tmp_path / "shared.json"
    shared.write_text(json.dumps({"_size": 128, "other.png": [1, 2, 3, 4]}))
    d.save(shared)
    assert json.loads(shared.read_text()) == {
        "_size": 128, "other.png": [1, 2, 3, 4], "app.png": [2, 4, 60, 80],
        "struct.png": [20, 20, 100, 120]}
    assert other.load(shared) == d.boxes()
    # loading from another file does not redirect where Save writes
    assert d.path.value == str(shared)
    other.path.value = str(tmp_path / "mine.json")
    other.load(path)
    assert other.path.value == str(tmp_path / "mine.json")
    # the saved file is what the library reads
    from e4e_lab.io.formats import read_boxes

    assert read_boxes(path, (SMALL, SMALL))["struct.png"] == [10, 10, 50, 60]


# -------------------------------------------------------------------- masks --

def test_mask_editor_box_and_grids(shared_lab, pair):
    ed = MaskEditor(pair.structure, STRUCT_BOX, lab=shared_lab)  # no SAM checkpoint: box
    assert ed.source.value == "box"
    assert torch.equal(ed.mask, box_mask(STRUCT_BOX, (SMALL, SMALL)))
    grids = injected_grids(shared_lab.models, (SMALL, SMALL))
    assert len(ed.grids.children) == 1 + len(grids)  # latent grid + each injected grid
    labels = [label for label, _, _ in ed.grid_masks()]
    assert labels[0].startswith("latent 8x8") and any(lbl.startswith("4x4") for lbl in labels)
    ed.opacity.value = 0.2
    assert ed.view.overlay[..., 3].max() == round(0.2 * 255)
    ed.on_click(5, 5)  # clicks only refine SAM masks
    assert ed.points == [] and "SAM-HQ" in ed.status.value
    ed.source.value = "none"
    assert ed.mask.sum() == SMALL * SMALL


def test_mask_editor_sam_clicks(shared_lab, pair):
    from e4e_lab.models.sam import SamMasker

    pytest.importorskip("segment_anything_hq")
    masker = SamMasker.random()
    ed = MaskEditor(pair.structure, STRUCT_BOX, lab=shared_lab, masker=masker)
    assert ed.source.value == "sam"
    assert ed.mask.shape == (SMALL, SMALL) and set(ed.mask.unique().tolist()) <= {0.0, 1.0}
    ed.on_click(30, 30)
    ed.click_label.value = 0
    ed.on_click(5, 5)
    assert ed.points == [(30.0, 30.0), (5.0, 5.0)] and ed.labels == [1, 0]
    expected = masker.mask(pair.structure, STRUCT_BOX, [(30.0, 30.0), (5.0, 5.0)], [1, 0])
    assert torch.equal(ed.mask, expected)
    ed.undo()
    assert ed.labels == [1]
    ed.reset()
    assert ed.points == []


def test_pair_mask_editor_builds_the_pair(shared_lab, pair):
    ed = PairMaskEditor(shared_lab, pair)
    ed.structure.source.value = "none"
    p = ed.pair()
    assert p.structure_mask.sum() == SMALL * SMALL
    assert torch.equal(p.appearance_mask, box_mask(APP_BOX, (SMALL, SMALL)))


# ---------------------------------------------------------- correspondence --

def test_explorer_dift_heatmap_argmax_is_nearest_neighbor(shared_lab, pair, monkeypatch):
    ex = CorrespondenceExplorer(shared_lab, pair, block=2, timestep=261, ensemble=2, compute=False)
    assert ex.lookup is None and "Compute" in ex.status.value  # nothing computed yet
    lookup = ex.compute_dift(block=True)
    grid = lookup.target_grid
    assert grid == (8, 8) and lookup.ref_grid == (8, 8)

    ft = dift_features(shared_lab.models, pair.structure, 261, 2, 2, "", 0).features
    fr = dift_features(shared_lab.models, pair.appearance, 261, 2, 2, "", 0).features
    c = ft.shape[0]
    rm = mask_at(pair.appearance_mask, grid).flatten()
    tm = mask_at(pair.structure_mask, grid).flatten()
    nn_ref_masked, _ = nearest_neighbors(ft.reshape(c, -1).T, fr.reshape(c, -1).T, None, rm)
    nn_both, _ = nearest_neighbors(ft.reshape(c, -1).T, fr.reshape(c, -1).T, tm, rm)

    # a click must not recompute features
    def fail(*a, **k):
        raise AssertionError("a click recomputed DIFT features")

    monkeypatch.setattr("e4e_lab.models.dift.dift_features", fail)
    for x, y in [(3, 3), (20, 33), (40, 12), (60, 61), (31.5, 47)]:
        match = ex.select(x, y)
        cell = pixel_to_cell(x, y, (SMALL, SMALL), grid)
        assert ex.cell == cell
        assert match == int(nn_ref_masked[cell])
        heat = ex.heat.flatten().masked_fill(rm == 0, float("-inf"))
        assert int(heat.argmax()) == match
        assert ex.heat.shape == grid
        assert ex.match_xy == cell_center(match, grid, (SMALL, SMALL))
        assert "best match" in ex.info.value
    # the warped-reference field is the transfer's masked matching
    assert torch.equal(ex.field.index, nn_both)
    assert ex.warped_image.value and ex.unused_image.value
    assert 0.0 <= ex.unused_fraction <= 1.0
    # without the mask restriction the argmax runs over the whole reference
    ex.restrict.value = False
    assert ex.select(20, 33) == int(ex.heat.flatten().argmax())


def test_explorer_hover_is_throttled(shared_lab, pair):
    ex = CorrespondenceExplorer(shared_lab, pair, block=2, ensemble=1, hover_interval=10.0)
    ex.wait()  # the features are computed in the background
    n = ex.updates
    ex.on_hover(10, 10)
    ex.on_hover(50, 50)
    assert ex.updates == n + 1 and ex.selected == (10.0, 10.0)
    ex.hover.value = False
    ex.hover_interval = 0.0
    ex.on_hover(50, 50)
    assert ex.selected == (10.0, 10.0)
    frontend_event(ex.target_view.canvas, "mouse_down", 4 * 50, 4 * 50)
    assert ex.selected == (50.0, 50.0)


def test_explorer_recorded_matches(shared_lab, pair, runs, finest):
    res = runs["feature"]
    rec = res.recorder
    assert (finest, 3) in rec.features and (finest, 4) in rec.matches
    ex = CorrespondenceExplorer(shared_lab, pair, result=res)
    assert ex.source.value == "recorded"
    ex.use_recorded(finest, 3)
    fld = rec.matches[(finest, 3)]
    grid = fld.target_shape
    tm = mask_at(pair.structure_mask, grid).flatten()
    rm = mask_at(pair.appearance_mask, grid).flatten()
    inside = [k for k in range(tm.numel()) if tm[k] > 0]
    for cell in inside[:: max(1, len(inside) // 6)]:
        x, y = cell_center(cell, grid, (SMALL, SMALL))
        match = ex.select(x, y)
        assert match == int(fld.index[cell]) >= 0
        # the heatmap from the recorded features explains the recorded match
        heat = ex.heat.flatten().masked_fill(rm == 0, float("-inf"))
        assert int(heat.argmax()) == match
    # outside the target mask: no match (background keeps its own features)
    outside = next(k for k in range(tm.numel()) if tm[k] == 0)
    assert ex.select(*cell_center(outside, grid, (SMALL, SMALL))) == -1
    # a step recorded without features: the match only
    ex.use_recorded(finest, 4)
    x, y = cell_center(inside[0], grid, (SMALL, SMALL))
    assert ex.select(x, y) == int(rec.matches[(finest, 4)].index[inside[0]])
    assert ex.heat is None and ex.heat_overlay() is not None


# --------------------------------------------------------------- attention --

def test_attention_viewer_feature_vs_v(shared_lab, pair, runs, finest):
    viewer = AttentionViewer(shared_lab, pair, {"feature": runs["feature"], "v": runs["v"]})
    assert viewer.layer.value == finest and viewer.step.value == 3
    grid = viewer.grid
    viewer.select(30, 40)
    cell = pixel_to_cell(30, 40, (SMALL, SMALL), grid)
    assert viewer.query_cell == cell
    for label, res in runs.items():
        probs = res.recorder.attention[(finest, 3)]["output"]
        expected = probs[:, cell].float().mean(0).reshape(grid)
        assert torch.allclose(viewer.maps[label], expected)
        assert abs(float(viewer.maps[label].sum()) - 1) < 1e-2  # a softmax row
    assert not torch.allclose(viewer.maps["feature"], viewer.maps["v"])
    assert viewer.head.label == "mean"
    viewer.set_view(head=1)
    probs = runs["v"].recorder.attention[(finest, 3)]["output"]
    assert torch.allclose(viewer.maps["v"], probs[1, cell].float().reshape(grid))
    viewer.set_view(branch="appearance")
    assert viewer.peaks["feature"] == int(viewer.maps["feature"].flatten().argmax())
    assert "appearance layout" in viewer.captions["v"].value


def test_attention_viewer_says_what_recording_cost(shared_lab, pair, runs):
    """Issue 12 item 3: the UI states what recording costs, per run, from the recorder."""
    viewer = AttentionViewer(shared_lab, pair, {"feature": runs["feature"], "v": runs["v"]})
    text = viewer.cost_text()
    for label, res in runs.items():
        mib = res.recorder.nbytes / 2**20
        assert f"<b>{label}</b>: 1 layer(s) x 1 step(s) recorded, {mib:.1f} MiB held" in text
        assert f"{res.timings['ms_per_step']:.0f} ms per denoising step" in text
    stack, shown = [viewer.widget], []
    while stack:  # the text is in the viewer's frame, under the results
        w = stack.pop()
        shown.append(getattr(w, "value", None))
        stack.extend(getattr(w, "children", ()) or ())
    assert text in shown


# ---------------------------------------------------------- transfer panel --

def _restored(unet):
    return not any(isinstance(p, InjectionProcessor) for p in unet.attn_processors.values())


def test_transfer_panel_stop_mid_run_then_run_again(shared_lab, pair, fast_config):
    gallery = RunGallery(shared_lab)
    panel = TransferPanel(shared_lab, pair, fast_config, gallery=gallery, preview_every=2)
    # press Stop from inside step 1 (the loop checks between steps: it stops before step 2)
    panel.observers.append(lambda ev: ev.step == 1 and panel.stop_button.click())
    assert panel.run()
    assert not panel.run()  # one run at a time
    assert panel.wait(120) == "cancelled"
    assert panel.cancelled_at == 2 and panel.steps_done == 2 < panel.total_steps
    assert panel.result is None and gallery.runs == []
    assert not panel.run_button.disabled and panel.stop_button.disabled
    assert "stopped before step 2" in panel.status.value
    assert _restored(shared_lab.models.unet)

    # the session is still usable: change settings and run to completion
    panel.observers.clear()
    panel.set(injection="v", guidance=1.0, adain_range=(4, 10), mask=False, seed=fast_config.seed)
    assert panel.config().injection.mode == "v" and panel.config().guidance.scale == 1.0
    assert panel.run(block=True) and panel.state == "done", panel.error
    assert panel.steps_done == panel.total_steps == fast_config.denoising_steps
    assert panel.progress.value == panel.progress.max
    assert panel.steps_per_s > 0 and "steps/s" in panel.status.value
    assert panel.preview.value and panel.result_image.value
    assert panel.preview_steps == [1, 3, 5, 7, 9, 11, 13]  # every 2nd, and the last
    assert not panel.inverted and "inversion reused" in panel.status.value
    assert panel.result.image.shape == (3, SMALL, SMALL)
    assert len(gallery.runs) == 1 and gallery.runs[0].masked is False
    assert _restored(shared_lab.models.unet)


def test_transfer_panel_reports_invalid_settings(shared_lab, pair, fast_config):
    panel = TransferPanel(shared_lab, pair, fast_config, preview="vae")
    with pytest.raises(KeyError):
        panel.set(num_steps=3)
    panel.set(feat_range=(1, 4), adain_range=(3, 5))
    with pytest.warns(E4ELabWarning, match="reaches no denoising step"):  # both ranges
        panel.base = fast_config.replace(num_steps=5, skip_steps=3, feat_range=(1, 4),
                                         adain_range=(3, 5))
    panel.skip_steps.value = 7  # leaves no denoising step of 5
    assert not panel.run() and panel.state == "failed"
    assert "skip_steps" in panel.status.value
    panel.show_preview(torch.zeros(4, 8, 8))  # VAE preview path
    assert panel.preview.value


# ------------------------------------------------------------------ gallery --

def test_gallery_compare_and_export(shared_lab, pair, runs, tmp_path):
    g = RunGallery(shared_lab, export_dir=tmp_path)
    assert "no runs" in g.table.value
    g.add(runs["feature"], pair, name="feature")
    g.add(runs["v"], pair, name="v")
    g.select([0, 1])
    names = g.compare()
    assert names == ["feature", "v"]
    assert len(g.comparison.children) == 4  # appearance, structure, two results
    assert "<b>feature</b>" in g.table.value and "<b>v</b>" in g.table.value  # they differ
    assert "injection=v" in widgets.widget_text(g.comparison)
    paths = g.export_selected()
    assert [p.name for p in paths] == ["feature", "v"]
    cfg = json.loads((paths[1] / "config.json").read_text())
    assert cfg["config"]["injection"] == "v" and cfg["run_name"] == "v" and cfg["tiny_model"]
    assert (paths[0] / "strip.png").exists()
    # exporting again refuses to overwrite and says so
    assert g.export_selected() == [] and "already holds a run" in g.status.value


# -------------------------------------------------------------------- misc --

def test_render_heat_colours_follow_values():
    from widgets import render

    vals = torch.arange(16.0).reshape(4, 4)
    rgba = render.heat_rgba(vals, 0.5)
    assert rgba.shape == (4, 4, 4) and rgba.dtype == np.uint8
    lum = rgba[..., :3].astype(int).sum(-1).flatten()
    assert (np.diff(lum) >= 0).all()  # brighter for higher similarity
    big = render.resize_nearest(rgba, 64, 64)
    assert (big[:16, :16] == rgba[0, 0]).all()
