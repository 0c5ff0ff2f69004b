"""The correspondence explorer's sentences about a selection, in one convention.

Positions are written with labelled coordinates, always x (column) first: a model pixel
as ``pixel x=77, y=46``, a grid cell as ``cell x=9, y=5`` on a grid ``16 wide x 16 high``.
(The library's cells are row-major indices ``row * width + col``: ``x`` is the column.)
"""

from __future__ import annotations


def cell_xy(cell: int, grid: tuple[int, int]) -> tuple[int, int]:
    """(x, y) = (column, row) of a row-major cell index on an (h, w) grid."""
    row, col = divmod(int(cell), grid[1])
    return col, row


def grid_text(grid: tuple[int, int]) -> str:
    return f"{grid[1]} wide x {grid[0]} high"


def selection_text(selected: tuple[float, float], cell: int, grid: tuple[int, int],
                   match: int | None, ref_grid: tuple[int, int] | None,
                   match_xy: tuple[float, float] | None, score: float | None) -> str:
    """HTML line: the clicked pixel, its cell, and its best match (or why there is none)."""
    x, y = selected
    cx, cy = cell_xy(cell, grid)
    head = (f"target pixel x={x:.0f}, y={y:.0f} &rarr; cell x={cx}, y={cy} of "
            f"{grid_text(grid)}")
    if match is None or match < 0 or match_xy is None:
        return (f"{head}: outside the target mask or no candidate (background keeps its own "
                "features)")
    mx, my = cell_xy(match, ref_grid)
    px, py = match_xy
    return (f"{head} &rarr; best match: reference cell x={mx}, y={my} of "
            f"{grid_text(ref_grid)} (centre pixel x={px:.0f}, y={py:.0f}), "
            f"cosine {score:.3f}")


STALE_TEXT = ("<i>no correspondence for these settings yet: the heatmap is cleared until "
              "'Compute features' computes them</i>")
