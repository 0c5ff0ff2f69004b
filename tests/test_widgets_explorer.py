"""Correspondence explorer and attention viewer: reuse, staleness, wording, layout; the
DIFT and part computations in the background (bar, Stop, the blocking path)."""

from __future__ import annotations

import re
import threading
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("ipywidgets")
pytest.importorskip("ipycanvas")

from e4e_lab.analysis.grids import pixel_to_cell  # noqa: E402
from e4e_lab.analysis.lookup import FeatureLookup  # noqa: E402
from e4e_lab.analysis.recording import match_changes  # noqa: E402

from widgets import CorrespondenceExplorer, figures  # noqa: E402

from conftest import SMALL  # noqa: E402


@pytest.fixture(scope="module")
def dift_lookup(shared_lab, pair):
    return FeatureLookup.from_dift(shared_lab.models, pair.structure, pair.appearance,
                                   pair.structure_mask, pair.appearance_mask, timestep=261,
                                   block=2, ensemble=2, prompt="", seed=0)


# ---------------------------------------------------------- correspondence --

def test_switching_to_dift_reuses_features_loaded_with_those_settings(
        shared_lab, pair, dift_lookup, monkeypatch):
    ex = CorrespondenceExplorer(shared_lab, pair, lookup=dift_lookup, block=2, timestep=261,
                                ensemble=2)
    assert ex.source.value == "given"
    ex.select(20, 33)

    def fail(*a, **k):
        raise AssertionError("the explorer recomputed features it holds")

    monkeypatch.setattr("e4e_lab.models.dift.dift_features", fail)
    ex.source.value = "dift"
    assert ex.lookup is dift_lookup and "Compute" not in ex.status.value
    assert ex.heat is not None and ex.ref_view.overlay is not None
    # other settings: nothing to show, and the old heatmap is not kept meanwhile
    ex.ensemble.value = 3
    assert ex.lookup is None and "Compute" in ex.status.value
    assert ex.heat is None and ex.match is None and ex.ref_view.overlay is None
    assert "cleared" in ex.info.value
    assert ex.warped_image.layout.display == "none"
    # back to the loaded settings: shown again, for the same selection
    ex.ensemble.value = 2
    assert ex.lookup is dift_lookup and ex.heat is not None and ex.selected == (20.0, 33.0)
    assert ex.warped_image.layout.display != "none"


def test_explorer_line_writes_positions_x_first_and_labelled(shared_lab, pair, dift_lookup):
    ex = CorrespondenceExplorer(shared_lab, pair, lookup=dift_lookup)
    x, y = 50, 10  # far right, near the top: column and row differ
    ex.select(x, y)
    grid = ex.target_grid
    row, col = divmod(pixel_to_cell(x, y, (SMALL, SMALL), grid), grid[1])
    info = ex.info.value
    assert f"target pixel x={x}, y={y}" in info
    assert f"cell x={col}, y={row} of {grid[1]} wide x {grid[0]} high" in info
    assert not re.search(r"\(\d+, \d+\)", info)  # no unlabelled pairs
    if ex.match is not None and ex.match >= 0:
        mrow, mcol = divmod(ex.match, ex.ref_grid[1])
        assert f"reference cell x={mcol}, y={mrow}" in info


def _recorder(changes_per_step: list[int], cells: int = 16):
    """A recorder whose single layer changes ``changes_per_step[k]`` matches at step k+1."""
    index = torch.arange(cells)
    matches = {("up.attn", 0): SimpleNamespace(index=index.clone())}
    for step, n in enumerate(changes_per_step, start=1):
        index = index.clone()
        index[:n] = (index[:n] + 1) % cells
        matches[("up.attn", step)] = SimpleNamespace(index=index)
    return SimpleNamespace(matches=matches, grids={"up.attn": (4, 4)})


def test_match_change_sentence_follows_the_plotted_numbers():
    settling = _recorder([16, 14, 12, 8, 4, 2, 0, 0, 0])
    text = figures.describe_match_changes(settling)
    early = sum(f for _, f in match_changes(settling, "up.attn")[:3]) / 3
    assert text.startswith("4x4 layers") and "they settle" in text
    assert f"{early:.0%} of matches change per step early (steps 1-3)" in text
    growing = _recorder([0, 0, 1, 2, 4, 8, 12, 14, 16])
    assert "re-match more as denoising goes on" in figures.describe_match_changes(growing)
    flat = _recorder([8] * 9)
    assert "about as many change early as late" in figures.describe_match_changes(flat)


# --------------------------------------------------------------- attention --

@pytest.fixture(scope="module")
def attention_runs(shared_lab, pair, fast_config):
    """'v' recorded one layer at one step; 'feature' two layers at two steps."""
    from e4e_lab.method.layers import injected_layers

    layers = injected_layers(shared_lab.models.unet)
    one = fast_config.replace(injection="v", record_attention_layers=(layers[-1],),
                              record_attention_steps=(3,))
    two = fast_config.replace(injection="feature", record_attention_layers=tuple(layers[-2:]),
                              record_attention_steps=(3, 4))
    return layers, {"v": shared_lab.transfer(pair, one), "feature": shared_lab.transfer(pair, two)}


def test_attention_menus_offer_every_recorded_layer_and_step(shared_lab, pair, attention_runs):
    from widgets import AttentionViewer

    layers, runs = attention_runs
    viewer = AttentionViewer(shared_lab, pair, runs)  # the run with fewer recordings first
    assert [v for _, v in viewer.layer.options] == [layers[-1], layers[-2]]
    viewer.set_view(layer=layers[-1])
    assert list(viewer.step.options) == [3, 4]
    viewer.set_view(layer=layers[-2], step=4)
    viewer.select(30, 30)
    assert viewer.maps["feature"] is not None
    assert viewer.maps["v"] is None and "not recorded" in viewer.captions["v"].value
    assert "query pixel x=30, y=30" in viewer.info.value


def test_attention_columns_keep_their_width_and_wrap(shared_lab, pair, attention_runs):
    from widgets import AttentionViewer

    viewer = AttentionViewer(shared_lab, pair, attention_runs[1], display_size=192)
    row = next(c for c in viewer.widget.children if viewer.query_view.canvas in _descendants(c))
    assert "wrap" in row.layout.flex_flow
    for col in row.children:
        assert col.layout.flex == "0 0 auto"
        canvases = [w for w in _descendants(col) if w in
                    [viewer.query_view.canvas] + [v.canvas for v in viewer.key_views.values()]]
        assert len(canvases) == 1
        assert col.layout.min_width == canvases[0].layout.width == "192px"


def _descendants(widget):
    out, stack = [], [widget]
    while stack:
        w = stack.pop()
        out.append(w)
        stack.extend(getattr(w, "children", ()) or ())
    return out


# ------------------------------------------------- background computations --

class _HeldDraws:
    """Replaces ``up_block_features``: its first call waits until ``release`` is set
    (after announcing itself with ``entered``), so that a test can act while a
    computation is under way."""

    def __init__(self, monkeypatch):
        from e4e_lab.models import dift

        self.real, self.calls = dift.up_block_features, 0
        self.entered, self.release = threading.Event(), threading.Event()
        monkeypatch.setattr(dift, "up_block_features", self)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            assert self.release.wait(30), "the test never released the computation"
        return self.real(*args, **kwargs)


def test_explorer_stop_cancels_dift_and_the_explorer_stays_usable(shared_lab, pair,
                                                                   dift_lookup, monkeypatch):
    ex = CorrespondenceExplorer(shared_lab, pair, lookup=dift_lookup, block=2, timestep=261,
                                ensemble=3)  # sliders ask for features not held
    held = _HeldDraws(monkeypatch)
    assert ex.compute_dift() is None  # returns at once; the work runs in a thread
    assert held.entered.wait(30) and ex.running and ex.state == "computing"
    assert ex.compute_button.disabled and not ex.stop_button.disabled
    assert ex.source.value == "dift" and ex.heat is None  # not the given source's heatmap
    # meanwhile the explorer answers clicks on the features it holds
    ex.source.value = "given"
    assert ex.select(20, 33) is not None and ex.heat is not None
    assert not ex.run() and "Stop" in ex.status.value  # one computation at a time
    ex.stop()
    held.release.set()
    assert ex.wait(30) == "cancelled" and not ex.running
    assert "stopped after 3 of 6 noise draws" in ex.status.value
    assert ex.progress.bar_style == "warning" and held.calls == 1  # the 2nd image never ran
    assert not ex.compute_button.disabled and ex.stop_button.disabled
    assert (2, 261, 3, "", 0) not in ex.dift_cache
    assert ex.source.value == "given" and ex.lookup is dift_lookup  # untouched
    # and it computes again, to the end
    lookup = ex.compute_dift(block=True)
    assert ex.state == "done" and lookup is ex.lookup and ex.source.value == "dift"
    assert lookup.settings["ensemble"] == 3 and ex.heat is not None


def test_explorer_blocking_compute_reports_draws_with_a_time_estimate(shared_lab, pair):
    ex = CorrespondenceExplorer(shared_lab, pair, block=2, ensemble=2)  # starts computing
    assert ex.wait(30) == "done" and ex.lookup is not None  # the notebook's way to wait
    said = []
    ex.status.observe(lambda change: said.append(change["new"]), names="value")
    ex.ensemble.value = 3
    lookup = ex.compute_dift(block=True)
    assert lookup is ex.dift_cache[(2, 261, 3, "", 0)] and ex.lookup is lookup
    assert ex.progress.value == ex.progress.max == 6 and ex.progress.bar_style == "success"
    halfway = [s for s in said if "noise draws: 3/6" in s]
    assert halfway and "left" in halfway[0]
    assert ex.compute_dift(block=True) is lookup and ex.progress.value == 6  # held: no pass


def test_part_explorer_stop_then_blocking_compute(shared_lab, pair, monkeypatch):
    from e4e_lab import TransferConfig
    from widgets import PartExplorer

    cfg = TransferConfig(dift_block=2, dift_ensemble=2)
    held = _HeldDraws(monkeypatch)
    pe = PartExplorer(shared_lab, pair, cfg, k=3)  # starts in the background
    assert held.entered.wait(30) and pe.running and pe.parts is None
    pe.k.value = 2  # chosen meanwhile: the one clustered once the features are there
    pe.stop()
    held.release.set()
    assert pe.wait(30) == "cancelled" and pe.features is None and pe.feature_passes == 0
    assert "stopped after 2 of 4 noise draws" in pe.status.value
    assert pe.compute(block=True) is pe.parts and pe.state == "done"
    assert pe.parts.k == 2 and pe.feature_passes == 1
    assert pe.progress.value == 4 and "2 parts" in pe.status.value
    pe.k.value = 3  # re-clusters at once, without a UNet pass
    assert pe.parts.k == 3 and pe.feature_passes == 1


def test_explorer_waits_for_a_busy_model_in_its_thread_and_stop_ends_the_wait(shared_lab,
                                                                             pair):
    ex = CorrespondenceExplorer(shared_lab, pair, block=2, ensemble=2, compute=False)
    with shared_lab.models.in_use():  # a transfer holding the UNet (here: this thread)
        assert ex.compute_dift() is None and ex.running  # not refused, not blocking
        assert ex.wait(0.5) == "computing" and ex.running  # waiting for the model
        ex.stop()
        assert ex.wait(30) == "cancelled"
    assert "stopped after 0 of 4 noise draws" in ex.status.value
    assert ex.compute_dift(block=True) is not None and ex.state == "done"
