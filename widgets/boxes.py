"""Bounding-box drawer: drag to draw, drag inside to move, drag a handle to resize.

Coordinates are model pixels (the resolution the images were loaded at), the unit of
the boxes JSON read by the CLI and ``Lab.pair(boxes=...)``. Handlers take model pixels::

    drawer = BoxDrawer(image)
    drawer.on_mouse_down(10, 10); drawer.on_mouse_move(40, 30); drawer.on_mouse_up(40, 30)
    drawer.box  # (10, 10, 40, 30)

An upload or a path (:class:`~widgets.image_source.ImageSource`) replaces the image.

The box is a trait: ``drawer.observe(fn, names="box")`` hears every change of it (once
the drawing shows it), ``drawer.unobserve(fn, names="box")`` stops.

A drawer can also show other, inactive boxes (:class:`ExtraBox`, e.g. the other pairs of
a multi-object run): they are drawn thinner with a label, and a click (no drag) inside
one calls the callbacks of ``drawer.on_pick(fn)`` with its key (``remove=True`` removes).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable

import ipywidgets as W
import traitlets

from e4e_lab.errors import BoxError
from e4e_lab.io.formats import lookup_box, parse_box, read_boxes, write_boxes
from e4e_lab.method.images import LoadedImage

from . import render
from .canvas import ImageCanvas, hold_canvas
from .common import LabWidget, fit_content, status_html
from .image_source import ImageSource

BOX_COLOR = (255, 200, 0)
# handle name -> (x edge, y edge) it controls: 0 = low edge, 1 = high edge, None = none
_HANDLES = {"nw": (0, 0), "ne": (1, 0), "sw": (0, 1), "se": (1, 1),
            "n": (None, 0), "s": (None, 1), "w": (0, None), "e": (1, None)}


@dataclass(frozen=True)
class ExtraBox:
    """An inactive box shown on a drawer: not editable there, clicking it picks ``key``."""

    box: tuple[int, int, int, int]
    color: tuple[int, int, int]
    label: str = ""
    key: Hashable = None


class BoxDrawer(LabWidget, traitlets.HasTraits):
    """One image and at most one (active) box on it, plus inactive :class:`ExtraBox` es."""

    #: the active box (x0, y0, x1, y1) in model pixels, or None
    box = traitlets.Tuple(default_value=None, allow_none=True)

    def __init__(self, image: LoadedImage, box=None, lab=None, title: str | None = None,
                 display_size: int = 256, min_size: int = 2, color=BOX_COLOR,
                 sources: bool = True):
        super().__init__()  # traitlets
        self.lab = lab
        self.image = image
        self.name = image.name
        self.size = image.size  # (width, height)
        self.min_size = min_size
        self.color = tuple(color)
        self.extras: list[ExtraBox] = []
        self._picks = W.CallbackDispatcher()
        self.mode: str | None = None  # "draw" | "move" | "resize" while the button is down
        self.handle: str | None = None
        self._anchor: tuple[float, float] | None = None
        self._start: tuple[float, float, float, float] | None = None
        self._live: tuple[float, float, float, float] | None = None

        self.view = ImageCanvas(image, display_size)
        for event, handler in (("down", self.on_mouse_down), ("move", self.on_mouse_move),
                               ("up", self.on_mouse_up), ("out", self.on_mouse_out)):
            self.view.on(event, handler)
        self.coords = W.HTML()
        self.clear_button = fit_content(W.Button(description="Clear box", icon="times"))
        self.clear_button.on_click(lambda _: self.clear())
        self._title = title or image.name
        self.title = W.HTML(self._title_html())
        self.source = ImageSource(lab, image.size, self.replace_image, fit=image.fit,
                                  resample=image.resample) if sources else None
        self.widget = self._frame(self.title, self.view.canvas, self.coords, self.clear_button,
                                  self.source and self.source.widget)
        if box is not None:
            self.set_box(box)
        else:
            self.redraw()

    # ---------------------------------------------------------------- state --
    def on_pick(self, callback: Callable[[Hashable], None], remove: bool = False) -> None:
        """Call ``callback(key)`` when a click picks an inactive box (``remove``: stop)."""
        self._picks.register_callback(callback, remove=remove)

    def set_box(self, box) -> None:
        """Set the box from [x0, y0, x1, y1] (validated and clipped to the image)."""
        box = None if box is None else parse_box(box, self.size, f"box of {self.name}")
        with self.hold_trait_notifications():  # the box's observers see it drawn
            self.box = box
            self._live = None
            self.redraw()

    def clear(self) -> None:
        self.set_box(None)

    def set_image(self, image: LoadedImage) -> None:
        """Show another image of the same size (the box stays, in the same pixels)."""
        if image.size != self.size:
            raise BoxError(f"'{image.name}' is {image.size[0]}x{image.size[1]} but this drawer "
                           f"shows {self.size[0]}x{self.size[1]} images: load it at the same "
                           "size")
        self.image, self.name = image, image.name
        self.view.draw_image(image)
        self.redraw()

    def replace_image(self, image: LoadedImage) -> None:
        """Work on another image of the same size (an upload, a path): the box is cleared,
        since it framed an object of the old image."""
        old = self.name
        self.set_image(image)
        self._title = self._title.replace(old, image.name)
        self.title.value = self._title_html()
        self.clear()

    def _title_html(self) -> str:
        return f"<h4 style='margin:4px 0'>{html.escape(self._title)}</h4>"

    def set_extras(self, extras: list[ExtraBox], color=None) -> None:
        """Replace the inactive boxes (and optionally the active box's colour)."""
        self.extras = list(extras)
        if color is not None:
            self.color = tuple(color)
        self.redraw()

    def extra_at(self, x: float, y: float) -> ExtraBox | None:
        """The last-drawn inactive box containing a model-pixel point."""
        for extra in reversed(self.extras):
            x0, y0, x1, y1 = extra.box
            if x0 <= x <= x1 and y0 <= y <= y1:
                return extra
        return None

    def hit_test(self, x: float, y: float) -> tuple[str, str | None] | None:
        """``("handle", name)``, ``("inside", None)`` or None for a model-pixel point."""
        if self.box is None:
            return None
        x0, y0, x1, y1 = self.box
        tol = self.view.handle_tolerance()
        xs, ys = (x0, x1), (y0, y1)
        for name, (ex, ey) in _HANDLES.items():  # corners are listed first
            hx = xs[ex] if ex is not None else (x0 + x1) / 2
            hy = ys[ey] if ey is not None else (y0 + y1) / 2
            if abs(x - hx) <= tol and abs(y - hy) <= tol:
                return "handle", name
        if x0 <= x <= x1 and y0 <= y <= y1:
            return "inside", None
        return None

    # --------------------------------------------------------------- events --
    def on_mouse_down(self, x: float, y: float) -> None:
        hit = self.hit_test(x, y)
        self._anchor = (x, y)
        self._start = None if self.box is None else tuple(map(float, self.box))
        if hit and hit[0] == "handle":
            self.mode, self.handle = "resize", hit[1]
        elif hit:
            self.mode, self.handle = "move", None
        else:
            self.mode, self.handle = "draw", None
            self._live = (x, y, x, y)
        self.redraw()

    def on_mouse_move(self, x: float, y: float) -> None:
        if self.mode is None:
            return
        w, h = self.size
        x, y = min(max(x, 0.0), w), min(max(y, 0.0), h)
        ax, ay = self._anchor
        if self.mode == "draw":
            self._live = (min(ax, x), min(ay, y), max(ax, x), max(ay, y))
        elif self.mode == "move":
            x0, y0, x1, y1 = self._start
            dx = min(max(x - ax, -x0), w - x1)
            dy = min(max(y - ay, -y0), h - y1)
            self._live = (x0 + dx, y0 + dy, x1 + dx, y1 + dy)
        else:
            edges = list(self._start)
            ex, ey = _HANDLES[self.handle]
            if ex is not None:
                edges[0 if ex == 0 else 2] = x
            if ey is not None:
                edges[1 if ey == 0 else 3] = y
            x0, y0, x1, y1 = edges
            self._live = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        self.redraw()

    def on_mouse_up(self, x: float, y: float) -> None:
        if self.mode is None:
            return
        self.on_mouse_move(x, y)
        live, self._live = self._live, None
        self.mode, self.handle = None, None
        picked = None
        with self.hold_trait_notifications():  # the box's observers see it drawn
            if live is not None:
                x0, y0, x1, y1 = (round(v) for v in live)
                if x1 - x0 >= self.min_size and y1 - y0 >= self.min_size:
                    self.box = (x0, y0, x1, y1)
                else:  # a click without a drag keeps the box, and may pick an inactive one
                    picked = self.extra_at(x, y)
            self.redraw()
        if picked is not None:
            self._picks(picked.key)

    def on_mouse_out(self, x: float, y: float) -> None:
        """Leaving the canvas ends a drag where the pointer left."""
        self.on_mouse_up(x, y)

    # -------------------------------------------------------------- drawing --
    def redraw(self) -> None:
        shown = self._live or self.box
        with hold_canvas():
            self.view.clear_marks()
            for extra in self.extras:
                self.view.mark_box(extra.box, extra.color, width=1.5)
                if extra.label:
                    pad = 1 / self.view.scale  # one screen pixel, in model pixels
                    self.view.mark_text(extra.label, extra.box[0] + 3 * pad,
                                        extra.box[1] + 13 * pad, color=render.css(extra.color))
            if shown is not None:
                self.view.mark_box(shown, self.color, handles=self.mode is None,
                                   dashed=self._live is not None)
        w, h = self.size
        if self.box is None:
            text = f"no box: drag on the image to draw one ({w}x{h} model pixels)"
        else:
            text = (f"box [x0, y0, x1, y1] = {list(self.box)} model pixels of {w}x{h}; "
                    "drag inside to move, drag a handle to resize")
        self.coords.value = f"<code>{html.escape(self.name)}</code>: {html.escape(text)}"


def file_row(owner, path: str | Path, description: str) -> W.HBox:
    """A path field with Save and Load buttons for a widget with ``save()`` / ``load()``;
    sets ``owner.path``, ``owner.save_button``, ``owner.load_button`` and ``owner.status``."""
    owner.path = W.Text(value=str(path), description=description,
                        layout=W.Layout(width="420px"))
    owner.save_button = W.Button(description="Save", icon="save")
    owner.load_button = W.Button(description="Load", icon="folder-open")
    owner.save_button.on_click(lambda _: owner.save())
    owner.load_button.on_click(lambda _: owner.load())
    owner.status = W.HTML()
    return W.HBox([owner.path, owner.save_button, owner.load_button])


def refuse_missing_folder(owner, path: Path) -> None:
    """Saving into a folder that does not exist is refused (a typo in the path would
    otherwise create a tree of folders): says so in ``owner.status`` and raises."""
    if not path.parent.is_dir():
        message = (f"not saved: the folder '{path.parent}' does not exist (create it first, "
                   "or choose another path)")
        owner.status.value = status_html(message, "error")
        raise BoxError(message)


class PairBoxDrawer(LabWidget):
    """Both images of a pair side by side, each with its box; save/load the boxes JSON."""

    def __init__(self, lab, appearance: LoadedImage, structure: LoadedImage, boxes=None,
                 path: str | Path = "boxes.json", display_size: int = 256):
        self.lab = lab
        self.appearance = BoxDrawer(appearance, title=f"appearance (reference): {appearance.name}",
                                    display_size=display_size)
        self.structure = BoxDrawer(structure, title=f"structure (target): {structure.name}",
                                   display_size=display_size)
        for d in self.drawers:  # the drawers show no banner of their own; uploads load
            d.source.lab = lab  # through the session all the same
        files = file_row(self, path, "boxes JSON")
        self.widget = self._frame(
            W.HBox([self.appearance.widget, self.structure.widget]), files, self.status,
            title="Bounding boxes")
        if appearance.name == structure.name:
            self.status.value = status_html(
                "both images are named '%s': the boxes JSON keys boxes by file name, so "
                "load them under different names" % appearance.name, "warn")
        if boxes is not None:
            self.load(boxes)

    @classmethod
    def from_pair(cls, lab, pair, **kwargs) -> "PairBoxDrawer":
        drawer = cls(lab, pair.appearance, pair.structure, **kwargs)
        drawer.appearance.set_box(pair.appearance_box)
        drawer.structure.set_box(pair.structure_box)
        return drawer

    @property
    def drawers(self) -> tuple[BoxDrawer, BoxDrawer]:
        return self.appearance, self.structure

    def boxes(self) -> dict[str, list[int]]:
        """``{file name: [x0, y0, x1, y1]}`` for the images that have a box."""
        return {d.name: list(d.box) for d in self.drawers if d.box is not None}

    def save(self, path: str | Path | None = None) -> Path:
        """Write the boxes JSON (with its ``_size``) that the CLI's ``--boxes`` reads.

        An existing file is updated, not replaced: boxes of other images are kept, and
        ours are written at the resolution the file declares (its ``"_size"``).
        """
        p = Path(path if path is not None else self.path.value).expanduser()
        refuse_missing_folder(self, p)
        ours = self.boxes()
        try:
            written = write_boxes(p, ours, self.structure.size)
        except (OSError, BoxError) as exc:
            self.status.value = status_html(f"could not save '{p}': {exc}", "error")
            raise
        self.path.value = str(p)
        kept = len(written) - len(ours)
        self.status.value = status_html(
            f"saved {len(ours)} box(es) to {p}" + (f" (kept {kept} other)" if kept else ""), "ok")
        return p

    def load(self, source: str | Path | dict | None = None) -> dict[str, list[int]]:
        """Read boxes from a JSON path (default: the path field) or a dict; boxes drawn
        at another resolution (``_size``) are rescaled to these images."""
        if source is None:
            source = self.path.value
        try:
            scaled = read_boxes(source, self.structure.size)
            found = 0
            for d in self.drawers:
                b = lookup_box(scaled, d.name)
                if b is not None:
                    d.set_box(b)
                    found += 1
        except BoxError as exc:
            self.status.value = status_html(str(exc), "error")
            raise
        where = "the given boxes" if isinstance(source, dict) else str(source)
        self.status.value = status_html(f"loaded {found} box(es) from {where}",
                                        "ok" if found else "warn")
        return self.boxes()

    def pair(self, mask: str = "auto", **kwargs):
        """``lab.pair`` of the two images with the drawn boxes (the pair records the mask
        mode really used)."""
        return self.lab.pair(self.appearance.image, self.structure.image,
                             appearance_box=self.appearance.box,
                             structure_box=self.structure.box,
                             mask=mask, **kwargs)
