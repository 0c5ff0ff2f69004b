"""Driving widgets from Python as a browser would: frontend events, serialisation, drags."""

from __future__ import annotations

import colorsys


def frontend_event(canvas_widget, event, x, y):
    """Deliver a mouse event the way the browser does (canvas pixels, top layer)."""
    canvas_widget[2]._handle_frontend_event(None, {"event": event, "x": x, "y": y}, [])


def serialize_all(widget):
    """Every widget in the tree serialises its state (what a frontend would receive)."""
    stack, seen = [widget], set()
    while stack:
        w = stack.pop()
        if id(w) in seen:
            continue
        seen.add(id(w))
        w.get_state()
        stack.extend(getattr(w, "children", ()) or ())
        stack.extend(getattr(w, "_canvases", ()) or ())


def drag(drawer, a, b):
    """Press at model pixel ``a``, move to ``b`` and release there."""
    drawer.on_mouse_down(*a)
    drawer.on_mouse_move(*b)
    drawer.on_mouse_up(*b)


def hue(rgb) -> float:
    return colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0]


def assert_one_banner(w, banner: str) -> None:
    """``w`` shows ``banner`` once in its frame (nested pieces do not repeat it), displays
    as a widget and serialises."""
    import widgets

    name = type(w).__name__
    assert widgets.has_banner(w.widget), name
    assert widgets.widget_text(w.widget).count('class="e4e-banner"') == 1, name
    assert w.banner == banner
    assert "application/vnd.jupyter.widget-view+json" in w._repr_mimebundle_()
    serialize_all(w.widget)
