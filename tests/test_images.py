"""Stage 1 as published: bicubic fitting, and masks on layer and latent grids."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from e4e_lab.errors import ImageError
from e4e_lab.method.adain import masked_adain, masked_stats
from e4e_lab.method.images import load_image
from e4e_lab.method.masks import adain_masks, mask_at, mask_weights, matching_mask


@pytest.fixture(scope="module")
def photo():
    g = np.random.default_rng(0)
    return Image.fromarray(g.integers(0, 256, (37, 53, 3), dtype=np.uint8))


def test_stretch_is_bicubic_by_default_and_lanczos_on_request(photo):
    bicubic = load_image(photo, 32)
    assert bicubic.resample == "bicubic"
    assert np.array_equal(bicubic.to_uint8(), np.asarray(photo.resize((32, 32))))  # PIL default
    lanczos = load_image(photo, 32, resample="lanczos")
    assert np.array_equal(lanczos.to_uint8(),
                          np.asarray(photo.resize((32, 32), Image.Resampling.LANCZOS)))
    assert bicubic.digest != lanczos.digest  # a different inversion cache entry
    with pytest.raises(ImageError, match="bicubic, lanczos"):
        load_image(photo, 32, resample="nearest")


def disc(size=64, r=20.5):
    y, x = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    return (((x - 30) ** 2 + (y - 35) ** 2) <= r * r).float()


def test_reference_matching_mask_keeps_every_positive_bilinear_cell():
    m = disc()
    soft = F.interpolate(m[None, None], size=(8, 8), mode="bilinear", align_corners=False)[0, 0]
    assert torch.equal(mask_weights(m, (8, 8)), soft)
    assert torch.equal(matching_mask(m, (8, 8)), (soft > 0).float())
    assert torch.equal(matching_mask(m, (8, 8), "area"), mask_at(m, (8, 8)))
    # the two rules really differ at the edges of a round object
    assert (matching_mask(m, (8, 8)) != matching_mask(m, (8, 8), "area")).any()


def test_reference_adain_masks_use_exact_ones_for_statistics_and_soft_blending():
    m = disc()
    stats, blend = adain_masks(m, (8, 8))
    soft = mask_weights(m, (8, 8))
    assert torch.equal(blend, soft) and torch.equal(stats, (soft == 1).float())
    area_stats, area_blend = adain_masks(m, (8, 8), "area")
    assert torch.equal(area_stats, area_blend) and torch.equal(area_stats, mask_at(m, (8, 8)))


def test_masked_adain_blends_with_soft_weights():
    g = torch.Generator().manual_seed(0)
    x, ref = torch.randn(4, 8, 8, generator=g), torch.randn(4, 8, 8, generator=g) * 2 + 1
    stats, blend = adain_masks(disc(), (8, 8))
    out = masked_adain(x, ref, stats, stats, blend=blend)
    mu_x, sd_x = masked_stats(x, stats)
    mu_r, sd_r = masked_stats(ref, stats)
    styled = (x - mu_x[:, None, None]) / sd_x[:, None, None] * sd_r[:, None, None] \
        + mu_r[:, None, None]
    assert torch.allclose(out, (1 - blend) * x + blend * styled, atol=1e-6)
    edge = (blend > 0) & (blend < 1)
    assert edge.any() and not torch.allclose(out[:, edge], styled[:, edge])
