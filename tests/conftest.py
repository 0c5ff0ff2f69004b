"""Shared fixtures: one tiny offline model per test session, in a throw-away cache.

Tests never touch the network: HF_HUB_OFFLINE is set and the Hugging Face cache points
into the session's temporary folder.
"""

from __future__ import annotations

import os

import pytest
import torch

SMALL = 64  # model pixels for fast tests (latent 8x8; injected grids 8x8 and 4x4)


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
    from e4e_lab.session import Lab

    return Lab(models=models, cache_dir=tmp_path / "cache")


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
def fast_config():
    """A short schedule with the reference's proportions (for speed)."""
    from e4e_lab.method.config import TransferConfig

    return TransferConfig(num_steps=20, skip_steps=6, feat_range=(2, 12), adain_range=(10, 20),
                          refresh_until=8, domain="bird")


def pytest_terminal_summary(terminalreporter):
    """Say where the browser tests left their screenshots."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "test-artifacts" / "browser"
    shots = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if shots:
        terminalreporter.write_line(f"browser screenshots: {len(shots)} in {folder}")
