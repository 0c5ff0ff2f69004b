"""The content-keyed tensor cache (``e4e_lab/io/cache.py``): entries read back exactly;
corrupt, mismatched or unpickling entries are detected, logged and dropped (never an
exception, never wrong tensors); two processes writing one entry leave one valid entry."""

from __future__ import annotations

import logging
import multiprocessing as mp
import pickle
import tempfile

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from e4e_lab.io.cache import TensorCache, key_of

from conftest import dead_pid
from strategies import json_values


def _entry(n=3):
    g = torch.Generator().manual_seed(n)
    return {"xts": torch.randn(n + 1, 4, 8, 8, generator=g),
            "zs": torch.randn(n, 4, 8, 8, generator=g), "timesteps": torch.arange(n, 0, -1)}


def _corrupt(kind: str, cache, key: str, spec: dict, tensors) -> tuple[str, dict]:
    """Damage the entry stored under ``key``; returns the (key, spec) to read back."""
    path = cache.path(key)
    data = bytearray(path.read_bytes())
    if kind == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif kind == "flipped-data":
        data[-7] ^= 0x10
        path.write_bytes(bytes(data))
    elif kind == "flipped-header":
        data[20] ^= 0x01
        path.write_bytes(bytes(data))
    elif kind == "pickle":
        path.write_bytes(pickle.dumps(tensors))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "other-key":  # a valid entry copied under another key's name
        other = "0" * 64
        cache.path(other).write_bytes(bytes(data))
        return other, spec
    elif kind == "other-spec":  # same key, but the request's inputs differ
        return key, dict(spec, cfg=spec["cfg"] + 1)
    return key, spec


CORRUPTIONS = ["truncated", "flipped-data", "flipped-header", "pickle", "empty", "other-key",
               "other-spec"]


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corrupt_cache_entries_are_detected_logged_and_dropped(tmp_path, caplog, kind):
    cache = TensorCache(tmp_path, "inversions")
    spec = {"stage": "test", "cfg": 3.5}
    key = key_of(spec)
    tensors = _entry()
    cache.put(key, spec, tensors)
    got = cache.get(key, spec)
    assert got is not None and all(torch.equal(got[k], tensors[k]) for k in tensors)
    read_key, read_spec = _corrupt(kind, cache, key, spec, tensors)
    with caplog.at_level(logging.WARNING, logger="e4e_lab.io.cache"):
        assert cache.get(read_key, read_spec) is None
    assert any("discarded" in r.getMessage() and "recomputed" in r.getMessage()
               for r in caplog.records)
    assert not cache.path(read_key).exists()
    cache.put(read_key, read_spec, tensors)  # the caller's recomputation lands cleanly
    assert cache.get(read_key, read_spec) is not None


def _hammer(root: str, rounds: int, seed: int, conn) -> None:
    """Child process: write and read one cache entry many times."""
    from e4e_lab.io.cache import TensorCache, key_of

    cache = TensorCache(root, "shared")
    spec = {"stage": "concurrency"}
    key = key_of(spec)
    tensors = {"x": torch.arange(250_000, dtype=torch.float32), "y": torch.ones(3)}
    problems = []
    for r in range(rounds):
        cache.put(key, spec, tensors)
        got = cache.get(key, spec)
        if got is None:
            problems.append(f"round {r}: entry missing or discarded right after a write")
        elif not all(torch.equal(got[k], tensors[k]) for k in tensors):
            problems.append(f"round {r}: wrong content")
    conn.send(problems)
    conn.close()


def test_two_processes_writing_one_entry_leave_one_valid_entry(tmp_path):
    ctx = mp.get_context("spawn")
    procs, pipes = [], []
    for seed in range(2):
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_hammer, args=(str(tmp_path), 15, seed, child))
        p.start()
        procs.append(p)
        pipes.append(parent)
    results = [pipe.recv() if pipe.poll(180) else ["no answer"] for pipe in pipes]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert results == [[], []]
    files = sorted(p.name for p in (tmp_path / "shared").iterdir())
    entries = [f for f in files if f.endswith(".safetensors")]
    assert len(entries) == 1
    assert all(f.endswith((".safetensors", ".lock")) for f in files), files  # no temp files
    spec = {"stage": "concurrency"}
    got = TensorCache(tmp_path, "shared").get(key_of(spec), spec)
    assert got is not None and torch.equal(got["x"], torch.arange(250_000, dtype=torch.float32))


_tensor_dicts = st.dictionaries(
    st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=6),
    st.tuples(st.sampled_from([torch.float32, torch.float16, torch.int64, torch.uint8]),
              st.lists(st.integers(0, 4), max_size=3), st.integers(0, 2 ** 16)),
    min_size=1, max_size=4,
).map(lambda d: {k: (torch.randn(tuple(s), generator=torch.Generator().manual_seed(seed)) * 50)
                 .to(dt) for k, (dt, s, seed) in d.items()})


@settings(max_examples=50, deadline=None)
@given(tensors=_tensor_dicts, spec=st.dictionaries(st.text(max_size=4), json_values, max_size=3))
def test_entries_of_any_tensors_read_back_exactly(tensors, spec):
    """Any dtypes and shapes (empty ones too) round-trip bit for bit; damaged entries are
    the corruptions above."""
    with tempfile.TemporaryDirectory() as tmp:
        cache = TensorCache(tmp, "entries")
        key = key_of(spec)
        cache.put(key, spec, tensors)
        got = cache.get(key, spec)
        assert got is not None and set(got) == set(tensors)  # a valid entry is never lost
        for k, t in tensors.items():
            assert got[k].dtype == t.dtype and torch.equal(got[k], t)


# ---------------------------------------------------------------------------------
# Issue 15: faults (an unusable folder, non-regular entries, leftovers of a kill) and
# the permissions of written files.


def _unusable_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "cannot be used" in r.getMessage()]


@pytest.mark.parametrize("mask", [0o022, 0o077], ids=["umask022", "umask077"])
def test_atomic_writes_honour_the_umask(tmp_path, mask):
    import os

    from e4e_lab.io.cache import atomic_write_bytes, atomic_write_text

    old = os.umask(mask)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        atomic_write_text(tmp_path / "b.json", "{}")
        cache = TensorCache(tmp_path, "entries")
        entry = cache.put(key_of({"k": 1}), {"k": 1}, _entry())
    finally:
        os.umask(old)
    for path in (tmp_path / "a.bin", tmp_path / "b.json", entry):
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, oct(path.stat().st_mode)


def test_temporary_files_left_by_a_killed_writer_are_removed_on_the_next_start(tmp_path):
    import os
    import time

    from e4e_lab.io.cache import temp_name

    folder = tmp_path / "inversions"
    folder.mkdir()
    key = "a" * 64
    dead = folder / temp_name(f".{key}.safetensors").replace(
        f"-{os.getpid()}-", f"-{dead_pid()}-")
    dead = dead.with_name(dead.name + ".tmp")
    live = folder / (temp_name(f".{key}.safetensors") + ".tmp")  # this process: kept
    old_style = folder / f".{key}.safetensors.k3j2h1.tmp"  # no pid recorded: by age
    fresh_old_style = folder / f".{'b' * 64}.safetensors.x9y8z7.tmp"
    for path in (dead, live, old_style, fresh_old_style):
        path.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(old_style, (two_hours_ago, two_hours_ago))
    TensorCache(tmp_path, "inversions")
    assert not dead.exists() and not old_style.exists()
    assert live.exists() and fresh_old_style.exists()


def test_a_cache_root_that_is_a_file_runs_uncached_with_one_warning(tmp_path, caplog):
    root = tmp_path / "not-a-folder"
    root.write_text("I am a file")
    spec = {"stage": "test"}
    with caplog.at_level(logging.WARNING, logger="e4e_lab.io.cache"):
        cache = TensorCache(root, "inversions")
        for _ in range(2):
            assert cache.get(key_of(spec), spec) is None
            assert cache.put(key_of(spec), spec, _entry()) is None
        TensorCache(root, "inversions")  # another session on it: no second warning
    assert len(_unusable_warnings(caplog)) == 1, caplog.text
    assert str(root) in _unusable_warnings(caplog)[0] and "E4E_LAB_CACHE" in caplog.text
    assert root.read_text() == "I am a file"


_USE_ODD_ENTRY = """
import json, logging, sys
import torch
from e4e_lab.io.cache import TensorCache, key_of
records = []
handler = logging.Handler()
handler.emit = lambda r: records.append(r.getMessage())
logging.getLogger("e4e_lab.io.cache").addHandler(handler)
cache = TensorCache(sys.argv[1], "inversions")
spec = {"stage": "test"}
entry = {"x": torch.ones(3)}
answers = [cache.get(key_of(spec), spec), cache.put(key_of(spec), spec, entry),
           cache.get(key_of(spec), spec)]
other = {"stage": "other"}  # the rest of the cache still works
cache.put(key_of(other), other, entry)
answers.append(cache.get(key_of(other), other) is not None)
print(json.dumps({"answers": [a if a is True else a is not None for a in answers],
                  "warnings": records}))
"""


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_an_entry_that_is_not_a_regular_file_is_refused_without_hanging(tmp_path, kind):
    """Run in a child process: opening a FIFO blocks inside safetensors while holding
    the GIL, so a hang would stop a thread-based test too."""
    import json
    import os
    import subprocess
    import sys

    spec = {"stage": "test"}
    path = TensorCache(tmp_path, "inversions").path(key_of(spec))
    if kind == "directory":
        path.mkdir()
        (path / "inside").write_text("kept")
    else:
        os.mkfifo(path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    try:
        done = subprocess.run([sys.executable, "-c", _USE_ODD_ENTRY, str(tmp_path)],
                              capture_output=True, text=True, timeout=90, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"reading a cache entry that is a {kind} hung")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["answers"] == [False, False, False, True]
    refusals = [w for w in report["warnings"] if "not a regular file" in w]
    assert len(refusals) == 1 and str(path) in refusals[0], report["warnings"]
    assert path.is_dir() if kind == "directory" else path.is_fifo()


def _deny_writes(monkeypatch, folder, error):
    """Make every file creation under ``folder`` fail with ``error`` (what a read-only
    folder does; root, which runs these tests, ignores permission bits)."""
    import os

    real_open = os.open

    def fake_open(path, flags, *args, **kwargs):
        if str(path).startswith(str(folder)) and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise error
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)


def test_a_read_only_cache_is_read_and_not_written_with_one_warning(tmp_path, caplog,
                                                                    monkeypatch):
    import errno

    cache = TensorCache(tmp_path, "inversions")
    old = {"stage": "written before"}
    cache.put(key_of(old), old, _entry())
    for lock in cache.folder.glob("*.lock"):
        lock.unlink()  # a read-only folder has no lock files to open either
    _deny_writes(monkeypatch, tmp_path, PermissionError(errno.EROFS, "Read-only file system"))
    new = {"stage": "new"}
    with caplog.at_level(logging.WARNING, logger="e4e_lab.io.cache"):
        cache = TensorCache(tmp_path, "inversions")
        got = cache.get(key_of(old), old)
        assert got is not None and torch.equal(got["xts"], _entry()["xts"])
        for _ in range(2):
            assert cache.put(key_of(new), new, _entry()) is None
            assert cache.get(key_of(new), new) is None
    assert len(_unusable_warnings(caplog)) == 1, caplog.text


def test_a_full_disk_leaves_no_partial_file_and_warns_once(tmp_path, caplog, monkeypatch):
    import errno
    import os

    cache = TensorCache(tmp_path, "inversions")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with caplog.at_level(logging.WARNING, logger="e4e_lab.io.cache"):
        for n in range(2):
            spec = {"stage": "test", "n": n}
            assert cache.put(key_of(spec), spec, _entry()) is None
            assert cache.get(key_of(spec), spec) is None
    assert len(_unusable_warnings(caplog)) == 1 and "No space" in caplog.text
    assert [p.name for p in cache.folder.iterdir() if not p.name.endswith(".lock")] == []
