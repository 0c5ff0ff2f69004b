"""Paint-by-Example on a tiny random instance, and the side-by-side evaluation."""

import torch

from e4e_lab.evaluation.baselines import load_paint_by_example, paint_by_example
from e4e_lab.evaluation.evaluate import evaluate
from e4e_lab.io.formats import read_pairs_folder
from e4e_lab.method.config import TransferConfig

from conftest import SMALL


def test_tiny_paint_by_example_repaints_the_masked_region(lab):
    pair = lab.pair("example/chelsea_cat.png", "example/horse_silhouette.png", size=SMALL,
                    mask="box", appearance_box=(4, 0, 60, 64), structure_box=(8, 8, 40, 40))
    pbe = load_paint_by_example("tiny", device="cpu")
    assert pbe.is_tiny
    img = paint_by_example(pbe, pair, seed=0, steps=4)
    assert img.shape == (3, SMALL, SMALL) and torch.isfinite(img).all()
    again = paint_by_example(pbe, pair, seed=0, steps=4)
    assert torch.equal(img, again)  # same seed, same image


def test_methods_side_by_side_share_inversions(lab, tmp_path):
    pairs, boxes = read_pairs_folder("example")
    base = TransferConfig(num_steps=10, skip_steps=3, feat_range=(1, 7), adain_range=(5, 10))
    rows, images = evaluate(lab, pairs[:1], boxes, ("feature", "cross-image", "paint-by-example"),
                            base, mask="box", size=SMALL)
    assert [r["method"] for r in rows] == ["feature", "cross-image", "paint-by-example"]
    for r in rows:
        assert 0 <= r["histogram_distance"] <= 1 and -1 <= r["ssim"] <= 1
    assert len(list(lab.disk_cache.folder.glob("*.safetensors"))) == 2  # one inversion per image
    assert images[(pairs[0].name, "paint-by-example")].shape == (3, SMALL, SMALL)
