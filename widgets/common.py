"""Pieces shared by every widget: the offline-model banner, image widgets, the base class."""

from __future__ import annotations

import html
import logging

import ipywidgets as W
import numpy as np

from . import render

BANNER_CLASS = "e4e-banner"
#: Banner colours: red while the weights are random, dark blue for the toy model.
BANNER_COLOURS = {"toy": "#1e3c8c"}
_RANDOM_COLOUR = "#c00000"
_BANNER_STYLE = ("background:{colour};color:white;font-weight:bold;padding:4px 8px;"
                 "border-radius:3px;margin:2px 0")


def banner_text(lab) -> str | None:
    """What the session's model must say about itself (``lab.banner``; None for real
    weights). The wording comes from one place: ``e4e_lab.models.BANNERS``."""
    return None if lab is None else getattr(lab, "banner", None)


def banner_colour(lab) -> str:
    return BANNER_COLOURS.get(getattr(getattr(lab, "models", None), "kind", None), _RANDOM_COLOUR)


def banner_html(lab) -> str:
    """HTML of the banner ('' when a real model is loaded)."""
    text = banner_text(lab)
    if not text:
        return ""
    style = _BANNER_STYLE.format(colour=banner_colour(lab))
    return (f'<div class="{BANNER_CLASS}" style="{style}">&#9888; '
            f'{html.escape(text)}</div>')


def banner_widget(lab) -> W.HTML | None:
    text = banner_html(lab)
    return W.HTML(text) if text else None


def show_banner(lab) -> None:
    """Display the banner in a notebook output (nothing with real weights)."""
    from IPython.display import HTML, display

    text = banner_html(lab)
    if text:
        display(HTML(text))


class _RepeatsTheBanner(logging.Filter):
    """Holds back log records that only say, in other words, what the banner says."""

    def filter(self, record: logging.LogRecord) -> bool:
        from e4e_lab.models import BANNERS

        message = record.getMessage()
        return not any(text in message for text in BANNERS.values())


#: the loggers that announce the offline model while a session loads
_ANNOUNCERS = ("e4e_lab.models.loading", "e4e_lab.models.random_sd")


def open_lab(**kwargs):
    """``Lab(**kwargs)`` for a notebook cell, which then shows one banner: the HTML one
    (wording from ``e4e_lab.models.BANNERS``), not also the loading log's warning that
    announces the same model in other words. Other warnings pass. Its long calls
    (inversions, DIFT features, denoising) show progress bars unless ``progress=False``."""
    from e4e_lab import Lab

    kwargs.setdefault("progress", True)

    held = _RepeatsTheBanner()
    loggers = [logging.getLogger(name) for name in _ANNOUNCERS]
    for logger in loggers:
        logger.addFilter(held)
    try:
        lab = Lab(**kwargs)
    finally:
        for logger in loggers:
            logger.removeFilter(held)
    show_banner(lab)
    return lab


def widget_text(widget) -> str:
    """All text values (HTML, labels, descriptions) in a widget tree, for tests."""
    parts = []
    stack = [widget]
    while stack:
        w = stack.pop()
        for attr in ("value", "description"):
            v = getattr(w, attr, None)
            if isinstance(v, str):
                parts.append(v)
        stack.extend(getattr(w, "children", ()) or ())
    return "\n".join(parts)


def has_banner(widget) -> bool:
    return f'class="{BANNER_CLASS}"' in widget_text(widget)


def image_widget(image: np.ndarray | None = None, width: int | None = None) -> W.Image:
    """An ``ipywidgets.Image`` showing an (H, W, 3|4) uint8 array as PNG."""
    w = W.Image(format="png")
    if width:
        w.layout.width = f"{width}px"
    if image is not None:
        w.value = render.png(image)
    else:  # an empty <img> shows as a broken-image icon: hidden until set_image
        w.layout.display = "none"
    return w


def set_image(widget: W.Image, image: np.ndarray, width: int | None = None) -> None:
    if width is not None:
        h, w = image.shape[:2]
        if max(h, w) < width:  # upscale small maps crisply instead of letting CSS blur them
            s = max(1, width // max(h, w))
            image = render.resize_nearest(image, h * s, w * s)
    widget.value = render.png(image)
    widget.layout.display = None


def fit_content(*controls):
    """Size buttons and uploads to their own text: ipywidgets gives them a fixed width
    that cuts a longer label to '...', and a crowded row squeezes them further. Returns
    the first control (for use inline)."""
    for control in controls:
        control.layout.width = "max-content"
        control.layout.flex = "0 0 auto"
    return controls[0]


def captioned(widget, caption: str) -> W.VBox:
    return W.VBox([W.HTML(f"<b>{html.escape(caption)}</b>"), widget])


def status_html(message: str, kind: str = "info") -> str:
    color = {"info": "#333", "ok": "#176b2c", "warn": "#9a5b00", "error": "#b00020"}[kind]
    return f'<span style="color:{color}">{html.escape(message)}</span>'


class LabWidget:
    """Base of the widget classes: a ``.widget`` to display, plus the session banner.

    Subclasses set ``self.widget`` (built with :meth:`_frame`) and keep their state as
    plain attributes; event handlers are ordinary methods tests can call.
    """

    widget: W.Widget
    lab = None

    @property
    def banner(self) -> str | None:
        return banner_text(self.lab)

    def _frame(self, *children, title: str | None = None) -> W.VBox:
        head = []
        b = banner_widget(self.lab)
        if b is not None:
            head.append(b)
        if title:
            head.append(W.HTML(f"<h4 style='margin:4px 0'>{html.escape(title)}</h4>"))
        frame = W.VBox(head + [c for c in children if c is not None])
        # a stable CSS hook per widget class (e.g. ``e4e-boxdrawer``) for browser tests
        frame.add_class(f"e4e-{type(self).__name__.lower()}")
        return frame

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)
