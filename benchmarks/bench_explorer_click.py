"""How long does one click in the correspondence explorer take? (target: < 50 ms on a CPU)

A click = the similarity heatmap of the clicked target cell over the reference from
precomputed unit-normalised features (one matrix-vector product), the best match,
the colour mapping and upscaling of the heatmap to the canvas, and the canvas draw
commands (ipycanvas encodes the overlay as PNG before sending it). Features are
random 64x64 maps with 1280 channels (the size of DIFT's SD up-block-1 features for a
1024 px image, or of a 64x64 injected layer with more channels than SD's 320), on
512 px images; no frontend is attached, so the time is the kernel's side of a click.

    python benchmarks/bench_explorer_click.py [--clicks 200] [--channels 1280] [--grid 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _stats(times_ms: list[float]) -> str:
    times = sorted(times_ms)
    p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
    return f"median {statistics.median(times):6.2f} ms   p95 {p95:6.2f} ms   max {times[-1]:6.2f} ms"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clicks", type=int, default=200)
    ap.add_argument("--channels", type=int, default=1280)
    ap.add_argument("--grid", type=int, default=64)
    ap.add_argument("--size", type=int, default=512, help="image size in model pixels")
    args = ap.parse_args(argv)

    from e4e_lab.analysis.grids import pixel_to_cell
    from e4e_lab.analysis.lookup import FeatureLookup
    from e4e_lab.session import Lab
    from widgets import CorrespondenceExplorer, render

    lab = Lab(model="tiny")
    ex_dir = ROOT / "example"
    pair = lab.pair(ex_dir / "chelsea_cat.png", ex_dir / "horse_silhouette.png",
                    boxes=ex_dir / "boxes.json", mask="box", size=args.size)
    g = torch.Generator().manual_seed(0)
    shape = (args.channels, args.grid, args.grid)
    t0 = time.perf_counter()
    lookup = FeatureLookup.from_features(torch.randn(shape, generator=g),
                                         torch.randn(shape, generator=g),
                                         pair.structure_mask, pair.appearance_mask)
    prep_ms = 1000 * (time.perf_counter() - t0)
    points = torch.rand(args.clicks, 2, generator=g) * args.size

    print(f"explorer click: {args.grid}x{args.grid} features, {args.channels} channels, "
          f"{args.size} px images, {args.clicks} clicks, torch threads {torch.get_num_threads()}")
    print(f"  normalising the features once (not per click): {prep_ms:.1f} ms")

    # the method part alone: heatmap + best match
    times = []
    for x, y in points.tolist():
        t = time.perf_counter()
        cell = pixel_to_cell(x, y, pair.structure.size, lookup.target_grid)
        heat = lookup.heatmap(cell)
        lookup.best_match(cell, heat=heat)
        times.append(1000 * (time.perf_counter() - t))
    print(f"  heatmap + best match:              {_stats(times)}")

    worst = 0.0
    for display in (256, 512):
        ex = CorrespondenceExplorer(lab, pair, lookup=lookup, display_size=display)
        shape_d = (ex.ref_view.display_h, ex.ref_view.display_w)
        times = []
        for x, y in points.tolist():
            t = time.perf_counter()
            heat = lookup.heatmap(pixel_to_cell(x, y, pair.structure.size, lookup.target_grid))
            render.resize_nearest(render.heat_rgba(heat, 0.65, lookup.ref_valid.reshape(
                lookup.ref_grid)), *shape_d)
            times.append(1000 * (time.perf_counter() - t))
        print(f"  + colour map, upscale to {display:3d} px:   {_stats(times)}")
        ex.select(10, 10)  # warm-up
        times = []
        for x, y in points.tolist():
            t = time.perf_counter()
            ex.select(x, y)
            times.append(1000 * (time.perf_counter() - t))
        med = statistics.median(times)
        worst = max(worst, med)
        print(f"  whole explorer.select, {display:3d} px:    {_stats(times)}")
    verdict = "OK" if worst < 50 else "SLOWER THAN TARGET"
    print(f"click update: {worst:.1f} ms median at worst (target < 50 ms): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
