"""Parameter sweeps (``e4e_lab/analysis/sweep.py``): the grid of configs, runs equal to
single transfers bit for bit, Stop keeps the finished cells, the contact sheet's layout."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from e4e_lab.analysis.sweep import (SweepAxis, contact_sheet, parse_axes, parse_values,
                                    run_sweep, sheet_layout, sweep_cells, sweep_configs)
from e4e_lab.errors import ConfigError

AXES = [("guidance", [1.0, 2.5]), ("injection", ["feature", "v"])]


@pytest.fixture(scope="module")
def sweep(shared_lab, pair, fast_config):
    return run_sweep(shared_lab, pair, fast_config, AXES)


def test_a_2x2_sweep_has_four_configs_row_by_row(fast_config):
    configs = sweep_configs(fast_config, AXES)
    assert [(c.guidance.scale, c.injection.mode) for c in configs] == [
        (1.0, "feature"), (1.0, "v"), (2.5, "feature"), (2.5, "v")]
    assert sweep_cells(AXES) == [(1.0, "feature"), (1.0, "v"), (2.5, "feature"), (2.5, "v")]
    for c in configs:  # everything else is the base's, so the inversion is shared
        assert c.replace(guidance=fast_config.guidance.scale, injection="feature") == fast_config
    starts = sweep_configs(fast_config, {"feat_start": "0, 4", "adain_start": [8]})
    assert [c.feat_range for c in starts] == [(0, 12), (4, 12)]
    assert {c.adain_range for c in starts} == {(8, 20)}


@pytest.mark.parametrize("axes, words", [
    ({"seed": [0, 1]}, ["sweep field", "guidance"]),
    ({"guidance": "1, x"}, ["'x'", "float"]),
    ({"guidance": [1.0, 1.0]}, ["each value once"]),
    ({"injection": ["feature", "sideways"]}, ["sideways", "cross-image"]),
    ({"feat_start": [13]}, ["feat_range"]),  # past the range's end (12)
    ({}, ["1 to 2"]),
    ([("guidance", [1.0]), ("injection", ["v"]), ("skip_steps", [2])], ["1 to 2"]),
    ([("guidance", [1.0]), ("guidance", [2.0])], ["one axis only"]),
])
def test_bad_axes_are_refused_naming_the_field(fast_config, axes, words):
    with pytest.raises(ConfigError) as exc:
        sweep_configs(fast_config, axes)
    for w in words:
        assert w in str(exc.value), str(exc.value)


def test_values_are_read_from_comma_separated_text():
    assert parse_values("guidance", " 1, 2.5,4 ") == (1.0, 2.5, 4.0)
    assert parse_values("feat_start", "2,6") == (2, 6)
    assert parse_values("injection", "v, kv") == ("v", "kv")
    assert parse_axes({"guidance": "1"}) == (SweepAxis("guidance", (1.0,)),)


def test_sweep_cells_equal_single_transfers_bit_for_bit(shared_lab, pair, fast_config, sweep):
    assert sweep.complete and sweep.shape == (2, 2) and len(sweep.cells) == 4
    assert sweep.label(1) == "guidance=1, injection=v"
    for cell, config in zip(sweep.cells, sweep_configs(fast_config, AXES)):
        assert cell.config == config
        alone = shared_lab.transfer(pair, config)
        assert torch.equal(cell.image, alone.image), cell.values


def test_stop_ends_the_sweep_with_the_cells_done_so_far(shared_lab, pair, fast_config):
    cancel, seen = threading.Event(), []

    def callback(n, total, values, result):
        seen.append((n, result is not None))
        if result is not None and n == 1:
            cancel.set()  # Stop pressed while cell 1 finishes: cell 2 never starts

    result = run_sweep(shared_lab, pair, fast_config, AXES, cancel=cancel, callback=callback)
    assert len(result.cells) == 2 and not result.complete
    assert seen == [(0, False), (0, True), (1, False), (1, True)]
    steps = []

    def on_step(event):  # Stop pressed in the middle of the first cell
        steps.append(event.step)
        if event.step == 2:
            cancel.set()

    cancel.clear()
    result = run_sweep(shared_lab, pair, fast_config, AXES, cancel=cancel, step_callback=on_step)
    assert result.cells == [] and steps == [0, 1, 2]


def test_the_contact_sheet_has_the_grid_size_and_the_values_on_its_axes(sweep):
    cell, gap = 48, 4
    lay = sheet_layout(sweep, cell, gap)
    sheet = contact_sheet(sweep, cell, gap)
    assert sheet.size == lay.size and sheet.mode == "RGB"
    x0, y0 = lay.origin
    assert lay.size == (max(x0 + 2 * (cell + gap), lay.size[0]), y0 + 2 * (cell + gap))
    assert lay.row_labels == ["1", "2.5"] and lay.column_labels == ["feature", "v"]
    assert "rows: guidance, columns: injection; 4 of 4 cells" in lay.title
    arr = np.asarray(sheet)
    assert (arr[: y0 - 2, :, :] < 100).any()  # the title and column values are drawn
    assert (arr[y0:, : x0 - gap, :] < 100).any()  # the row values are drawn
    for n in range(4):
        bx0, by0, bx1, by1 = lay.cell_box(*divmod(n, 2))
        tile = arr[by0:by1, bx0:bx1].astype(int)
        assert tile.shape == (cell, cell, 3) and tile.std() > 0  # a result, not paper


def test_a_stopped_sweeps_sheet_marks_the_cells_not_run(sweep):
    from e4e_lab.analysis.sweep import SweepResult

    partial = SweepResult(sweep.base, sweep.axes, sweep.cells[:3])
    lay = sheet_layout(partial, 32)
    assert "3 of 4 cells, stopped" in lay.title
    arr = np.asarray(contact_sheet(partial, 32))
    x0, y0, x1, y1 = lay.cell_box(1, 1)
    tile = arr[y0:y1, x0:x1]
    assert (tile == 220).mean() > 0.8 and (tile < 100).any()  # grey, with "not run"
    single = SweepResult(sweep.base, (SweepAxis("guidance", (1.0, 2.5)),), sweep.cells[:2])
    assert sheet_layout(single, 32).row_labels == [""] and single.shape == (1, 2)
