"""Running several methods over a folder of pairs and scoring them.

A pairs folder holds ``pairs.json`` (a list of ``{"name", "appearance", "structure",
"domain"}``, paths relative to the folder) and optionally ``boxes.json`` (see
``example/``). Every method runs on the same cached inversions and seed; each result
is scored with :mod:`e4e_lab.metrics` and written to a CSV, with a plotly HTML report.

Under ``accelerate launch`` the pairs are split across processes (one GPU each); every
process writes its share and the main process merges them into one CSV and report.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import metrics
from .config import TransferConfig
from .errors import ConfigError
from .images import load_boxes, to_uint8

log = logging.getLogger(__name__)

METHODS = ("feature", "v", "kv", "cross-image")
PAINT_BY_EXAMPLE = "paint-by-example"
COLUMNS = ("pair", "method", "seconds", "ssim", "edge_ssim", "histogram_distance",
           "part_colour_distance", "part_agreement", "cycle_consistency", "tiny_model")


@dataclass
class PairSpec:
    name: str
    appearance: Path
    structure: Path
    domain: str = "object"


def read_pairs(folder: str | Path) -> tuple[list[PairSpec], dict | None]:
    folder = Path(folder)
    spec = folder / "pairs.json"
    if not spec.is_file():
        raise ConfigError("pairs-dir", str(folder), "a folder with a pairs.json file "
                          '([{"name", "appearance", "structure", "domain"}], see example/)')
    try:
        data = json.loads(spec.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError("pairs-dir", str(spec), f"valid JSON ({exc})") from None
    if not isinstance(data, list) or not data:
        raise ConfigError("pairs-dir", str(spec), "a non-empty JSON list of pairs")
    pairs = []
    for n, p in enumerate(data):
        if not isinstance(p, dict) or not {"appearance", "structure"} <= set(p):
            raise ConfigError(f"pairs.json[{n}]", p, 'an object with "appearance" and "structure"')
        pairs.append(PairSpec(str(p.get("name", f"pair{n}")), folder / p["appearance"],
                              folder / p["structure"], str(p.get("domain", "object"))))
    boxes = load_boxes(folder / "boxes.json") if (folder / "boxes.json").is_file() else None
    return pairs, boxes


def score(result, pair, lab, config: TransferConfig, k_parts: int = 4) -> dict[str, float]:
    """The weights-free metrics of one transfer result (see :mod:`e4e_lab.metrics`)."""
    from .correspondence import CorrespondenceField
    from .models.dift import dift_features
    from .parts import discover_parts

    out = {
        "ssim": metrics.ssim(result.image, pair.structure.pixels),
        "edge_ssim": metrics.edge_ssim(result.image, pair.structure.pixels),
        "histogram_distance": metrics.histogram_distance(
            result.image, pair.appearance.pixels, pair.structure_mask, pair.appearance_mask),
    }
    ens = min(config.dift_ensemble, 4)
    ft = dift_features(lab.models, pair.structure, config.dift_timestep, config.dift_block, ens,
                       config.inversion.prompt, config.seed).features
    fa = dift_features(lab.models, pair.appearance, config.dift_timestep, config.dift_block, ens,
                       config.inversion.prompt, config.seed).features
    field = CorrespondenceField.from_features(ft, fa, pair.structure_mask, pair.appearance_mask)
    parts = discover_parts(ft, fa, min(k_parts, ft.shape[1] * ft.shape[2]),
                           pair.structure_mask, pair.appearance_mask, seed=config.seed)
    out["part_colour_distance"] = metrics.part_colour_distance(
        result.image, pair.appearance.pixels, parts, field)
    out["part_agreement"] = parts.agreement(field)
    out["cycle_consistency"] = metrics.cycle_consistency(ft, fa, pair.structure_mask,
                                                         pair.appearance_mask)
    return out


def evaluate(lab, pairs: list[PairSpec], boxes: dict | None, methods=METHODS,
             base: TransferConfig | None = None, mask: str = "auto", size: int | None = None,
             progress=None) -> tuple[list[dict], dict[tuple[str, str], torch.Tensor]]:
    """Run every method on every pair; returns (rows, {(pair, method): result image})."""
    base = base or TransferConfig()
    rows, images = [], {}
    pbe = None
    if PAINT_BY_EXAMPLE in methods:
        from .baselines import PBE_MODEL, load_paint_by_example

        pbe = load_paint_by_example("tiny" if lab.is_tiny else PBE_MODEL, lab.models.device,
                                    lab.models.dtype)
    for spec in pairs:
        pair = lab.pair(spec.appearance, spec.structure, boxes=boxes, mask=mask, size=size)
        images[(spec.name, "structure")] = pair.structure.pixels
        images[(spec.name, "appearance")] = pair.appearance.pixels
        # invert once, outside the timings: every method reuses the same inversions
        lab.invert([pair.appearance, pair.structure], base.replace(domain=spec.domain))
        for method in methods:
            t0 = time.perf_counter()
            if method == PAINT_BY_EXAMPLE:
                from .baselines import paint_by_example

                cfg = base.replace(domain=spec.domain)
                result = _ImageResult(paint_by_example(pbe, pair, seed=cfg.seed))
            else:
                cfg = base.replace(injection=method, domain=spec.domain)
                result = lab.transfer(pair, cfg)
            row = {"pair": spec.name, "method": method,
                   "seconds": time.perf_counter() - t0, "tiny_model": lab.is_tiny}
            row.update(score(result, pair, lab, cfg))
            rows.append(row)
            images[(spec.name, method)] = result.image
            if progress is not None:
                progress(spec.name, method)
    return rows, images


@dataclass
class _ImageResult:
    """A baseline's output, shaped like a TransferResult for scoring."""

    image: torch.Tensor


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()
                        if k in COLUMNS})


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for k in COLUMNS[2:-1]:
            r[k] = float(r[k]) if r.get(k) not in (None, "", "nan") else float("nan")
    return rows


def _thumb(img: torch.Tensor, size: int = 128) -> str:
    from PIL import Image

    pil = Image.fromarray(to_uint8(img)).resize((size, size))
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def write_report(path: Path, rows: list[dict], images: dict, tiny: bool) -> None:
    """A self-contained HTML page: a plotly bar chart per metric and per-pair thumbnails."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    metric_names = [c for c in COLUMNS[3:-1]]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig = make_subplots(rows=1, cols=len(metric_names), subplot_titles=metric_names)
    for j, m in enumerate(metric_names, start=1):
        for method in methods:
            vals = [r[m] for r in rows if r["method"] == method]
            finite = [v for v in vals if v == v]
            fig.add_trace(go.Bar(name=method, x=[method], y=[sum(finite) / len(finite) if finite else None],
                                 showlegend=False), row=1, col=j)
    fig.update_layout(height=360, title="mean score per method (see e4e_lab/metrics.py for directions)")
    banner = ("<p style='background:#c00;color:#fff;padding:6px'>TINY RANDOM-WEIGHT MODEL: "
              "images and scores are not meaningful</p>") if tiny else ""
    pairs = list(dict.fromkeys(r["pair"] for r in rows))
    cells = ["<tr><th>pair</th><th>structure</th><th>appearance</th>"
             + "".join(f"<th>{m}</th>" for m in methods) + "</tr>"]
    for p in pairs:
        row = [f"<td>{p}</td>"]
        for key in ["structure", "appearance"] + methods:
            img = images.get((p, key))
            row.append(f"<td><img src='{_thumb(img)}'></td>" if img is not None else "<td></td>")
        cells.append("<tr>" + "".join(row) + "</tr>")
    html = (f"<html><head><meta charset='utf-8'><title>e4e-lab evaluation</title></head><body>"
            f"<h1>e4e-lab evaluation</h1>{banner}"
            f"{fig.to_html(full_html=False, include_plotlyjs='cdn')}"
            f"<table>{''.join(cells)}</table></body></html>")
    path.write_text(html, encoding="utf-8")


def run_distributed(lab_factory, pairs_dir: str | Path, out_dir: str | Path,
                    methods=METHODS, base: TransferConfig | None = None, mask: str = "auto",
                    size: int | None = None, progress=None) -> Path:
    """Evaluate a pairs folder, splitting pairs across ``accelerate`` processes.

    Each process handles pairs ``index::num_processes`` and writes
    ``results.part{index}.csv``; the main process merges them into ``results.csv`` and
    ``report.html`` (thumbnails of its own share; scores of all). Returns the CSV path.
    """
    try:
        from accelerate import PartialState
        state = PartialState()
        index, world = state.process_index, state.num_processes
    except ImportError:  # accelerate is a dependency, but keep single-process use working
        state, index, world = None, 0, 1
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pairs, boxes = read_pairs(pairs_dir)
    lab = lab_factory(index)
    rows, images = evaluate(lab, pairs[index::world], boxes, methods, base, mask, size, progress)
    write_csv(out / f"results.part{index}.csv", rows)
    if state is not None:
        state.wait_for_everyone()
    csv_path = out / "results.csv"
    if index == 0:
        merged = []
        for k in range(world):
            part = out / f"results.part{k}.csv"
            merged.extend(read_csv(part))
            part.unlink()
        write_csv(csv_path, merged)
        write_report(out / "report.html", merged, images, lab.is_tiny)
    return csv_path
