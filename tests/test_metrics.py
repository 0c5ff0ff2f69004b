"""The weights-free metrics (``e4e_lab/analysis/metrics.py``), and the ViT metric on a
tiny random ViT."""

import pytest
import torch

from e4e_lab.analysis import metrics

from conftest import identity_field


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


def test_pck_and_cycle_consistency():
    fld = identity_field(8, 8)
    pts = torch.tensor([[4.0, 4.0], [20.0, 28.0]])
    assert metrics.pck(fld, pts, pts, (32, 32), alpha=0.1) == 1.0
    far = pts + torch.tensor([16.0, 0.0])
    assert metrics.pck(fld, pts, far, (32, 32), alpha=0.1) == 0.0
    f = torch.randn(16, 6, 6)
    assert metrics.cycle_consistency(f, f) == 1.0
    assert 0.0 <= metrics.cycle_consistency(f, torch.randn(16, 6, 6)) <= 1.0
