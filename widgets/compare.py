"""Comparison grid: several methods on one pair, same cached inversions and seed, scored.

Eye-for-an-eye (feature / V / KV injection), Cross-Image Attention and Paint-by-Example
run through :func:`e4e_lab.evaluation.evaluate.compare_methods` in a background thread (the notebook
stays responsive; **Stop** ends the run between two methods or two denoising steps). The
grid shows structure, appearance and each method's result as it arrives, with its time
and the weights-free scores of :func:`e4e_lab.evaluation.evaluate.score`; the best value of each
score is in bold.
"""

from __future__ import annotations

import html
import time

import ipywidgets as W

from e4e_lab.evaluation.evaluate import (ALL_METHODS, HIGHER_IS_BETTER, METHOD_LABELS,
                                         PAINT_BY_EXAMPLE, PAIR_LEVEL_SCORES, MethodResult,
                                         best_methods, compare_methods, load_baseline)
from e4e_lab.method.config import TransferConfig

from . import render
from .background import BackgroundRun
from .common import LabWidget, captioned, image_widget, set_image, status_html

METHOD_SCORES = tuple(m for m in HIGHER_IS_BETTER if m not in PAIR_LEVEL_SCORES)


def _fmt(value: float) -> str:
    return "n/a" if value != value else f"{value:.3g}"


class ComparisonGrid(BackgroundRun, LabWidget):
    stop_message = "stopping after the current denoising step; finished methods are kept"
    busy_message = "a comparison is running: Stop it first"
    what = "comparison"

    def __init__(self, lab, pair, config: TransferConfig | None = None, methods=ALL_METHODS,
                 thumb: int = 160, pbe_steps: int = 50, k_parts: int = 4):
        self.lab, self.pair = lab, pair
        self.config = config or TransferConfig()
        self.thumb = thumb
        self.pbe_steps, self.k_parts = pbe_steps, k_parts
        self.pbe = None  # Paint-by-Example, loaded on first use
        self.state = "idle"  # idle | running | done | cancelled | failed
        self.results: list[MethodResult] = []
        self.error: BaseException | None = None

        self.method_boxes = {m: W.Checkbox(value=m in methods, description=METHOD_LABELS[m],
                                           indent=False, layout=W.Layout(width="auto"))
                             for m in ALL_METHODS}
        self._run_buttons()
        self.progress = W.IntProgress(value=0, min=0, max=1, description="steps",
                                      layout=W.Layout(width="460px"))
        self.status = W.HTML(status_html("ready: choose methods and press Run"))
        self.grid = W.HBox(layout=W.Layout(flex_flow="row wrap"))
        self.table = W.HTML()
        self.pair_scores = W.HTML()
        self.inputs = [self._cell(im, label, "") for im, label in (
            (pair.structure, "structure (target)"), (pair.appearance, "appearance (reference)"))]
        self.grid.children = tuple(self.inputs)
        self.widget = self._frame(
            W.HBox(list(self.method_boxes.values()), layout=W.Layout(flex_flow="row wrap")),
            W.HBox([self.run_button, self.stop_button]), self.progress, self.status, self.grid,
            self.table, self.pair_scores, title="Methods side by side")

    # --------------------------------------------------------------- methods --
    def methods(self) -> tuple[str, ...]:
        """The ticked methods, in the library's order."""
        return tuple(m for m, box in self.method_boxes.items() if box.value)

    def set_methods(self, methods) -> None:
        for m, box in self.method_boxes.items():
            box.value = m in methods

    # ------------------------------------------------------------------ run --
    def run(self, block: bool = False) -> bool:
        """Run the ticked methods in a background thread (``block=True`` waits).

        Returns False (and says why) when a run is going or no method is ticked.
        """
        methods = self.methods()
        if self._refuse_if_running():
            return False
        if not methods:
            self.status.value = status_html("tick at least one method", "warn")
            return False
        self.state, self.error, self.results = "running", None, []
        # the bar counts denoising steps over every method (Paint-by-Example counts as
        # one method's steps), so that it moves within a method and its estimate holds
        self._steps, self._method = self.config.denoising_steps, (0, len(methods), "")
        self.progress.max, self.progress.value = len(methods) * self._steps, 0
        self.grid.children = tuple(self.inputs)
        self.table.value = self.pair_scores.value = ""
        return self._start(self._work, (methods,), "e4e-compare", block)

    # ------------------------------------------------------- worker thread --
    def _work(self, methods: tuple[str, ...]) -> None:
        if PAINT_BY_EXAMPLE in methods and self.pbe is None:
            self.status.value = status_html("loading Paint-by-Example...")
            self.pbe = load_baseline(self.lab)
        results = compare_methods(
            self.lab, self.pair, methods, self.config, progress=self._on_progress,
            cancel=self.cancel_event, pbe=self.pbe, inversion_progress=self._on_inversion,
            k_parts=self.k_parts, pbe_steps=self.pbe_steps, step_callback=self._on_step)
        self.results = results
        self.show_results(results)
        if len(results) < len(methods):
            self.state, self.progress.bar_style = "cancelled", "warning"
            self.status.value = status_html(f"stopped after {len(results)} of {len(methods)} "
                                            f"methods ({self.cache_note})", "warn")
        else:
            self.state, self.progress.bar_style = "done", "success"
            total = sum(r.seconds for r in results)
            self.status.value = status_html(
                f"done: {len(results)} methods in {total:.1f} s of method time "
                f"({self.cache_note}; same seed for every method)", "ok")

    def _on_inversion(self, done: int, total: int) -> None:
        self.inverted = True
        self._started = time.perf_counter()  # the estimate counts the methods' steps only
        self.status.value = status_html(f"inverting the pair once for every method: "
                                        f"{done}/{total} UNet evaluations")

    def _on_progress(self, done: int, total: int, method: str, result) -> None:
        if result is None:
            self._method = (done, total, METHOD_LABELS[method])
            self.status.value = status_html(f"running {METHOD_LABELS[method]} "
                                            f"({done + 1}/{total})...")
            return
        self.progress.value = done * self._steps
        self.results = self.results + [result]
        self.show_results(self.results)

    def _on_step(self, event) -> None:
        """A denoising step of the current method: the bar, and the time left."""
        n, total, label = self._method
        self._report(n * self._steps + event.step + 1, total * self._steps,
                     f"running {label}, method {n + 1} of {total}; denoising steps")

    # -------------------------------------------------------------- drawing --
    def _cell(self, image, label: str, caption_html: str) -> W.VBox:
        pic = image_widget(width=self.thumb)
        arr = render.to_uint8(image)
        set_image(pic, arr, width=self.thumb)
        return W.VBox([captioned(pic, label), W.HTML(f"<small>{caption_html}</small>")],
                      layout=W.Layout(width=f"{self.thumb + 16}px"))

    def show_results(self, results: list[MethodResult]) -> None:
        """Cells for structure, appearance and each result; the scores table."""
        best = best_methods(results) if len(results) > 1 else {}
        cells = []
        for r in results:
            lines = [f"{r.seconds:.2f} s"] + [
                (f"<b>{m} {_fmt(r.scores[m])}</b>" if best.get(m) == r.method
                 else f"{m} {_fmt(r.scores[m])}") for m in METHOD_SCORES]
            cells.append(self._cell(r.image, r.label, "<br>".join(lines)))
        self.grid.children = tuple(self.inputs + cells)
        self.table.value = self.scores_table(results, best)
        if results:
            pair_level = ", ".join(f"{m} = {_fmt(results[0].scores[m])}" for m in PAIR_LEVEL_SCORES)
            self.pair_scores.value = (
                f"<small>scores of the pair's DIFT correspondence (the same for every method): "
                f"{html.escape(pair_level)}</small>")

    @staticmethod
    def scores_table(results: list[MethodResult], best: dict[str, str]) -> str:
        """HTML table: one row per method, time and per-method scores (best in bold)."""
        if not results:
            return ""
        arrows = {True: "&uarr;", False: "&darr;"}
        head = "".join(f"<th style='padding:0 6px'>{html.escape(m)} {arrows[HIGHER_IS_BETTER[m]]}"
                       "</th>" for m in METHOD_SCORES)
        rows = []
        for r in results:
            cells = [html.escape(r.label), f"{r.seconds:.2f}"]
            for m in METHOD_SCORES:
                v = _fmt(r.scores[m])
                cells.append(f"<b>{v}</b>" if best.get(m) == r.method else v)
            rows.append("<tr>" + "".join(f"<td style='padding:0 6px'>{c}</td>" for c in cells)
                        + "</tr>")
        return (f"<table><tr><th>method</th><th style='padding:0 6px'>seconds</th>{head}</tr>"
                f"{''.join(rows)}</table><small>&uarr; higher is better, &darr; lower is better "
                "(e4e_lab/analysis/metrics.py)</small>")
