"""Boxes, masks and pairs: the mask editor follows the drawer, says what it cannot do,
saving refuses missing folders, counts come from the file, overlaps are flagged."""

from __future__ import annotations

import logging

import pytest
import torch

pytest.importorskip("ipywidgets")
pytest.importorskip("ipycanvas")

from e4e_lab.errors import BoxError  # noqa: E402
from e4e_lab.io.formats import MaskMode  # noqa: E402
from e4e_lab.method.masks import box_mask  # noqa: E402

import widgets  # noqa: E402
from widgets import MultiBoxDrawer, PairBoxDrawer, PairMaskEditor  # noqa: E402
from widgets.masks import NO_SAM_NOTE  # noqa: E402

from conftest import SMALL  # noqa: E402
from widget_helpers import drag  # noqa: E402


@pytest.fixture(autouse=True)
def no_sam(shared_lab):
    assert not shared_lab.sam_available()  # these tests are about the missing checkpoint


def test_mask_editor_follows_box_edits_in_the_drawer(shared_lab, pair):
    drawer = PairBoxDrawer.from_pair(shared_lab, pair)
    editor = PairMaskEditor.from_boxes(shared_lab, drawer)
    drag(drawer.structure, (5, 6), (30, 40))
    assert editor.structure.box == (5, 6, 30, 40)
    assert torch.equal(editor.structure.mask, box_mask((5, 6, 30, 40), (SMALL, SMALL)))
    drawer.appearance.set_box([10, 10, 50, 50])
    assert editor.appearance.box == (10, 10, 50, 50)
    edited = editor.pair()
    assert edited.structure_box == (5, 6, 30, 40) and edited.appearance_box == (10, 10, 50, 50)


def test_without_sam_the_editor_says_so_once_and_turns_clicks_off(shared_lab, pair):
    editor = PairMaskEditor(shared_lab, pair)
    assert widgets.widget_text(editor.widget).count(NO_SAM_NOTE.split(":")[0]) == 1
    for ed in (editor.appearance, editor.structure):
        assert ed.click_label.disabled and ed.undo_button.disabled
        ed.source.value = "sam"  # even when asked for: nothing to refine with
        ed.on_click(20, 20)
        assert ed.points == [] and "no SAM-HQ checkpoint" in ed.status.value
        assert ed.click_label.disabled


def test_saving_into_a_missing_folder_is_refused(shared_lab, pair, tmp_path):
    boxes = PairBoxDrawer.from_pair(shared_lab, pair)
    with pytest.raises(BoxError, match="does not exist"):
        boxes.save(tmp_path / "typo" / "boxes.json")
    assert "does not exist" in boxes.status.value
    multi = MultiBoxDrawer(shared_lab, pair.structure, [pair.appearance])
    with pytest.raises(BoxError, match="does not exist"):
        multi.save(tmp_path / "typo" / "deeper" / "pairs.json")
    assert not (tmp_path / "typo").exists()


def test_pair_count_comes_from_the_saved_file(shared_lab, pair, tmp_path):
    multi = MultiBoxDrawer(shared_lab, pair.structure, [pair.appearance])
    multi.target.set_box([0, 0, 20, 20])
    multi.add_pair(target_box=[30, 30, 60, 60])
    path = tmp_path / "pairs.json"
    multi.save(path)
    assert f"saved 2 pair(s) to {path}" in multi.status.value
    multi.add_pair(target_box=[0, 40, 20, 60])
    status = multi.status.value
    assert "saved 2" not in status and "holds 2 pair(s), the drawer has 3" in status
    multi.save()
    assert "saved 3 pair(s)" in multi.status.value


def test_overlapping_target_boxes_are_flagged(shared_lab, pair):
    multi = MultiBoxDrawer(shared_lab, pair.structure, [pair.appearance])
    multi.target.set_box([0, 0, 30, 30])
    assert "overlap" not in multi.legend.value
    multi.add_pair(target_box=[20, 20, 50, 50])
    legend = multi.legend.value
    assert "pairs 1 and 2 overlap (100 px)" in legend and "pair 2 takes the pixels" in legend
    multi.remove_pair(1)
    assert "overlap" not in multi.legend.value


def test_auto_masks_record_what_was_used_and_say_it_once(shared_lab, pair, caplog,
                                                        monkeypatch):
    monkeypatch.setattr(shared_lab, "_said_no_sam", False)  # the session says it once
    drawer = PairBoxDrawer.from_pair(shared_lab, pair)
    multi = MultiBoxDrawer(shared_lab, pair.structure, [pair.appearance])
    multi.target.set_box([0, 0, 30, 30])
    multi.reference.set_box([0, 0, 30, 30])
    with caplog.at_level(logging.WARNING):
        made = drawer.pair(mask="auto")
        drawer.pair(mask="auto")
        multi.pair(mask="auto")
    assert MaskMode.parse(made.mask_mode) is MaskMode.BOX
    said = [r.getMessage() for r in caplog.records if "SAM-HQ" in r.getMessage()]
    assert len(said) == 1, said


# ------------------------------------------- observers through ipywidgets' mechanisms --

def test_box_pick_and_mask_observers_can_be_removed(shared_lab, pair):
    """A drawer's box is a trait (observe / unobserve), picks and mask updates go through
    CallbackDispatchers (``remove=True``): a removed observer hears nothing more."""
    from widgets import BoxDrawer, ExtraBox

    d = BoxDrawer(pair.structure)
    boxes, picks = [], []

    def on_box(change):
        boxes.append(change.new)

    d.observe(on_box, names="box")
    d.on_pick(picks.append)
    d.set_extras([ExtraBox((30, 30, 60, 60), (0, 255, 0), "2", "b")])
    drag(d, (2, 3), (20, 24))
    d.on_mouse_down(40, 40)
    d.on_mouse_up(40, 40)  # a click inside the inactive box picks it
    assert boxes == [(2, 3, 20, 24)] and picks == ["b"]
    d.unobserve(on_box, names="box")
    d.on_pick(picks.append, remove=True)
    d.clear()
    drag(d, (4, 4), (12, 12))
    d.on_mouse_down(40, 40)
    d.on_mouse_up(40, 40)
    assert d.box == (4, 4, 12, 12) and boxes == [(2, 3, 20, 24)] and picks == ["b"]

    editor = PairMaskEditor(shared_lab, pair).structure
    updates = []
    editor.on_update(updates.append)
    editor.set_box((4, 4, 40, 40))
    editor.on_update(updates.append, remove=True)
    editor.set_box((8, 8, 40, 40))
    assert updates == [editor]


def test_an_unchanged_box_does_not_recompute_the_followers_mask(shared_lab, pair):
    """The mask editor follows the drawer's box trait: a click that keeps the box (and
    setting the box it already has) recomputes nothing."""
    drawer = PairBoxDrawer.from_pair(shared_lab, pair)
    editor = PairMaskEditor.from_boxes(shared_lab, drawer)
    updates = []
    editor.structure.on_update(updates.append)
    drag(drawer.structure, (5, 6), (30, 40))
    drawer.structure.on_mouse_down(50, 50)
    drawer.structure.on_mouse_up(50, 50)
    drawer.structure.set_box((5, 6, 30, 40))
    assert len(updates) == 1 and editor.structure.box == (5, 6, 30, 40)
