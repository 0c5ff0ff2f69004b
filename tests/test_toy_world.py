"""The procedural toy world: determinism, the seed split, and ground truth that matches
the pixels (part map, part colours, keypoints, box) at every size."""

from __future__ import annotations

import hashlib
import itertools
import time

import numpy as np
import pytest

from e4e_lab.toy.world import (
    DETAIL_PARTS, HELDOUT_START, KEYPOINT_PARTS, MIN_COLOR_DISTANCE, PART_INDEX, PART_NAMES,
    SPECIES, SPECIES_PARTS, TRAIN_SEEDS, Sample, colorize_parts, is_heldout, pair,
    part_mask, render_batch, sample,
)

SEEDS = range(200)


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return [sample(seed) for seed in SEEDS]


def _digest(s: Sample) -> str:
    return hashlib.sha256(s.image.tobytes() + s.parts.tobytes()).hexdigest()


def _major_parts(s: Sample) -> list[str]:
    return [p for p in SPECIES_PARTS[s.species] if p not in DETAIL_PARTS]


def _assert_consistent(s: Sample) -> None:
    """Keypoints on their parts, the tight box, visible parts listed in index order."""
    for name, (x, y) in s.keypoints.items():
        part = s.keypoint_parts[name]
        assert KEYPOINT_PARTS[name] == part
        assert s.parts[int(y), int(x)] == PART_INDEX[part], (s.seed, s.size, name)
    present = [PART_NAMES[i] for i in np.unique(s.parts) if i]
    assert list(s.part_names) == present
    assert set(s.part_colors) == set(present)
    assert {s.keypoint_parts[k] for k in s.keypoints} == set(present)
    rows, cols = np.nonzero(s.parts)
    assert s.box == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)


def test_same_seed_gives_the_same_bytes():
    for seed in (0, 5, HELDOUT_START + 3):
        a, b = sample(seed), sample(seed)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.parts, b.parts)
        assert (a.species, a.part_colors, a.keypoints, a.box) == \
            (b.species, b.part_colors, b.keypoints, b.box)
    assert len({_digest(sample(seed)) for seed in range(10)}) == 10


def test_pinned_pictures_do_not_change():
    # If this fails, the world changed: bump world.VERSION, retrain, re-run the benchmarks.
    assert _digest(sample(0)) == \
        "79e39530da05e026e9d6e28a7876751924bed4cd81ce9557929bd8d5fd5a00b1"
    assert _digest(sample(1_000_001)) == \
        "2c95b0e9ad845ff443573a8ba01f865e3009adc5f7b91c5f5a1c846af7b7faa0"


def test_seed_split():
    assert TRAIN_SEEDS == range(0, 1_000_000) and HELDOUT_START == 1_000_000
    assert not is_heldout(0) and not is_heldout(TRAIN_SEEDS[-1])
    assert is_heldout(HELDOUT_START) and is_heldout(HELDOUT_START + 12345)
    with pytest.raises(ValueError):
        is_heldout(-1)
    with pytest.raises(ValueError):
        sample(-1)


def test_shapes_dtypes_and_prompt(samples):
    s = samples[0]
    assert s.image.shape == (128, 128, 3) and s.image.dtype == np.uint8
    assert s.parts.shape == (128, 128) and s.parts.dtype == np.uint8
    assert s.parts.max() < len(PART_NAMES)
    assert s.size == 128 and s.seed == 0
    assert s.prompt == f"a photo of a {s.species}"
    assert colorize_parts(s.parts).shape == (128, 128, 3)


def test_every_species_shows_its_parts(samples):
    assert {s.species for s in samples} == set(SPECIES)
    for s in samples:
        major = _major_parts(s)
        assert len(major) >= 4
        for name in major:
            assert part_mask(s, name).sum() >= 20, (s.seed, name)
        assert set(s.part_names) <= set(SPECIES_PARTS[s.species])


def test_poses_and_backgrounds_vary(samples):
    assert {s.flipped for s in samples} == {False, True}
    assert {s.background for s in samples} == {"flat", "gradient", "noise", "stripes", "checks"}
    widths = [(s.box[2] - s.box[0]) / s.size for s in samples]
    assert 0.25 <= min(widths) < 0.45 and 0.6 < max(widths) <= 0.75


def test_species_can_be_forced():
    for species, seed in itertools.product(SPECIES, range(3)):
        s = sample(seed, species=species)
        assert s.species == species and s.prompt == f"a photo of a {species}"
    with pytest.raises(ValueError):
        sample(0, species="cat")


def test_part_pixels_have_the_part_colour(samples):
    for s in samples:
        for name in s.part_names:
            nominal = np.array(s.part_colors[name], dtype=float)
            core = part_mask(s, name, interior=True)
            if core.any():
                inner = s.image[core].mean(axis=0)
                assert np.linalg.norm(inner - nominal) <= 20, (s.seed, name)
            if name not in DETAIL_PARTS:  # edges blend with the neighbours
                every = s.image[part_mask(s, name)].mean(axis=0)
                assert np.linalg.norm(every - nominal) <= 30, (s.seed, name)


def test_part_colours_are_far_apart(samples):
    for s in samples:
        colors = [np.array(c, dtype=float) for c in s.part_colors.values()]
        for a, b in itertools.combinations(colors + [np.array(s.background_color)], 2):
            assert np.linalg.norm(a - b) >= MIN_COLOR_DISTANCE, s.seed
    # colours are drawn independently of the part: every part takes many hues
    heads = {tuple(s.part_colors["head"]) for s in samples}
    assert len(heads) > 150


def test_ground_truth_is_consistent(samples):
    for s in samples:
        _assert_consistent(s)


@pytest.mark.parametrize("size", [64, 256])
def test_other_sizes(size):
    for seed in range(0, 30, 1 if size == 64 else 3):
        s = sample(seed, size)
        assert s.image.shape == (size, size, 3) and s.parts.shape == (size, size)
        _assert_consistent(s)
        assert 0.25 <= (s.box[2] - s.box[0]) / size <= 0.75
        assert s.species == sample(seed).species


def test_pair_is_one_species_from_held_out_seeds():
    for index in range(6):
        structure, appearance = pair(index)
        assert structure.species == appearance.species
        assert (structure.seed, appearance.seed) == \
            (HELDOUT_START + 2 * index, HELDOUT_START + 2 * index + 1)
        assert is_heldout(structure.seed) and is_heldout(appearance.seed)
        assert structure.part_colors != appearance.part_colors
        assert _digest(pair(index)[1]) == _digest(appearance)
    train_structure, train_appearance = pair(4, size=64, heldout=False)
    assert (train_structure.seed, train_appearance.seed) == (8, 9)
    assert train_structure.size == 64
    with pytest.raises(ValueError):
        pair(HELDOUT_START // 2, heldout=False)


def test_render_batch_stacks_samples():
    batch = render_batch([3, 1_000_004], size=64)
    assert batch.images.shape == (2, 64, 64, 3) and batch.parts.shape == (2, 64, 64)
    for i, seed in enumerate(batch.seeds):
        s = sample(seed, 64)
        assert np.array_equal(batch.images[i], s.image) and batch.species[i] == s.species
        assert batch.prompts[i] == s.prompt


def test_part_mask():
    s = sample(11)
    head = part_mask(s, "head")
    core = part_mask(s, "head", interior=True)
    assert head.any() and core.any() and not (core & ~head).any() and core.sum() < head.sum()
    with pytest.raises(ValueError):
        part_mask(s, "horn")


def test_rendering_is_fast():
    start = time.perf_counter()
    for seed in range(5000, 5200):
        sample(seed)
    assert time.perf_counter() - start < 20.0
