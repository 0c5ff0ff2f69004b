"""What an evaluation writes: ``results.csv``, the images under ``images/<pair>/`` and a
self-contained plotly ``report.html`` (plotly embedded: it opens offline).

The method layer never builds HTML; this module does, from the rows and images that
:mod:`e4e_lab.evaluation.evaluate` produces. ``run_distributed`` has them written into an
output transaction's staging folder (:mod:`e4e_lab.io.outputs`), moved into place when
complete.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path

import torch

from ..io.outputs import safe_name
from ..method.images import to_uint8

# one row per (pair, method): the scores of :func:`e4e_lab.evaluation.evaluate.score`
COLUMNS = ("pair", "method", "seconds", "ssim", "edge_ssim", "histogram_distance",
           "part_colour_distance", "part_agreement", "cycle_consistency", "tiny_model")



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


def _thumb(png: Path, size: int = 128) -> str:
    from PIL import Image

    with Image.open(png) as im:
        pil = im.convert("RGB").resize((size, size))
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_path(out: Path, pair: str, key: str) -> Path:
    """Where an evaluation keeps a pair's image (``key``: structure, appearance, a method)."""
    return out / "images" / safe_name(pair, "pair") / f"{key}.png"


def save_images(out: Path, images: dict[tuple[str, str], torch.Tensor]) -> None:
    """Write every (pair, key) image as ``images/<pair>/<key>.png`` (each process its own
    pairs; the report then reads them all, whichever process made them)."""
    from PIL import Image

    for (pair, key), img in images.items():
        path = image_path(out, pair, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(to_uint8(img)).save(path)


def write_report(path: Path, rows: list[dict], note: str | None) -> None:
    """A self-contained HTML page (plotly included: it opens offline): a bar chart per
    metric and per-pair thumbnails read from the run's ``images/`` folder; ``note`` is
    the offline model's banner (None with real weights)."""
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
    fig.update_layout(height=360, title="mean score per method (see "
                      "e4e_lab/analysis/metrics.py for directions)")
    banner = (f"<p style='background:#c00;color:#fff;padding:6px'>{html.escape(note)}</p>"
              if note else "")
    pairs = list(dict.fromkeys(r["pair"] for r in rows))
    cells = ["<tr><th>pair</th><th>structure</th><th>appearance</th>"
             + "".join(f"<th>{m}</th>" for m in methods) + "</tr>"]
    for p in pairs:
        row = [f"<td>{p}</td>"]
        for key in ["structure", "appearance"] + methods:
            png = image_path(path.parent, p, key)
            row.append(f"<td><img src='{_thumb(png)}'></td>" if png.is_file() else "<td></td>")
        cells.append("<tr>" + "".join(row) + "</tr>")
    page = (f"<html><head><meta charset='utf-8'><title>e4e-lab evaluation</title></head><body>"
            f"<h1>e4e-lab evaluation</h1>{banner}"
            f"{fig.to_html(full_html=False, include_plotlyjs=True)}"
            f"<table>{''.join(cells)}</table></body></html>")
    path.write_text(page, encoding="utf-8")
