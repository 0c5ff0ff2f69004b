"""Masked AdaIN (``e4e_lab/method/adain.py``): the statistics it matches, its guard for
masks too small to have them, and blending with soft weights."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from e4e_lab.method.adain import EPS, masked_adain, masked_stats
from e4e_lab.method.masks import adain_masks

from conftest import disc


def test_masked_stats_are_the_mean_and_the_unbiased_std_plus_eps():
    """The statistics AdaIN matches, by definition: the mean and sqrt(unbiased variance
    + 1e-5) of each channel over the mask's cells."""
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(4, 8, 8, generator=g) * 3 + 1
    mr = torch.zeros(8, 8)
    mr[:4] = 1
    mean, std = masked_stats(ref, mr)
    sel = ref[:, mr == 1]
    assert torch.allclose(mean, sel.mean(dim=1))
    assert torch.allclose(std, (sel.var(dim=1, unbiased=True) + EPS).sqrt())


@st.composite
def _adain_case(draw):
    h, w = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2 ** 16))
    scale = draw(st.sampled_from([1e-3, 0.1, 1.0, 10.0, 1e3]))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, h, w, generator=g) * scale + draw(st.floats(-5, 5))
    ref = torch.randn(4, h, w, generator=g) * draw(st.sampled_from([0.0, 0.1, 1.0, 7.0])) \
        + draw(st.floats(-5, 5))
    xm = draw(hnp.arrays(np.bool_, (h, w)))
    rm = draw(hnp.arrays(np.bool_, (h, w)))
    return x, ref, torch.from_numpy(xm).float(), torch.from_numpy(rm).float()


@settings(max_examples=100, deadline=None)
@given(case=_adain_case())
def test_masked_adain_never_nan_and_matches_the_reference_statistics(case):
    x, ref, xm, rm = case
    out = masked_adain(x, ref, xm, rm)
    assert torch.isfinite(out).all()
    if xm.sum() < 2 or rm.sum() < 2:  # no defined statistics: left unchanged
        assert torch.equal(out, x)
        return
    outside = xm == 0
    assert torch.equal(out[:, outside], x[:, outside])
    mu_o, sd_o = masked_stats(out, xm)
    mu_x, sd_x = masked_stats(x, xm)
    mu_r, sd_r = masked_stats(ref, rm)
    tol = 1e-4 * (1 + float(ref.abs().max()) + float(x.abs().max()))
    assert torch.allclose(mu_o, mu_r, atol=tol)
    # by definition: out = (x - mu_x) / sd_x * sd_r + mu_r inside the mask, so its
    # variance is var_x / (var_x + eps) * (var_r + eps)
    var_x = sd_x ** 2 - EPS
    expected = (var_x / (var_x + EPS) * sd_r ** 2 + EPS).sqrt()
    assert torch.allclose(sd_o, expected, rtol=2e-3, atol=1e-5 + tol)
    # and so, when the target has variance, the result's variance inside the mask is the
    # reference's (var_r + eps: the reference's std as AdaIN defines it, squared)
    big = var_x > 1e-1
    assert torch.allclose(sd_o[big] ** 2 - EPS, sd_r[big] ** 2, rtol=4e-3, atol=tol)


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
