"""Correspondence views (``e4e_lab/analysis/warps.py``): the reference painted into the
target's layout, and the reference pixels no target position takes."""

import torch

from e4e_lab.analysis.warps import unused_fraction, unused_reference, warped_reference
from e4e_lab.method.correspondence import CorrespondenceField
from e4e_lab.method.masks import mask_at

from conftest import SMALL, identity_field


def test_identity_and_empty_fields(shared_lab, build_pair):
    pair = build_pair(shared_lab, boxes=True)
    identity = identity_field(8, 8)
    assert torch.equal(warped_reference(identity, pair), pair.appearance.pixels)
    none = CorrespondenceField(torch.full((64,), -1), torch.zeros(64), (8, 8), (8, 8))
    assert torch.equal(warped_reference(none, pair), pair.structure.pixels)
    cells = mask_at(pair.appearance_mask, (8, 8))  # every reference cell in the mask is unused
    assert unused_reference(none, pair).sum() == cells.sum() * (SMALL // 8) ** 2
    assert unused_fraction(identity, pair.appearance_mask) == 0.0
