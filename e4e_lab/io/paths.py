"""Where e4e-lab keeps its files on disk."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """Root of e4e-lab's caches (built models, inversions): ``$E4E_LAB_CACHE``, else
    ``$XDG_CACHE_HOME/e4e-lab``, else ``~/.cache/e4e-lab``."""
    env = os.environ.get("E4E_LAB_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "e4e-lab"
