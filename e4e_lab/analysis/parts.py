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

from ..method.correspondence import CorrespondenceField, normalize_rows
from ..method.masks import mask_at


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


# ------------------------------------------------------------ parts of a pair --

# DIFT draws used by the pair-level helpers when none is given: the metrics' cost cap
# (:func:`e4e_lab.evaluation.evaluate.score` averages at most this many noise draws).
ENSEMBLE_CAP = 4


@dataclass
class PairFeatures:
    """DIFT features of a pair's structure (target) and appearance (reference), with the
    nearest-neighbour correspondence between them restricted to the pair's masks."""

    target: torch.Tensor  # (C, h, w)
    reference: torch.Tensor  # (C, h', w')
    field: CorrespondenceField
    target_mask: torch.Tensor  # (H, W) at image resolution
    ref_mask: torch.Tensor
    ensemble: int

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.target.shape[1:])

    @property
    def max_k(self) -> int:
        """The most parts k-means can find: positions inside both masks at this grid."""
        return int(mask_at(self.target_mask, self.grid).sum()
                   + mask_at(self.ref_mask, tuple(self.reference.shape[1:])).sum())


def pair_features(lab, pair, config, ensemble: int | None = None,
                  blocking: bool = True, cancel=None, progress=None) -> PairFeatures:
    """DIFT features of both images of ``pair`` (settings from ``config``: timestep,
    up-block, prompt and seed; ``ensemble`` draws, default ``min(config.dift_ensemble,
    ENSEMBLE_CAP)``) and their masked correspondence field.

    The UNet is shared with transfers running in other threads: with ``blocking=False``
    a busy model raises :class:`~e4e_lab.errors.ModelBusy` at once instead of waiting.
    ``cancel`` and ``progress`` are :func:`~e4e_lab.models.dift.pair_dift_features`'s.
    """
    from ..models.dift import DiftSettings, pair_dift_features

    ens = min(config.dift_ensemble, ENSEMBLE_CAP) if ensemble is None else ensemble
    ft, fr = (f.features for f in pair_dift_features(
        lab.models, pair.structure, pair.appearance, DiftSettings.from_config(config, ens),
        blocking, "find parts", cancel=cancel, progress=progress))
    field = CorrespondenceField.from_features(ft, fr, pair.structure_mask, pair.appearance_mask)
    return PairFeatures(ft, fr, field, pair.structure_mask, pair.appearance_mask, ens)


@dataclass
class PairParts:
    """Joint parts of a pair and the part confusion under a correspondence field.

    ``confusion[i, j]`` counts the target positions of part ``i`` whose match lies in
    reference part ``j``: the row of part ``i`` says which reference part it takes its
    colour from. Its total is the number of matched target positions.
    """

    features: PairFeatures
    parts: Parts
    field: CorrespondenceField  # on the features' grids
    confusion: torch.Tensor  # (k, k) int64

    @property
    def k(self) -> int:
        return self.parts.k

    @property
    def matched(self) -> int:
        """Target positions that take a reference feature (inside both parts' masks)."""
        return int(self.confusion.sum())

    @property
    def agreement(self) -> float:
        """Share of matched positions whose reference part has the target's label."""
        c = self.confusion.float()
        return float(c.diagonal().sum() / c.sum()) if c.sum() > 0 else float("nan")

    def sources(self) -> list[tuple[int, int, float]]:
        """Per target part with matches: ``(target part, reference part it takes most
        from, share of the part's matched positions)``."""
        totals = self.confusion.sum(dim=1)
        share, best = (self.confusion.float() / totals.clamp_min(1)[:, None]).max(dim=1)
        return [(i, int(best[i]), float(share[i])) for i in range(self.k) if totals[i] > 0]


def pair_parts(lab, pair, config, k: int = 4, features: PairFeatures | None = None,
               field: CorrespondenceField | None = None, **feature_kwargs) -> PairParts:
    """Cluster a pair's DIFT features jointly into ``k`` parts and count, per target
    part, which reference part it is matched to.

    ``features`` reuses features computed before (re-clustering at another ``k`` then
    costs no UNet pass); otherwise :func:`pair_features` computes them with
    ``feature_kwargs``. ``field`` (e.g. the matches a transfer recorded at one layer) is
    resampled to the features' grids; by default the DIFT nearest-neighbour field is used.
    """
    from ..errors import ConfigError

    feats = features if features is not None else pair_features(lab, pair, config,
                                                                 **feature_kwargs)
    top = feats.max_k
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= top:
        raise ConfigError("k", k, f"a whole number of parts from 1 to {top} (the positions "
                          f"inside the masks of both images at the {feats.grid[0]}x"
                          f"{feats.grid[1]} feature grid); choose fewer parts or a finer "
                          "DIFT up-block")
    parts = discover_parts(feats.target, feats.reference, k, feats.target_mask, feats.ref_mask,
                           seed=config.seed)
    fld = feats.field if field is None else field.resize(
        tuple(parts.target.shape), tuple(parts.reference.shape))
    return PairParts(feats, parts, fld, parts.confusion(fld))
