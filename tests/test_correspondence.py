"""nearest_neighbors against a brute-force loop, and correspondence fields."""

import torch
import torch.nn.functional as F

from e4e_lab.method import correspondence
from e4e_lab.method.correspondence import CorrespondenceField, nearest_neighbors


def brute_force(query, ref, query_mask=None, ref_mask=None):
    """One query row at a time, one candidate at a time: the definition."""
    n, m = len(query), len(ref)
    index = torch.full((n,), -1, dtype=torch.long)
    score = torch.zeros(n)
    for i in range(n):
        if (query_mask is not None and query_mask[i] == 0) or query[i].norm() == 0:
            continue
        best, arg = None, -1
        for j in range(m):
            if (ref_mask is not None and ref_mask[j] == 0) or ref[j].norm() == 0:
                continue
            s = F.cosine_similarity(query[i].double(), ref[j].double(), dim=0)
            if best is None or s > best:  # strict: ties keep the lowest index
                best, arg = s, j
        if arg >= 0:
            index[i], score[i] = arg, float(best)
    return index, score


def test_matches_brute_force_with_masks():
    g = torch.Generator().manual_seed(1)
    q, r = torch.randn(60, 16, generator=g), torch.randn(50, 16, generator=g)
    q[3] = 0  # an all-zero query row is excluded
    r[7] = 0  # an all-zero reference row is never chosen
    qm = (torch.rand(60, generator=g) > 0.3).float()
    rm = (torch.rand(50, generator=g) > 0.4).float()
    for masks in [(None, None), (qm, None), (None, rm), (qm, rm)]:
        idx, score = nearest_neighbors(q, r, *masks)
        bi, bs = brute_force(q, r, *masks)
        assert torch.equal(idx, bi)
        assert torch.allclose(score, bs, atol=1e-5)
    idx, _ = nearest_neighbors(q, r, qm, rm)
    assert idx[3] == -1 and (idx[qm == 0] == -1).all()
    assert (rm[idx[idx >= 0]] == 1).all()


def test_ties_resolve_to_lowest_index():
    q = torch.tensor([[1.0, 0.0]])
    r = torch.tensor([[0.0, 1.0], [2.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    idx, score = nearest_neighbors(q, r)
    assert idx.tolist() == [1] and torch.isclose(score, torch.tensor([1.0])).all()


def test_no_valid_reference_gives_minus_one():
    q, r = torch.randn(5, 4), torch.randn(6, 4)
    idx, score = nearest_neighbors(q, r, ref_mask=torch.zeros(6))
    assert (idx == -1).all() and (score == 0).all()


def test_chunked_equals_unchunked(monkeypatch):
    g = torch.Generator().manual_seed(2)
    q, r = torch.randn(300, 8, generator=g), torch.randn(200, 8, generator=g)
    full = nearest_neighbors(q, r)
    monkeypatch.setattr(correspondence, "_CHUNK_ELEMENTS", 1000)  # 5 rows per chunk
    chunked = nearest_neighbors(q, r)
    assert torch.equal(full[0], chunked[0]) and torch.allclose(full[1], chunked[1], atol=1e-6)


def test_field_from_features_identity_and_warp():
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(8, 6, 5, generator=g)
    fld = CorrespondenceField.from_features(feats, feats)
    assert torch.equal(fld.index, torch.arange(30))  # every position matches itself
    img = torch.rand(3, 6, 5, generator=g)
    assert torch.equal(fld.warp(img), img)
    assert fld.unused().sum() == 0 and (fld.usage() == 1).all()


def test_field_masks_and_unused():
    g = torch.Generator().manual_seed(4)
    t, r = torch.randn(4, 4, 4, generator=g), torch.randn(4, 4, 4, generator=g)
    tm = torch.zeros(4, 4)
    tm[:2] = 1
    rm = torch.zeros(8, 8)
    rm[:, 4:] = 1  # given at another resolution: resized to the feature grid
    fld = CorrespondenceField.from_features(t, r, tm, rm)
    assert (fld.index.reshape(4, 4)[2:] == -1).all()
    matched = fld.index[fld.index >= 0]
    assert ((matched % 4) >= 2).all()  # only right-half reference cells
    unused = fld.unused(rm)
    assert unused.sum() + (fld.usage() > 0).sum() == 8
    # unmatched targets take the fill image in a warp
    fill = torch.ones(1, 4, 4)
    warped = fld.warp(torch.zeros(1, 4, 4), fill=fill)
    assert (warped[0, 2:] == 1).all()


def test_field_resize_preserves_mapping():
    # a field that maps every target cell to the mirrored reference cell
    h = w = 4
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    index = (ys * w + (w - 1 - xs)).flatten()
    fld = CorrespondenceField(index, torch.ones(h * w), (h, w), (h, w))
    big = fld.resize((8, 8), (8, 8))
    by, bx = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    ry, rx = big.index // 8, big.index % 8
    assert torch.equal(ry.reshape(8, 8) // 2, by // 2)
    assert torch.equal(rx.reshape(8, 8) // 2, (7 - bx) // 2)


def test_background_reference_cells_never_win():
    """Departure from the published matching: there, masked-out reference cells are zero
    vectors of cosine 0, so a target cell whose similarity to every object cell is
    negative copies the first background cell. Here it takes the best object cell."""
    query = torch.tensor([[1.0, 0.0]])
    ref = torch.tensor([[0.3, 0.4], [-1.0, 0.1], [-1.0, -0.2]])  # cell 0 is background
    ref_mask = torch.tensor([0.0, 1.0, 1.0])
    index, score = nearest_neighbors(query, ref, ref_mask=ref_mask)
    assert int(index[0]) == 2 and float(score[0]) < 0
    published = (F.normalize(query, dim=1) @ F.normalize(ref * ref_mask[:, None], dim=1).T)
    assert int(published.argmax()) == 0  # the background cell
