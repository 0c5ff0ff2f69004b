"""Benchmark: per-pixel matching loop (the reference's way) vs ``nearest_neighbors``.

What is measured, for each feature shape and with / without masks, on the same seeded
random features:

- ``loop``: :func:`reference_style.loop_match`, the published code's per-pixel Python
  loop (normalise each non-zero output vector and the whole masked reference map,
  cosine, argmax, copy the matched feature);
- ``ours``: :func:`e4e_lab.method.correspondence.nearest_neighbors` (one normalised matrix
  product and one argmax) followed by the vectorised copy of the matched rows.

Both must give identical matches and identical rearranged features (checked; the
benchmark fails otherwise). Times are the best of ``--repeats`` runs after a warm-up,
with ``torch.cuda.synchronize`` around each run on CUDA. The last line is
``speedup: <min ratio>x`` over all cases.

The loop is always timed whole (never extrapolated). On a GPU its cost is per query, a
host sync and about a dozen kernel launches each, and the default shapes make about
6,900 queries per timed run over the four cases: a few seconds per run.

    python benchmarks/bench_matching.py [--device cpu] [--repeats 3] [--sizes 32x32:640,64x64:320]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from reference_style import loop_match  # noqa: E402

from e4e_lab.method.correspondence import nearest_neighbors  # noqa: E402

DEFAULT_SIZES = "32x32:640,64x64:320"


def parse_sizes(text: str) -> list[tuple[int, int, int]]:
    """``"32x32:640,64x64:320"`` -> [(h, w, C), ...]."""
    sizes = []
    for item in text.split(","):
        grid, _, channels = item.strip().partition(":")
        h, _, w = grid.partition("x")
        try:
            sizes.append((int(h), int(w), int(channels)))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"bad size '{item}': use HxW:C, e.g. 64x64:320") from None
    return sizes


def random_mask(h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """(h, w) 0/1 mask: an elliptic blob and two rectangles at random places.

    Covers part of the grid (typically 30-70 %), never all of it and never less
    than a few cells.
    """
    ys = torch.arange(h).float()[:, None] + 0.5
    xs = torch.arange(w).float()[None, :] + 0.5
    r = torch.rand(8, generator=gen)
    cy, cx = h * (0.3 + 0.4 * r[0]), w * (0.3 + 0.4 * r[1])
    ry, rx = h * (0.2 + 0.15 * r[2]), w * (0.2 + 0.15 * r[3])
    mask = (((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1).float()
    for k in (4, 6):
        y0, x0 = int(h * 0.6 * r[k]), int(w * 0.6 * r[k + 1])
        mask[y0:y0 + max(2, h // 4), x0:x0 + max(2, w // 3)] = 1.0
    return mask


def make_case(h: int, w: int, c: int, masked: bool, seed: int, device: torch.device):
    """Seeded target/reference features (C, h, w) and masks (or None)."""
    gen = torch.Generator().manual_seed(seed * 1000 + h * 7 + c)
    target = torch.randn(c, h, w, generator=gen).to(device)
    ref = torch.randn(c, h, w, generator=gen).to(device)
    if not masked:
        return target, ref, None, None
    return target, ref, random_mask(h, w, gen).to(device), random_mask(h, w, gen).to(device)


def ours_match(target_rows: torch.Tensor, ref_rows: torch.Tensor, tmask, rmask):
    """Vectorised matching on (N, C) rows + the copy of matched rows (what the
    attention processor does). Returns (rearranged rows, index)."""
    index, _ = nearest_neighbors(target_rows, ref_rows, tmask, rmask)
    picked = ref_rows.index_select(0, index.clamp_min(0))
    return torch.where((index >= 0)[:, None], picked, target_rows), index


def best_time(fn: Callable[[], object], repeats: int, device: torch.device) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls (seconds) and the last result."""
    result, best = None, float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best, result


def fmt_time(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.3f} s"


def run_case(h, w, c, masked, repeats, seed, device) -> float:
    """Time both versions on one case, check they agree, print a line; returns the ratio."""
    target, ref, tmask, rmask = make_case(h, w, c, masked, seed, device)
    rows_t, rows_r = target.reshape(c, -1).T.contiguous(), ref.reshape(c, -1).T.contiguous()
    tm = None if tmask is None else tmask.flatten()
    rm = None if rmask is None else rmask.flatten()

    # warm-up: ours in full, the loop on a few rows (it is long and needs no warming)
    ours_match(rows_t, rows_r, tm, rm)
    loop_match(target[:, :1], ref, None if tmask is None else tmask[:1], rmask)

    t_loop, (loop_out, loop_idx) = best_time(lambda: loop_match(target, ref, tmask, rmask),
                                             repeats, device)
    t_ours, (ours_rows, ours_idx) = best_time(lambda: ours_match(rows_t, rows_r, tm, rm),
                                              repeats, device)
    ours_out = ours_rows.T.reshape(c, h, w)
    same_idx = torch.equal(loop_idx, ours_idx)
    same_feat = torch.equal(loop_out, ours_out)
    queried = int((loop_idx >= 0).sum())
    ratio = t_loop / t_ours
    verdict = "identical" if same_idx and same_feat else (
        f"DIFFERENT ({int((loop_idx != ours_idx).sum())} of {h * w} matches differ, "
        f"features {'equal' if same_feat else 'differ'})")
    print(f"{h}x{w} C={c} masks={'yes' if masked else 'no '}: {queried:5d} queries | "
          f"loop {fmt_time(t_loop)} | ours {fmt_time(t_ours)} | ratio {ratio:.1f}x | "
          f"matches {verdict}", flush=True)
    if not (same_idx and same_feat):
        raise SystemExit(f"error: matches differ at {h}x{w} C={c} masks={masked}")
    return ratio


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default cpu)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per version (best kept)")
    p.add_argument("--sizes", type=parse_sizes, default=parse_sizes(DEFAULT_SIZES),
                   help=f"comma-separated HxW:C feature shapes (default {DEFAULT_SIZES})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"matching benchmark: device {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}", flush=True)
    ratios = [run_case(h, w, c, masked, max(1, args.repeats), args.seed, device)
              for h, w, c in args.sizes for masked in (False, True)]
    print(f"speedup: {min(ratios):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
