"""Transfer panel and gallery: the controls, status and labels say what a run used."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("ipycanvas")

from widgets import RunGallery, TransferPanel  # noqa: E402
from widgets.run_labels import run_summary  # noqa: E402


def _fake_result(config):
    """What the gallery reads of a result to list it (no run needed)."""
    return SimpleNamespace(config=config, timings={"ms_per_step": 1.0})


def test_cross_image_disables_the_controls_it_ignores(shared_lab, pair, fast_config):
    panel = TransferPanel(shared_lab, pair, fast_config.replace(cross_image_adain_start=4))
    assert not panel.guidance.disabled and not panel.adain_range.disabled
    panel.set(injection="cross-image")
    for name in ("guidance", "adain_range", "correspondence"):
        control = getattr(panel, name)
        assert control.disabled, name
        assert control.tooltip.startswith("does not apply"), name
    assert not panel.feat_range.disabled and not panel.skip_steps.disabled
    note = panel.mode_note.value
    assert "3.5" in note and "1.75" in note and "AdaIN from step 4" in note
    panel.adain.value = False
    assert "no masked AdaIN" in panel.mode_note.value
    panel.set(injection="none")
    assert panel.feat_range.disabled and panel.correspondence.disabled
    assert not panel.guidance.disabled and not panel.adain_range.disabled
    panel.set(injection="feature")
    assert not any(getattr(panel, n).disabled for n in ("guidance", "adain_range",
                                                         "correspondence", "feat_range"))
    assert panel.guidance.tooltip is None and panel.mode_note.value == ""


def test_cross_image_run_status_and_gallery_say_what_ran(shared_lab, pair, fast_config):
    config = fast_config.replace(cross_image_adain_start=4, guidance=1.0, adain_range=(10, 20))
    gallery = RunGallery(shared_lab)
    panel = TransferPanel(shared_lab, pair, config, gallery=gallery)
    panel.set(injection="cross-image")
    statuses = {}
    panel.observers.append(lambda ev: statuses.setdefault(ev.step, panel.status.value))
    assert panel.run(block=True) and panel.state == "done", panel.error
    ran = panel.result.config
    # the status of each step names the guidance the step used and its AdaIN
    assert f"g={ran.guidance_at(0):.3g}" in statuses[0] and "AdaIN" not in statuses[3]
    assert "AdaIN" in statuses[4] and f"g={ran.guidance_at(4):.3g}" in statuses[4]
    summary = gallery.runs[0].summary()
    assert "g=3.5\u21921.75" in summary and "adain from step 4" in summary
    assert "g=1," not in summary and "adain=[10, 20]" not in summary
    params = gallery.runs[0].params()
    assert params["guidance"] == "3.5\u21921.75 (schedule)"
    assert params["correspondence"] == "n/a"


def test_gallery_tells_a_dift_run_from_a_match_run(shared_lab, fast_config):
    gallery = RunGallery(shared_lab)
    gallery.add(_fake_result(fast_config), None, name="match")
    gallery.add(_fake_result(fast_config.replace(correspondence="dift")), None, name="dift")
    match, dift = (label for label, _ in gallery.selector.options)
    assert "matched features" in match and "DIFT" not in match
    assert "DIFT field" in dift
    # modes without matching do not claim one
    assert "DIFT" not in run_summary(fast_config.replace(injection="none", correspondence="dift"))


def test_stopped_run_marks_the_previous_strip_stale(shared_lab, pair, fast_config):
    panel = TransferPanel(shared_lab, pair, fast_config)
    assert panel.run(block=True) and panel.state == "done", panel.error
    fresh = panel.result_image.value
    assert panel.stale_note.layout.display == "none"
    panel.observers.append(lambda ev: ev.step == 1 and panel.stop_button.click())
    assert panel.run(block=True) and panel.state == "cancelled"
    assert panel.stale_note.layout.display != "none"
    assert "showing the previous run" in panel.stale_note.value
    assert panel.result_image.value != fresh  # dimmed
    panel.observers.clear()
    assert panel.run(block=True) and panel.state == "done"
    assert panel.stale_note.layout.display == "none" and panel.result_image.value == fresh


def test_stop_reaches_the_inversion(shared_lab, pair, fast_config, monkeypatch):
    # small UNet batches: the inversion reports progress several times
    monkeypatch.setattr("e4e_lab.method.inversion.default_batch_size", lambda *a, **k: 2)
    config = fast_config.replace(seed=fast_config.seed + 9173)  # an inversion not yet cached
    panel = TransferPanel(shared_lab, pair, config)
    calls = []
    report = panel._on_inversion

    def stop_at_first(done, total):
        calls.append((done, total))
        if len(calls) == 1:
            panel.stop()
        report(done, total)

    panel._on_inversion = stop_at_first
    assert panel.run(block=True) and panel.state == "cancelled"
    assert len(calls) == 1 and calls[0][0] < calls[0][1]  # it did not finish the inversion
    assert "during the inversion" in panel.status.value and panel.steps_done == 0
    assert not panel.run_button.disabled
    # nothing was cached: the next run inverts the pair again, to the end
    panel._on_inversion = report
    assert panel.run(block=True) and panel.state == "done" and panel.inverted
