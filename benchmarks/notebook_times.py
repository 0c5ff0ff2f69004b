"""Wall time of every notebook at its default parameters (issue 12: at most 90 s each on
the 2-core CPU with the offline model), with the slowest cells, as papermill records them.

Only the output locations are changed (into a temporary folder), so nothing is written
into the repository, and each notebook starts with an empty cache (``$E4E_LAB_CACHE`` in
that folder): the times are a first run's, nothing reused from an earlier one. Run it on a quiet machine::

    .venv/bin/python benchmarks/notebook_times.py            # every notebook
    .venv/bin/python benchmarks/notebook_times.py 04 06      # the ones named
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import papermill

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
LIMIT_S = 90.0
# where each notebook writes; everything else stays at its default
OUTPUTS = {
    "01_quickstart": lambda tmp: {"out_dir": str(tmp / "quickstart")},
    "02_boxes_and_masks": lambda tmp: {"boxes_out": str(tmp / "boxes.json")},
    "05_interactive_tuning": lambda tmp: {"export_dir": str(tmp / "gallery")},
    "07_multi_object": lambda tmp: {"pairs_out": str(tmp / "multi_pairs.json")},
}


def time_notebook(path: Path, tmp: Path) -> tuple[float, list[tuple[float, str]]]:
    """Run one notebook; return its wall time and (seconds, first line) of each code cell."""
    params = OUTPUTS.get(path.stem, lambda _: {})(tmp)
    # a cold cache, as a first-time user has: every inversion and feature is computed
    os.environ["E4E_LAB_CACHE"] = str(tmp / "cache")
    start = time.perf_counter()
    nb = papermill.execute_notebook(str(path), str(tmp / f"{path.stem}.out.ipynb"),
                                    parameters=params, cwd=str(NOTEBOOKS),
                                    progress_bar=False, execution_timeout=1800)
    wall = time.perf_counter() - start
    cells = [(float(c.metadata.get("papermill", {}).get("duration") or 0.0),
              (c.source.strip().splitlines() or [""])[0][:60])
             for c in nb.cells if c.cell_type == "code"]
    return wall, cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help="notebook name prefixes (e.g. 04 06)")
    args = parser.parse_args(argv)
    paths = sorted(p for p in NOTEBOOKS.glob("*.ipynb")
                   if not args.only or any(p.stem.startswith(o) for o in args.only))
    import torch

    print(f"notebook times at default parameters: torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, limit {LIMIT_S:.0f} s")
    worst = 0.0
    for path in paths:
        with tempfile.TemporaryDirectory() as tmp:
            wall, cells = time_notebook(path, Path(tmp))
        worst = max(worst, wall)
        slow = sorted(cells, reverse=True)[:3]
        detail = "; ".join(f"{s:.1f} s `{line}`" for s, line in slow)
        verdict = "ok" if wall <= LIMIT_S else "OVER"
        print(f"{path.stem:28s} {wall:6.1f} s  {verdict:4s} | slowest cells: {detail}",
              flush=True)
    print(f"slowest notebook: {worst:.1f} s ({'within' if worst <= LIMIT_S else 'over'} "
          f"the {LIMIT_S:.0f} s limit)")
    return 0 if worst <= LIMIT_S else 1


if __name__ == "__main__":
    sys.exit(main())
