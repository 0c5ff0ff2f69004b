"""Attention viewer: where does a query pixel attend, at a layer, step, head and branch?

Give it one or more transfer results that recorded attention (``TransferConfig(
record_attention_layers=..., record_attention_steps=...)``), typically the same pair
run with ``feature`` and ``v`` injection: the same query is shown for every run side by
side. Under ``feature`` injection queries and keys are both projected from the
rearranged appearance features; under ``v`` they come from the output's own
(structure) features and only the values are rearranged.
"""

from __future__ import annotations

import html
from typing import Mapping, Sequence

import ipywidgets as W
import torch

from e4e_lab.analysis.attention_maps import (ATTENTION_BRANCHES, attention_entropy,
                                             attention_map, key_layout, query_layout)
from e4e_lab.analysis.grids import cell_center, pixel_to_cell, short_layer_name

from . import render
from .canvas import ImageCanvas, hold_canvas
from .common import LabWidget, captioned, image_widget
from .explorer_text import cell_xy, grid_text


MEAN = -1  # the head choice "mean over heads"


def column(children, width: int) -> W.VBox:
    """A column that keeps ``width`` px however narrow the window: a row of these wraps
    onto the next line instead of squeezing one under its neighbour."""
    return W.VBox(children, layout=W.Layout(min_width=f"{width}px", flex="0 0 auto",
                                            margin="0 12px 8px 0"))


def wrapping_row(children) -> W.HBox:
    return W.HBox(children, layout=W.Layout(flex_flow="row wrap", align_items="flex-start"))


def _label_results(results) -> dict[str, object]:
    if isinstance(results, Mapping):
        return dict(results)
    out: dict[str, object] = {}
    for r in results if isinstance(results, Sequence) else [results]:
        label, n = r.config.injection.mode, 2
        while label in out:
            label, n = f"{r.config.injection.mode} ({n})", n + 1
        out[label] = r
    return out


class AttentionViewer(LabWidget):
    def __init__(self, lab, pair, results, display_size: int = 192, opacity: float = 0.7):
        self.lab, self.pair = lab, pair
        self.results = _label_results(results)
        if not self.results:
            raise ValueError("give at least one transfer result")
        missing = [k for k, r in self.results.items()
                   if r.recorder is None or not r.recorder.attention]
        if missing:
            raise ValueError(f"results {missing} recorded no attention: run them with "
                             "TransferConfig(record_attention_layers=(...), "
                             "record_attention_steps=(...))")
        self.size = pair.structure.size
        self.query: tuple[float, float] | None = None
        self.query_cell: int | None = None
        self.maps: dict[str, torch.Tensor | None] = {}
        self.peaks: dict[str, int] = {}
        self._layouts: dict[int, str] = {}
        self._quiet = False

        # every (layer, step) any of the runs recorded, in recording order
        self.recorded = list(dict.fromkeys(key for r in self.results.values()
                                           for key in r.recorder.attention))
        layers = list(dict.fromkeys(layer for layer, _ in self.recorded))
        self.layer = W.Dropdown(
            options=[(f"{short_layer_name(n)} ({self._grid_of(n)[0]}x{self._grid_of(n)[1]})",
                      n) for n in layers], description="layer")
        self.step = W.Dropdown(options=[], description="step")
        self.head = W.Dropdown(options=[("mean", MEAN)], value=MEAN, description="head")
        first = self._entry(*self.recorded[0])
        branches = [b for b in ATTENTION_BRANCHES if b in first]
        self.branch = W.Dropdown(options=branches, value="output", description="branch")
        self.opacity = W.FloatSlider(value=opacity, min=0, max=1, step=0.05,
                                     description="opacity")
        self.info = W.HTML()
        self.query_view = ImageCanvas(pair.structure, display_size)
        self.query_view.on("down", self.select)
        self.key_views: dict[str, ImageCanvas] = {}
        self.captions: dict[str, W.HTML] = {}
        panels = []
        for label, res in self.results.items():
            self.key_views[label] = ImageCanvas(pair.structure, display_size)
            self.captions[label] = W.HTML()
            width = self.key_views[label].display_w
            self.captions[label].layout.max_width = f"{width}px"
            panels.append(column([W.HTML(f"<b>{html.escape(label)}</b> "
                                         f"(injection: {html.escape(res.config.injection.mode)})"),
                                  self.key_views[label].canvas, self.captions[label]], width))
        thumbs = [column([captioned(image_widget(render.resize_nearest(
            render.to_uint8(r.image), *render.display_shape(self.size, 128)), width=128),
            f"result: {label}")], 128) for label, r in self.results.items()]

        self.layer.observe(self._on_layer, names="value")
        for w in (self.step, self.head, self.branch, self.opacity):
            w.observe(lambda _: self.update(), names="value")
        self.widget = self._frame(
            W.HBox([self.layer, self.step]), W.HBox([self.head, self.branch, self.opacity]),
            wrapping_row([column([captioned(self.query_view.canvas, "query: click a pixel")],
                                 self.query_view.display_w)] + panels),
            self.info, wrapping_row(thumbs), W.HTML(self.cost_text()), title="Attention viewer")
        self._on_layer(None)

    def cost_text(self) -> str:
        """What recording cost each run: the maps it holds in memory and its denoising
        time, so that a user picking more layers or steps knows what that adds."""
        parts = []
        for label, r in self.results.items():
            rec = r.recorder
            layers = len({layer for layer, _ in rec.attention})
            steps = len({step for _, step in rec.attention})
            ms = r.timings.get("ms_per_step")
            speed = f", {ms:.0f} ms per denoising step" if ms is not None else ""
            parts.append(f"<b>{html.escape(label)}</b>: {layers} layer(s) x {steps} step(s) "
                         f"recorded, {rec.nbytes / 2**20:.1f} MiB held{speed}")
        return ("<small>Recording cost (memory grows with layers x steps x grid cells "
                "squared; only the picked layers and steps are recorded): "
                + "; ".join(parts) + "</small>")

    # --------------------------------------------------------------- choices --
    def _grid_of(self, layer: str) -> tuple[int, int]:
        return next(r.recorder.grids[layer] for r in self.results.values()
                    if layer in r.recorder.grids)

    def _entry(self, layer: str, step: int) -> dict:
        """The recorded branches at (layer, step) of the first run that has them."""
        return next(r.recorder.attention[(layer, step)] for r in self.results.values()
                    if (layer, step) in r.recorder.attention)

    def _on_layer(self, _change) -> None:
        steps = sorted({s for (lay, s) in self.recorded if lay == self.layer.value})
        heads = self._entry(self.layer.value, steps[0])["output"].shape[0] if steps else 0
        self._quiet = True  # one redraw after the choices change, not one per change
        try:
            current = self.step.value
            self.step.options = steps
            self.step.value = current if current in steps else (steps[0] if steps else None)
            head = self.head.value
            self.head.options = [("mean", MEAN)] + [(str(h), h) for h in range(heads)]
            self.head.value = head if head != MEAN and head < heads else MEAN
        finally:
            self._quiet = False
        self.update()

    @property
    def head_index(self) -> int | None:
        """The chosen head, or None for the mean over heads."""
        return None if self.head.value == MEAN else int(self.head.value)

    @property
    def grid(self) -> tuple[int, int]:
        return self._grid_of(self.layer.value)

    def set_view(self, layer: str | None = None, step: int | None = None,
                 head: int | None | str = "keep", branch: str | None = None) -> None:
        if layer is not None:
            self.layer.value = layer
        if step is not None:
            self.step.value = step
        if head != "keep":
            self.head.value = MEAN if head is None else head
        if branch is not None:
            self.branch.value = branch
        self.update()

    def _show(self, view: ImageCanvas, layout: str) -> None:
        """Draw the image whose layout a view follows (only when it changes)."""
        if self._layouts.get(id(view)) != layout:
            image = self.pair.appearance if layout == "appearance" else self.pair.structure
            view.draw_image(image.pixels)
            self._layouts[id(view)] = layout

    # -------------------------------------------------------------- clicking --
    def select(self, x: float, y: float) -> None:
        """Query model pixel (x, y) (in the query branch's image)."""
        self.query = (float(x), float(y))
        self.update()

    def probs(self, label: str) -> torch.Tensor | None:
        rec = self.results[label].recorder
        entry = rec.attention.get((self.layer.value, self.step.value))
        return None if entry is None else entry.get(self.branch.value)

    def update(self) -> None:
        """Recompute every run's attention map for the current query and redraw."""
        if self._quiet:
            return
        branch = self.branch.value
        self._show(self.query_view, query_layout(branch))
        self.maps.clear()
        self.peaks.clear()
        if self.query is not None and self.layer.value is not None:
            self.query_cell = pixel_to_cell(*self.query, self.size, self.grid)
        with hold_canvas():
            self.query_view.clear_marks()
            if self.query is not None:
                self.query_view.mark_point(*self.query, render.TARGET_COLOR, radius=5)
            for label, view in self.key_views.items():
                self._draw_key(label, view, branch)
        if self.query is None:
            self.info.value = "<i>click a query pixel</i>"
        else:
            cx, cy = cell_xy(self.query_cell, self.grid)
            head = "mean over heads" if self.head_index is None else f"head {self.head_index}"
            self.info.value = (f"query pixel x={self.query[0]:.0f}, y={self.query[1]:.0f} "
                               f"&rarr; cell x={cx}, y={cy} of {grid_text(self.grid)}; step "
                               f"{self.step.value}, {head}, branch {branch}")

    def _draw_key(self, label: str, view: ImageCanvas, branch: str) -> None:
        res = self.results[label]
        layout = key_layout(res.config.injection.mode, branch)
        self._show(view, layout)
        view.clear_marks()
        probs = self.probs(label)
        if self.query is None or probs is None:
            view.set_overlay(None)
            self.maps[label] = None
            self.captions[label].value = ("<i>not recorded at this layer/step/branch</i>"
                                          if probs is None else "")
            return
        amap = attention_map(probs, self.query_cell, self.grid, self.head_index)
        self.maps[label] = amap
        peak = int(amap.flatten().argmax())
        self.peaks[label] = peak
        view.set_overlay(render.heat_rgba(amap, self.opacity.value, vmin=0.0))
        view.mark_point(*cell_center(peak, self.grid, self.size), render.MATCH_COLOR,
                        radius=4, cross=True)
        if layout == query_layout(branch):
            view.mark_point(*self.query, render.TARGET_COLOR, radius=3)
        ent = attention_entropy(amap)
        uniform = float(torch.log(torch.tensor(float(amap.numel()))))
        px, py = cell_xy(peak, self.grid)
        self.captions[label].value = (
            f"keys over the {layout} layout; peak cell x={px}, y={py} weight "
            f"{float(amap.flatten()[peak]):.3f}; entropy {ent:.2f} of {uniform:.2f} (uniform)")
