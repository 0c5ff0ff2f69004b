"""Stage 1, masks (``e4e_lab/method/masks.py``): object masks by mode, user masks
validated, and masks brought to the layer and latent grids as the published code does
(bilinear weights) or by area averaging."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from e4e_lab.errors import ConfigError, MaskError
from e4e_lab.method.masks import (adain_masks, as_mask, box_mask, full_mask, mask_at,
                                  mask_weights, matching_mask, object_mask)

from conftest import SMALL, disc
from strategies import SETTINGS


def test_reference_matching_mask_keeps_every_positive_bilinear_cell():
    m = disc()
    soft = F.interpolate(m[None, None], size=(8, 8), mode="bilinear", align_corners=False)[0, 0]
    assert torch.equal(mask_weights(m, (8, 8)), soft)
    assert torch.equal(matching_mask(m, (8, 8)), (soft > 0).float())
    assert torch.equal(matching_mask(m, (8, 8), "area"), mask_at(m, (8, 8)))
    # the two rules really differ at the edges of a round object
    assert (matching_mask(m, (8, 8)) != matching_mask(m, (8, 8), "area")).any()


def test_area_adain_masks_are_the_area_mask_for_statistics_and_blending():
    """mask_resize="area": AdaIN takes its statistics and its blending weights on the
    binary area-averaged mask (the published bilinear rule is pinned against the
    published code in test_fidelity.py::test_adain_masks_are_the_published_ones)."""
    m = disc()
    area_stats, area_blend = adain_masks(m, (8, 8), "area")
    assert torch.equal(area_stats, area_blend) and torch.equal(area_stats, mask_at(m, (8, 8)))
    stats, blend = adain_masks(m, (8, 8))  # the published rule differs at the edges
    assert not torch.equal(blend, area_blend)


def test_object_mask_by_mode(images):
    """One MaskMode spelling everywhere: ``none`` is the whole image, ``box`` the box (or
    the whole image without one), ``sam`` needs a masker, ``auto`` uses SAM-HQ only with
    a box and a masker."""
    from e4e_lab.io.formats import MaskMode
    from e4e_lab.method.images import load_image

    image = load_image(images[0], SMALL)
    box = (8, 8, 40, 24)
    assert torch.equal(object_mask(image, box, "none"), full_mask(image.size))
    assert torch.equal(object_mask(image, box, MaskMode.BOX), box_mask(box, image.size))
    assert torch.equal(object_mask(image, None, "box"), full_mask(image.size))
    assert torch.equal(object_mask(image, box, "auto"), box_mask(box, image.size))
    with pytest.raises(ValueError, match="SAM-HQ is not loaded"):
        object_mask(image, box, "sam")

    class Half:
        def mask(self, image, box, points=None, labels=None):
            m = torch.zeros(image.size[1], image.size[0])
            m[: image.size[1] // 2] = 1
            return m

    assert object_mask(image, box, "auto", Half()).sum() == SMALL * SMALL // 2
    assert torch.equal(object_mask(image, None, "sam", Half()), full_mask(image.size))
    with pytest.raises(ConfigError, match="one of auto, sam, box, none"):
        object_mask(image, box, "full")


def test_masks_wrong_size_are_resized_and_bad_ones_refused():
    m = np.zeros((16, 16), np.uint8)
    m[4:12, 4:12] = 255
    out = as_mask(m, (SMALL, SMALL))
    assert out.shape == (SMALL, SMALL) and set(out.unique().tolist()) == {0.0, 1.0}
    assert out.sum() == 32 * 32
    assert as_mask(torch.ones(1, 1, 8, 8), (8, 8)).shape == (8, 8)  # (1, 1, H, W) squeezed
    assert as_mask(np.ones((8, 8, 1), bool)).sum() == 64
    for bad, why in [(np.zeros((8, 8, 3)), "2-D"), (np.zeros((2, 8, 8)), "2-D"),
                     (np.zeros(8), "2-D"), (np.zeros((0, 8)), "2-D"),
                     (np.full((8, 8), np.nan), "NaN"), (np.full((8, 8), np.inf), "NaN"),
                     ("mask.png", "2-D"), ([[1, 0], [1]], "numbers"), (None, "2-D"),
                     (np.ones((4, 4), np.complex64), "complex")]:
        with pytest.raises(MaskError, match=why):
            as_mask(bad, (SMALL, SMALL), name="structure mask")


def test_mask_at_keeps_thin_objects():
    m = torch.zeros(64, 64)
    m[30, :] = 1  # one pixel high: vanishes under a plain area average
    for grid in ((8, 8), (4, 4), (1, 1), (3, 5)):
        out = mask_at(m, grid)
        assert out.sum() > 0 and set(out.unique().tolist()) <= {0.0, 1.0}


_mask_dtypes = st.sampled_from([np.bool_, np.uint8, np.int16, np.int64, np.uint16,
                                np.float32, np.float64])


@st.composite
def _masks(draw):
    dtype = draw(_mask_dtypes)
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=7))
    if np.issubdtype(dtype, np.floating):
        elements = st.one_of(st.sampled_from([0.0, 1.0, 255.0, 0.5, -1.0]),
                             st.floats(width=32, allow_nan=True, allow_infinity=True))
    else:
        elements = None
    arr = draw(hnp.arrays(dtype, shape, elements=elements))
    return torch.from_numpy(arr.copy()) if draw(st.booleans()) and dtype != np.uint16 else arr


@SETTINGS
@given(mask=_masks(), size=st.none() | st.tuples(st.integers(1, 12), st.integers(1, 12)))
def test_as_mask_gives_a_0_1_mask_or_a_mask_error(mask, size):
    try:
        m = as_mask(mask, size, name="mask")
    except MaskError as exc:
        assert str(exc).startswith("mask ")
        return
    assert m.ndim == 2 and m.dtype == torch.float32
    assert not torch.isnan(m).any()
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    if size is not None:
        assert (m.shape[1], m.shape[0]) == size


@SETTINGS
@given(mask=hnp.arrays(np.bool_, st.tuples(st.integers(1, 16), st.integers(1, 16))),
       grid=st.tuples(st.integers(1, 12), st.integers(1, 12)))
def test_mask_at_is_0_1_and_keeps_objects(mask, grid):
    m = torch.from_numpy(mask).float()
    out = mask_at(m, grid)
    assert tuple(out.shape) == grid and not torch.isnan(out).any()
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    assert (out.sum() > 0) == (m.sum() > 0)  # an object never vanishes, none appears
