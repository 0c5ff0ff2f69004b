"""Feature lookup: a click on a target pixel, answered by one matrix-vector product.

:class:`FeatureLookup` keeps unit-normalised target and reference features once (DIFT
features, or the hidden states a transfer matched), so that a click costs one product
(its similarity heatmap over the reference) and never recomputes features.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from ..method.correspondence import CorrespondenceField, nearest_neighbors, normalize_rows
from ..method.images import LoadedImage
from ..method.masks import mask_at
from .grids import Grid


@dataclass
class FeatureLookup:
    """Target and reference features, unit-normalised once, for instant lookups.

    ``target`` is (N, C) over ``target_grid`` and ``ref`` (M, C) over ``ref_grid``
    (row-major). ``target_valid`` / ``ref_valid`` are (N,) / (M,) bool: inside the masks
    and non-zero. A click costs one (M, C) x (C,) product.
    """

    target: torch.Tensor
    ref: torch.Tensor
    target_grid: Grid
    ref_grid: Grid
    target_valid: torch.Tensor
    ref_valid: torch.Tensor
    source: str = "features"
    #: how DIFT features were computed (block, timestep, ensemble, prompt, seed), so that a
    #: viewer can tell whether it already holds the features a setting asks for
    settings: dict | None = None
    _field: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_rows(cls, target: torch.Tensor, ref: torch.Tensor, target_grid: Grid,
                  ref_grid: Grid, target_mask: torch.Tensor | None = None,
                  ref_mask: torch.Tensor | None = None, source: str = "features"
                  ) -> "FeatureLookup":
        """From (N, C) / (M, C) rows; masks are (H, W) at any resolution (or None)."""
        t, t_ok = normalize_rows(target.detach().cpu())
        r, r_ok = normalize_rows(ref.detach().cpu())
        if target_mask is not None:
            t_ok &= mask_at(target_mask.cpu(), target_grid).flatten() > 0
        if ref_mask is not None:
            r_ok &= mask_at(ref_mask.cpu(), ref_grid).flatten() > 0
        return cls(t.contiguous(), r.contiguous(), tuple(target_grid), tuple(ref_grid),
                   t_ok, r_ok, source)

    @classmethod
    def from_features(cls, target: torch.Tensor, ref: torch.Tensor,
                      target_mask: torch.Tensor | None = None,
                      ref_mask: torch.Tensor | None = None, source: str = "features"
                      ) -> "FeatureLookup":
        """From (C, h, w) and (C, h', w') feature maps."""
        c = target.shape[0]
        return cls.from_rows(target.reshape(c, -1).T, ref.reshape(ref.shape[0], -1).T,
                             tuple(target.shape[1:]), tuple(ref.shape[1:]),
                             target_mask, ref_mask, source)

    @classmethod
    def from_dift(cls, models, target: LoadedImage, ref: LoadedImage,
                  target_mask: torch.Tensor | None = None,
                  ref_mask: torch.Tensor | None = None, timestep: int = 261, block: int = 1,
                  ensemble: int = 8, prompt: str = "", seed: int = 0,
                  blocking: bool = True, cancel=None, progress=None) -> "FeatureLookup":
        """DIFT features of both images (the only expensive step of the explorer).

        With ``blocking=False`` a transfer running in another thread makes this raise
        :class:`~e4e_lab.errors.ModelBusy` at once instead of waiting for the UNet.
        ``cancel`` (a ``threading.Event``) stops it between batches of noise draws with
        :class:`~e4e_lab.errors.TransferCancelled`; ``progress`` is a ``progress(done,
        total)`` callback over the draws of both images, ``True`` for a ``tqdm.auto``
        bar, or a session's bars (``lab.bars``: a bar when the session shows them).
        """
        from ..models.dift import DiftSettings, pair_dift_features

        settings = DiftSettings(timestep, block, ensemble, prompt, seed)
        ft, fr = pair_dift_features(models, target, ref, settings, blocking, "compute features",
                                    cancel=cancel, progress=progress)
        lookup = cls.from_features(ft.features, fr.features, target_mask, ref_mask,
                                   source=f"DIFT block {block}, t={timestep}, "
                                   f"ensemble {ensemble}")
        lookup.settings = asdict(settings)
        return lookup

    @property
    def channels(self) -> int:
        return int(self.target.shape[1])

    def heatmap(self, cell: int) -> torch.Tensor:
        """(h_r, w_r) cosine similarity of target cell ``cell`` to every reference cell."""
        sim = self.target[cell:cell + 1] @ self.ref.T
        return sim[0].reshape(self.ref_grid)

    def best_match(self, cell: int, restrict: bool = True,
                   heat: torch.Tensor | None = None) -> tuple[int, float]:
        """(reference cell, cosine) of highest similarity; with ``restrict`` only reference
        cells inside the reference mask compete (as in the transfer). (-1, 0.0) if none."""
        sim = (self.heatmap(cell) if heat is None else heat).flatten()
        if restrict:
            sim = sim.masked_fill(~self.ref_valid, float("-inf"))
        best, arg = sim.max(dim=0)
        if not torch.isfinite(best):
            return -1, 0.0
        return int(arg), float(best)

    def match_field(self, restrict: bool = True) -> CorrespondenceField:
        """Every target cell's best match (masked like the transfer), computed once."""
        if restrict not in self._field:
            tm = self.target_valid if restrict else None
            rm = self.ref_valid if restrict else None
            index, score = nearest_neighbors(self.target, self.ref, tm, rm)
            self._field[restrict] = CorrespondenceField(index, score, self.target_grid,
                                                        self.ref_grid)
        return self._field[restrict]
