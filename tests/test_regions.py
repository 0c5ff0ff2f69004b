"""The state the injected layers share in a run (``e4e_lab/method/regions.py``): masks
resized once per grid. Matching inside partner regions is tested through the processor
(test_attention.py) and the whole run (test_transfer.py)."""

from collections import Counter

from e4e_lab.method import regions

from conftest import SMALL


def test_masks_are_resized_once_per_grid(lab, images, fast_config, monkeypatch):
    """Matching masks are resized once per (mask, grid) for the whole run, not per call."""
    real, resized = regions.matching_mask, Counter()

    def counting(mask, shape, mode):
        resized[(id(mask), tuple(shape))] += 1
        return real(mask, shape, mode)

    monkeypatch.setattr(regions, "matching_mask", counting)
    pair = lab.pair(images[0], images[1], size=SMALL, mask="box", appearance_box=(0, 0, 48, 64),
                    structure_box=(8, 0, 64, 64))
    lab.transfer(pair, fast_config)
    # two masks on the two injected grids
    assert {s for _, s in resized} == {(8, 8), (4, 4)} and len(resized) == 4
    assert set(resized.values()) == {1}
