"""Part discovery (``e4e_lab/analysis/parts.py``): k-means, joint parts and their
confusion under a correspondence (and the part colour metric built on them)."""

import pytest
import torch

from e4e_lab.analysis import metrics
from e4e_lab.analysis.parts import discover_parts, kmeans
from e4e_lab.method.correspondence import CorrespondenceField

from conftest import identity_field


def test_kmeans_separates_clusters():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(50, 2, generator=g) + 10, torch.randn(50, 2, generator=g) - 10])
    labels, centres = kmeans(x, 2)
    assert len(set(labels[:50].tolist())) == 1 and labels[0] != labels[50]


def test_parts_confusion_and_colour_distance():
    # two-part features: left half one direction, right half another, in both images
    feats = torch.zeros(4, 8, 8)
    feats[0, :, :4], feats[1, :, 4:] = 1, 1
    parts = discover_parts(feats + 0.01 * torch.randn(4, 8, 8), feats, k=2)
    fld = identity_field(8, 8)
    conf = parts.confusion(fld)
    assert conf.sum() == 64 and parts.agreement(fld) == 1.0
    img = torch.zeros(3, 32, 32)
    img[0, :, :16], img[2, :, 16:] = 1, 1
    assert metrics.part_colour_distance(img, img, parts, fld) == pytest.approx(0, abs=1e-3)
    # a mirrored field sends each part to the other one: high colour distance
    ys, xs = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    mirror = CorrespondenceField((ys * 8 + 7 - xs).flatten(), torch.ones(64), (8, 8), (8, 8))
    assert parts.agreement(mirror) == 0.0
    assert metrics.part_colour_distance(img, img, parts, mirror) > 50
