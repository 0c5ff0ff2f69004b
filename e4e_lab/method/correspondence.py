"""Semantic correspondence: vectorised nearest-neighbour matching and fields.

The published code matched features with a Python loop over every output pixel
(one GPU sync each). Here a whole feature map is matched with one normalised
matrix product and one ``argmax`` over the candidate axis, chunked over query
rows when the similarity matrix would be large.

A *correspondence field* maps every target position of a ``(h, w)`` grid to a
reference position of another grid (or to nothing, ``-1``). Fields can be
resized to any layer resolution, used to warp the reference into the target's
layout, and inspected (which reference positions are used by no target).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .masks import mask_at

# Similarity matrices larger than this many elements are computed in row chunks.
_CHUNK_ELEMENTS = 1 << 24


def _validate(query: torch.Tensor, ref: torch.Tensor, query_mask, ref_mask):
    if query.ndim != 2 or ref.ndim != 2:
        raise ValueError(f"query and ref must be (N, C) and (M, C); got {tuple(query.shape)} "
                         f"and {tuple(ref.shape)}")
    if query.shape[1] != ref.shape[1]:
        raise ValueError(f"query has {query.shape[1]} channels but ref has {ref.shape[1]}")
    if query_mask is not None and query_mask.shape != (query.shape[0],):
        raise ValueError(f"query_mask must have shape ({query.shape[0]},), "
                         f"got {tuple(query_mask.shape)}")
    if ref_mask is not None and ref_mask.shape != (ref.shape[0],):
        raise ValueError(f"ref_mask must have shape ({ref.shape[0]},), got {tuple(ref_mask.shape)}")


def normalize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-normalise rows in float32; returns (normalised rows, row is non-zero)."""
    x = x.float()
    norm = x.norm(dim=-1, keepdim=True)
    valid = norm.squeeze(-1) > 0
    return x / norm.clamp_min(torch.finfo(torch.float32).tiny), valid


def nearest_neighbors(query: torch.Tensor, ref: torch.Tensor,
                      query_mask: torch.Tensor | None = None,
                      ref_mask: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query row, the ref row of highest cosine similarity.

    Args:
        query: (N, C) features of the target.
        ref: (M, C) candidate features of the reference.
        query_mask: optional (N,); 0 excludes a query row.
        ref_mask: optional (M,); 0 excludes a reference row from the candidates.

    Returns:
        ``(index, score)``: ``index`` (N,) int64, the best ref row or -1 for excluded
        or all-zero query rows (and for every row when no ref is valid); ``score`` (N,)
        float32, the cosine similarity of that match (0 where the index is -1).
        Ties resolve to the lowest ref index. All-zero ref rows are never chosen.
    """
    _validate(query, ref, query_mask, ref_mask)
    q, q_valid = normalize_rows(query)
    r, r_valid = normalize_rows(ref)
    if query_mask is not None:
        q_valid &= query_mask.to(q.device) != 0
    if ref_mask is not None:
        r_valid &= ref_mask.to(r.device) != 0

    n, m = q.shape[0], r.shape[0]
    index = torch.full((n,), -1, dtype=torch.long, device=q.device)
    score = torch.zeros((n,), dtype=torch.float32, device=q.device)
    if n == 0 or m == 0:
        return index, score
    # Excluded candidates get -inf so that they can never win the argmax.
    penalty = torch.where(r_valid, 0.0, float("-inf")).to(q.device)
    chunk = max(1, _CHUNK_ELEMENTS // m)
    for start in range(0, n, chunk):
        sim = q[start:start + chunk] @ r.T
        sim += penalty
        best, arg = sim.max(dim=1)
        index[start:start + chunk] = arg
        score[start:start + chunk] = best
    # Rows that are excluded, or that met no valid candidate at all, match nothing.
    matched = q_valid & torch.isfinite(score)
    index = torch.where(matched, index, torch.full_like(index, -1))
    score = torch.where(matched, score, torch.zeros_like(score))
    return index, score


@dataclass
class CorrespondenceField:
    """Target grid positions -> reference grid positions (row-major flat indices).

    ``index[k] = -1`` means target position ``k`` takes no reference feature (it is
    background, or excluded by a mask).
    """

    index: torch.Tensor  # (h_t * w_t,) int64
    score: torch.Tensor  # (h_t * w_t,) float32
    target_shape: tuple[int, int]
    ref_shape: tuple[int, int]

    @classmethod
    def from_features(cls, target: torch.Tensor, ref: torch.Tensor,
                      target_mask: torch.Tensor | None = None,
                      ref_mask: torch.Tensor | None = None) -> "CorrespondenceField":
        """Match (C, h, w) target features against (C, h', w') reference features.

        Masks are (h, w) / (h', w') maps (any resolution is resized to the features').
        """
        (c, ht, wt), (_, hr, wr) = target.shape, ref.shape
        tm = None if target_mask is None else mask_at(target_mask, (ht, wt)).flatten()
        rm = None if ref_mask is None else mask_at(ref_mask, (hr, wr)).flatten()
        index, score = nearest_neighbors(target.reshape(c, -1).T, ref.reshape(c, -1).T, tm, rm)
        return cls(index, score, (ht, wt), (hr, wr))

    @property
    def matched(self) -> torch.Tensor:
        return self.index >= 0

    def ref_coords(self) -> torch.Tensor:
        """(h_t*w_t, 2) float (y, x) reference coordinates in [0, 1] (cell centres); -1 if none."""
        hr, wr = self.ref_shape
        y = (self.index // wr).float().add(0.5).div(hr)
        x = (self.index % wr).float().add(0.5).div(wr)
        coords = torch.stack([y, x], dim=-1)
        return torch.where(self.matched[:, None], coords, torch.full_like(coords, -1.0))

    def resize(self, target_shape: tuple[int, int],
               ref_shape: tuple[int, int] | None = None) -> "CorrespondenceField":
        """The same field sampled on another target grid and expressed on another ref grid.

        Each new target cell takes the match of the old target cell containing its
        centre (nearest sampling), and the matched reference point is mapped to the
        new reference grid.
        """
        ht, wt = target_shape
        hr, wr = ref_shape or self.ref_shape
        oh, ow = self.target_shape
        dev = self.index.device
        ys = ((torch.arange(ht, device=dev) + 0.5) * oh / ht).long().clamp_max(oh - 1)
        xs = ((torch.arange(wt, device=dev) + 0.5) * ow / wt).long().clamp_max(ow - 1)
        src = (ys[:, None] * ow + xs[None, :]).flatten()
        coords = self.ref_coords()[src]
        ry = (coords[:, 0] * hr).long().clamp(0, hr - 1)
        rx = (coords[:, 1] * wr).long().clamp(0, wr - 1)
        matched = self.index[src] >= 0
        index = torch.where(matched, ry * wr + rx, torch.full_like(ry, -1))
        return CorrespondenceField(index, self.score[src], (ht, wt), (hr, wr))

    def warp(self, ref_image: torch.Tensor, fill: torch.Tensor | None = None) -> torch.Tensor:
        """Paint a (C, H, W) reference into the target layout through this field.

        The field is resized to the image's grid first. Unmatched target positions take
        ``fill`` (a (C, H, W) image, e.g. the target itself) or zeros.
        """
        c, h, w = ref_image.shape
        field = self.resize((h, w), (h, w)) if (self.target_shape, self.ref_shape) != ((h, w), (h, w)) else self
        flat = ref_image.reshape(c, -1)
        out = flat[:, field.index.clamp_min(0)]
        base = torch.zeros_like(flat) if fill is None else fill.reshape(c, -1).to(flat)
        out = torch.where(field.matched[None, :], out, base)
        return out.reshape(c, h, w)

    def usage(self) -> torch.Tensor:
        """(h_r, w_r) count of target positions that take each reference position."""
        hr, wr = self.ref_shape
        counts = torch.zeros(hr * wr, dtype=torch.long, device=self.index.device)
        idx = self.index[self.matched]
        counts.index_add_(0, idx, torch.ones_like(idx))
        return counts.reshape(hr, wr)

    def unused(self, ref_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(h_r, w_r) bool: reference positions (inside ``ref_mask``) used by no target."""
        unused = self.usage() == 0
        if ref_mask is not None:
            unused &= mask_at(ref_mask, self.ref_shape).to(unused.device) > 0
        return unused

