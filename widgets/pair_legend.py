"""The legend of the multi-object pair drawer: one row per (target, reference) pair."""

from __future__ import annotations

import html

from . import render
from .common import status_html
from .pair_notes import overlap_warnings


def _box_text(box) -> str:
    return "whole image" if box is None else str(list(box))


def legend_html(drawer) -> str:
    """HTML table of a :class:`~widgets.pairs.MultiBoxDrawer` 's pairs: each pair's colours,
    target box and reference box; overlapping target boxes are warned about."""
    if not drawer.pairs:
        return "<i>no pairs: press 'Add pair', or draw a box on the structure image</i>"
    rows = []
    for n, p in enumerate(drawer.pairs):
        tc, rc = (render.css(c) for c in drawer.colors(n))
        sw = "<span style='display:inline-block;width:12px;height:12px;background:{}'></span>"
        mark = "&#9654; " if n == drawer.selected else ""
        rows.append(
            f"<tr><td>{mark}<b>pair {n + 1}</b></td><td>{sw.format(tc)} target "
            f"{_box_text(p.target_box)}</td><td>takes colours from</td>"
            f"<td>{sw.format(rc)} {html.escape(drawer.references[p.reference].name)} "
            f"{_box_text(p.appearance_box)}</td></tr>")
    warnings = "".join(f"<br>{status_html('warning: ' + w, 'warn')}" for w in
                       overlap_warnings([p.target_box for p in drawer.pairs]))
    return ("<table style='border-spacing:8px 1px'>" + "".join(rows) + "</table><small>"
            "boxes in model pixels; click a pair's box on an image to edit that pair"
            f"</small>{warnings}")
