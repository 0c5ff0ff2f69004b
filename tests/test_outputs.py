"""A run's output folder (``e4e_lab/io/outputs.py``): the five files, described for a
single or a multi-object pair, and never written over another run."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from e4e_lab.evaluation import evaluate as evaluation
from e4e_lab.io import outputs
from e4e_lab.io.outputs import (OutputError, OutputExistsError, OutputTransaction,
                                check_output, safe_name, save_run)

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
    multi = lab.pair(images[1], objects=[
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


# ---------------------------------------------------------------------------------------
# Output folders as transactions (issue 15): a run claims its folder, writes into a
# staging folder beside it and moves it into place only when complete; a failure, a full
# disk or Ctrl-C leaves the previous run as it was; files and folders follow the umask.


def _files(folder):
    """Every file under ``folder`` with its bytes (relative names)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _fail_on_call(monkeypatch, n, exc):
    """Make the ``n``-th call of the run's file writer raise ``exc`` (the earlier ones write)."""
    real, calls = outputs._write_file, []

    def writer(path, data):
        calls.append(path)
        if len(calls) == n:
            raise exc
        real(path, data)

    monkeypatch.setattr(outputs, "_write_file", writer)
    return calls


def test_a_full_disk_during_an_overwrite_leaves_the_previous_run(tmp_path, reference_run,
                                                                  monkeypatch):
    """Before: result.png and structure_recon.png of the new run beside the rest of the old
    one. Now: the old run's bytes, and nothing else beside it."""
    result, pair = reference_run
    out = tmp_path / "run"
    save_run(out, result, pair, extra={"which": "old"})
    before = _files(out)
    calls = _fail_on_call(monkeypatch, 3, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(OutputError) as e:
        save_run(out, result, pair, extra={"which": "new"}, overwrite=True)
    assert len(calls) == 3 and isinstance(e.value, OSError)
    assert_names(e, "run", "No space left on device")
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging, no lock
    # a new run that fills the disk leaves no folder at all
    monkeypatch.undo()
    _fail_on_call(monkeypatch, 4, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(OutputError):
        save_run(tmp_path / "fresh", result, pair)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    # the disk fills up on the commit's journal (the sixth write), before anything moves
    monkeypatch.undo()
    _fail_on_call(monkeypatch, 6, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(OutputError, match="move the finished run"):
        save_run(out, result, pair, extra={"which": "new"}, overwrite=True)
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_an_interrupt_while_writing_leaves_no_half_written_run(tmp_path, reference_run,
                                                                monkeypatch):
    """Before: result.png without config.json, later refused as 'already holds a run'."""
    result, pair = reference_run
    _fail_on_call(monkeypatch, 2, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        save_run(tmp_path / "run", result, pair)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert set(save_run(tmp_path / "run", result, pair)) == set(outputs.RUN_FILES)


def test_a_commit_cut_short_is_rolled_back(tmp_path, reference_run, monkeypatch):
    """The renames that move an overwrite in: one failing half way puts the old run back,
    also into a folder that holds other files."""
    result, pair = reference_run
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    save_run(out, result, pair, extra={"which": "old"})
    before = _files(out)
    real, calls = os.rename, []

    def rename(src, dst):
        calls.append(dst)
        if len(calls) == 5:  # two entries swapped, the third moved aside
            raise OSError(errno.EIO, "I/O error")
        real(src, dst)

    monkeypatch.setattr(outputs.os, "rename", rename)
    with pytest.raises(OutputError, match="I/O error"):
        save_run(out, result, pair, extra={"which": "new"}, overwrite=True)
    monkeypatch.undo()
    assert len(calls) > 5 and _files(out) == before  # the rollback renamed everything back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    save_run(out, result, pair, extra={"which": "new"}, overwrite=True)
    assert json.loads((out / "config.json").read_text())["which"] == "new"
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_folder_in_use_cannot_be_claimed_twice(tmp_path, reference_run):
    """Before: two runs into one --out both succeeded. The claim is a lock held from the
    start of a run to its end; the second run is refused at once."""
    result, pair = reference_run
    out = tmp_path / "run"
    with OutputTransaction(out) as tx:
        assert tx.staging.parent == tmp_path and tx.staging.is_dir()
        with pytest.raises(OutputExistsError) as e:
            save_run(out, result, pair)
        assert_names(e, "another run", str(out))
        with pytest.raises(OutputExistsError):
            OutputTransaction(out, overwrite=True).begin()
        (tx.staging / "result.png").write_bytes(b"first")
    assert (out / "result.png").read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # claim released


def test_a_killed_runs_leftovers_are_cleaned_and_its_commit_undone(tmp_path, reference_run):
    """A process killed while writing leaves its staging folder; one killed while moving
    its run in also leaves the old entries aside. The next run into the folder (which
    holds the claim, so no live run owns them) removes the first and rolls back the second."""
    result, pair = reference_run
    out = tmp_path / "run"
    save_run(out, result, pair)
    before = _files(out)
    lost = tmp_path / ".run.e4e-staging-999991-0a0a"  # killed while writing
    lost.mkdir()
    (lost / "result.png").write_bytes(b"half")
    staging = tmp_path / ".run.e4e-staging-999992-0b0b"  # killed after one swap
    aside = tmp_path / ".run.e4e-old-999992-0b0b"
    staging.mkdir()
    aside.mkdir()
    (aside / ".e4e-commit.json").write_text(json.dumps(sorted(outputs.RUN_FILES)))
    for name in outputs.RUN_FILES:
        (staging / name).write_bytes(b"new " + name.encode())
    os.rename(out / "appearance_recon.png", aside / "appearance_recon.png")
    os.rename(staging / "appearance_recon.png", out / "appearance_recon.png")
    (tmp_path / ".run.e4e-lock").write_text("")  # a killed run's lock file (no lock held)
    cut = tmp_path / ".run.e4e-old-999993-0c0c"  # killed while writing its journal
    cut.mkdir()
    (cut / ".e4e-commit.json").write_text('["result')
    with pytest.raises(OutputExistsError, match="already holds a run"):
        save_run(out, result, pair)  # the old run is back, and still not overwritten
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_files_and_folders_follow_the_umask(tmp_path, reference_run, umask):
    """Before: every file 0600 (made through tempfile)."""
    result, pair = reference_run
    old = os.umask(umask)
    try:
        save_run(tmp_path / "a" / "run", result, pair)  # a new folder (and its parent)
        (tmp_path / "b").mkdir()
        save_run(tmp_path / "b", result, pair)  # an existing folder
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "a") == mode(tmp_path / "a" / "run") == 0o777 & ~umask
    for name in outputs.RUN_FILES:
        assert mode(tmp_path / "a" / "run" / name) == 0o666 & ~umask
        assert mode(tmp_path / "b" / name) == 0o666 & ~umask


def test_an_empty_output_path_is_refused(tmp_path, reference_run, monkeypatch):
    """Before: --out '' wrote the run into the working directory."""
    result, pair = reference_run
    monkeypatch.chdir(tmp_path)
    for bad in ("", " "):
        with pytest.raises(OutputError) as e:
            save_run(bad, result, pair)
        assert_names(e, "--out")
        with pytest.raises(OutputError):
            check_output(bad)
    assert list(tmp_path.iterdir()) == []


def _fake_evaluation(monkeypatch, value: float):
    """run_distributed without the model: each pair's 'scores' are ``value``."""
    def fake(lab, share, boxes, methods, *args):
        rows = [{"pair": p.name, "method": "feature", "seconds": value, "ssim": value,
                 "tiny_model": True} for p in share]
        images = {(p.name, "feature"): torch.full((3, 8, 8), value) for p in share}
        return rows, images

    monkeypatch.setattr(evaluation, "evaluate", fake)
    return lambda _index: SimpleNamespace(banner=None)


def test_an_evaluation_is_a_transaction_too(tmp_path, monkeypatch):
    """Before: a second evaluation into the same --out silently replaced the first, and
    one cut short left part of its files."""
    example = Path(__file__).resolve().parents[1] / "example"
    out = tmp_path / "eval"
    make_lab = _fake_evaluation(monkeypatch, 0.25)
    old_umask = os.umask(0o027)
    try:
        csv_path = evaluation.run_distributed(make_lab, example, out, methods=("feature",))
    finally:
        os.umask(old_umask)
    assert csv_path == out / "results.csv"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [out, *out.rglob("*")]}
    assert modes["eval"] == modes["images"] == 0o750  # 0o777 less the umask
    assert modes["results.csv"] == modes["report.html"] == 0o640
    before = _files(out)
    assert {"results.csv", "report.html"} <= set(before)
    assert any(name.startswith("images/") for name in before)
    make_lab = _fake_evaluation(monkeypatch, 0.75)
    with pytest.raises(OutputExistsError) as e:
        evaluation.run_distributed(make_lab, example, out, methods=("feature",))
    assert_names(e, "eval", "--overwrite")

    def full(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(evaluation, "write_report", full)
    with pytest.raises(OutputError, match="No space left"):
        evaluation.run_distributed(make_lab, example, out, methods=("feature",), overwrite=True)
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]
    monkeypatch.undo()
    make_lab = _fake_evaluation(monkeypatch, 0.75)
    (out / "images" / "stale").mkdir()
    evaluation.run_distributed(make_lab, example, out, methods=("feature",), overwrite=True)
    assert "0.75" in (out / "results.csv").read_text()
    assert not (out / "images" / "stale").exists()  # the old images went with the old run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputExistsError, match="not a folder"):
        evaluation.run_distributed(make_lab, example, tmp_path / "afile", methods=("feature",))
