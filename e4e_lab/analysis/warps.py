"""Correspondence views: the reference painted into the target's layout, and the
reference pixels that no target position takes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..method.correspondence import CorrespondenceField
from ..method.masks import mask_at


def warped_reference(fld: CorrespondenceField, pair, fill: str = "target",
                     patches: bool = True) -> torch.Tensor:
    """(3, H, W) reference painted into the target layout through ``fld``.

    With ``patches`` each target pixel takes the reference pixel at the same relative
    position inside the matched cell (a coarse field then shows the reference's texture);
    otherwise every pixel of a cell takes the matched cell's centre
    (:meth:`CorrespondenceField.warp`). Unmatched (background) positions show the target
    (``fill="target"``) or black.
    """
    base = pair.structure.pixels if fill == "target" else None
    if not patches:
        return fld.warp(pair.appearance.pixels, fill=base)
    ref = pair.appearance.pixels
    c, h_img, w_img = ref.shape
    ht_img, wt_img = pair.structure.pixels.shape[1:]
    (ht, wt), (hr, wr) = fld.target_shape, fld.ref_shape
    ys = (torch.arange(ht_img) + 0.5) * ht / ht_img  # position in target cells
    xs = (torch.arange(wt_img) + 0.5) * wt / wt_img
    cy, cx = ys.long().clamp_max(ht - 1), xs.long().clamp_max(wt - 1)
    index = fld.index.cpu()[cy[:, None] * wt + cx[None, :]]  # (Ht, Wt)
    ry = index.clamp_min(0) // wr + (ys - cy)[:, None]
    rx = index.clamp_min(0) % wr + (xs - cx)[None, :]
    src_y = (ry * h_img / hr).long().clamp(0, h_img - 1)
    src_x = (rx * w_img / wr).long().clamp(0, w_img - 1)
    out = ref[:, src_y, src_x]
    background = torch.zeros_like(out) if base is None else base.to(out)
    return torch.where(index[None] >= 0, out, background)


def unused_reference(fld: CorrespondenceField, pair) -> torch.Tensor:
    """(H, W) bool at image resolution: reference pixels (inside its mask) that no target
    position takes."""
    unused = fld.unused(pair.appearance_mask).float()
    w, h = pair.appearance.size
    return F.interpolate(unused[None, None], size=(h, w), mode="nearest")[0, 0] > 0


def unused_fraction(fld: CorrespondenceField, ref_mask: torch.Tensor | None = None) -> float:
    """Fraction of the reference cells (inside ``ref_mask``) that no target cell takes."""
    unused = fld.unused(ref_mask)
    total = (mask_at(ref_mask, fld.ref_shape).sum() if ref_mask is not None
             else torch.tensor(unused.numel()))
    return float(unused.sum()) / max(1.0, float(total))
