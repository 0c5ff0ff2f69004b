"""Shared fixtures: one tiny offline model per test session, in a throw-away cache.

Tests never touch the network: HF_HUB_OFFLINE is set and the Hugging Face cache points
into the session's temporary folder. What most tests share:

- ``models``: the tiny random-weight model; ``lab``: a fresh session (own cache) on it;
  ``shared_lab``: one session for the whole run, for tests that only read its inversions;
- ``images``: two smooth random test images; ``build_pair(lab, boxes=False)``: the one
  way to make a pair of them at ``SMALL`` px (whole-image masks, or the ``APP_BOX`` /
  ``STRUCT_BOX`` boxes as masks);
- ``fast_config``: the one short schedule (20 steps, 6 skipped, the published
  proportions);
- ``reference_run`` (a first transfer on its own cache), ``warm_lab`` and
  ``warm_reference`` (a new session on that cache, and its run): what a repeated or
  recovered run must equal bit for bit.

Plain helpers (``from conftest import ...``): ``SMALL``, the boxes, ``assert_names``,
``disc``, ``identity_field``, ``perturb_weights`` (change one weight of a saved model) and
``dead_pid`` (the pid of an exited process). Hypothesis settings are in ``strategies.py``, widget drivers in
``widget_helpers.py``.
"""

from __future__ import annotations

import os

import pytest
import torch

SMALL = 64  # model pixels for fast tests (latent 8x8; injected grids 8x8 and 4x4)
APP_BOX = (8, 6, 56, 58)  # boxes of the test pair, at SMALL px
STRUCT_BOX = (4, 10, 60, 60)


@pytest.fixture(scope="session", autouse=True)
def _offline_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("e4e-cache")
    old = {k: os.environ.get(k) for k in ("E4E_LAB_CACHE", "HF_HUB_OFFLINE", "HF_HOME")}
    os.environ["E4E_LAB_CACHE"] = str(root)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HOME"] = str(root / "hf-home")
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def models(_offline_env):
    from e4e_lab.models import load_pipeline

    return load_pipeline("tiny", device="cpu")


@pytest.fixture()
def lab(models, tmp_path):
    """A fresh session (own inversion cache) sharing the session's tiny model."""
    from e4e_lab import Lab

    return Lab(models=models, cache_dir=tmp_path / "cache")


@pytest.fixture(scope="session")
def shared_lab(models, tmp_path_factory):
    """One session for the whole run: its inversions are computed once and reused."""
    from e4e_lab import Lab

    return Lab(models=models, cache_dir=tmp_path_factory.mktemp("shared-lab"))


@pytest.fixture(scope="session")
def images():
    """Two random but structured images (smooth blobs) as (3, H, W) tensors."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(2):
        low = torch.rand(3, 4, 4, generator=g)
        out.append(torch.nn.functional.interpolate(low[None], size=(96, 96), mode="bicubic",
                                                   align_corners=False)[0].clamp(0, 1))
    return out


@pytest.fixture(scope="session")
def build_pair(images):
    """``build_pair(lab, boxes=False)``: the test images at ``SMALL`` px, named app.png
    and struct.png, with whole-image masks, or with ``boxes=True`` the boxes
    ``APP_BOX`` / ``STRUCT_BOX`` as their masks."""
    def build(lab, boxes: bool = False):
        app = lab.load_image(images[0], SMALL, name="app.png")
        struct = lab.load_image(images[1], SMALL, name="struct.png")
        if not boxes:
            return lab.pair(app, struct, mask="none")
        return lab.pair(app, struct, appearance_box=APP_BOX, structure_box=STRUCT_BOX,
                        mask="box")
    return build


@pytest.fixture(scope="module")
def pair(shared_lab, build_pair):
    """The test pair with its boxes as masks (``build_pair(shared_lab, boxes=True)``), one
    per module: a module's widgets may hold it. Modules that need another pair define
    their own ``pair``."""
    return build_pair(shared_lab, boxes=True)


@pytest.fixture(scope="session")
def fast_config():
    """A short schedule with the reference's proportions (for speed)."""
    from e4e_lab import TransferConfig

    return TransferConfig(num_steps=20, skip_steps=6, feat_range=(2, 12), adain_range=(10, 20),
                          refresh_until=8, domain="bird")


@pytest.fixture(scope="session")
def reference_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("reference")


@pytest.fixture(scope="session")
def reference_run(models, build_pair, fast_config, reference_cache):
    """(result, pair): one transfer (boxed pair) on a fresh session: what every later run
    of the same inputs must equal."""
    from e4e_lab import Lab

    lab = Lab(models=models, cache_dir=reference_cache)
    pair = build_pair(lab, boxes=True)
    return lab.transfer(pair, fast_config), pair


@pytest.fixture()
def warm_lab(models, reference_run, reference_cache):
    """A new session on the reference's disk cache (its inversions are read, not redone)."""
    from e4e_lab import Lab

    return Lab(models=models, cache_dir=reference_cache)


@pytest.fixture(scope="session")
def warm_reference(models, build_pair, fast_config, reference_run, reference_cache):
    """The reference run again, on a fresh session that reads the cached inversions."""
    from e4e_lab import Lab

    lab = Lab(models=models, cache_dir=reference_cache)
    return lab.transfer(build_pair(lab, boxes=True), fast_config)


def pytest_terminal_summary(terminalreporter):
    """Say where the browser tests left their screenshots."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "test-artifacts" / "browser"
    shots = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if shots:
        terminalreporter.write_line(f"browser screenshots: {len(shots)} in {folder}")


def assert_names(exc_info, *parts):
    """The raised error's message names each of ``parts`` (the input at fault, the fix)."""
    msg = str(exc_info.value)
    for part in parts:
        assert str(part) in msg, f"{part!r} not in message: {msg}"


def disc(size: int = 64, r: float = 20.5) -> torch.Tensor:
    """An (size, size) 0/1 disc off the grid's axes: bilinear and area resizing differ
    at its edges."""
    y, x = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    return (((x - 30) ** 2 + (y - 35) ** 2) <= r * r).float()


def identity_field(h: int, w: int):
    """The correspondence field that maps every cell of an (h, w) grid to itself."""
    from e4e_lab.method.correspondence import CorrespondenceField

    return CorrespondenceField(torch.arange(h * w), torch.ones(h * w), (h, w), (h, w))


def perturb_weights(folder, component: str, file: str) -> None:
    """Change one weight of ``folder/component/file`` (same config, same tensor names)."""
    from safetensors.torch import load_file, save_file

    path = folder / component / file
    state = load_file(str(path))
    name = sorted(state)[0]
    state[name] = state[name] + 0.01
    save_file(state, str(path), metadata={"format": "pt"})


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def call_with_timeout(fn, fifo=None, timeout: float = 20.0):
    """``fn()``'s exception (or None) within ``timeout`` seconds, run in a daemon thread: a
    regression that blocks (reading a FIFO) fails the test instead of hanging it. A reader
    left blocked on ``fifo`` is released by opening its write end."""
    import os
    import threading

    box: dict = {}

    def target():
        try:
            fn()
        except BaseException as exc:  # handed back to the test
            box["exc"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        if fifo is not None:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        raise AssertionError(f"{fn} blocked for over {timeout} s")
    return box.get("exc")
