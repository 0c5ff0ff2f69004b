"""Part explorer: which target part takes its colours from which reference part?

The DIFT features of both images are clustered *together* into k parts
(:func:`e4e_lab.analysis.parts.pair_parts`), so one colour means one cluster on both images. The
k x k confusion matrix counts, for the target positions of each part (rows), the
reference part their match lies in (columns) under the correspondence field: a strong
diagonal means parts take colour from the same part (the wing from the wing). Changing
k re-clusters the same features (no UNet pass); click a part on either image to
highlight it on both and in the matrix.

The features are computed in a background thread (the transfer panel's pattern,
:class:`~widgets.background.BackgroundRun`) with a bar, a time estimate and Stop; a
notebook that reads the parts in its next cell calls ``compute(block=True)`` or
:meth:`PartExplorer.wait`.
"""

from __future__ import annotations

import html

import ipywidgets as W
import torch

from e4e_lab.analysis.grids import pixel_to_cell
from e4e_lab.analysis.parts import PairFeatures, PairParts, pair_features, pair_parts
from e4e_lab.errors import ConfigError
from e4e_lab.method.config import TransferConfig

from . import render
from .background import BackgroundRun, drawing
from .canvas import ImageCanvas
from .common import LabWidget, captioned, status_html

MAX_K = 12


def _swatch(color) -> str:
    return (f"<span style='display:inline-block;width:11px;height:11px;margin-right:3px;"
            f"background:{render.css(color)}'></span>")


class PartExplorer(BackgroundRun, LabWidget):
    what = "part discovery"
    stop_message = "stopping after the current batch of noise draws..."
    busy_message = "the DIFT features are being computed: Stop them first, or wait"

    def __init__(self, lab, pair, config: TransferConfig | None = None, k: int = 4,
                 ensemble: int | None = None, field=None, display_size: int = 256,
                 opacity: float = 0.55, compute: bool = True):
        self.lab, self.pair = lab, pair
        self.config = config or TransferConfig()
        self.ensemble = ensemble
        self.given_field = field  # a correspondence to judge; None: the DIFT field
        self.features: PairFeatures | None = None
        self.parts: PairParts | None = None
        self.highlight: int | None = None
        self.feature_passes = 0  # UNet feature computations (changing k adds none)
        self.clusterings = 0
        self.state, self.error = "idle", None
        self._adjusting = False

        self.k = W.IntSlider(value=k, min=1, max=MAX_K, description="parts (k)",
                             continuous_update=False)
        self.opacity = W.FloatSlider(value=opacity, min=0.0, max=1.0, step=0.05,
                                     description="opacity", continuous_update=False)
        self._compute_controls("Find parts")
        # a new k re-clusters the features held; while they are being computed, the
        # worker clusters at the slider's k when they arrive
        self.k.observe(lambda _: self._adjusting or self.features is None or self._cluster(),
                       names="value")
        self.opacity.observe(lambda _: self.draw(), names="value")
        self.status = W.HTML()
        self.target_view = ImageCanvas(pair.structure, display_size)
        self.ref_view = ImageCanvas(pair.appearance, display_size)
        self.target_view.on("down", lambda x, y: self.pick(x, y, "target"))
        self.ref_view.on("down", lambda x, y: self.pick(x, y, "reference"))
        self.matrix = W.HTML()
        self.summary = W.HTML()
        source = "the given correspondence" if field is not None else "DIFT nearest neighbours"
        self.widget = self._frame(
            W.HBox([self.k, self.opacity]),
            W.HBox([self.compute_button, self.stop_button, self.progress]), self.status,
            W.HBox([captioned(self.target_view.canvas, "target (structure) parts"),
                    captioned(self.ref_view.canvas, "reference (appearance) parts")]),
            W.HTML(f"<b>target part &rarr; reference part it matches</b> "
                   f"<small>(correspondence: {html.escape(source)})</small>"),
            self.matrix, self.summary, title="Part discovery")
        if compute:
            self.compute()
        else:
            self.status.value = status_html("press 'Find parts' to compute the DIFT features "
                                            "of both images")

    # -------------------------------------------------------------- compute --
    def run(self, block: bool = False) -> bool:
        """What the "Find parts" button does (:meth:`compute`); False if refused."""
        if self._refuse_if_running():
            return False
        self.compute(block=block)
        return True

    def compute(self, block: bool = False) -> PairParts | None:
        """Cluster at the slider's k. The DIFT features are computed once, on first use,
        in a worker thread (``block=True`` waits for it); it clusters at the slider's k
        when they are there, so a k chosen meanwhile is the one used. Returns the parts
        if they are there by the time it returns."""
        if self.features is not None:
            return self._cluster()
        if not self.running:
            self.state, self.error = "computing", None
            self._start(self._features_work, (), "e4e-parts", block)
        elif block:
            self.wait()
        return self.parts

    def _features_work(self) -> None:
        what = (f"DIFT features of both images (up-block {self.config.dift_block}, "
                f"t={self.config.dift_timestep}), noise draws")
        self._waiting_for_model(what)
        # waits for the model in this thread: the kernel stays free, Stop ends it
        features = self._dift_or_none(lambda: pair_features(
            self.lab, self.pair, self.config, self.ensemble, blocking=True,
            cancel=self.cancel_event, progress=lambda d, n: self._report(d, n, what)),
            "Find parts")
        if features is None:
            return
        self.features = features
        self.feature_passes += 1
        self._adjusting = True  # a lower maximum clamps k: cluster once, below
        try:
            self.k.max = min(MAX_K, self.features.max_k)
        finally:
            self._adjusting = False
        self.progress.bar_style = "success"
        self._cluster()

    @drawing
    def _cluster(self) -> PairParts | None:
        """Joint parts at the slider's k from the features held (no UNet pass)."""
        try:
            parts = pair_parts(self.lab, self.pair, self.config, self.k.value,
                               features=self.features, field=self.given_field)
        except ConfigError as exc:
            self.state, self.error = "failed", exc
            self.status.value = status_html(str(exc), "error")
            return None
        self.parts, self.state = parts, "done"
        self.clusterings += 1
        self.highlight = None
        g = self.features.grid
        self.status.value = status_html(
            f"{self.parts.k} parts from DIFT features (up-block {self.config.dift_block}, "
            f"t={self.config.dift_timestep}, {self.features.ensemble} draws) on a {g[0]}x{g[1]} "
            f"grid; {self.parts.matched} matched target positions", "ok")
        self.draw()
        return self.parts

    # --------------------------------------------------------------- events --
    def part_at(self, x: float, y: float, image: str = "target") -> int | None:
        """The part label under a model-pixel point of the target or reference image."""
        if self.parts is None:
            return None
        labels = self.parts.parts.target if image == "target" else self.parts.parts.reference
        img = self.pair.structure if image == "target" else self.pair.appearance
        label = int(labels.flatten()[pixel_to_cell(x, y, img.size, tuple(labels.shape))])
        return label if label >= 0 else None

    def pick(self, x: float, y: float, image: str = "target") -> int | None:
        """Highlight the part under the pointer on both images (again: show all)."""
        part = self.part_at(x, y, image)
        self.select_part(None if part == self.highlight else part)
        return self.highlight

    def select_part(self, part: int | None) -> None:
        self.highlight = part
        self.draw()

    # -------------------------------------------------------------- drawing --
    def colors(self) -> list[tuple[int, int, int]]:
        return render.palette(self.parts.k if self.parts is not None else 0)

    @drawing
    def draw(self) -> None:
        if self.parts is None:
            return
        colors, op = self.colors(), self.opacity.value
        for view, labels in ((self.target_view, self.parts.parts.target),
                             (self.ref_view, self.parts.parts.reference)):
            view.set_overlay(render.label_rgba(labels, colors, op, self.highlight))
        self.matrix.value = self.matrix_html()
        self.summary.value = self.summary_html()

    def matrix_html(self) -> str:
        """The k x k confusion as a table; cells shaded by the share of their row."""
        conf, colors = self.parts.confusion, self.colors()
        share = conf.float() / conf.sum(dim=1, keepdim=True).clamp_min(1)
        shade = render.colorize(share, "heat", vmin=0.0, vmax=1.0)
        head = "".join(f"<th style='padding:2px 6px'>{_swatch(colors[j])}{j + 1}</th>"
                       for j in range(self.parts.k))
        rows = []
        for i in range(self.parts.k):
            style = "outline:2px solid #333;" if i == self.highlight else ""
            cells = []
            for j in range(self.parts.k):
                bg = render.css(tuple(int(c) for c in shade[i, j]))
                fg = "black" if share[i, j] > 0.55 else "white"
                border = "border:2px solid #2a7;" if i == j else ""
                cells.append(f"<td style='background:{bg};color:{fg};{border}text-align:right;"
                             f"padding:2px 6px'>{int(conf[i, j])}</td>")
            rows.append(f"<tr style='{style}'><th style='padding:2px 6px'>{_swatch(colors[i])}"
                        f"{i + 1}</th>{''.join(cells)}<td style='padding:2px 6px'>"
                        f"{int(conf[i].sum())}</td></tr>")
        return ("<table style='border-collapse:collapse'><tr><th>target \\ reference</th>"
                f"{head}<th>matched</th></tr>{''.join(rows)}</table>")

    def summary_html(self) -> str:
        p = self.parts
        agreement = "n/a (no matches)" if p.agreement != p.agreement else f"{p.agreement:.1%}"
        lines = [f"<b>agreement</b> (matches landing in the same part): {agreement} of "
                 f"{p.matched} matched target positions"]
        colors = self.colors()
        for i, j, share in p.sources():
            verdict = "same part" if i == j else "another part"
            lines.append(f"{_swatch(colors[i])}target part {i + 1} takes {share:.0%} of its "
                         f"matches from {_swatch(colors[j])}reference part {j + 1} ({verdict})")
        return "<br>".join(lines)

    def confusion_text(self) -> str:
        """The confusion matrix as plain text (rows: target parts, columns: reference)."""
        if self.parts is None:
            return "no parts yet"
        conf: torch.Tensor = self.parts.confusion
        width = max(4, len(str(int(conf.max()))) + 1)
        head = "target\\ref" + "".join(f"{j + 1:>{width}}" for j in range(self.parts.k))
        rows = [f"{i + 1:>10}" + "".join(f"{int(v):>{width}}" for v in conf[i])
                for i in range(self.parts.k)]
        return "\n".join([head, *rows, f"agreement {self.parts.agreement:.3f}"])
