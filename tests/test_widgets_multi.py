"""Multi-object pair drawer, method comparison grid and part explorer, driven from Python."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ipywidgets")
pytest.importorskip("ipycanvas")

from e4e_lab.analysis.parts import pair_parts  # noqa: E402
from e4e_lab.errors import BoxError, ConfigError  # noqa: E402
from e4e_lab.evaluation import evaluate  # noqa: E402
from e4e_lab.evaluation.baselines import paint_by_example  # noqa: E402
from e4e_lab.io.formats import ObjectSpec, PairSpec, read_boxes, read_pairs  # noqa: E402
from e4e_lab.method.images import LoadedImage  # noqa: E402
from e4e_lab.method.masks import box_mask  # noqa: E402
from e4e_lab.models import BANNERS  # noqa: E402

from widgets import (BoxDrawer, ComparisonGrid, ExtraBox, MultiBoxDrawer,  # noqa: E402
                     PartExplorer, render)

from conftest import SMALL  # noqa: E402
from widget_helpers import assert_one_banner, drag, frontend_event, hue  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EX = ROOT / "example"


@pytest.fixture(scope="module")
def imgs(shared_lab):
    """structure, cat, cup at 64 px (loaded from files: their sources are paths)."""
    return [shared_lab.load_image(EX / n, SMALL) for n in
            ("horse_silhouette.png", "chelsea_cat.png", "coffee_cup.png")]


@pytest.fixture(scope="module")
def cfg(fast_config):
    """The short schedule on the example photos; DIFT up-block 2: an 8x8 DIFT grid at
    64 px, room for several parts."""
    return fast_config.replace(domain="animal", dift_block=2, dift_ensemble=2)


def example_pair(lab):
    """The example photo pair (files, so that their sources are paths) with its boxes."""
    return lab.pair(EX / "chelsea_cat.png", EX / "horse_silhouette.png",
                    boxes=EX / "boxes.json", mask="box", size=SMALL)


# ------------------------------------------------------------------ banner --

def test_new_widgets_show_the_tiny_banner(shared_lab, imgs, cfg):
    pair = example_pair(shared_lab)
    built = [MultiBoxDrawer(shared_lab, imgs[0], imgs[1:]), ComparisonGrid(shared_lab, pair, cfg),
             PartExplorer(shared_lab, pair, cfg)]
    for w in built:
        assert_one_banner(w, BANNERS["tiny"])


# -------------------------------------------------------------- box drawer --

def test_box_drawer_extras_are_drawn_and_picked(imgs):
    d = BoxDrawer(imgs[0], color=(10, 20, 30))
    picked = []
    d.on_pick(picked.append)
    d.set_extras([ExtraBox((5, 5, 20, 20), (255, 0, 0), "1", "a"),
                  ExtraBox((30, 30, 60, 60), (0, 255, 0), "2", "b")], color=(1, 2, 3))
    assert d.color == (1, 2, 3) and d.extra_at(40, 40).key == "b" and d.extra_at(25, 25) is None
    frontend_event(d.view.canvas, "mouse_down", 160, 160)  # a click (canvas px = 4 x model)
    frontend_event(d.view.canvas, "mouse_up", 160, 160)
    assert picked == ["b"] and d.box is None
    drag(d, (35, 35), (50, 45))  # a drag inside an inactive box draws, it does not pick
    assert picked == ["b"] and d.box == (35, 35, 50, 45)
    d.set_image(imgs[1])
    assert d.name == "chelsea_cat.png" and d.box == (35, 35, 50, 45)
    with pytest.raises(BoxError, match="same size"):
        d.set_image(LoadedImage("small.png", torch.zeros(3, 32, 32), (32, 32), "stretch"))


# --------------------------------------------------------- multi box drawer --

def test_drawn_pairs_become_the_objects_list_and_a_multi_pair(shared_lab, imgs):
    structure, cat, cup = imgs
    d = MultiBoxDrawer(shared_lab, structure, [cat, cup])
    assert len(d.pairs) == 1 and d.selected == 0  # ready to draw
    drag(d.target, (4, 6), (30, 40))
    drag(d.reference, (2, 2), (50, 60))
    d.add_pair()
    assert d.selected == 1 and d.pairs[1].reference == 0  # the selected pair's reference
    d.ref_choice.value = 1  # as a user picks the cup
    assert d.pairs[1].reference == 1 and d.reference.image is cup
    drag(d.target, (34, 10), (62, 58))
    drag(d.reference, (10, 8), (54, 56))
    assert d.objects() == [ObjectSpec(cat, [4, 6, 30, 40], [2, 2, 50, 60]),
                           ObjectSpec(cup, [34, 10, 62, 58], [10, 8, 54, 56])]

    multi = d.pair(mask="box")
    assert [m.name for m in multi.references] == ["chelsea_cat.png", "coffee_cup.png"]
    assert multi.boxes == [((4, 6, 30, 40), (2, 2, 50, 60)), ((34, 10, 62, 58), (10, 8, 54, 56))]
    for region, (tb, ab), ref in zip(multi.regions, multi.boxes, (cat, cup)):
        assert multi.references[region.reference] is ref
        assert torch.equal(region.target_mask, box_mask(tb, structure.size))
        assert torch.equal(region.ref_mask, box_mask(ab, structure.size))

    # one hue per pair: target strong, reference pale; hues differ between pairs
    (t0, r0), (t1, r1) = d.colors(0), d.colors(1)
    assert len({t0, r0, t1, r1}) == 4
    assert hue(t0) == pytest.approx(hue(r0), abs=0.02)
    assert hue(t1) == pytest.approx(hue(r1), abs=0.02)
    assert min(abs(hue(t0) - hue(t1)), 1 - abs(hue(t0) - hue(t1))) > 0.15
    # the selected pair's boxes are active in its colours, the others are inactive boxes
    assert d.target.color == t1 and d.reference.color == r1
    assert d.target.extras == [ExtraBox((4, 6, 30, 40), t0, "1", 0)]
    assert d.reference.extras == []  # pair 1 uses another reference image
    assert [b.style.button_color for b in d.pair_buttons.children] == [render.css(t0),
                                                                       render.css(t1)]
    assert "coffee_cup.png" in d.legend.value and "[34, 10, 62, 58]" in d.legend.value

    # a click inside pair 1's target box selects it; its reference image comes back
    d.target.on_mouse_down(10, 10)
    d.target.on_mouse_up(10, 10)
    assert d.selected == 0 and d.reference.image is cat and d.target.box == (4, 6, 30, 40)
    assert d.ref_choice.value == 0 and d.target.extras[0].box == (34, 10, 62, 58)
    # removing a pair keeps the other pair's colours
    d.remove_pair()
    assert d.selected == 0 and len(d.objects()) == 1 and d.colors(0) == (t1, r1)
    d.remove_pair()
    assert d.pairs == [] and d.selected is None and "no pairs" in d.legend.value
    drag(d.target, (1, 1), (20, 20))  # drawing with no pair adds one
    assert d.objects() == [ObjectSpec(cat, target_box=[1, 1, 20, 20])]


def test_pairs_json_round_trip_is_what_the_cli_reads(shared_lab, imgs, tmp_path):
    structure, cat, cup = imgs
    d = MultiBoxDrawer(shared_lab, structure, [cat, cup], pairs=EX / "multi_pairs.json")
    # drawn at 512 px ("_size"), rescaled to 64
    assert [(p.target_box, p.reference, p.appearance_box) for p in d.pairs] == [
        ((2, 1, 33, 62), 0, (1, 0, 59, 64)), ((32, 1, 63, 62), 1, (7, 2, 62, 63))]
    d.select(0)
    drag(d.target, (20, 30), (25, 35))  # move pair 1's target box (clamped to the image)
    (tmp_path / "sub").mkdir()  # Save refuses a missing folder
    saved = d.save(tmp_path / "sub" / "pairs.json")
    data = json.loads(saved.read_text())
    assert data["_size"] == SMALL and data["objects"][0]["target_box"] == [7, 3, 38, 64]
    # appearance paths are relative to the file, as the CLI reads them
    assert [(saved.parent / o["appearance"]).resolve() for o in data["objects"]] == [
        EX / "chelsea_cat.png", EX / "coffee_cup.png"]
    # the CLI's --pairs reader and Lab.pair(objects=) see the same pairs
    multi = shared_lab.pair(structure, objects=read_pairs(saved), mask="box")
    assert multi.boxes == d.multi_pair(mask="box").boxes  # the old name: the same call
    assert [Path(r.source).resolve() for r in multi.references] == [EX / "chelsea_cat.png",
                                                                     EX / "coffee_cup.png"]
    # a reference that is not given is loaded from the file
    other = MultiBoxDrawer(shared_lab, structure, [cat], path=saved)
    assert other.load() == [dataclasses.replace(o, appearance=other.references[i])
                            for o, i in zip(d.objects(), (0, 1))]
    assert [r.name for r in other.references] == ["chelsea_cat.png", "coffee_cup.png"]
    assert torch.equal(other.references[1].pixels, cup.pixels)
    assert [o[1] for o in other.ref_choice.options] == [0, 1]

    # bad input: typed errors naming the entry, shown in the status, state unchanged
    with pytest.raises(BoxError, match="at least one object"):
        other.load({"objects": []})
    with pytest.raises(BoxError, match=r"objects\[1\]\.appearance 'nope\.png'"):
        other.load({"objects": [{"appearance": "chelsea_cat.png"}, {"appearance": "nope.png"}]})
    with pytest.raises(BoxError, match=r"objects\[0\]\.target_box"):
        other.load({"objects": [{"appearance": "chelsea_cat.png", "target_box": [9, 9, 1, 1]}]})
    assert "target_box" in other.status.value and len(other.pairs) == 2
    with pytest.raises(BoxError, match="same size"):
        MultiBoxDrawer(shared_lab, structure, [shared_lab.load_image(EX / "coffee_cup.png", 128)])


# ----------------------------------------------------------- comparison grid --

def test_comparison_grid_matches_lab_transfer_with_one_inversion(lab, cfg):
    pair = example_pair(lab)
    methods = ("feature", "v", "cross-image", "paint-by-example")
    grid = ComparisonGrid(lab, pair, cfg, methods=methods, pbe_steps=4)
    assert grid.methods() == methods
    assert grid.run(block=True) and grid.state == "done", grid.error
    assert [r.method for r in grid.results] == list(methods) and grid.inverted
    assert grid.progress.value == grid.progress.max == 4 * cfg.denoising_steps
    assert len(list(lab.disk_cache.folder.glob("*.safetensors"))) == 2  # one per image
    assert len(grid.grid.children) == 2 + 4
    assert "Cross-Image Attention" in grid.table.value and "<b>" in grid.table.value
    assert "part_agreement" in grid.pair_scores.value
    # each result is bit for bit what lab.transfer gives with the same config and seed
    for r in grid.results[:3]:
        assert r.config == cfg.replace(injection=r.method) and r.seconds > 0
        assert torch.equal(r.image, lab.transfer(pair, r.config).image), r.method
        assert r.scores == evaluate.score(r.result.image, pair, lab, r.config)
    pbe = grid.results[3]
    assert torch.equal(pbe.image, paint_by_example(grid.pbe, pair, seed=cfg.seed, steps=4))
    # evaluate() runs the same code path: the same scores
    spec = PairSpec("cat_horse", EX / "chelsea_cat.png", EX / "horse_silhouette.png",
                             cfg.domain)
    rows, _ = evaluate.evaluate(lab, [spec], read_boxes(EX / "boxes.json"), ("v",), cfg,
                                mask="box", size=SMALL)
    assert {k: rows[0][k] for k in grid.results[1].scores} == grid.results[1].scores
    assert len(list(lab.disk_cache.folder.glob("*.safetensors"))) == 2

    # Stop after the first method: the finished one is kept, the rest are not run
    grid.set_methods(["kv", "feature"])
    steps = cfg.denoising_steps  # the bar counts every method's denoising steps
    grid.progress.observe(lambda ch: ch["new"] == steps and grid.stop_button.click(), "value")
    assert grid.run(block=True) and grid.state == "cancelled"
    assert grid.methods() == ("feature", "kv")  # in the grid's order
    assert [r.method for r in grid.results] == ["feature"] and not grid.inverted
    assert "stopped after 1 of 2" in grid.status.value
    assert not grid.run_button.disabled and grid.stop_button.disabled

    grid.set_methods([])
    assert not grid.run() and "tick at least one" in grid.status.value
    with pytest.raises(ConfigError, match="methods"):
        evaluate.compare_methods(lab, pair, ["feature", "dall-e"], cfg)


# ------------------------------------------------------------- part explorer --

def test_part_explorer_confusion_counts_the_matches(shared_lab, cfg):
    pair = example_pair(shared_lab)
    pe = PartExplorer(shared_lab, pair, cfg, k=4)
    assert pe.wait() == "done"  # the features are computed in the background
    parts, fld = pe.parts, pe.parts.field
    conf = parts.confusion
    assert conf.shape == (4, 4) and pe.feature_passes == 1
    # the total is the number of matched target positions; rows and columns count parts
    assert parts.matched == int(conf.sum()) == int(fld.matched.sum()) > 0
    t = parts.parts.target.flatten()
    ref_part = parts.parts.reference.flatten()[fld.index[fld.matched]]
    for i in range(4):
        assert int(conf[i].sum()) == int(((t == i) & fld.matched).sum())
        assert int(conf[:, i].sum()) == int((ref_part == i).sum())
    assert pe.parts.agreement == pytest.approx(float(conf.diagonal().sum() / conf.sum()))
    # the same parts the metrics use
    scores = evaluate.score(pair.structure.pixels, pair, shared_lab, cfg)
    assert pe.parts.agreement == scores["part_agreement"]
    # same colour = same cluster on both images
    colors = render.palette(4)
    for view, labels in ((pe.target_view, parts.parts.target),
                         (pe.ref_view, parts.parts.reference)):
        ov = view.overlay
        lab_ = labels.numpy()
        assert (ov[lab_ < 0, 3] == 0).all()
        for p in range(4):
            assert (ov[lab_ == p, :3] == colors[p]).all()
    assert pe.matrix.value.count("<tr") == 5 and "agreement" in pe.summary.value
    text = pe.confusion_text().splitlines()
    assert text[0].split()[1:] == ["1", "2", "3", "4"]
    assert [int(v) for v in text[1].split()[1:]] == conf[0].tolist()

    # changing k re-clusters the same features (no UNet pass)
    pe.k.value = 3
    assert pe.parts.k == 3 and pe.parts.confusion.shape == (3, 3)
    assert pe.feature_passes == 1 and pe.clusterings == 2
    assert int(pe.parts.parts.target.max()) <= 2
    assert pe.parts.matched == int(fld.matched.sum())
    assert pe.matrix.value.count("<tr") == 4
    assert pe.k.max == min(12, pe.features.max_k)

    # a click on a part highlights it on both images; a second click shows all again
    ys, xs = torch.nonzero(pe.parts.parts.target >= 0, as_tuple=True)
    cell = (int(ys[0]), int(xs[0]))
    grid = pe.features.grid
    x, y = (cell[1] + 0.5) * SMALL / grid[1], (cell[0] + 0.5) * SMALL / grid[0]
    part = int(pe.parts.parts.target[cell])
    assert pe.pick(x, y) == part == pe.highlight
    ov, labels = pe.ref_view.overlay, pe.parts.parts.reference.numpy()
    assert np.all(ov[labels == part, 3] > ov[(labels >= 0) & (labels != part), 3].max(initial=0))
    assert pe.pick(x, y) is None
    with pytest.raises(ConfigError, match="'k'"):
        pair_parts(shared_lab, pair, cfg, pe.features.max_k + 1, features=pe.features)


def test_drawer_changes_made_by_the_pair_drawer_are_not_edits(shared_lab, imgs, monkeypatch):
    """Selecting a pair, adding a reference or replacing an image moves the drawers'
    boxes and the reference choice; none of it re-enters as a user edit (counted), and
    each user edit is handled once."""
    structure, cat, cup = imgs
    d = MultiBoxDrawer(shared_lab, structure, [cat])
    drag(d.target, (4, 6), (30, 40))
    d.add_pair(target_box=(34, 10, 62, 58))
    choices, refreshes = [], []
    real_set = MultiBoxDrawer.set_reference
    monkeypatch.setattr(MultiBoxDrawer, "set_reference", lambda self, *a, **k:
                        choices.append(a) or real_set(self, *a, **k))
    real_refresh = d._refresh
    monkeypatch.setattr(d, "_refresh", lambda: refreshes.append(1) or real_refresh())
    d.select(0)
    assert refreshes == [1] and d.target.box == (4, 6, 30, 40)
    assert d.pairs[1].target_box == (34, 10, 62, 58)  # the other pair is untouched
    d.add_reference(cup)  # new options: ipywidgets would select the first one
    d.ref_choice.value = 1  # as a user picks the cup: one call
    d.add_reference(imgs[0])
    assert choices == [(1,)] and d.pairs[0].reference == 1 and d.ref_choice.value == 1
    refreshes.clear()
    d.target.clear()  # the Clear button: one edit
    drag(d.target, (8, 8), (40, 40))
    assert d.pairs[0].target_box == (8, 8, 40, 40) and refreshes == [1, 1]
    assert d.pairs[1].target_box == (34, 10, 62, 58)
    refreshes.clear()
    d.replace_structure(cat)
    assert [p.target_box for p in d.pairs] == [None, None] and d.target.box is None
    assert refreshes == [1]
