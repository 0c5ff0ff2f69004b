"""The toy-world quality metrics on cases whose answer is known, and the quality script
run once at a tiny size (no thresholds on quality: the tiny model has random weights)."""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from e4e_lab.toy import quality as q
from e4e_lab.toy import world

ROOT = Path(__file__).resolve().parents[1]


def _paint(parts: np.ndarray, colors: dict, background: np.ndarray) -> np.ndarray:
    """``background`` with every part of ``parts`` painted in its colour from ``colors``."""
    out = background.astype(np.float64).copy()
    for name, rgb in colors.items():
        out[parts == world.PART_INDEX[name]] = rgb
    return out


def _square_scene(bg=(90, 100, 110), fg=(220, 40, 40), at=(10, 10), side=20, size=48,
                  gradient: bool = False):
    """A flat (or horizontally graded) background with one square object."""
    img = np.empty((size, size, 3))
    img[:] = bg
    if gradient:
        img += np.linspace(-20, 20, size)[None, :, None]
    mask = np.zeros((size, size), dtype=bool)
    x, y = at
    mask[y:y + side, x:x + side] = True
    img[mask] = fg
    return img, mask


# ------------------------------------------------------------ part colour --

def test_interior_is_the_worlds_interior_part_mask():
    s = world.sample(world.HELDOUT_START + 3, 64)
    core = q.interior(s.parts)
    for name in s.part_names:
        expected = world.part_mask(s, name, interior=True)
        assert np.array_equal(core & (s.parts == world.PART_INDEX[name]), expected), name


def test_reference_colours_on_the_target_parts_score_one():
    s, a = world.pair(0, 64)
    result = _paint(s.parts, a.part_colors, s.image)
    score = q.part_colour_accuracy(result, s.parts, a.part_colors)
    assert score.accuracy == 1.0
    assert score.pixels > 100
    names = [n for n in a.part_colors if n not in world.DETAIL_PARTS]
    assert score.chance == pytest.approx(1 / len(names))
    assert not set(score.parts) & world.DETAIL_PARTS
    # a (3, H, W) tensor in [0, 1] is read the same way
    tensor = torch.from_numpy(result / 255.0).permute(2, 0, 1).float()
    assert q.part_colour_accuracy(tensor, s.parts, a.part_colors).accuracy == 1.0


def test_swapped_part_colours_score_zero():
    s, a = world.pair(1, 64)
    names = [n for n in a.part_colors if n not in world.DETAIL_PARTS]
    rotated = {n: a.part_colors[names[(k + 1) % len(names)]] for k, n in enumerate(names)}
    result = _paint(s.parts, rotated, s.image)
    assert q.part_colour_accuracy(result, s.parts, a.part_colors).accuracy == 0.0


def test_parts_missing_in_the_reference_and_detail_parts_are_skipped():
    parts = np.zeros((12, 12), dtype=np.uint8)
    parts[1:6, 1:11] = world.PART_INDEX["body"]
    parts[6:11, 1:6] = world.PART_INDEX["head"]
    parts[6:11, 6:11] = world.PART_INDEX["tail"]
    colors = {"body": (200, 0, 0), "head": (0, 200, 0), "eye": (0, 0, 200)}  # no tail
    result = np.zeros((12, 12, 3))
    result[parts == world.PART_INDEX["body"]] = (200, 0, 0)
    result[parts == world.PART_INDEX["head"]] = (0, 120, 190)  # nearest: eye (skipped), head
    result[parts == world.PART_INDEX["tail"]] = (0, 0, 0)
    score = q.part_colour_accuracy(result, parts, colors)
    assert score.chance == 0.5  # body and head: the eye is a detail part
    assert score.parts == ("body", "head")
    # body interior 3x8, head interior 3x3; head pixels are nearer to green (head) than red
    assert score.pixels == 24 + 9
    assert score.accuracy == 1.0
    assert math.isnan(q.part_colour_accuracy(result, parts, {"wings": (1, 2, 3)}).accuracy)


def test_the_structure_image_itself_scores_about_chance():
    accuracy, chance = [], []
    for i in range(30):
        s, a = world.pair(i, 64)
        score = q.part_colour_accuracy(s.image, s.parts, a.part_colors)
        accuracy.append(score.accuracy)
        chance.append(score.chance)
    assert 0.5 * np.mean(chance) < np.nanmean(accuracy) < 1.5 * np.mean(chance)


# ------------------------------------------------------------- background --

def test_background_error_of_the_structure_itself_is_zero():
    s, _ = world.pair(0, 64)
    score = q.background_error(s.image, s.image, s.parts > 0)
    assert score.mae == 0.0 and score.psnr == math.inf
    assert score.pixels == int((~q.dilate(s.parts > 0, q.BACKGROUND_DILATION)).sum())


def test_background_error_ignores_the_dilated_object_and_measures_the_rest():
    img, mask = _square_scene()
    changed = img.copy()
    changed[q.dilate(mask, 3)] = (0, 255, 0)  # the object and its edge band: not counted
    assert q.background_error(changed, img, mask, dilation=3).mae == 0.0
    brighter = img + 10.0
    score = q.background_error(brighter, img, mask)
    assert score.mae == pytest.approx(10.0)
    assert score.psnr == pytest.approx(20 * math.log10(255 / 10))


def test_dilate_grows_by_a_square():
    m = np.zeros((7, 7), dtype=bool)
    m[3, 3] = True
    grown = q.dilate(m, 1)
    assert grown.sum() == 9 and grown[2:5, 2:5].all()
    assert np.array_equal(q.dilate(m, 0), m)


# -------------------------------------------------------------- silhouette --

@pytest.mark.parametrize("gradient", [False, True])
def test_the_structure_image_has_its_own_silhouette(gradient):
    img, mask = _square_scene(gradient=gradient)
    assert q.silhouette_iou(q.result_silhouette(img, img, mask), mask) == 1.0


def test_world_structures_recover_their_silhouette():
    for i in range(5):
        s, _ = world.pair(i, 64)
        obj = s.parts > 0
        assert q.silhouette_iou(q.result_silhouette(s.image, s.image, obj), obj) > 0.95


def test_a_moved_or_missing_object_lowers_the_iou():
    img, mask = _square_scene(at=(10, 10))
    moved, _ = _square_scene(at=(20, 10))  # 10 px to the right: overlap 200, union 600
    assert q.silhouette_iou(q.result_silhouette(moved, img, mask), mask) == pytest.approx(1 / 3)
    empty = np.empty_like(img)
    empty[:] = (90, 100, 110)  # background only: nothing is object
    assert q.silhouette_iou(q.result_silhouette(empty, img, mask), mask) == 0.0
    recoloured, _ = _square_scene(fg=(20, 200, 60))  # another colour, same outline
    assert q.silhouette_iou(q.result_silhouette(recoloured, img, mask), mask) == 1.0


def test_background_estimate_fills_the_object_from_its_surroundings():
    img, mask = _square_scene(gradient=True)
    est = q.background_estimate(img, mask)
    assert np.array_equal(est[~mask], img[~mask])
    background = np.array([90.0, 100.0, 110.0]) + np.linspace(-20, 20, 48)[None, :, None]
    background = np.broadcast_to(background, img.shape)  # what the square hides
    assert np.abs(est[mask] - background[mask]).max() < 8


# -------------------------------------------------------------------- PCK --

def test_pck_of_identical_features_on_identical_images_is_one():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(16, 8, 8, generator=g)
    points = {f"k{i}": tuple(p) for i, p in enumerate(torch.rand(10, 2, generator=g).numpy() * 64)}
    mask = np.ones((64, 64), dtype=bool)
    score = q.dift_pck(feats, feats, points, points, (0, 0, 64, 64), mask, (64, 64))
    assert score.pck == 1.0 and score.ceiling == 1.0 and score.keypoints == 10
    assert score.threshold == pytest.approx(6.4)
    # mirrored image and features: the mirrored keypoints are found as well
    mirrored = {k: (64 - x, y) for k, (x, y) in points.items()}
    flipped = q.dift_pck(feats, feats.flip(-1), points, mirrored, (0, 0, 64, 64), mask, (64, 64))
    assert flipped.pck == 1.0


def test_pck_counts_wrong_matches_and_only_shared_keypoints():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(16, 8, 8, generator=g)
    shifted = feats.roll(4, dims=-1)  # every feature moved 4 cells (32 px) to the right
    points = {"a": (4.0, 4.0), "b": (12.0, 20.0), "only_here": (50.0, 50.0)}
    truth = {"a": (4.0, 4.0), "b": (12.0, 20.0)}
    mask = np.ones((64, 64), dtype=bool)
    score = q.dift_pck(feats, shifted, points, truth, (0, 0, 64, 64), mask, (64, 64))
    assert score.keypoints == 2 and score.pck == 0.0
    moved = {k: (x + 32, y) for k, (x, y) in truth.items()}
    assert q.dift_pck(feats, shifted, points, moved, (0, 0, 64, 64), mask,
                      (64, 64)).pck == 1.0


def test_pck_threshold_and_chance_level():
    assert q.pck_threshold((10, 20, 50, 40)) == pytest.approx(4.0)
    full = np.ones((64, 64), dtype=bool)
    chance = q.random_point_pck(np.array([[32.0, 32.0]]), full, 8.0)
    assert chance == pytest.approx(math.pi * 64 / 4096, rel=0.1)
    one = np.zeros((64, 64), dtype=bool)
    one[10, 20] = True
    assert q.random_point_pck(np.array([[20.5, 10.5]]), one, 1.0) == 1.0
    assert q.random_point_pck(np.array([[40.5, 10.5]]), one, 1.0) == 0.0


def test_match_points_returns_cell_centres():
    feats = torch.eye(4).reshape(4, 2, 2)  # four orthogonal cells
    out = q.match_points(feats, feats, np.array([[1.0, 1.0], [7.0, 7.0]]), (8, 8))
    assert np.allclose(out, [[2.0, 2.0], [6.0, 6.0]])


# ------------------------------------------------------------------ misc --

def test_scaled_config_and_methods():
    cfg = q.scaled_config(10)
    assert (cfg.num_steps, cfg.skip_steps, cfg.feat_range, cfg.adain_range) == (10, 3, (1, 7),
                                                                               (5, 10))
    assert q.scaled_config(100) == q.scaled_config(100, seed=0)
    assert q.check_methods(["v", "v", "none"]) == ("v", "none")
    with pytest.raises(ValueError):
        q.check_methods(["dreambooth"])
    assert q.Stat.of([1.0, 3.0, float("nan"), float("inf")]) == q.Stat(2.0, 1.0, 2)


def _script():
    spec = importlib.util.spec_from_file_location("quality_toy", ROOT / "benchmarks" /
                                                  "quality_toy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_write_markdown_replaces_between_markers_and_refuses_tiny(tmp_path):
    script = _script()
    doc = tmp_path / "QUALITY.md"
    doc.write_text(f"# head\n{script.MD_START}\nplaceholder\n{script.MD_END}\ntail\n")
    script.write_markdown(doc, "| figures |\n", tiny=False)
    assert doc.read_text() == f"# head\n{script.MD_START}\n| figures |\n{script.MD_END}\ntail\n"
    with pytest.raises(SystemExit):
        script.write_markdown(doc, "| noise |\n", tiny=True)
    free = tmp_path / "free.md"
    script.write_markdown(free, "| noise |\n", tiny=True)
    assert free.read_text() == "| noise |\n"


def test_quality_script_runs_on_the_tiny_model(tmp_path, capsys, _offline_env):
    script = _script()
    out = tmp_path / "out"
    md = tmp_path / "results.md"
    code = script.main(["--model", "tiny", "--pairs", "2", "--size", "64", "--steps", "6",
                        "--methods", "feature", "none", "paint-by-example", "--out", str(out),
                        "--write-md", str(md), "--device", "cpu"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("WARNING: TINY RANDOM-WEIGHT MODEL")
    for method in ("feature", "none"):
        row = next(ln for ln in lines if ln.startswith(method + " "))
        assert " +- " in row, row
    assert any(ln.startswith("paint-by-example: not available") for ln in lines)
    assert any(ln.startswith("DIFT PCK@0.1 (object-box normaliser): ") and "chance" in ln
               for ln in lines)
    assert any(ln.startswith("VAE reconstruction PSNR: ") for ln in lines)
    assert any(ln.startswith("runtime per pair: ") for ln in lines)
    with open(out / "quality.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["pair"], r["method"]) for r in rows] == [("0", "feature"), ("0", "none"),
                                                       ("1", "feature"), ("1", "none")]
    from PIL import Image

    with Image.open(out / "grid.png") as grid:
        assert grid.width >= 4 * 128 and grid.height >= 2 * 128  # 2 pairs x 4 columns
    text = md.read_text()
    assert "TINY RANDOM-WEIGHT MODEL" in text and "| Eye-for-an-eye (feature) |" in text


def test_the_benchmarks_dift_features_are_the_pair_functions(shared_lab, images, fast_config):
    """The toy benchmark computes each image's DIFT features alone (each with its own
    prompt), in the settings and under the lock every other DIFT caller uses."""
    from e4e_lab.models.dift import DiftSettings, pair_dift_features

    img = shared_lab.load_image(images[0], 64, name="a.png")
    cfg = fast_config.replace(dift_ensemble=2, dift_block=2, seed=3)
    got = q._dift(shared_lab, img, cfg.inversion.prompt, cfg)
    want, _ = pair_dift_features(shared_lab.models, img, img, DiftSettings.from_config(cfg))
    assert torch.equal(got, want.features)
