"""Grids and cells (``e4e_lab/analysis/grids.py``): model pixels to grid cells and back,
and the grids of the injected layers."""

from e4e_lab.analysis.grids import cell_center, cell_rect, injected_grids, pixel_to_cell


def test_pixels_map_to_cells_and_back():
    assert pixel_to_cell(0, 0, (64, 64), (8, 8)) == 0
    assert pixel_to_cell(63.9, 8, (64, 64), (8, 8)) == 15
    assert pixel_to_cell(500, 500, (64, 64), (8, 8)) == 63  # clamped
    assert cell_center(9, (8, 8), (64, 64)) == (12.0, 12.0)
    assert cell_rect(9, (8, 8), (64, 64)) == (8.0, 8.0, 16.0, 16.0)


def test_injected_grids_finest_first(models):
    grids = injected_grids(models, (64, 64))
    assert [g.grid for g in grids] == [(8, 8), (4, 4)]  # the tiny model's two finest
    assert [len(g.layers) for g in grids] == [3, 3] and grids[0].label == "8x8"
