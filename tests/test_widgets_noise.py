"""Notebook noise: the offline model is announced once per output, in one wording."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("ipywidgets")

from e4e_lab import Lab  # noqa: E402
from e4e_lab.models import BANNERS  # noqa: E402

import widgets  # noqa: E402


def test_open_lab_announces_the_model_once(models, tmp_path, caplog, monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda *objs, **kw: shown.extend(objs))
    banner = BANNERS["tiny"]
    with caplog.at_level(logging.WARNING):
        lab = widgets.open_lab(model="tiny", device="cpu", cache_dir=tmp_path / "a")
    assert lab.banner == banner
    assert [r.getMessage() for r in caplog.records if banner in r.getMessage()] == []
    assert len(shown) == 1 and banner in shown[0].data and widgets.common.BANNER_CLASS in \
        shown[0].data
    # a plain Lab still logs its announcement: open_lab's filter was only for its cell
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        Lab(model="tiny", device="cpu", cache_dir=tmp_path / "b")
    assert any(banner in r.getMessage() for r in caplog.records)
