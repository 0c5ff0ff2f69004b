"""Weights-free metrics, the ViT metric on a tiny random ViT, and part discovery."""

import pytest
import torch

from e4e_lab.analysis import metrics
from e4e_lab.analysis.parts import discover_parts, kmeans
from e4e_lab.method.correspondence import CorrespondenceField


def smooth(seed, size=32):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(low[None], size=(size, size), mode="bilinear",
                                           align_corners=False)[0]


def test_lab_of_known_colours():
    lab = metrics.rgb_to_lab(torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]))
    assert torch.allclose(lab[:, 0], torch.tensor([100.0, 0.0, 0.0]), atol=0.05)  # white
    assert torch.allclose(lab[:, 1], torch.zeros(3), atol=1e-3)  # black
    red = metrics.rgb_to_lab(torch.tensor([1.0, 0.0, 0.0])[:, None])[:, 0]
    assert torch.allclose(red, torch.tensor([53.24, 80.09, 67.20]), atol=0.1)


def test_structure_metrics_directions():
    a = smooth(0)
    assert metrics.ssim(a, a) == pytest.approx(1.0, abs=1e-5)
    assert metrics.edge_ssim(a, a) == pytest.approx(1.0, abs=1e-5)
    b = smooth(1)
    assert metrics.ssim(a, b) < 0.999 and metrics.edge_ssim(a, b) < 0.999
    # a pure colour change keeps edges better than greyscale structure
    recoloured = a[[2, 0, 1]]
    assert metrics.edge_ssim(recoloured, a) > metrics.edge_ssim(b, a)


def test_vit_self_similarity_on_tiny_random_vit():
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=2, intermediate_size=64),
                   add_pooling_layer=False).eval()
    a, b = smooth(0), smooth(5)
    assert metrics.self_similarity_distance(vit, a, a) == pytest.approx(0.0, abs=1e-6)
    assert metrics.self_similarity_distance(vit, a, b) > 0


def test_histogram_distance():
    a = smooth(0)
    assert metrics.histogram_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    red = torch.zeros(3, 8, 8)
    red[0] = 1
    blue = torch.zeros(3, 8, 8)
    blue[2] = 1
    assert metrics.histogram_distance(red, blue) == pytest.approx(1.0)
    mask = torch.zeros(8, 8)
    with pytest.raises(ValueError, match="empty"):
        metrics.histogram_distance(red, blue, mask, None)


def identity_field(h, w):
    return CorrespondenceField(torch.arange(h * w), torch.ones(h * w), (h, w), (h, w))


def test_pck_and_cycle_consistency():
    fld = identity_field(8, 8)
    pts = torch.tensor([[4.0, 4.0], [20.0, 28.0]])
    assert metrics.pck(fld, pts, pts, (32, 32), alpha=0.1) == 1.0
    far = pts + torch.tensor([16.0, 0.0])
    assert metrics.pck(fld, pts, far, (32, 32), alpha=0.1) == 0.0
    f = torch.randn(16, 6, 6)
    assert metrics.cycle_consistency(f, f) == 1.0
    assert 0.0 <= metrics.cycle_consistency(f, torch.randn(16, 6, 6)) <= 1.0


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
