"""Part discovery: proxy part masks from k-means over decoder features.

Clustering the positions of a decoder feature map (e.g. DIFT features, or the
features a transfer run matched) groups pixels of the same semantic part. Clustering
both images *jointly* gives parts with shared labels, so a confusion matrix of
"target part -> reference part it takes its colour from" under a correspondence shows
at a glance whether the wing takes the wing's colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .correspondence import CorrespondenceField, normalize_rows
from .images import mask_at


def kmeans(x: torch.Tensor, k: int, iters: int = 30, seed: int = 0
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding on (N, C) rows; returns (labels, centres).

    Vectorised over points; the loops are over iterations and seeds only.
    """
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k = {k} must be between 1 and the number of points ({n})")
    x = x.float()
    g = torch.Generator().manual_seed(seed)
    centres = x[torch.randint(n, (1,), generator=g)]
    for _ in range(1, k):
        d2 = torch.cdist(x, centres).min(dim=1).values ** 2
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / n)
        centres = torch.cat([centres, x[torch.multinomial(probs.cpu(), 1, generator=g)]])
    labels = torch.zeros(n, dtype=torch.long)
    for _ in range(iters):
        new = torch.cdist(x, centres).argmin(dim=1)
        if torch.equal(new, labels) and _ > 0:
            break
        labels = new
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).float()[:, None]
        # an emptied cluster keeps its old centre
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
    return labels, centres


@dataclass
class Parts:
    """Joint part labels of a target and a reference feature map (-1 outside masks)."""

    target: torch.Tensor  # (h, w) int64
    reference: torch.Tensor  # (h', w') int64
    k: int

    def confusion(self, field: CorrespondenceField) -> torch.Tensor:
        """(k, k) counts: row = target part, column = reference part it matched."""
        t = self.target.flatten()
        if tuple(self.target.shape) != field.target_shape:
            raise ValueError(f"field target grid {field.target_shape} differs from the parts' "
                             f"{tuple(self.target.shape)}: resize the field first")
        r = self.reference.flatten()
        ok = (t >= 0) & field.matched
        ref_part = r[field.index[ok]]
        ok_ref = ref_part >= 0
        pairs = t[ok][ok_ref] * self.k + ref_part[ok_ref]
        return torch.bincount(pairs, minlength=self.k * self.k).reshape(self.k, self.k)

    def agreement(self, field: CorrespondenceField) -> float:
        """Share of matched target positions whose reference part has the same label."""
        c = self.confusion(field).float()
        return float(c.diagonal().sum() / c.sum()) if c.sum() > 0 else float("nan")


def discover_parts(target_features: torch.Tensor, ref_features: torch.Tensor, k: int,
                   target_mask: torch.Tensor | None = None,
                   ref_mask: torch.Tensor | None = None, seed: int = 0) -> Parts:
    """Cluster (C, h, w) target and (C, h', w') reference features together into k parts."""
    c = target_features.shape[0]
    ft = normalize_rows(target_features.reshape(c, -1).T)[0]
    fr = normalize_rows(ref_features.reshape(c, -1).T)[0]
    tm = (torch.ones(ft.shape[0], dtype=torch.bool) if target_mask is None else
          mask_at(target_mask, tuple(target_features.shape[1:])).flatten() > 0)
    rm = (torch.ones(fr.shape[0], dtype=torch.bool) if ref_mask is None else
          mask_at(ref_mask, tuple(ref_features.shape[1:])).flatten() > 0)
    labels, _ = kmeans(torch.cat([ft[tm], fr[rm]]), k, seed=seed)
    lt = torch.full((ft.shape[0],), -1, dtype=torch.long)
    lr = torch.full((fr.shape[0],), -1, dtype=torch.long)
    lt[tm] = labels[: int(tm.sum())]
    lr[rm] = labels[int(tm.sum()):]
    return Parts(lt.reshape(target_features.shape[1:]), lr.reshape(ref_features.shape[1:]), k)
