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

This module is the API: the `Sample`, the seed split and the functions above. How a
creature is drawn lives beside it: `world_species` (parts, keypoints and the shape of
each species), `world_scenes` (backgrounds and part colours) and `world_render`
(posing, rasterising, shading, and reading the ground truth off the part map).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from .world_render import (SHADING, SUPERSAMPLE, compose, place, rasterise, snap_keypoints,
                           tight_box)
from .world_render import interior as _interior
from .world_scenes import MIN_COLOR_DISTANCE, background, part_colors
from .world_species import (BUILDERS, DETAIL_PARTS, KEYPOINT_PARTS, PART_INDEX, PART_NAMES,
                            SPECIES, SPECIES_PARTS)

__all__ = [
    "SPECIES", "PART_NAMES", "PART_INDEX", "SPECIES_PARTS", "DETAIL_PARTS", "KEYPOINT_PARTS",
    "VERSION", "TRAIN_SEEDS", "HELDOUT_START", "MIN_COLOR_DISTANCE", "SUPERSAMPLE", "SHADING",
    "Sample", "Batch", "prompt_of", "is_heldout", "sample", "pair", "render_batch", "part_mask",
    "colorize_parts",
]

VERSION = 1
"""Bumped whenever a seed's drawing changes: models and numbers from another version are
stale."""

TRAIN_SEEDS = range(0, 1_000_000)
HELDOUT_START = 1_000_000


def prompt_of(species: str) -> str:
    """The caption of a creature of ``species``, which the toy model was trained on."""
    return f"a photo of a {species}"


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
        return prompt_of(self.species)


@dataclass(frozen=True, eq=False)
class Batch:
    """Stacked samples for training: images (N, H, W, 3) uint8, parts (N, H, W) uint8."""

    images: np.ndarray
    parts: np.ndarray
    species: tuple[str, ...]
    seeds: tuple[int, ...]

    @property
    def prompts(self) -> tuple[str, ...]:
        return tuple(prompt_of(s) for s in self.species)


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
    kind, bg_color, bg_image = background(rng, size)
    colors = part_colors(rng, SPECIES_PARTS[species], bg_color)
    creature = BUILDERS[species](rng)
    flipped, placed = place(rng, creature, size)
    labels_hi = rasterise(placed.shapes, size)
    image, parts = compose(rng, labels_hi, size, colors, bg_image)
    present = np.bincount(parts.ravel(), minlength=len(PART_NAMES)) > 0
    visible = tuple(n for n in PART_NAMES[1:] if n in colors and present[PART_INDEX[n]])
    keypoints = snap_keypoints(placed.keypoints, parts, visible)
    return Sample(
        image=image, parts=parts, species=species, part_names=visible,
        part_colors={n: colors[n] for n in visible}, keypoints=keypoints,
        keypoint_parts={k: KEYPOINT_PARTS[k] for k in keypoints}, box=tight_box(parts),
        seed=seed, size=size, background=kind, background_color=bg_color,
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
        mask = mask & _interior(sample.parts)
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
