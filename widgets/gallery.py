"""Run gallery: every run with its parameters, side-by-side comparison, export, delete,
and runs saved earlier read back from their folders (``e4e_lab.io.saved_runs``)."""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field
from pathlib import Path

import ipywidgets as W

from e4e_lab.analysis.config_diff import config_diff
from e4e_lab.errors import E4ELabError
from e4e_lab.io.outputs import safe_name, save_run
from e4e_lab.io.saved_runs import SavedRun, copy_run, find_runs, read_run

from . import render
from .common import LabWidget, captioned, fit_content, image_widget, status_html
from .run_labels import effective_params, run_summary
from .transfer_panel import CONTROLLED

# Parameters shown for every run: the ones the transfer panel changes, and the step count
SHOWN = CONTROLLED + ("num_steps",)


@dataclass
class RunRecord:
    """One finished transfer with what is needed to show and export it."""

    name: str
    result: object  # TransferResult, or a SavedRun read back from its folder
    pair: object  # Pair (None for a saved run: its inputs are in its strip)
    created: float = field(default_factory=time.time)
    masked: bool = True
    note: str = ""

    @property
    def config(self):
        return self.result.config

    def params(self) -> dict:
        """The shown parameters with the values the run used (a field its mode ignores
        reads 'n/a'; cross-image's guidance schedule and AdaIN start are spelled out)."""
        d = effective_params(self.config)
        out = {k: d[k] for k in SHOWN}
        out["mask"] = self.masked
        out["ms/step"] = round(self.result.timings.get("ms_per_step", float("nan")), 1)
        return out

    def summary(self) -> str:
        """One line saying what the run used (not what idle controls read)."""
        return f"{self.name}: {run_summary(self.config)}{'' if self.masked else ', no mask'}"


class RunGallery(LabWidget):
    def __init__(self, lab=None, export_dir: str | Path = "runs", thumb: int = 160):
        self.lab = lab
        self.runs: list[RunRecord] = []
        self.thumb = thumb
        self.selector = W.SelectMultiple(options=[], description="runs", rows=6,
                                         layout=W.Layout(width="640px"))
        self.compare_button = W.Button(description="Compare selected", icon="columns")
        self.export_dir = W.Text(value=str(export_dir), description="export to",
                                 layout=W.Layout(width="420px"))
        self.export_button = W.Button(description="Export selected", icon="download")
        self.table = W.HTML()
        self.comparison = W.HBox()
        self.status = W.HTML()
        self.delete_button = W.Button(description="Delete selected", icon="trash")
        self.reload_button = W.Button(description="Reload saved", icon="folder-open",
                                      tooltip="read back the runs saved in the export folder")
        fit_content(self.compare_button, self.export_button, self.delete_button,
                    self.reload_button)
        self.compare_button.on_click(lambda _: self.compare())
        self.export_button.on_click(lambda _: self.export_selected())
        self.delete_button.on_click(lambda _: self.delete())
        self.reload_button.on_click(lambda _: self.reload())
        self.widget = self._frame(self.selector, W.HBox([self.compare_button, self.delete_button]),
                                  W.HBox([self.export_dir, self.export_button,
                                          self.reload_button]), self.status,
                                  self.table, self.comparison, title="Run gallery")
        self._refresh()

    # ---------------------------------------------------------------- runs --
    def add(self, result, pair, name: str | None = None, masked: bool = True,
            note: str = "") -> RunRecord:
        name = name or f"run {len(self.runs) + 1}"
        if any(r.name == name for r in self.runs):
            name = f"{name} ({len(self.runs) + 1})"
        record = RunRecord(name, result, pair, masked=masked, note=note)
        self.runs.append(record)
        self._refresh()
        return record

    def delete(self, runs=None) -> list[str]:
        """Remove runs (by index or name; default: the selection); returns their names."""
        idx = sorted(set(self._indices(runs)))
        if not idx:
            self.status.value = status_html("select the runs to delete", "warn")
            return []
        names = [self.runs[i].name for i in idx]
        self.runs = [r for i, r in enumerate(self.runs) if i not in idx]
        self.comparison.children = ()
        self._refresh()
        self.status.value = status_html(f"deleted {', '.join(names)}", "ok")
        return names

    def reload(self, folder: str | Path | None = None) -> list[RunRecord]:
        """Add the runs saved in ``folder`` (a run folder, or a folder of them; default:
        the export folder) that the gallery does not hold yet."""
        where = Path(folder if folder is not None else self.export_dir.value).expanduser()
        held = {r.result.folder.resolve() for r in self.runs if isinstance(r.result, SavedRun)}
        added = []
        try:
            for path in find_runs(where):
                if path.resolve() not in held:
                    run = read_run(path)
                    added.append(self.add(run, None, name=run.name, masked=run.masked))
        except E4ELabError as exc:
            self.status.value = status_html(str(exc), "error")
            return added
        self.status.value = status_html(f"reloaded {len(added)} saved run(s) from {where}",
                                        "ok" if added else "warn")
        return added

    def _refresh(self) -> None:
        self.selector.options = [(r.summary(), i) for i, r in enumerate(self.runs)]
        self.table.value = self.params_table()

    def params_table(self, indices=None) -> str:
        """HTML table of the runs' parameters; values that differ between them in bold."""
        runs = [self.runs[i] for i in (range(len(self.runs)) if indices is None else indices)]
        if not runs:
            return "<i>no runs yet: press Run in the transfer panel</i>"
        differ = set(config_diff([r.config for r in runs]))
        if len({r.masked for r in runs}) > 1:
            differ.add("mask")
        cols = ["name"] + list(runs[0].params())
        head = "".join(f"<th style='padding:0 6px'>{html.escape(c)}</th>" for c in cols)
        rows = []
        for r in runs:
            cells = [html.escape(r.name)]
            for k, v in r.params().items():
                text = html.escape(str(list(v) if isinstance(v, tuple) else v))
                cells.append(f"<b>{text}</b>" if k in differ else text)
            rows.append("<tr>" + "".join(f"<td style='padding:0 6px'>{c}</td>"
                                         for c in cells) + "</tr>")
        return f"<table><tr>{head}</tr>{''.join(rows)}</table>"

    def _indices(self, runs) -> list[int]:
        if runs is None:
            return list(self.selector.value)
        out = []
        for r in runs:
            if isinstance(r, int):
                out.append(r)
            else:
                out.append(next(i for i, rec in enumerate(self.runs) if rec.name == r))
        return out

    def select(self, runs) -> None:
        """Select runs by index or name."""
        self.selector.value = tuple(self._indices(runs))

    # ------------------------------------------------------------- compare --
    def compare(self, runs=None) -> list[str]:
        """Show the chosen runs (default: the selection) side by side; returns their names."""
        idx = self._indices(runs)
        if not idx:
            self.status.value = status_html("select one or more runs to compare", "warn")
            return []
        panels = []
        differ = config_diff([self.runs[i].config for i in idx]) if len(idx) > 1 else {}
        for i in idx:
            rec = self.runs[i]
            img = render.to_uint8(rec.result.image)
            shape = render.display_shape((img.shape[1], img.shape[0]), self.thumb)
            pic = image_widget(render.resize_nearest(img, *shape), width=self.thumb)
            diff = ", ".join(f"{k}={v[idx.index(i)]}" for k, v in differ.items())
            panels.append(W.VBox([captioned(pic, rec.name),
                                  W.HTML(f"<small>{html.escape(diff or rec.summary())}</small>")]))
        pair = next((self.runs[i].pair for i in idx if self.runs[i].pair is not None), None)
        inputs = []
        for label, im in pair.strip_inputs() if pair is not None else ():
            shape = render.display_shape(im.size, self.thumb)
            inputs.append(captioned(image_widget(render.resize_nearest(im.to_uint8(), *shape),
                                                 width=self.thumb), label))
        self.comparison.children = inputs + panels
        self.table.value = self.params_table(idx)
        names = [self.runs[i].name for i in idx]
        self.status.value = status_html(f"comparing {', '.join(names)}", "ok")
        return names

    # -------------------------------------------------------------- export --
    def export(self, run, folder: str | Path | None = None, overwrite: bool = False) -> Path:
        """Write a run (images + config JSON) with ``save_run`` into ``folder/<run name>``."""
        i = self._indices([run])[0]
        rec = self.runs[i]
        out = Path(folder if folder is not None else self.export_dir.value).expanduser() \
            / safe_name(rec.name)
        if isinstance(rec.result, SavedRun):  # read back: its files are the run
            return copy_run(rec.result, out, overwrite=overwrite)
        save_run(out, rec.result, rec.pair, overwrite=overwrite,
                 extra={"run_name": rec.name, "masked": rec.masked, "note": rec.note})
        return out

    def export_selected(self, folder: str | Path | None = None, overwrite: bool = False
                        ) -> list[Path]:
        idx = self._indices(None)
        if not idx:
            self.status.value = status_html("select the runs to export", "warn")
            return []
        paths = []
        try:
            for i in idx:
                paths.append(self.export(i, folder, overwrite))
        except (E4ELabError, OSError) as exc:
            self.status.value = status_html(str(exc), "error")
            return paths
        self.status.value = status_html("exported to " + ", ".join(map(str, paths)), "ok")
        return paths
