"""From a creature's shapes to pixels: posing, drawing, and the ground truth it yields.

:func:`place` flips, tilts, scales and moves a creature from
:mod:`~e4e_lab.toy.world_species` into the picture; :func:`rasterise` paints its part
labels at :data:`SUPERSAMPLE` times the size; :func:`compose` box-filters them down into
the image (coverage-weighted colours over the background, with a mild per-part shading)
and the part map; :func:`snap_keypoints` and :func:`tight_box` read the keypoints and
the object box off that part map. :mod:`e4e_lab.toy.world` is the public API.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from .world_species import KEYPOINT_PARTS, PART_INDEX, PART_NAMES, Creature, rotate

SUPERSAMPLE = 4
SHADING = 0.08
"""Largest relative brightness change across a part (a soft linear light gradient)."""

_WIDTH_FRACTION = (0.35, 0.7)  # creature width over image width, before the height cap
_MAX_TILT = math.radians(20.0)
_MARGIN = 0.03  # least gap between the creature and the image border, over the size


# --- placing and drawing --------------------------------------------------------------

def place(rng: np.random.Generator, creature: Creature, size: int) -> tuple[bool, Creature]:
    """Flip, tilt, scale and move the creature into the image; coordinates become pixels.

    The creature's width is a random fraction of the image width (less if its height
    would not fit) and its box lies fully inside the image.
    """
    flipped = bool(rng.random() < 0.5)
    tilt = rng.uniform(-_MAX_TILT, _MAX_TILT)
    fraction = rng.uniform(*_WIDTH_FRACTION)
    mirror = np.array((-1.0 if flipped else 1.0, 1.0))

    def pose(points: np.ndarray) -> np.ndarray:
        return rotate(points * mirror, tilt)

    shapes = [(name, pose(points)) for name, points in creature.shapes]
    corners = np.concatenate([points for _, points in shapes])
    low, high = corners.min(axis=0), corners.max(axis=0)
    extent = high - low
    room = size * (1.0 - 2.0 * _MARGIN)
    scale = min(fraction * size / extent[0], room / extent[1])
    start = size * _MARGIN + rng.uniform(0.0, 1.0, 2) * (room - extent * scale)

    def to_pixels(points: np.ndarray) -> np.ndarray:
        return (points - low) * scale + start

    return flipped, Creature(
        shapes=[(name, to_pixels(points)) for name, points in shapes],
        keypoints={k: to_pixels(pose(p)) for k, p in creature.keypoints.items()},
    )


def rasterise(shapes: list[tuple[str, np.ndarray]], size: int) -> np.ndarray:
    """Paint the polygons' part indices, back to front, at SUPERSAMPLE x the size."""
    canvas = Image.new("L", (size * SUPERSAMPLE,) * 2, 0)
    draw = ImageDraw.Draw(canvas)
    for name, points in shapes:
        # pixel-centre coordinates: PIL puts pixel k's centre at k, ours at k + 0.5
        xy = (points * SUPERSAMPLE - 0.5).ravel().tolist()
        draw.polygon(xy, fill=PART_INDEX[name])
    return np.asarray(canvas)


@lru_cache(maxsize=8)
def _cell_offsets(size: int) -> np.ndarray:
    """For each fine pixel, (index of the output pixel it falls in) * len(PART_NAMES)."""
    cell = np.arange(size * SUPERSAMPLE) // SUPERSAMPLE
    offsets = (cell[:, None] * size + cell[None, :]) * len(PART_NAMES)
    offsets.setflags(write=False)
    return offsets


def compose(rng: np.random.Generator, labels_hi: np.ndarray, size: int,
             colors: dict[str, tuple[int, int, int]], background: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """Box-filter the fine labels into (image uint8, part map uint8).

    Each output pixel counts its fine pixels per label: the counts give its colour (a
    coverage-weighted mix, which anti-aliases the edges) and its part (the label with the
    most fine pixels, the lower index on a tie).
    """
    n = len(PART_NAMES)
    counts = np.bincount((_cell_offsets(size) + labels_hi).ravel(), minlength=size * size * n)
    counts = counts.reshape(size * size, n)
    parts = counts.argmax(axis=1).astype(np.uint8).reshape(size, size)
    lut = np.zeros((n, 3), dtype=np.int64)
    for name, color in colors.items():
        lut[PART_INDEX[name]] = color
    mixed = counts @ lut + counts[:, :1] * background.reshape(-1, 3)  # integer matmul: exact
    mixed = mixed.reshape(size, size, 3) / SUPERSAMPLE ** 2
    shade = _shading(rng, parts)
    image = np.clip(np.rint(mixed * shade[:, :, None]), 0, 255).astype(np.uint8)
    return image, parts


def _shading(rng: np.random.Generator, parts: np.ndarray) -> np.ndarray:
    """(H, W) brightness factors: a linear light gradient across each part.

    The gradient is zero-mean over each part's pixels, so a part's mean colour stays its
    nominal colour; it reaches about +-SHADING at the part's ends. Background pixels get 1.
    """
    angle = rng.uniform(0.0, 2.0 * math.pi)
    size = parts.shape[0]
    c = np.arange(size) + 0.5
    proj = (math.cos(angle) * c[None, :] + math.sin(angle) * c[:, None]).ravel()
    flat = parts.ravel()
    n = np.maximum(np.bincount(flat, minlength=len(PART_NAMES)), 1)
    mean = np.bincount(flat, weights=proj, minlength=len(PART_NAMES)) / n
    rel = proj - mean[flat]
    spread = np.sqrt(np.bincount(flat, weights=rel * rel, minlength=len(PART_NAMES)) / n)
    ramp = np.clip(rel / (2.0 * spread[flat] + 1e-6), -1.0, 1.0)
    shade = np.where(flat == 0, 1.0, 1.0 + SHADING * ramp)
    return shade.reshape(parts.shape)


# --- ground truth ---------------------------------------------------------------------

def snap_keypoints(nominal: dict[str, np.ndarray], parts: np.ndarray,
                    visible: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """Keep each keypoint of a visible part, moved onto its part where it is not.

    A keypoint already on its part keeps its sub-pixel position; otherwise it moves to
    the centre of the nearest pixel of its part (parts cover each other, and the box
    filter may give an edge pixel to a neighbour).
    """
    size = parts.shape[0]
    snapped: dict[str, tuple[float, float]] = {}
    for name, (x, y) in nominal.items():
        part = KEYPOINT_PARTS[name]
        if part not in visible:
            continue
        label = PART_INDEX[part]
        i, j = math.floor(y), math.floor(x)
        if 0 <= i < size and 0 <= j < size and parts[i, j] == label:
            snapped[name] = (float(x), float(y))
            continue
        rows, cols = np.nonzero(parts == label)
        k = int(np.argmin((cols + 0.5 - x) ** 2 + (rows + 0.5 - y) ** 2))
        snapped[name] = (float(cols[k] + 0.5), float(rows[k] + 0.5))
    return snapped


def tight_box(parts: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the non-background pixels, x1 and y1 exclusive."""
    rows = np.flatnonzero(parts.any(axis=1))
    cols = np.flatnonzero(parts.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def interior(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose four neighbours carry the same label (image-border
    pixels are never interior). Edge pixels mix colours in the box filter, so colours
    are measured on interiors; ``world.part_mask(s, name, interior=True)`` is this
    and-ed with the part's pixels."""
    labels = np.asarray(labels)
    core = np.zeros(labels.shape, dtype=bool)
    c = labels[1:-1, 1:-1]
    core[1:-1, 1:-1] = ((c == labels[:-2, 1:-1]) & (c == labels[2:, 1:-1])
                        & (c == labels[1:-1, :-2]) & (c == labels[1:-1, 2:]))
    return core
