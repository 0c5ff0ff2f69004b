"""Correspondence explorer and attention viewer: reuse, staleness, wording, layout."""

from __future__ import annotations

import re
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
def pair(shared_lab, build_pair):
    return build_pair(shared_lab, boxes=True)


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
