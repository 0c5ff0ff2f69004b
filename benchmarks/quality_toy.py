"""Transfer quality in the toy world: every method on N held-out creature pairs.

Each held-out pair (``e4e_lab.toy.world.pair``) is a structure and an appearance
creature of one species with known part maps, part colours and keypoints. Every method
(an injection mode of ``TransferConfig``) runs on the same inversions and seed, with the
world's exact object masks and the species as the domain, and is scored with the
metrics of ``e4e_lab/toy/quality*.py`` (see ``benchmarks/QUALITY.md``):

- part-colour accuracy (mean +- std over pairs) and its chance level,
- background MAE (0-255) and PSNR (dB) outside the structure's dilated object,
- silhouette IoU of the result's object against the structure's,

plus, per pair and independent of the methods: DIFT PCK@0.1 (object-box normaliser)
of the structure's keypoints into the appearance with its chance level, and the VAE's
reconstruction PSNR of the held-out images.

Printed: one table line per method, then the pair-level lines and the runtime per pair.
Written under ``--out``: ``quality.csv`` (one row per pair and method, with the pair's
method-independent columns) and ``grid.png`` (rows = the first pairs, columns =
structure | appearance | each method). ``--write-md PATH`` writes the results as
markdown; when PATH already holds the ``<!-- quality-results:start/end -->`` markers
(``benchmarks/QUALITY.md`` does), only the text between them is replaced, and figures
of the tiny random-weight model are refused there.

    python benchmarks/quality_toy.py                      # the toy model, 50 pairs
    python benchmarks/quality_toy.py --model tiny --pairs 2 --size 64 --steps 10
    python benchmarks/quality_toy.py --write-md benchmarks/QUALITY.md

``--model`` takes ``toy`` (the trained toy-world model: ``load_pipeline("toy")``, or the
folder ``e4e_lab/toy/weights/``), ``tiny`` (random weights: the numbers are
meaningless, every output says so) or a folder written by ``save_pretrained``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from e4e_lab.errors import E4ELabError, ModelUnavailableError  # noqa: E402
from e4e_lab.toy import quality  # noqa: E402

TOY_WEIGHTS = ROOT / "e4e_lab" / "toy" / "weights"
MD_START = "<!-- quality-results:start -->"
MD_END = "<!-- quality-results:end -->"
TINY_NOTE = "TINY RANDOM-WEIGHT MODEL: images and scores are not meaningful"
LABELS = {"feature": "Eye-for-an-eye (feature)", "v": "Eye-for-an-eye (V)",
          "kv": "Eye-for-an-eye (KV)", "cross-image": "Cross-Image Attention",
          "none": "no injection (AdaIN only)", "paint-by-example": "Paint-by-Example"}
#: Column titles of grid.png (at most about 20 characters fit a 128 px cell).
GRID_LABELS = {"feature": "e4e feature", "v": "e4e V", "kv": "e4e KV",
               "cross-image": "Cross-Image Attn", "none": "none (AdaIN only)"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="toy",
                   help="toy (default), tiny, or a save_pretrained folder")
    p.add_argument("--pairs", type=int, default=50, help="held-out pairs 0..N-1 (default 50)")
    p.add_argument("--size", type=int, default=None, help="model pixels (default: the model's)")
    p.add_argument("--steps", type=int, default=100,
                   help="scheduler steps; the step ranges scale from the 100-step defaults")
    p.add_argument("--methods", nargs="+", default=list(quality.DEFAULT_METHODS),
                   choices=quality.KNOWN_METHODS, metavar="METHOD",
                   help=f"any of {', '.join(quality.KNOWN_METHODS)} (default: all but "
                   "paint-by-example)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="quality-output", help="folder for quality.csv and grid.png")
    p.add_argument("--grid-pairs", type=int, default=4, help="pairs shown in grid.png")
    p.add_argument("--write-md", metavar="PATH", default=None,
                   help="write the results as markdown (between the markers when present)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    args = p.parse_args(argv)
    if args.pairs < 1:
        p.error("--pairs must be at least 1")
    if args.steps < 2:
        p.error("--steps must be at least 2")
    return args


# ------------------------------------------------------------------ model --

def load_models(name: str, device):
    """The pipeline for ``--model``: ``toy`` is ``load_pipeline("toy")`` (the shipped
    weights, checked against their manifest), else that folder loaded as a plain
    ``save_pretrained`` folder; anything else goes to ``load_pipeline`` as it is."""
    from e4e_lab.models import load_pipeline

    if name != "toy":
        return load_pipeline(name, device=device)
    try:
        return load_pipeline("toy", device=device, local_files_only=True)
    except ModelUnavailableError:
        if (TOY_WEIGHTS / "model_index.json").is_file():
            return load_pipeline(str(TOY_WEIGHTS), device=device)
    raise ModelUnavailableError(
        f"the toy model is not available: no trained weights in {TOY_WEIGHTS} (train them with "
        "`python -m e4e_lab.toy.train`), or use --model tiny for a meaningless dry run")


# ----------------------------------------------------------------- report --

def _f(x: float, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "n/a"
    return "inf" if x == float("inf") else f"{x:.{digits}f}"


def _pm(stat: quality.Stat, digits: int = 3) -> str:
    return f"{_f(stat.mean, digits)} +- {_f(stat.std, digits)}"


def _psnr(s: quality.MethodSummary) -> str:
    text = _f(s.background_psnr.mean, 1)
    return text + (f" ({s.background_psnr_inf} inf)" if s.background_psnr_inf else "")


def header(report: quality.ToyQuality, device: str) -> str:
    cfg = report.config
    return (f"model {report.model} on {device}, {len(report.pairs)} held-out pairs, "
            f"{report.size} px, {cfg['num_steps']} steps ({cfg['skip_steps']} skipped), "
            f"seed {cfg['seed']}")


def method_table(report: quality.ToyQuality) -> list[list[str]]:
    """Rows of the per-method table (first row: the column names)."""
    rows = [["method", "part-colour acc", "chance", "bg MAE", "bg PSNR dB", "silhouette IoU",
             "s/transfer"]]
    for m in report.methods:
        s = report.summaries[m]
        rows.append([m, _pm(s.part_colour), _f(s.part_colour_chance.mean),
                     _f(s.background_mae.mean, 2), _psnr(s), _pm(s.silhouette_iou),
                     _f(s.seconds.mean, 1)])
    return rows


def pair_lines(report: quality.ToyQuality) -> list[str]:
    p = report.pair_summary
    per_pair = p.inversion_seconds.mean + p.dift_seconds.mean + sum(
        report.summaries[m].seconds.mean for m in report.methods)
    return [
        f"DIFT PCK@0.1 (object-box normaliser): {_pm(p.pck)} over {p.pck.n} pairs "
        f"(chance {_f(p.pck_chance.mean)}, grid ceiling {_f(p.pck_ceiling.mean)})",
        f"VAE reconstruction PSNR: {_pm(p.vae_psnr, 2)} dB over {p.vae_psnr.n} images",
        f"structure image as the result: part-colour acc {_pm(p.part_colour_structure)}, "
        f"silhouette IoU {_pm(p.silhouette_iou_structure)}",
        f"runtime per pair: {_f(per_pair, 1)} s (inversion {_f(p.inversion_seconds.mean, 1)} s, "
        f"DIFT {_f(p.dift_seconds.mean, 1)} s, transfers "
        f"{_f(per_pair - p.inversion_seconds.mean - p.dift_seconds.mean, 1)} s)",
    ]


def print_report(report: quality.ToyQuality, device: str) -> None:
    if report.is_tiny:
        print(f"WARNING: {TINY_NOTE}")
    print(f"quality in the toy world: {header(report, device)}")
    rows = method_table(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    for m, why in report.unavailable.items():
        print(f"{m}: {why}")
    for line in pair_lines(report):
        print(line)


def markdown(report: quality.ToyQuality, device: str, command: str) -> str:
    rows = method_table(report)
    rows[0] = ["method", "part-colour accuracy (mean +- std)", "chance", "background MAE (0-255)",
               "background PSNR (dB)", "silhouette IoU (mean +- std)", "s / transfer"]
    for r in rows[1:]:
        r[0] = LABELS.get(r[0], r[0])
    lines = [f"Measured {datetime.date.today().isoformat()} with `{command}`: "
             f"{header(report, device)}.", ""]
    if report.is_tiny:
        lines += [f"**{TINY_NOTE}.**", ""]
    lines.append("| " + " | ".join(rows[0]) + " |")
    lines.append("|" + " --- |" * len(rows[0]))
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    for m, why in report.unavailable.items():
        lines.append(f"| {LABELS.get(m, m)} | {why} |" + " |" * (len(rows[0]) - 2))
    lines.append("")
    lines += [f"- {line}" for line in pair_lines(report)]
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, text: str, tiny: bool) -> None:
    """Write ``text`` to ``path``, between the result markers when the file has them."""
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    if MD_START in old and MD_END in old:
        if tiny:
            raise SystemExit(f"error: refusing to write tiny random-weight figures into {path}; "
                             "measure with the trained toy model (or write elsewhere)")
        head, rest = old.split(MD_START, 1)
        _, tail = rest.split(MD_END, 1)
        text = f"{head}{MD_START}\n{text}{MD_END}{tail}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def write_csv(path: Path, report: quality.ToyQuality) -> None:
    pairs = {p.pair: dataclasses.asdict(p) for p in report.pairs}
    method_cols = [f.name for f in dataclasses.fields(quality.MethodRow)]
    pair_cols = [f.name for f in dataclasses.fields(quality.PairRow) if f.name not in method_cols]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(method_cols + pair_cols + ["model", "tiny_model", "size"])
        for r in report.rows:
            row = dataclasses.asdict(r)
            values = [row[c] for c in method_cols] + [pairs[r.pair][c] for c in pair_cols]
            w.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in values]
                       + [report.model, report.is_tiny, report.size])


def write_grid(path: Path, report: quality.ToyQuality, cell: int = 128) -> None:
    """rows = the kept pairs, columns = structure | appearance | each method, labelled."""
    from PIL import Image, ImageDraw

    keys = ["structure", "appearance"] + list(report.methods)
    shown = list(dict.fromkeys(p for p, _ in report.images))
    if not shown:
        return
    label_w, head_h = 110, 28
    banner_h = 20 if report.is_tiny else 0
    grid = Image.new("RGB", (label_w + cell * len(keys), banner_h + head_h + cell * len(shown)),
                     "white")
    draw = ImageDraw.Draw(grid)
    if report.is_tiny:
        draw.rectangle([0, 0, grid.width, banner_h], fill=(200, 0, 0))
        draw.text((4, 4), TINY_NOTE, fill="white")
    for j, key in enumerate(keys):
        draw.text((label_w + j * cell + 4, banner_h + 8), GRID_LABELS.get(key, key)[:20],
                  fill="black")
    species = {p.pair: p.species for p in report.pairs}
    for i, pair in enumerate(shown):
        y = banner_h + head_h + i * cell
        kind = f" ({species[pair]})" if pair in species else ""
        draw.text((4, y + cell // 2 - 6), f"pair {pair}{kind}", fill="black")
        for j, key in enumerate(keys):
            img = report.images.get((pair, key))
            if img is not None:
                tile = Image.fromarray(img).resize((cell, cell), Image.Resampling.NEAREST)
                grid.paste(tile, (label_w + j * cell, y))
    grid.save(path)


# ------------------------------------------------------------------- main --

def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from tqdm.auto import tqdm

    from e4e_lab.session import Lab

    try:
        device = torch.device(args.device) if args.device else None
        models = load_models(args.model, device)
        lab = Lab(models=models, use_disk_cache=False)
        size = lab.check_size(args.size)
        base = quality.scaled_config(args.steps, seed=args.seed)
        runnable = [m for m in args.methods if m != quality.PAINT_BY_EXAMPLE]
        with tqdm(total=args.pairs * len(runnable), file=sys.stderr, desc="transfers",
                  unit="run") as bar:
            def progress(pair: int, method: str) -> None:
                bar.set_postfix_str(f"pair {pair} {method}")
                bar.update(1)

            t0 = time.perf_counter()
            report = quality.evaluate_toy(lab, args.methods, args.pairs, size, base,
                                          keep_images=min(args.grid_pairs, args.pairs),
                                          progress=progress)
            wall = time.perf_counter() - t0
    except (E4ELabError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    where = f"{models.device.type}" + (f" ({platform.processor() or platform.machine()})"
                                       if models.device.type == "cpu" else "")
    print_report(report, where)
    print(f"wall time: {wall:.1f} s for {len(report.pairs)} pairs")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "quality.csv", report)
    write_grid(out / "grid.png", report)
    print(f"wrote {out / 'quality.csv'} and {out / 'grid.png'}")
    if args.write_md:
        command = "python benchmarks/quality_toy.py " + " ".join(
            sys.argv[1:] if argv is None else argv)
        write_markdown(Path(args.write_md), markdown(report, where, command.strip()),
                       report.is_tiny)
        print(f"wrote {args.write_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
