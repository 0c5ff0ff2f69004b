"""The toy world: seeded flat-colour creatures whose parts, colours and keypoints are known.

Each seed draws one creature, a fish, a bird or a dog, in a random pose (position, size,
horizontal flip, a small tilt, and the angles of its tail, fins, wings, legs, head and
ears) over a muted background (flat, gradient, smooth noise, stripes or checks). Every
part gets its own colour, drawn independently of the part (hue uniform, saturation and
value in [0.35, 1]) and rejected until all parts of the creature differ pairwise, and
from the background colour, by at least `MIN_COLOR_DISTANCE` in RGB. Parts are flat
colours with a mild (+-8%) brightness gradient, so "the colour of the head" is well
defined; because colour never tells the part, a model can only transfer the head's colour
to the head by matching shapes.

Parts (index into `PART_NAMES`, 0 is the background) and keypoints (`KEYPOINT_PARTS`):

- fish: body, head, tail, fins, eye; head, eye, body_center, tail_tip, dorsal_fin_tip,
  pectoral_fin_tip
- bird: body, head, tail, legs, wings, beak, eye; head, eye, beak_tip, body_center,
  tail_tip, wing_tip, front_foot, hind_foot
- dog: body, head, tail, legs, ears, eye; head, nose, eye, ear_tip, body_center,
  tail_tip, front_foot, hind_foot

The eye and the beak (`DETAIL_PARTS`) are small (a few to a few dozen pixels at 128 px,
possibly gone at 64 px); every other part covers at least 20 pixels at 128 px. Only the
parts visible in a sample are listed, and each keypoint lies on a pixel of its part.

Seeds ``0 <= seed < 1_000_000`` (`TRAIN_SEEDS`) are for training; seeds from
`HELDOUT_START` on are held out for examples and benchmarks and must never be trained on.

Usage::

    from e4e_lab.toy.world import sample, pair, part_mask
    s = sample(7)                   # Sample: image, parts, part_colors, keypoints, ...
    s.prompt                        # "a photo of a dog"
    head = part_mask(s, "head")     # (H, W) bool
    structure, appearance = pair(0) # two held-out creatures of one species

Shapes are drawn at `SUPERSAMPLE` times the size and box-filtered down, which
anti-aliases the edges; the part map holds, per pixel, the label covering most of it.
Rendering uses only seeded PCG64 draws (no global RNG), Pillow's polygon fill and
elementwise float arithmetic (no vectorised transcendental functions, no BLAS), so a seed
and a size give the same bytes on any machine; the tests pin two pictures' checksums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable

import numpy as np
from PIL import Image, ImageDraw

SPECIES: tuple[str, ...] = ("fish", "bird", "dog")
PART_NAMES: tuple[str, ...] = (
    "background", "body", "head", "tail", "legs", "wings", "fins", "ears", "beak", "eye",
)
PART_INDEX: dict[str, int] = {name: i for i, name in enumerate(PART_NAMES)}
SPECIES_PARTS: dict[str, tuple[str, ...]] = {
    "fish": ("body", "head", "tail", "fins", "eye"),
    "bird": ("body", "head", "tail", "legs", "wings", "beak", "eye"),
    "dog": ("body", "head", "tail", "legs", "ears", "eye"),
}
DETAIL_PARTS: frozenset[str] = frozenset({"eye", "beak"})
"""Small parts: too few pixels to measure a colour reliably, absent at small sizes."""

KEYPOINT_PARTS: dict[str, str] = {
    "head": "head", "nose": "head", "eye": "eye", "beak_tip": "beak",
    "body_center": "body", "tail_tip": "tail", "wing_tip": "wings",
    "dorsal_fin_tip": "fins", "pectoral_fin_tip": "fins",
    "front_foot": "legs", "hind_foot": "legs", "ear_tip": "ears",
}
"""Every keypoint name and the part whose pixels it lies on."""

VERSION = 1
"""Bumped whenever a seed's drawing changes: models and numbers from another version are
stale."""

TRAIN_SEEDS = range(0, 1_000_000)
HELDOUT_START = 1_000_000

MIN_COLOR_DISTANCE = 60.0
"""Least RGB distance between two parts of a creature, and between a part and the
background's mean colour."""
SUPERSAMPLE = 4
SHADING = 0.08
"""Largest relative brightness change across a part (a soft linear light gradient)."""

_BACKGROUNDS = ("flat", "gradient", "noise", "stripes", "checks")
_WIDTH_FRACTION = (0.35, 0.7)  # creature width over image width, before the height cap
_MAX_TILT = math.radians(20.0)
_MARGIN = 0.03  # least gap between the creature and the image border, over the size
_CIRCLE = np.array([(math.cos(2 * math.pi * k / 64), math.sin(2 * math.pi * k / 64))
                    for k in range(64)])


# --- the sample -----------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Sample:
    """One rendered creature with its ground truth.

    Coordinates are pixels, x right and y down, with pixel (row i, column j) covering
    [j, j + 1) x [i, i + 1): its centre is (j + 0.5, i + 0.5), and a keypoint (x, y) lies
    on ``parts[int(y), int(x)]``.
    """

    image: np.ndarray  # (H, W, 3) uint8
    parts: np.ndarray  # (H, W) uint8, indices into PART_NAMES
    species: str
    part_names: tuple[str, ...]  # parts visible in `parts`, in PART_NAMES order
    part_colors: dict[str, tuple[int, int, int]]  # nominal colour of each visible part
    keypoints: dict[str, tuple[float, float]]  # name -> (x, y), on its part's pixels
    keypoint_parts: dict[str, str]  # keypoint name -> part name
    box: tuple[int, int, int, int]  # tight (x0, y0, x1, y1) of the creature, x1/y1 excl.
    seed: int
    size: int
    background: str  # the background kind, one of flat/gradient/noise/stripes/checks
    background_color: tuple[int, int, int]  # the background's nominal mean colour
    flipped: bool  # True when the creature faces left

    @property
    def prompt(self) -> str:
        return f"a photo of a {self.species}"


@dataclass(frozen=True, eq=False)
class Batch:
    """Stacked samples for training: images (N, H, W, 3) uint8, parts (N, H, W) uint8."""

    images: np.ndarray
    parts: np.ndarray
    species: tuple[str, ...]
    seeds: tuple[int, ...]

    @property
    def prompts(self) -> tuple[str, ...]:
        return tuple(f"a photo of a {s}" for s in self.species)


def is_heldout(seed: int) -> bool:
    """True for seeds reserved for evaluation (never to be trained on)."""
    if seed < 0:
        raise ValueError(f"seeds are non-negative, got {seed}")
    return seed >= HELDOUT_START


def sample(seed: int, size: int = 128, species: str | None = None) -> Sample:
    """Render the creature of `seed` at `size` x `size` pixels.

    `species` forces the species (the rest of the draw is unchanged); None draws it from
    the seed.
    """
    seed = _check_seed(seed)
    if size < 16:
        raise ValueError(f"size must be at least 16, got {size}")
    rng = np.random.default_rng(seed)
    drawn = SPECIES[int(rng.integers(len(SPECIES)))]
    species = drawn if species is None else species
    if species not in SPECIES:
        raise ValueError(f"unknown species {species!r}; expected one of {SPECIES}")
    background, bg_color, bg_image = _background(rng, size)
    colors = _part_colors(rng, SPECIES_PARTS[species], bg_color)
    creature = _BUILDERS[species](rng)
    flipped, placed = _place(rng, creature, size)
    labels_hi = _rasterise(placed.shapes, size)
    image, parts = _compose(rng, labels_hi, size, colors, bg_image)
    present = np.bincount(parts.ravel(), minlength=len(PART_NAMES)) > 0
    visible = tuple(n for n in PART_NAMES[1:] if n in colors and present[PART_INDEX[n]])
    keypoints = _snap_keypoints(placed.keypoints, parts, visible)
    return Sample(
        image=image, parts=parts, species=species, part_names=visible,
        part_colors={n: colors[n] for n in visible}, keypoints=keypoints,
        keypoint_parts={k: KEYPOINT_PARTS[k] for k in keypoints}, box=_tight_box(parts),
        seed=seed, size=size, background=background, background_color=bg_color,
        flipped=flipped,
    )


def pair(index: int, size: int = 128, heldout: bool = True) -> tuple[Sample, Sample]:
    """The `index`-th (structure, appearance) pair: one species, two different seeds.

    Structure seed = base + 2 * index, appearance seed = base + 2 * index + 1, where base
    is `HELDOUT_START` (heldout=True) or 0; the appearance creature is forced to the
    structure's species, its colours and pose are drawn independently.
    """
    if index < 0:
        raise ValueError(f"index must be non-negative, got {index}")
    base = HELDOUT_START if heldout else 0
    structure_seed = base + 2 * index
    if not heldout and structure_seed + 1 >= HELDOUT_START:
        raise ValueError(f"index {index} runs past the training seeds")
    structure = sample(structure_seed, size)
    appearance = sample(structure_seed + 1, size, species=structure.species)
    return structure, appearance


def render_batch(seeds: Iterable[int], size: int = 128, species: str | None = None) -> Batch:
    """Render many seeds and stack them (for training loops)."""
    samples = [sample(s, size, species) for s in seeds]
    if not samples:
        raise ValueError("render_batch needs at least one seed")
    return Batch(
        images=np.stack([s.image for s in samples]),
        parts=np.stack([s.parts for s in samples]),
        species=tuple(s.species for s in samples),
        seeds=tuple(s.seed for s in samples),
    )


def part_mask(sample: Sample, name: str, interior: bool = False) -> np.ndarray:
    """(H, W) bool mask of the pixels of part `name` (all False when it is not visible).

    interior=True keeps only pixels whose four neighbours are of the same part: edge
    pixels mix colours with the box filter, so measure a part's colour on its interior.
    """
    if name not in PART_INDEX:
        raise ValueError(f"unknown part {name!r}; expected one of {PART_NAMES}")
    mask = sample.parts == PART_INDEX[name]
    if interior:
        core = np.zeros_like(mask)
        core[1:-1, 1:-1] = (mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1]
                            & mask[1:-1, :-2] & mask[1:-1, 2:])
        mask = core
    return mask


_PALETTE = np.array([
    (0, 0, 0), (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66),
    (0, 114, 178), (213, 94, 0), (204, 121, 167), (255, 255, 255), (200, 30, 30),
], dtype=np.uint8)


def colorize_parts(parts: np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 picture of a part map, one fixed colour per part index."""
    return _PALETTE[parts]


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


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


def _part_colors(rng: np.random.Generator, names: tuple[str, ...],
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

def _background(rng: np.random.Generator, size: int
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


# --- shapes ---------------------------------------------------------------------------
# Creatures are built facing right in model units (body length about 0.7), x right and
# y down; a positive angle turns +x towards +y (clockwise on screen).

Point = tuple[float, float]


@dataclass
class _Creature:
    """Polygons in drawing order (back to front) and nominal keypoints."""

    shapes: list[tuple[str, np.ndarray]]
    keypoints: dict[str, np.ndarray]


def _rotate(points: np.ndarray | list, angle: float, about: Point = (0.0, 0.0)) -> np.ndarray:
    p = np.asarray(points, dtype=float) - about
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([p[..., 0] * c - p[..., 1] * s, p[..., 0] * s + p[..., 1] * c], -1) + about


def _ellipse(center: Point | np.ndarray, rx: float, ry: float, angle: float = 0.0
             ) -> np.ndarray:
    return _rotate(_CIRCLE * (rx, ry), angle) + center


def _limb(a: np.ndarray, b: np.ndarray, ra: float, rb: float) -> np.ndarray:
    """A rounded, possibly tapered stroke from a (radius ra) to b (radius rb)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    heading = math.atan2(b[1] - a[1], b[0] - a[0])
    half = [-math.pi / 2 + math.pi * k / 12 for k in range(13)]
    cap_b = [_polar(b, rb, heading + t) for t in half]
    cap_a = [_polar(a, ra, heading + math.pi + t) for t in half]
    return np.array(cap_b + cap_a)


def _polar(origin: Point | np.ndarray, length: float, angle: float) -> np.ndarray:
    x, y = origin
    return np.array((x + length * math.cos(angle), y + length * math.sin(angle)))


def _fish(rng: np.random.Generator) -> _Creature:
    """An oval body with a head cap behind a gill line, forked tail and three fins."""
    rx, ry = 0.36, rng.uniform(0.16, 0.25)
    gill = rng.uniform(0.1, 0.17)
    tail_angle = rng.uniform(-0.45, 0.45)
    dorsal_tip = (rng.uniform(-0.2, 0.02), -ry - rng.uniform(0.12, 0.2))
    anal_tip = (rng.uniform(-0.26, -0.1), ry + rng.uniform(0.08, 0.14))
    pectoral_angle = math.pi - rng.uniform(0.3, 1.0)
    eye_r = rng.uniform(0.035, 0.05)

    half_angle = math.acos(gill / rx)
    arc = [(rx * math.cos(t), ry * math.sin(t))
           for t in np.linspace(-half_angle, half_angle, 24)]
    edge = ry * math.sin(half_angle)
    gill_line = [(gill - 0.04 * math.cos(t), edge * math.sin(t))
                 for t in np.linspace(math.pi / 2, -math.pi / 2, 12)]
    head = np.array(arc + gill_line)

    tail_base = (-rx + 0.05, 0.0)
    tail = _rotate(np.array([(0.03, -0.06), (-0.26, -0.23), (-0.15, 0.0), (-0.26, 0.23),
                             (0.03, 0.06)]) + tail_base, tail_angle, tail_base)
    dorsal = np.array([(0.12, -0.7 * ry), dorsal_tip, (-0.2, -0.6 * ry)])
    anal = np.array([(-0.02, 0.7 * ry), anal_tip, (-0.2, 0.6 * ry)])
    pectoral_base = (gill - 0.03, 0.25 * ry)
    pectoral = _ellipse(_polar(pectoral_base, 0.09, pectoral_angle), 0.1, 0.04, pectoral_angle)
    eye = ((gill + rx) / 2, -0.3 * ry)
    return _Creature(
        shapes=[("tail", tail), ("fins", dorsal), ("fins", anal),
                ("body", _ellipse((0, 0), rx, ry)), ("head", head), ("fins", pectoral),
                ("eye", _ellipse(eye, eye_r, eye_r))],
        keypoints={
            "head": np.array(((gill + rx) / 2, 0.1 * ry)), "eye": np.array(eye),
            "body_center": np.array((-0.05, -0.2 * ry)),
            "tail_tip": _rotate(np.array((-0.26, -0.23)) + tail_base, tail_angle, tail_base),
            "dorsal_fin_tip": np.array(dorsal_tip),
            "pectoral_fin_tip": _polar(pectoral_base, 0.19, pectoral_angle),
        },
    )


def _bird(rng: np.random.Generator) -> _Creature:
    """A tilted oval body, round head with a beak, fan tail, two wings, two thin legs."""
    rx, ry = 0.3, rng.uniform(0.16, 0.21)
    pitch = -rng.uniform(0.0, 0.45)
    head_c = np.array((0.27, -ry - rng.uniform(0.0, 0.05)))
    head_r = rng.uniform(0.11, 0.14)
    beak_angle = rng.uniform(-0.35, 0.35)
    beak_len = head_r + rng.uniform(0.1, 0.16)
    tail_angle = rng.uniform(-0.3, 0.5)
    wing_angle = rng.uniform(0.0, 1.5)
    swings = rng.uniform(-0.35, 0.35, 2)
    leg_len = ry * 0.5 + rng.uniform(0.22, 0.3)
    eye_r = rng.uniform(0.028, 0.038)

    beak_tip = _rotate(np.array((beak_len, 0.0)), beak_angle) + head_c
    beak = np.array([_rotate(np.array((0.02, -0.07)), beak_angle) + head_c, beak_tip,
                     _rotate(np.array((0.02, 0.07)), beak_angle) + head_c])
    tail_base = (-rx + 0.05, -0.02)
    tail_local = np.array([(0.04, -0.06), (-0.28, -0.11), (-0.31, 0.0), (-0.28, 0.1),
                           (0.04, 0.06)]) + tail_base
    tail = _rotate(tail_local, tail_angle, tail_base)
    wing_local = np.array([(0.04, 0.0), (0.02, -0.07), (-0.12, -0.09), (-0.3, -0.06),
                           (-0.46, 0.0), (-0.3, 0.05), (-0.12, 0.08), (0.0, 0.06)])
    shoulder = np.array((0.1, -0.06))
    near_wing = _rotate(wing_local, wing_angle) + shoulder
    far_wing = _rotate(wing_local, wing_angle + 0.3) + shoulder + (-0.03, -0.02)
    eye = head_c + _rotate(np.array((0.04, -0.03)), beak_angle)
    neck = _limb((0.16, -0.05), head_c, 0.09, 0.08)
    frame = [("wings", far_wing), ("tail", tail), ("body", _ellipse((0, 0), rx, ry)),
             ("body", neck), ("beak", beak), ("head", _ellipse(head_c, head_r, head_r)),
             ("wings", near_wing), ("eye", _ellipse(eye, eye_r, eye_r))]
    frame = [(name, _rotate(points, pitch)) for name, points in frame]

    legs, feet = [], []
    for hip, swing in zip(((0.04, 0.6 * ry), (-0.07, 0.6 * ry)), swings):
        hip = _rotate(np.array(hip), pitch)
        ankle = _polar(hip, leg_len, math.pi / 2 + swing)
        toe = _polar(ankle, 0.1, 0.3 * swing)
        legs += [("legs", _limb(hip, ankle, 0.034, 0.028)),
                 ("legs", _limb(ankle, toe, 0.026, 0.02))]
        feet.append(toe)
    keypoints = {
        "head": head_c, "eye": eye, "beak_tip": beak_tip,
        "body_center": np.array((-0.05, 0.05)),
        "tail_tip": _rotate(np.array((-0.31, 0.0)) + tail_base, tail_angle, tail_base),
        "wing_tip": _rotate(np.array((-0.46, 0.0)), wing_angle) + shoulder,
    }
    keypoints = {k: _rotate(p, pitch) for k, p in keypoints.items()}
    keypoints["front_foot"], keypoints["hind_foot"] = feet
    return _Creature(shapes=legs + frame, keypoints=keypoints)


def _dog(rng: np.random.Generator) -> _Creature:
    """A long body on four legs with paws, a neck, a round head with a snout, ears, tail."""
    rx, ry = 0.34, rng.uniform(0.14, 0.18)
    head_c = np.array((rx + rng.uniform(0.0, 0.05), -ry - rng.uniform(0.02, 0.08)))
    head_r = rng.uniform(0.11, 0.13)
    tilt = rng.uniform(-0.3, 0.3)
    snout_ry = rng.uniform(0.055, 0.07)
    floppy = bool(rng.random() < 0.65)
    ear_swing = rng.uniform(-0.3, 0.3)
    tail_raise = rng.uniform(0.15, 1.3)
    tail_len = rng.uniform(0.26, 0.34)
    swings = rng.uniform(-0.35, 0.35, 4)
    leg_len = ry * 0.4 + rng.uniform(0.26, 0.32)
    eye_r = rng.uniform(0.026, 0.034)

    def on_head(x: float, y: float) -> np.ndarray:
        return _rotate(np.array((x, y)), tilt) + head_c

    snout = _ellipse(on_head(0.12, 0.035), 0.1, snout_ry, tilt)
    if floppy:
        ear_angle = tilt + ear_swing
        ear_c = on_head(-0.04, 0.02)
        ear = _ellipse(ear_c, 0.065, 0.13, ear_angle)
        ear_tip = ear_c + _rotate(np.array((0.0, 0.13)), ear_angle)
    else:
        ear_tip = on_head(-0.07 + 0.06 * ear_swing, -0.28)
        ear = np.array([on_head(-0.13, -0.03), ear_tip, on_head(0.03, -0.1)])
    tail_base = np.array((-rx + 0.05, -0.4 * ry))
    tail_end = _polar(tail_base, tail_len, math.pi + tail_raise)
    eye = on_head(0.035, -0.03)

    hips = [(0.25, 0.0), (-0.13, 0.0), (0.17, 0.04), (-0.22, 0.04)]  # far pair, near pair
    paws = [_polar(hip, leg_len, math.pi / 2 + swing) for hip, swing in zip(hips, swings)]
    legs = [[("legs", _limb(hip, paw, 0.06, 0.05)),
             ("legs", _ellipse(paw + (0.03, 0.01), 0.065, 0.04))]
            for hip, paw in zip(hips, paws)]
    return _Creature(
        shapes=legs[0] + legs[1] + [("tail", _limb(tail_base, tail_end, 0.055, 0.035)),
                                    ("body", _ellipse((0, 0), rx, ry)),
                                    ("body", _limb((0.2, -0.04), head_c, 0.11, 0.09))]
        + legs[2] + legs[3] + [("head", _ellipse(head_c, head_r, head_r)), ("head", snout),
                               ("ears", ear), ("eye", _ellipse(eye, eye_r, eye_r))],
        keypoints={
            "head": on_head(0.0, 0.03), "nose": on_head(0.21, 0.035), "eye": eye,
            "ear_tip": ear_tip, "body_center": np.array((-0.05, -0.02)),
            "tail_tip": tail_end, "front_foot": paws[2], "hind_foot": paws[3],
        },
    )


_BUILDERS: dict[str, Callable[[np.random.Generator], _Creature]] = {
    "fish": _fish, "bird": _bird, "dog": _dog,
}


# --- placing and drawing --------------------------------------------------------------

def _place(rng: np.random.Generator, creature: _Creature, size: int) -> tuple[bool, _Creature]:
    """Flip, tilt, scale and move the creature into the image; coordinates become pixels.

    The creature's width is a random fraction of the image width (less if its height
    would not fit) and its box lies fully inside the image.
    """
    flipped = bool(rng.random() < 0.5)
    tilt = rng.uniform(-_MAX_TILT, _MAX_TILT)
    fraction = rng.uniform(*_WIDTH_FRACTION)
    mirror = np.array((-1.0 if flipped else 1.0, 1.0))

    def pose(points: np.ndarray) -> np.ndarray:
        return _rotate(points * mirror, tilt)

    shapes = [(name, pose(points)) for name, points in creature.shapes]
    corners = np.concatenate([points for _, points in shapes])
    low, high = corners.min(axis=0), corners.max(axis=0)
    extent = high - low
    room = size * (1.0 - 2.0 * _MARGIN)
    scale = min(fraction * size / extent[0], room / extent[1])
    start = size * _MARGIN + rng.uniform(0.0, 1.0, 2) * (room - extent * scale)

    def to_pixels(points: np.ndarray) -> np.ndarray:
        return (points - low) * scale + start

    return flipped, _Creature(
        shapes=[(name, to_pixels(points)) for name, points in shapes],
        keypoints={k: to_pixels(pose(p)) for k, p in creature.keypoints.items()},
    )


def _rasterise(shapes: list[tuple[str, np.ndarray]], size: int) -> np.ndarray:
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


def _compose(rng: np.random.Generator, labels_hi: np.ndarray, size: int,
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

def _snap_keypoints(nominal: dict[str, np.ndarray], parts: np.ndarray,
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


def _tight_box(parts: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the non-background pixels, x1 and y1 exclusive."""
    rows = np.flatnonzero(parts.any(axis=1))
    cols = np.flatnonzero(parts.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
