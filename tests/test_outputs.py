"""A run's output folder (``e4e_lab/io/outputs.py``): the five files, described for a
single or a multi-object pair, and never written over another run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from e4e_lab.io.outputs import OutputExistsError, check_output, safe_name, save_run

from conftest import SMALL, assert_names


def test_save_run_refuses_an_existing_run_folder(tmp_path, reference_run):
    result, pair = reference_run
    out = tmp_path / "run"
    paths = save_run(out, result, pair)
    before = {name: p.read_bytes() for name, p in paths.items()}
    with pytest.raises(OutputExistsError) as e:
        save_run(out, result, pair, extra={"other": 1})
    assert_names(e, "run", "--overwrite")
    with pytest.raises(OutputExistsError):
        check_output(out)
    assert {name: p.read_bytes() for name, p in paths.items()} == before  # nothing lost
    assert json.loads((out / "config.json").read_text()).get("other") is None
    save_run(out, result, pair, extra={"other": 1}, overwrite=True)
    assert json.loads((out / "config.json").read_text())["other"] == 1
    # a folder with unrelated files is fine; a file in the way is not
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("mine")
    save_run(tmp_path / "notes", result, pair)
    assert (tmp_path / "notes" / "readme.txt").read_text() == "mine"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputExistsError, match="not a folder"):
        save_run(tmp_path / "afile", result, pair)
    assert not list(out.glob(".*.tmp"))


def test_safe_names_never_leave_their_folder():
    for text in ("..", ".", "../up", "a/b", "", " / ", "run 1: v", ".hidden"):
        name = safe_name(text)
        assert name and name not in (".", "..") and "/" not in name and not name.startswith(".")
    assert safe_name("run 1: v") == "run-1-v" and safe_name("..") == "run"


def _saved(folder):
    meta = json.loads((folder / "config.json").read_text())
    return meta, np.asarray(Image.open(folder / "strip.png").convert("RGB"))


def test_save_run_reads_single_and_multi_pairs_through_their_protocol(lab, images, fast_config,
                                                                       tmp_path):
    """config.json describes each kind of pair; strip.png shows its inputs, then the result,
    under the tiny-model banner."""
    half = SMALL // 2
    pair = lab.pair(images[0], images[1], size=SMALL, mask="box", appearance_box=(0, 0, 48, 64),
                    structure_box=(8, 0, 64, 64))
    multi = lab.multi_pair(images[1], [
        {"appearance": images[0], "target_box": (0, 0, half, SMALL)},
        {"appearance": images[1], "target_box": (half, 0, SMALL, SMALL),
         "appearance_box": (0, 0, half, SMALL)}], mask="box", size=SMALL)
    save_run(tmp_path / "single", lab.transfer(pair, fast_config), pair)
    save_run(tmp_path / "multi", lab.transfer(multi, fast_config), multi)

    meta, strip = _saved(tmp_path / "single")
    assert meta["tiny_model"] is True and meta["mask"] == "box" and meta["size"] == [SMALL, SMALL]
    assert meta["appearance_box"] == [0, 0, 48, 64] and meta["structure_box"] == [8, 0, 64, 64]
    assert meta["strip"] == ["structure", "appearance", "result"]
    band = strip.shape[0] - SMALL  # the red tiny-model banner on top
    assert band > 0 and tuple(strip[0, -1]) == (200, 0, 0) and strip.shape[1] == 3 * SMALL
    assert (strip[band:, :SMALL] == pair.structure.to_uint8()).all()
    assert (strip[band:, SMALL:2 * SMALL] == pair.appearance.to_uint8()).all()

    meta, strip = _saved(tmp_path / "multi")
    assert meta["tiny_model"] is True and "appearance_box" not in meta
    assert [o["target_box"] for o in meta["objects"]] == [[0, 0, half, SMALL],
                                                          [half, 0, SMALL, SMALL]]
    assert [o["appearance_box"] for o in meta["objects"]] == [None, [0, 0, half, SMALL]]
    assert meta["strip"] == ["structure", "appearance 1", "appearance 2", "result"]
    assert tuple(strip[0, -1]) == (200, 0, 0) and strip.shape[1] == 4 * SMALL
    for n, image in enumerate([multi.structure] + multi.references):
        assert (strip[band:, n * SMALL:(n + 1) * SMALL] == image.to_uint8()).all()
