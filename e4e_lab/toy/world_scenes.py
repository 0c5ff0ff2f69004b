"""The scenery of a toy-world picture: its background and the colours of the parts.

:func:`background` draws a muted background (flat, gradient, smooth noise, stripes or
checks) with its nominal mean colour; :func:`part_colors` draws one colour per part, far
(:data:`MIN_COLOR_DISTANCE`) from each other and from the background. Both use only the
seeded generator they are given and elementwise arithmetic, so they are exact across
machines. :mod:`e4e_lab.toy.world` is the public API.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

MIN_COLOR_DISTANCE = 60.0
"""Least RGB distance between two parts of a creature, and between a part and the
background's mean colour."""

_BACKGROUNDS = ("flat", "gradient", "noise", "stripes", "checks")


# --- colours --------------------------------------------------------------------------

_HSV_ORDER = np.array([[0, 1, 2], [3, 0, 2], [2, 0, 1], [2, 3, 0], [1, 2, 0], [0, 2, 3]])


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """(N, 3) HSV in [0, 1] to (N, 3) uint8 RGB, with arithmetic only."""
    h, s, v = hsv[:, 0] * 6.0, hsv[:, 1], hsv[:, 2]
    sector = np.floor(h)
    f = h - sector
    comps = np.stack([v, v * (1 - s * (1 - f)), v * (1 - s), v * (1 - s * f)], axis=1)
    rgb = np.take_along_axis(comps, _HSV_ORDER[sector.astype(int) % 6], axis=1)
    return np.rint(rgb * 255.0).astype(np.uint8)


def part_colors(rng: np.random.Generator, names: tuple[str, ...],
                 background: tuple[int, int, int]) -> dict[str, tuple[int, int, int]]:
    """Independent random colours, one per part, far from each other and the background.

    Each part takes the first of a batch of candidates that keeps every distance at least
    `MIN_COLOR_DISTANCE`; a new batch is drawn if none does.
    """
    taken = [np.array(background, dtype=float)]
    colors: dict[str, tuple[int, int, int]] = {}
    for name in names:
        while True:
            hsv = rng.random((32, 3))
            hsv[:, 1:] = 0.35 + 0.65 * hsv[:, 1:]
            candidates = _hsv_to_rgb(hsv).astype(float)
            diff = candidates[:, None] - np.array(taken)[None]
            gaps = np.sqrt((diff * diff).sum(axis=2))
            ok = np.flatnonzero((gaps >= MIN_COLOR_DISTANCE).all(axis=1))
            if ok.size:
                break
        chosen = candidates[ok[0]]
        taken.append(chosen)
        colors[name] = tuple(int(c) for c in chosen)
    return colors


# --- backgrounds ----------------------------------------------------------------------

def background(rng: np.random.Generator, size: int
                ) -> tuple[str, tuple[int, int, int], np.ndarray]:
    """A muted background: (kind, nominal mean colour, (size, size, 3) float image).

    The image is the mean colour plus a zero-mean pattern in [-1, 1] times a colour
    offset, so the nominal colour is the image's mean up to the pattern's imbalance.
    """
    kind = _BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))]
    hsv = np.array([[rng.random(), rng.uniform(0.05, 0.3), rng.uniform(0.3, 0.92)]])
    color = _hsv_to_rgb(hsv)[0]
    direction = rng.normal(size=3) + 1.2  # leans towards a change of lightness
    strength = rng.uniform(10.0, 28.0)
    offset = direction * (strength / math.sqrt(float((direction * direction).sum())))
    pattern = _PATTERNS[kind](rng, size)
    image = np.clip(color + pattern[:, :, None] * offset, 0.0, 255.0)
    return kind, tuple(int(c) for c in color), image


def _rotated_axes(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-0.5, 0.5), rotated by a random angle."""
    angle = rng.uniform(0.0, math.pi)
    c = (np.arange(size) + 0.5) / size - 0.5
    u, v = c[None, :], c[:, None]
    return math.cos(angle) * u + math.sin(angle) * v, math.cos(angle) * v - math.sin(angle) * u


def _soft_square(x: np.ndarray, period_px: float) -> np.ndarray:
    """A square wave of period 1 in x, with edges about two pixels wide (anti-aliased)."""
    tri = 1.0 - 4.0 * np.abs(x - np.floor(x) - 0.5)
    return np.clip(tri * (period_px / 4.0), -1.0, 1.0)


def _flat(rng: np.random.Generator, size: int) -> np.ndarray:
    return np.zeros((size, size))


def _gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    a, _ = _rotated_axes(rng, size)
    return np.clip(a * math.sqrt(2.0), -1.0, 1.0)


def _stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    a, _ = _rotated_axes(rng, size)
    periods = rng.uniform(2.5, 7.0)
    return _soft_square(a * periods, size / periods)


def _checks(rng: np.random.Generator, size: int) -> np.ndarray:
    a, b = _rotated_axes(rng, size)
    periods = rng.uniform(2.0, 5.0)
    return _soft_square(a * periods, size / periods) * _soft_square(b * periods, size / periods)


def _noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth value noise: random values on a coarse grid, smoothstep-interpolated."""
    cells = int(rng.integers(2, 6))
    grid = rng.uniform(-1.0, 1.0, (cells + 1, cells + 1))
    pos = (np.arange(size) + 0.5) / size * cells
    i0 = np.floor(pos).astype(int)
    t = pos - i0
    w = t * t * (3.0 - 2.0 * t)
    rows = grid[i0] * (1 - w)[:, None] + grid[i0 + 1] * w[:, None]  # (size, cells + 1)
    field = rows[:, i0] * (1 - w)[None, :] + rows[:, i0 + 1] * w[None, :]
    return field / max(float(np.abs(field).max()), 1e-6)


_PATTERNS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "flat": _flat, "gradient": _gradient, "noise": _noise, "stripes": _stripes,
    "checks": _checks,
}
