"""Correspondence explorer: click (or hover over) a target pixel, see where it matches.

Sources:

- ``dift``: DIFT features of both images (block, timestep and ensemble size chosen
  with sliders, computed in the background when "Compute features" is pressed, with a
  bar and Stop, and cached per setting: :mod:`widgets.explorer_dift`);
- ``recorded``: the matches a transfer used at one injected layer and step (a result
  from :func:`e4e_lab.analysis.recording.transfer_with_features` also carries the
  features, so the heatmap that explains each match is shown too);
- ``given``: any precomputed :class:`~e4e_lab.analysis.lookup.FeatureLookup`.

A click costs one matrix-vector product over precomputed unit-normalised features plus
the colour mapping; features are never recomputed by a click. Below the pair, the
"warped reference" paints the reference into the target's layout through the current
correspondence, and the unused view marks the reference pixels no target pixel takes.
"""

from __future__ import annotations

import html
import time

import ipywidgets as W
import torch

from e4e_lab.analysis.grids import cell_center, cell_rect, pixel_to_cell, short_layer_name
from e4e_lab.analysis.lookup import FeatureLookup
from e4e_lab.analysis.recording import recorded_layers, recorded_steps
from e4e_lab.analysis.warps import unused_fraction, unused_reference, warped_reference

from . import render
from .background import drawing
from .canvas import ImageCanvas, hold_canvas
from .common import LabWidget, captioned, image_widget, set_image, status_html
from .explorer_dift import DiftComputation
from .explorer_text import STALE_TEXT, selection_text


class CorrespondenceExplorer(DiftComputation, LabWidget):
    """Click a target pixel, see its match and similarity heatmap. DIFT features are
    computed in a background thread (``compute=True`` starts that at once for the DIFT
    source): call :meth:`wait` (or ``compute_dift(block=True)``) before reading them."""

    def __init__(self, lab, pair, result=None, lookup: FeatureLookup | None = None,
                 block: int = 1, timestep: int = 261, ensemble: int = 4, prompt: str | None = None,
                 seed: int = 0, source: str | None = None, display_size: int = 256,
                 restrict: bool = True, hover: bool = True, hover_interval: float = 0.05,
                 opacity: float = 0.65, compute: bool = True):
        self.lab, self.pair, self.result = lab, pair, result
        self.size = pair.structure.size
        self.prompt = prompt if prompt is not None else (
            result.config.inversion.prompt if result is not None else "")
        self.seed = seed
        self.hover_interval = hover_interval
        self.dift_cache: dict[tuple, FeatureLookup] = {}
        self.recorded_cache: dict[tuple, FeatureLookup | None] = {}
        self.given = lookup
        if lookup is not None and lookup.settings is not None:  # DIFT features already here
            self.dift_cache[_dift_key(**lookup.settings)] = lookup
        # the current correspondence and selection
        self.lookup: FeatureLookup | None = None
        self.field = None
        self.selected: tuple[float, float] | None = None
        self.cell: int | None = None
        self.match: int | None = None
        self.score: float | None = None
        self.heat: torch.Tensor | None = None
        self.updates = 0
        self._last_hover = 0.0

        recorder = getattr(result, "recorder", None)
        self.recorder = recorder if recorder is not None and recorder.matches else None
        source = source or ("given" if lookup is not None else
                            "recorded" if self.recorder is not None else "dift")
        self._build_controls(source, block, timestep, ensemble, restrict, hover, opacity)
        self._build_views(display_size)
        self.widget = self._layout()
        if self.layer.options:
            self._on_layer(None)
        self.refresh_source()
        if source == "dift" and compute:
            self.compute_dift()  # in the background: wait() for it

    def _build_controls(self, source: str, block: int, timestep: int, ensemble: int,
                        restrict: bool, hover: bool, opacity: float) -> None:
        """The source buttons, the DIFT sliders, the recorded layer and step, the options."""
        sources = [("DIFT features", "dift")]
        if self.recorder is not None:
            sources.append(("recorded matches", "recorded"))
        if self.given is not None:
            sources.append(("given features", "given"))
        n_blocks = len(self.lab.models.unet.up_blocks)
        self.source = W.ToggleButtons(options=sources, value=source, description="source")
        self.block = W.IntSlider(value=min(block, n_blocks - 1), min=0, max=n_blocks - 1,
                                 description="up-block", continuous_update=False)
        self.timestep = W.IntSlider(value=timestep, min=0, max=999, step=1,
                                    description="timestep", continuous_update=False)
        self.ensemble = W.IntSlider(value=ensemble, min=1, max=16, description="ensemble",
                                    continuous_update=False)
        self._compute_controls("Compute features")  # with Stop and a bar
        layers = recorded_layers(self.recorder) if self.recorder else []
        grids = getattr(self.recorder, "grids", {})
        self.layer = W.Dropdown(
            options=[(f"{short_layer_name(n)} ({grids.get(n, ('?', '?'))[0]}x"
                      f"{grids.get(n, ('?', '?'))[1]})", n) for n in layers],
            description="layer")
        self.step = W.Dropdown(options=[], description="step")
        self.restrict = W.Checkbox(value=restrict, description="only inside the masks")
        self.hover = W.Checkbox(value=hover, description="follow the pointer")
        self.opacity = W.FloatSlider(value=opacity, min=0.0, max=1.0, step=0.05,
                                     description="heat opacity")
        self.info = W.HTML()
        self.status = W.HTML()
        self.dift_box = W.VBox([
            W.HBox([self.block, self.timestep, self.ensemble]),
            W.HBox([self.compute_button, self.stop_button, self.progress])])
        self.recorded_box = W.HBox([self.layer, self.step])
        self.source.observe(lambda _: self.refresh_source(), names="value")
        self.layer.observe(self._on_layer, names="value")
        self.step.observe(lambda _: self.refresh_source(), names="value")
        self.restrict.observe(lambda _: self.refresh_source(), names="value")
        self.opacity.observe(lambda _: self._redraw(), names="value")
        for s in (self.block, self.timestep, self.ensemble):
            s.observe(lambda _: self._dift_settings_changed(), names="value")

    def _build_views(self, display_size: int) -> None:
        """The two clickable images and the images below them (target, warped, unused)."""
        pair = self.pair
        self.target_view = ImageCanvas(pair.structure, display_size)
        self.ref_view = ImageCanvas(pair.appearance, display_size)
        self.target_view.on("down", self.select)
        self.target_view.on("move", self.on_hover)
        small = max(96, display_size * 3 // 4)
        self.warped_image = image_widget(width=small)
        self.unused_image = image_widget(width=small)
        self.target_image = image_widget(render.resize_smooth(
            pair.structure.to_uint8(), *render.display_shape(self.size, small)), width=small)

    def _layout(self) -> W.VBox:
        views = W.HBox([captioned(self.target_view.canvas, "target (structure): click a pixel"),
                        captioned(self.ref_view.canvas, "reference (appearance): similarity")])
        below = W.HBox([captioned(self.target_image, "target"),
                        captioned(self.warped_image, "warped reference"),
                        captioned(self.unused_image, "unused reference (magenta)")])
        return self._frame(self.source, self.dift_box, self.recorded_box,
                           W.HBox([self.restrict, self.hover, self.opacity]),
                           self.status, views, self.info, below,
                           title="Correspondence explorer")

    # -------------------------------------------------------------- sources --
    def _dift_key(self) -> tuple:
        return _dift_key(self.block.value, self.timestep.value, self.ensemble.value,
                         self.prompt, self.seed)

    def _dift_settings_changed(self) -> None:
        if self.source.value == "dift":  # reuses features held for these settings
            self.refresh_source()

    def _on_layer(self, _change) -> None:
        steps = recorded_steps(self.recorder, self.layer.value) if self.layer.value else []
        with_features = set()
        if hasattr(self.recorder, "features"):
            with_features = {s for (lay, s) in self.recorder.features if lay == self.layer.value}
        current = self.step.value
        self.step.options = [(f"{s}{' (features)' if s in with_features else ''}", s)
                             for s in steps]
        if current in steps:
            self.step.value = current
        elif with_features:
            self.step.value = min(with_features)
        self.refresh_source()

    def _show_source_controls(self) -> None:
        src = self.source.value
        self.dift_box.layout.display = "" if src == "dift" else "none"
        self.recorded_box.layout.display = "" if src == "recorded" else "none"

    def use_recorded(self, layer: str, step: int) -> None:
        """Show the matches recorded at (layer, step)."""
        self.layer.value = layer
        self.step.value = step
        self.source.value = "recorded"
        self.refresh_source()

    @drawing
    def refresh_source(self) -> None:
        """Take the correspondence of the selected source; redraw views and the selection."""
        self._show_source_controls()
        src, p = self.source.value, self.pair
        restrict = self.restrict.value
        self.lookup, self.field = None, None
        if src == "dift":
            self.lookup = self.dift_cache.get(self._dift_key())
            if self.lookup is None and self.state != "computing":
                self.status.value = status_html("press 'Compute features' for DIFT maps", "warn")
        elif src == "given":
            self.lookup = self.given
        elif src == "recorded" and self.layer.value is not None and self.step.value is not None:
            key = (self.layer.value, self.step.value)
            self.field = self.recorder.matches.get(key)
            if key not in self.recorded_cache and hasattr(self.recorder, "lookup"):
                self.recorded_cache[key] = self.recorder.lookup(*key, p.structure_mask,
                                                                p.appearance_mask)
            self.lookup = self.recorded_cache.get(key)
        if self.lookup is not None and self.field is None:
            self.field = self.lookup.match_field(restrict)
        if self.lookup is not None:
            g = self.lookup.ref_grid
            self.status.value = status_html(
                f"{self.lookup.source}: {g[0]}x{g[1]} grid, {self.lookup.channels} channels; "
                "a click looks up precomputed features", "ok")
        elif self.field is not None:
            self.status.value = status_html(
                "recorded match only (no features at this step: record them with "
                "e4e_lab.analysis.recording.transfer_with_features)", "info")
        self.draw_field_views()
        if self.selected is not None:
            self.select(*self.selected)
        else:
            self._redraw()

    @property
    def target_grid(self):
        if self.lookup is not None:
            return self.lookup.target_grid
        return None if self.field is None else self.field.target_shape

    @property
    def ref_grid(self):
        if self.lookup is not None:
            return self.lookup.ref_grid
        return None if self.field is None else self.field.ref_shape

    # ------------------------------------------------------------- clicking --
    @drawing
    def select(self, x: float, y: float) -> int | None:
        """Select target model pixel (x, y): heatmap and best match; returns the match."""
        self.selected = (float(x), float(y))
        grid = self.target_grid
        if grid is None:  # nothing to look up: drop the previous answer, do not show it
            self.cell = self.heat = self.match = self.score = None
            self._redraw()
            return None
        self.cell = pixel_to_cell(x, y, self.size, grid)
        if self.lookup is not None:
            self.heat = self.lookup.heatmap(self.cell)
            if self.source.value == "recorded" and self.field is not None:
                self.match = int(self.field.index[self.cell])
                self.score = float(self.field.score[self.cell])
            else:
                self.match, self.score = self.lookup.best_match(
                    self.cell, restrict=self.restrict.value, heat=self.heat)
        else:
            self.heat = None
            self.match = int(self.field.index[self.cell])
            self.score = float(self.field.score[self.cell])
        self.updates += 1
        self._redraw()
        return self.match

    def on_hover(self, x: float, y: float) -> None:
        """Pointer moved over the target: select, at most once per ``hover_interval``."""
        if not self.hover.value:
            return
        now = time.perf_counter()
        if now - self._last_hover < self.hover_interval:
            return
        self._last_hover = now
        self.select(x, y)

    @property
    def match_xy(self) -> tuple[float, float] | None:
        if self.match is None or self.match < 0:
            return None
        return cell_center(self.match, self.ref_grid, self.pair.appearance.size)

    # -------------------------------------------------------------- drawing --
    def heat_overlay(self):
        """(h, w, 4) uint8 overlay of the current heatmap (or the matched cell)."""
        if self.heat is not None:
            valid = self.lookup.ref_valid.reshape(self.lookup.ref_grid) \
                if self.restrict.value else None
            return render.heat_rgba(self.heat, self.opacity.value, valid)
        if self.match is not None and self.match >= 0:
            one = torch.zeros(self.ref_grid).flatten()
            one[self.match] = 1
            return render.mask_rgba(one.reshape(self.ref_grid), render.MATCH_COLOR,
                                    self.opacity.value)
        return None

    def _redraw(self) -> None:
        with hold_canvas():
            self.target_view.clear_marks()
            self.ref_view.clear_marks()
            self.ref_view.set_overlay(self.heat_overlay() if self.cell is not None else None)
            if self.selected is None or self.cell is None:
                self.info.value = "<i>click a target pixel</i>" if self.target_grid \
                    else STALE_TEXT
                return
            tg = self.target_grid
            self.target_view.mark_box(cell_rect(self.cell, tg, self.size),
                                      render.TARGET_COLOR, width=1)
            self.target_view.mark_point(*self.selected, render.TARGET_COLOR, radius=4)
            if self.match_xy is not None:
                self.ref_view.mark_point(*self.match_xy, render.MATCH_COLOR, radius=5, cross=True)
        self.info.value = selection_text(self.selected, self.cell, tg, self.match,
                                         self.ref_grid, self.match_xy, self.score)

    def draw_field_views(self) -> None:
        """Warped reference and unused-reference views of the current field (hidden
        while there is none, rather than showing another setting's)."""
        if self.field is None:
            self.warped_image.layout.display = self.unused_image.layout.display = "none"
            return
        width = self.warped_image.layout.width
        size = int(width.rstrip("px")) if width else 192
        shape = render.display_shape(self.size, size)
        warped = render.to_uint8(warped_reference(self.field, self.pair))
        set_image(self.warped_image, render.resize_nearest(warped, *shape))
        unused = unused_reference(self.field, self.pair)
        ref = render.composite(self.pair.appearance.to_uint8(),
                               render.mask_rgba(unused, render.UNUSED_COLOR, 0.6))
        set_image(self.unused_image, render.resize_nearest(ref, *shape))
        self.unused_fraction = unused_fraction(self.field, self.pair.appearance_mask)

    def describe(self) -> str:
        return html.unescape(self.info.value)


def _dift_key(block: int, timestep: int, ensemble: int, prompt: str, seed: int) -> tuple:
    """What DIFT features depend on: the explorer's cache key."""
    return (block, timestep, ensemble, prompt, seed)
