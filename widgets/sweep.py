"""Sweep panel: one or two settings over a few values each, run as a grid on one pair.

The grid, the runs and the contact sheet are the library's
(:mod:`e4e_lab.analysis.sweep`); this panel picks the axes, runs the grid in a
background thread on the cached inversions (**Stop** ends it between two denoising
steps, keeping the finished cells), shows the progress with a time estimate, and the
contact sheet as the cells arrive. With a gallery, each finished cell is added to it::

    sweep = SweepPanel(lab, pair, config, gallery=gallery)
    sweep.set_axes(("guidance", "1, 2.5"), ("injection", "feature, v"))
    sweep.run(block=True)
    sweep.result.images      # the four results, row by row
"""

from __future__ import annotations

import time

import ipywidgets as W
import numpy as np

from e4e_lab.analysis.sweep import (SWEEP_FIELDS, SweepCell, SweepResult, contact_sheet,
                                    format_value, parse_axes, run_sweep, steps_to_run,
                                    sweep_configs)
from e4e_lab.errors import E4ELabError
from e4e_lab.io.saved_runs import SavedRun
from e4e_lab.method.config import TransferConfig

from .background import BackgroundRun, duration
from .common import LabWidget, image_widget, set_image, status_html

NONE = "(none)"
#: What the values box suggests for each field.
EXAMPLES = {"guidance": "1, 2.5, 4", "feat_start": "0, 10, 20", "feat_end": "40, 70",
            "adain_start": "30, 50", "injection": "feature, v, kv", "skip_steps": "20, 32"}


class SweepPanel(BackgroundRun, LabWidget):
    stop_message = "stopping after the current denoising step; finished cells are kept"
    busy_message = "a sweep is running: Stop it first"
    what = "sweep"

    def __init__(self, lab, pair, base_config: TransferConfig | None = None, gallery=None,
                 cell: int = 128):
        self.lab, self.pair = lab, pair
        self.base = base_config or TransferConfig()
        self.gallery = gallery
        self.cell = cell
        self.state = "idle"  # idle | running | done | cancelled | failed
        self.result = None  # SweepResult of the last run (the cells done so far while running)
        self.sheet: np.ndarray | None = None  # the contact sheet on show
        self.error: BaseException | None = None
        self.steps_done = self.total_steps = 0
        self._t0 = 0.0
        self._cell_text = ""
        fields = [(f"{spec.label} ({name})", name) for name, spec in SWEEP_FIELDS.items()]
        style = {"description_width": "70px"}
        self.fields = (W.Dropdown(options=fields, value="guidance", description="rows",
                                  style=style),
                       W.Dropdown(options=[(NONE, NONE)] + fields, value="injection",
                                  description="columns", style=style))
        self.values = tuple(W.Text(description="values", style=style,
                                   layout=W.Layout(width="300px")) for _ in range(2))
        for f, v in zip(self.fields, self.values):
            f.observe(lambda _, f=f, v=v: self._suggest(f, v), names="value")
            self._suggest(f, v)
        self.values[0].value, self.values[1].value = "1, 2.5", "feature, v"
        self._run_buttons()
        self.progress = W.IntProgress(value=0, min=0, max=1, description="steps",
                                      layout=W.Layout(width="460px"))
        self.status = W.HTML(status_html("ready: choose the values and press Run"))
        self.image = image_widget()
        self.widget = self._frame(
            *(W.HBox([f, v]) for f, v in zip(self.fields, self.values)),
            W.HBox([self.run_button, self.stop_button]), self.progress, self.status,
            self.image, title="Parameter sweep")

    # ----------------------------------------------------------------- axes --
    @staticmethod
    def _suggest(field: W.Dropdown, values: W.Text) -> None:
        values.placeholder = EXAMPLES.get(field.value, "")
        values.disabled = field.value == NONE

    def set_axes(self, rows: tuple[str, str], columns: tuple[str, str] | None = None) -> None:
        """Set the controls: ``(field, "comma, separated, values")`` per axis, as a user
        would (no columns: a one-row sweep)."""
        for axis, given in enumerate((rows, columns)):
            name, text = given if given is not None else (NONE, "")
            self.fields[axis].value = name
            self.values[axis].value = text if isinstance(text, str) else \
                ", ".join(map(str, text))

    def axes(self):
        """The axes the controls describe (raises ConfigError naming what is wrong)."""
        return parse_axes([(f.value, v.value) for f, v in zip(self.fields, self.values)
                           if f.value != NONE])

    # ------------------------------------------------------------ run, stop --
    def run(self, block: bool = False) -> bool:
        """Run the grid in a background thread (``block=True`` waits for it). Returns
        False (and says why) when a run is going or the axes are invalid."""
        if self._refuse_if_running():
            return False
        try:
            axes = self.axes()
            configs = sweep_configs(self.base, axes)
        except E4ELabError as exc:
            self.state, self.error = "failed", exc
            self.status.value = status_html(str(exc), "error")
            return False
        self.state, self.error = "running", None
        self.result = SweepResult(self.base, axes)  # filled as the cells finish
        reuse = self._reusable()
        self.steps_done = 0
        self.total_steps = steps_to_run(configs, reuse)
        self.progress.max, self.progress.value = max(1, self.total_steps), 0
        return self._start(self._work, (axes, reuse), "e4e-sweep", block)

    def _reusable(self) -> list:
        """The gallery's finished runs of this pair: a cell with the same settings takes
        its result instead of running again (a transfer is deterministic)."""
        if self.gallery is None:
            return []
        return [r.result for r in self.gallery.runs
                if r.pair is self.pair and not isinstance(r.result, SavedRun)]

    # ------------------------------------------------------- worker thread --
    def _work(self, axes, reuse) -> None:
        self._t0 = time.perf_counter()
        result = run_sweep(self.lab, self.pair, self.base, axes, cancel=self.cancel_event,
                           callback=self._on_cell, step_callback=self._on_step,
                           inversion_progress=self._on_inversion, reuse=reuse)
        self.result = result
        self.show(result)
        took = duration(time.perf_counter() - self._t0)
        reused = sum(c.reused for c in result.cells)
        if result.complete:
            self.state, self.progress.bar_style = "done", "success"
            note = f"; {reused} taken from the gallery's runs" if reused else ""
            self.status.value = status_html(
                f"done: {result.total} cells in {took} ({self.cache_note}{note}; same seed)",
                "ok")
        else:
            self.state, self.progress.bar_style = "cancelled", "warning"
            self.status.value = status_html(
                f"stopped after {len(result.cells)} of {result.total} cells ({took})", "warn")

    def _on_inversion(self, done: int, total: int) -> None:
        self.inverted = True
        self._t0 = time.perf_counter()  # the estimate counts denoising only
        self.status.value = status_html(
            f"inverting the pair once for every cell: {done}/{total} UNet evaluations")

    def _on_cell(self, n: int, total: int, values: tuple, cell: SweepCell | None) -> None:
        if cell is None:
            self._cell_text = f"cell {n + 1}/{total} ({', '.join(map(format_value, values))})"
            return
        self.result.cells.append(cell)
        self.show(self.result)
        if self.gallery is not None and not cell.reused:
            self.gallery.add(cell.result, self.pair,
                             name=f"sweep: {self.result.label(len(self.result.cells) - 1)}")

    def _on_step(self, event) -> None:
        self.steps_done += 1
        self.progress.value = self.steps_done
        elapsed = time.perf_counter() - self._t0
        left = elapsed / self.steps_done * (self.total_steps - self.steps_done)
        self.status.value = status_html(
            f"{self._cell_text}: step {event.step + 1}/{event.total} - "
            f"about {duration(left)} left")

    # -------------------------------------------------------------- drawing --
    def show(self, result) -> None:
        """Show ``result``'s contact sheet (cells not run yet in grey)."""
        self.sheet = np.asarray(contact_sheet(result, self.cell))
        set_image(self.image, self.sheet)
        # at its own size: in the panel's column an image without a width is stretched
        # to the column's (about 3x in a notebook, blurring the axis labels)
        self.image.layout.width = f"{self.sheet.shape[1]}px"
