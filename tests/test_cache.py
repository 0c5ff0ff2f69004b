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
