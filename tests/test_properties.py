"""Property-based tests (hypothesis): no box, mask, config value or damaged cache file
produces a traceback, a NaN image or a lost cache entry.

Each property states what the library promises for *any* input of a kind:

- ``parse_box`` returns a box inside the image with positive area, or raises
  ``BoxError``; boxes JSON files of any content give a dict or ``BoxError``;
- ``as_mask`` returns an (H, W) tensor of 0/1 (never NaN) or raises ``MaskError``, and
  ``mask_at`` keeps every non-empty mask non-empty at every grid;
- ``TransferConfig`` constructs (and round-trips through JSON) or raises
  ``ConfigError`` naming one of its fields;
- ``masked_adain`` never makes NaN, even for empty masks, and inside the target mask
  the result has the reference's statistics (as defined: unbiased variance + 1e-5);
- a cache entry reads back exactly, and a damaged one reads as a miss (never an
  exception, never wrong tensors).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from e4e_lab.errors import BoxError, ConfigError, MaskError
from e4e_lab.io.cache import TensorCache, key_of
from e4e_lab.io.formats import lookup_box, parse_box, read_boxes
from e4e_lab.method.adain import EPS, masked_adain, masked_stats
from e4e_lab.method.config import INJECTION_MODES, TransferConfig
from e4e_lab.method.masks import as_mask, mask_at

SETTINGS = settings(max_examples=80, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# ================================================================= boxes ====

_coord = st.one_of(
    st.integers(-100, 2100),
    st.floats(-100, 2100),
    st.integers(),  # including integers too large for a float
    st.floats(allow_nan=True, allow_infinity=True),
    st.builds(np.float32, st.floats(width=32)),
    st.builds(np.int64, st.integers(-2 ** 63, 2 ** 63 - 1)),
    st.none(), st.booleans(), st.text(max_size=3), st.lists(st.integers(), max_size=2),
)
_box = st.one_of(
    st.lists(st.floats(-100, 2100), min_size=4, max_size=4),  # mostly plausible boxes
    st.lists(_coord, min_size=0, max_size=6),
    st.tuples(_coord, _coord, _coord, _coord),
    st.text(max_size=12), st.binary(max_size=8), st.none(), st.integers(), st.floats(),
    st.dictionaries(st.text(max_size=3), _coord, max_size=4),
    hnp.arrays(np.float64, st.integers(0, 6)),
)
_size = st.tuples(st.integers(1, 2048), st.integers(1, 2048))


@SETTINGS
@given(box=_box, size=_size, clip=st.booleans())
def test_parse_box_returns_a_box_inside_the_image_or_raises_box_error(box, size, clip):
    try:
        out = parse_box(box, size, "box", clip=clip)
    except BoxError as exc:
        assert str(exc).startswith("box ")
        return
    w, h = size
    assert isinstance(out, tuple) and len(out) == 4 and all(type(v) is int for v in out)
    x0, y0, x1, y1 = out
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=6),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=6), children, max_size=5),
    max_leaves=20,
)
_json_coord = st.one_of(st.integers(-100, 2100), st.floats(-100, 2100), st.integers(),
                        st.floats(allow_nan=True, allow_infinity=True), st.none(),
                        st.booleans(), st.text(max_size=3))
_boxes_doc = st.one_of(
    _json,
    st.dictionaries(st.sampled_from(["_size", "cat.png", "horse", "a/b.jpg", "_other"]),
                    st.one_of(_json, st.lists(_json_coord, min_size=4, max_size=4),
                              st.lists(st.integers(-10, 600), min_size=4, max_size=4)),
                    max_size=5),
)


@SETTINGS
@given(doc=_boxes_doc, size=_size, name=st.sampled_from(["cat.png", "x/horse.jpg", "dog", ""]))
def test_any_boxes_json_gives_boxes_or_box_errors(doc, size, name):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "boxes.json"
        path.write_text(json.dumps(doc))
        try:
            boxes = read_boxes(path, size)
        except BoxError:
            return
    assert isinstance(boxes, dict)
    box = lookup_box(boxes, name)
    if box is not None:
        try:
            parse_box(box, size, "box")
        except BoxError:
            pass


@SETTINGS
@given(data=st.binary(max_size=64))
def test_any_bytes_as_a_boxes_file_give_a_dict_or_a_box_error(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "boxes.json"
        path.write_bytes(data)
        try:
            assert isinstance(read_boxes(path), dict)
        except BoxError:
            pass


# ================================================================= masks ====

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


# ================================================================ config ====

_FIELDS = [f.name for f in dataclasses.fields(TransferConfig)]
_wild = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 120), st.integers(), st.floats(allow_nan=True),
    st.text(max_size=8), st.sampled_from(INJECTION_MODES + ("match", "dift", "{domain}",
                                                            "A {domain} {x}")),
    st.tuples(st.integers(-5, 120), st.integers(-5, 120)),
    st.lists(st.integers(-5, 120), max_size=3), st.tuples(st.floats(), st.floats()),
    st.lists(st.text(max_size=4), max_size=2), st.dictionaries(st.text(max_size=2), st.none(),
                                                                max_size=1),
)


@SETTINGS
@given(changes=st.dictionaries(st.sampled_from(_FIELDS), _wild, max_size=5),
       short=st.booleans())
def test_config_constructs_or_names_a_real_field(changes, short):
    base = dict(num_steps=20, skip_steps=6, feat_range=(2, 12), adain_range=(10, 20)) \
        if short else {}
    try:
        cfg = TransferConfig(**(base | changes))
    except ConfigError as exc:
        assert exc.field in _FIELDS
        assert f"'{exc.field}'" in str(exc)
        return
    again = TransferConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg
    assert 0 <= cfg.skip_steps < cfg.num_steps


@SETTINGS
@given(doc=_json)
def test_config_from_any_json_constructs_or_raises_config_error(doc):
    try:
        TransferConfig.from_dict(doc)
    except ConfigError:
        pass


# ================================================================= adain ====

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


# ================================================================= cache ====

_tensor_dicts = st.dictionaries(
    st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=6),
    st.tuples(st.sampled_from([torch.float32, torch.float16, torch.int64, torch.uint8]),
              st.lists(st.integers(0, 4), max_size=3), st.integers(0, 2 ** 16)),
    min_size=1, max_size=4,
).map(lambda d: {k: (torch.randn(tuple(s), generator=torch.Generator().manual_seed(seed)) * 50)
                 .to(dt) for k, (dt, s, seed) in d.items()})


@settings(max_examples=50, deadline=None)
@given(tensors=_tensor_dicts, spec=st.dictionaries(st.text(max_size=4), _json, max_size=3),
       damage=st.one_of(st.none(), st.tuples(st.floats(0, 1, exclude_max=True),
                                             st.integers(1, 255))))
def test_cache_entries_read_back_exactly_or_as_a_miss(tensors, spec, damage):
    with tempfile.TemporaryDirectory() as tmp:
        cache = TensorCache(tmp, "entries")
        key = key_of(spec)
        path = cache.put(key, spec, tensors)
        if damage is not None:
            data = bytearray(path.read_bytes())
            where, flip = damage
            data[int(where * len(data))] ^= flip
            path.write_bytes(bytes(data))
        got = cache.get(key, spec)
        if damage is None:
            assert got is not None  # a valid entry is never lost
        if got is not None:
            assert set(got) == set(tensors)
            for k, t in tensors.items():
                assert got[k].dtype == t.dtype and torch.equal(got[k], t)
        else:
            assert not path.exists()  # dropped, so that it is recomputed
            cache.put(key, spec, tensors)
            assert cache.get(key, spec) is not None
