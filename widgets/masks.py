"""Mask editor: SAM-HQ mask from the box, refined by object/background clicks.

The overlay opacity is adjustable, and the mask is also shown at the resolutions
the method actually uses it: the latent grid (masked AdaIN) and the grids of the
injected self-attention layers (matching).
"""

from __future__ import annotations

from typing import Callable

import ipywidgets as W
import torch

from e4e_lab.analysis.grids import layer_masks
from e4e_lab.errors import E4ELabError, ModelUnavailableError
from e4e_lab.io.formats import MaskMode
from e4e_lab.method.images import LoadedImage
from e4e_lab.method.masks import object_mask

from . import render
from .canvas import ImageCanvas, hold_canvas
from .common import LabWidget, captioned, image_widget, set_image, status_html

SOURCES = [("SAM-HQ (box + clicks)", MaskMode.SAM.value), ("box", MaskMode.BOX.value),
           ("whole image", MaskMode.NONE.value)]
#: shown (once per editor frame) when no SAM-HQ checkpoint is loaded
NO_SAM_NOTE = ("No SAM-HQ checkpoint: the masks are the boxes, and object / background "
               "clicks are off (pass sam_checkpoint= to Lab, or a masker= here, for SAM-HQ "
               "masks refined by clicks)")


def no_sam_widget() -> W.HTML:
    return W.HTML(status_html(NO_SAM_NOTE, "warn"))


def default_masker(lab):
    """``lab.sam()`` when a SAM-HQ checkpoint is available, else None."""
    if lab is None:
        return None
    try:
        return lab.sam() if lab.sam_available() else None
    except ModelUnavailableError:
        return None


class MaskEditor(LabWidget):
    """One image: its box, clicks and mask."""

    def __init__(self, image: LoadedImage, box=None, lab=None, masker=None,
                 source: str = "auto", title: str | None = None, display_size: int = 256,
                 opacity: float = 0.5, grid_size: int = 96, models=None, banner: bool = True):
        self.lab = lab if banner else None
        self.models = models if models is not None else getattr(lab, "models", None)
        self.image, self.box = image, None if box is None else tuple(box)
        self.masker = masker
        source = MaskMode.parse(source).resolve(box is not None, masker is not None).value
        self.points: list[tuple[float, float]] = []
        self.labels: list[int] = []
        self.mask: torch.Tensor = torch.ones(image.size[1], image.size[0])
        self._updates = W.CallbackDispatcher()
        self.grid_size = grid_size

        self.view = ImageCanvas(image, display_size)
        self.view.on("down", self.on_click)
        self.source = W.Dropdown(options=SOURCES, value=source, description="mask from")
        self.click_label = W.ToggleButtons(options=[("object +", 1), ("background -", 0)],
                                           value=1, description="clicks add",
                                           tooltips=["positive click: part of the object",
                                                     "negative click: not the object"])
        self.opacity = W.FloatSlider(value=opacity, min=0.0, max=1.0, step=0.05,
                                     description="opacity", continuous_update=True)
        self.undo_button = W.Button(description="Undo click", icon="undo")
        self.reset_button = W.Button(description="Reset clicks", icon="times")
        self.status = W.HTML()
        self.grids = W.HBox()
        self.source.observe(lambda _: self.update(), names="value")
        self.opacity.observe(lambda _: self.draw(), names="value")
        self.undo_button.on_click(lambda _: self.undo())
        self.reset_button.on_click(lambda _: self.reset())
        note = no_sam_widget() if masker is None and banner else None
        self.widget = self._frame(
            note, self.view.canvas, self.source, self.click_label, self.opacity,
            W.HBox([self.undo_button, self.reset_button]), self.status,
            W.HTML("<i>what the method sees:</i>"), self.grids,
            title=title or image.name)
        self.update()

    # --------------------------------------------------------------- events --
    def on_click(self, x: float, y: float) -> None:
        """Add a click at model pixel (x, y) with the current label and recompute."""
        if self.masker is None:
            self.status.value = status_html(
                "no SAM-HQ checkpoint: clicks cannot refine the mask (it is the box)", "warn")
            return
        if self.source.value != MaskMode.SAM:
            self.status.value = status_html(
                "clicks refine SAM-HQ masks: choose 'SAM-HQ' as the mask source", "warn")
            return
        self.points.append((float(x), float(y)))
        self.labels.append(int(self.click_label.value))
        self.update()

    def undo(self) -> None:
        if self.points:
            self.points.pop()
            self.labels.pop()
            self.update()

    def reset(self) -> None:
        self.points.clear()
        self.labels.clear()
        self.update()

    def set_box(self, box) -> None:
        self.box = None if box is None else tuple(box)
        self.update()

    def on_update(self, callback: Callable[["MaskEditor"], None], remove: bool = False
                  ) -> None:
        """Call ``callback(editor)`` after each recomputed mask (``remove``: stop)."""
        self._updates.register_callback(callback, remove=remove)

    # ---------------------------------------------------------- computation --
    def update(self) -> None:
        """Recompute the mask from the source, box and clicks, and redraw."""
        source = self.source.value
        clicks_off = self.masker is None or source != MaskMode.SAM
        for control in (self.click_label, self.undo_button, self.reset_button):
            control.disabled = clicks_off
        if source == MaskMode.SAM and self.masker is None:
            self.mask = object_mask(self.image, self.box, MaskMode.BOX)
            self.status.value = status_html(
                "SAM-HQ checkpoint not found: the mask is the box (pass sam_checkpoint= to "
                "Lab, or a masker= here)", "warn")
        else:
            try:
                self.mask = object_mask(self.image, self.box, source, self.masker,
                                                self.points, self.labels)
            except (E4ELabError, ValueError) as exc:
                self.status.value = status_html(str(exc), "error")
                return
            n = int(self.mask.sum())
            total = self.mask.numel()
            kind = "warn" if n == 0 else "ok"
            extra = " (empty: add an object click or use the box)" if n == 0 else ""
            self.status.value = status_html(
                f"mask: {n} of {total} pixels ({100 * n / total:.0f}%), "
                f"{len(self.points)} click(s){extra}", kind)
        self.draw()
        self.draw_grids()
        self._updates(self)

    # -------------------------------------------------------------- drawing --
    def draw(self) -> None:
        with hold_canvas():
            self.view.set_overlay(render.mask_rgba(self.mask, render.OBJECT_COLOR,
                                                   self.opacity.value))
            self.view.clear_marks()
            if self.box is not None:
                self.view.mark_box(self.box, (255, 200, 0))
            for (x, y), lab in zip(self.points, self.labels):
                self.view.mark_point(x, y, render.OBJECT_COLOR if lab else
                                     render.BACKGROUND_COLOR, radius=5)

    def grid_masks(self) -> list[tuple[str, tuple[int, int], torch.Tensor]]:
        return [] if self.models is None else layer_masks(self.models, self.mask)

    def draw_grids(self) -> None:
        items = []
        base = self.image.to_uint8()
        for label, grid, m in self.grid_masks():
            shown = render.composite(base, render.mask_rgba(m, render.OBJECT_COLOR, 0.55))
            img = image_widget(width=self.grid_size)
            set_image(img, render.resize_nearest(shown, self.grid_size, self.grid_size))
            items.append(captioned(img, f"{label}: {int(m.sum())}/{m.numel()} cells"))
        self.grids.children = items


class PairMaskEditor(LabWidget):
    """Mask editors for both images of a pair; :meth:`pair` builds the edited pair."""

    def __init__(self, lab, pair, masker=None, display_size: int = 256, **kwargs):
        self.lab = lab
        self.base_pair = pair
        masker = masker if masker is not None else default_masker(lab)
        common = dict(lab=lab, masker=masker, display_size=display_size, banner=False,
                      **kwargs)
        self.drawer = None
        self.appearance = MaskEditor(pair.appearance, pair.appearance_box,
                                     title=f"appearance (reference): {pair.appearance.name}",
                                     **common)
        self.structure = MaskEditor(pair.structure, pair.structure_box,
                                    title=f"structure (target): {pair.structure.name}", **common)
        self.status = W.HTML()
        self.widget = self._frame(None if masker is not None else no_sam_widget(),
                                  W.HBox([self.appearance.widget, self.structure.widget]),
                                  self.status, title="Masks")

    @classmethod
    def from_boxes(cls, lab, drawer, **kwargs) -> "PairMaskEditor":
        """From a :class:`~widgets.boxes.PairBoxDrawer` (masks start as SAM or box masks);
        the editors follow the drawer's boxes when they are edited later."""
        editor = cls(lab, drawer.pair(mask="box"), **kwargs)
        editor.follow(drawer)
        return editor

    def follow(self, drawer) -> None:
        """Take each box edited in ``drawer`` (a PairBoxDrawer) as that image's box."""
        self.drawer = drawer
        for mine, theirs in ((self.appearance, drawer.appearance),
                             (self.structure, drawer.structure)):
            theirs.observe(lambda change, mine=mine: mine.set_box(change.new), names="box")

    def pair(self):
        """The pair with the edited masks (raises MaskError for an empty mask)."""
        p = self.base_pair
        try:
            out = self.lab.pair(p.appearance, p.structure, appearance_box=self.appearance.box,
                                structure_box=self.structure.box,
                                appearance_mask=self.appearance.mask,
                                structure_mask=self.structure.mask)
        except E4ELabError as exc:
            self.status.value = status_html(str(exc), "error")
            raise
        out.mask_mode = "edited"
        self.status.value = status_html("pair updated with the edited masks", "ok")
        return out
