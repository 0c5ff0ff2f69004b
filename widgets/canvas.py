"""An image on an ipycanvas ``MultiCanvas`` addressed in model pixels.

Three layers: the image, an overlay (heatmap, mask) and marks (boxes, points). The
canvas shows the image with its longer side at ``display_size`` screen pixels; mouse
events arrive in canvas pixels and are converted to model pixels before the
callbacks registered with :meth:`ImageCanvas.on` see them.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from ipycanvas import MultiCanvas, hold_canvas

from . import render

IMAGE, OVERLAY, MARKS = 0, 1, 2


class ImageCanvas:
    def __init__(self, image, display_size: int = 256):
        self.image = render.to_uint8(image)
        h, w = self.image.shape[:2]
        self.size = (w, h)  # model pixels (width, height)
        self.display_h, self.display_w = render.display_shape(self.size, display_size)
        self.scale = self.display_w / w
        self.canvas = MultiCanvas(3, width=self.display_w, height=self.display_h)
        self.canvas.layout.width = f"{self.display_w}px"
        self.canvas.layout.height = f"{self.display_h}px"
        self.canvas.add_class("e4e-canvas")
        self.overlay: np.ndarray | None = None
        self.draw_image()

    # ----------------------------------------------------------- coordinates --
    def to_model(self, cx: float, cy: float) -> tuple[float, float]:
        w, h = self.size
        return (min(max(cx / self.scale, 0.0), float(w)),
                min(max(cy / self.scale, 0.0), float(h)))

    def to_canvas(self, x: float, y: float) -> tuple[float, float]:
        return x * self.scale, y * self.scale

    def on(self, event: str, callback: Callable[[float, float], None]) -> None:
        """Call ``callback(x, y)`` in model pixels on ``down``, ``move``, ``up`` or ``out``."""
        register = {"down": self.canvas.on_mouse_down, "move": self.canvas.on_mouse_move,
                    "up": self.canvas.on_mouse_up, "out": self.canvas.on_mouse_out}[event]
        register(lambda cx, cy: callback(*self.to_model(cx, cy)))

    # ------------------------------------------------------------------ layers --
    def _fit(self, arr: np.ndarray) -> np.ndarray:
        return render.resize_nearest(arr, self.display_h, self.display_w)

    def draw_image(self, image=None) -> None:
        if image is not None:
            self.image = render.to_uint8(image)
        shown = render.resize_smooth(self.image, self.display_h, self.display_w)
        self.canvas[IMAGE].put_image_data(shown, 0, 0)

    def set_overlay(self, rgba: np.ndarray | None) -> None:
        """Show an (h, w, 4) uint8 overlay (any resolution; cells stay crisp)."""
        layer = self.canvas[OVERLAY]
        layer.clear()
        self.overlay = rgba
        if rgba is not None:
            layer.put_image_data(self._fit(rgba), 0, 0)

    def clear_marks(self) -> None:
        self.canvas[MARKS].clear()

    # ------------------------------------------------------------------- marks --
    def mark_box(self, box, color=(255, 200, 0), handles: bool = False, width: float = 2,
                 dashed: bool = False) -> None:
        x0, y0 = self.to_canvas(box[0], box[1])
        x1, y1 = self.to_canvas(box[2], box[3])
        layer = self.canvas[MARKS]
        layer.stroke_style = render.css(color)
        layer.line_width = width
        layer.set_line_dash([6, 4] if dashed else [])
        layer.stroke_rect(x0, y0, x1 - x0, y1 - y0)
        layer.set_line_dash([])
        if handles:
            layer.fill_style = render.css(color)
            r = 4
            for hx, hy in ((x0, y0), (x1, y0), (x0, y1), (x1, y1), ((x0 + x1) / 2, y0),
                           ((x0 + x1) / 2, y1), (x0, (y0 + y1) / 2), (x1, (y0 + y1) / 2)):
                layer.fill_rect(hx - r, hy - r, 2 * r, 2 * r)

    def mark_point(self, x: float, y: float, color=(255, 60, 60), radius: float = 5,
                   cross: bool = False) -> None:
        cx, cy = self.to_canvas(x, y)
        layer = self.canvas[MARKS]
        layer.line_width = 2
        layer.stroke_style = "white"
        layer.fill_style = render.css(color)
        layer.fill_circle(cx, cy, radius)
        layer.stroke_circle(cx, cy, radius)
        if cross:
            layer.stroke_style = render.css(color)
            r = radius * 2.2
            layer.stroke_line(cx - r, cy, cx - radius, cy)
            layer.stroke_line(cx + radius, cy, cx + r, cy)
            layer.stroke_line(cx, cy - r, cx, cy - radius)
            layer.stroke_line(cx, cy + radius, cx, cy + r)

    def mark_text(self, text: str, x: float, y: float, color="white") -> None:
        layer = self.canvas[MARKS]
        layer.font = "12px sans-serif"
        layer.fill_style = color
        layer.fill_text(text, *self.to_canvas(x, y))

    def handle_tolerance(self, screen_pixels: float = 7) -> float:
        """A distance in model pixels that looks like ``screen_pixels`` on screen."""
        return max(screen_pixels / self.scale, 0.5)


__all__ = ["ImageCanvas", "hold_canvas"]
