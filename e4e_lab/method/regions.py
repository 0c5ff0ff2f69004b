"""Stage 4b: region pairs and the matching state the injected layers share in one run.

A :class:`RegionPair` says which target region takes its features from which region
of which reference image (one pair for a single-object run). :class:`InjectionState`
holds the run's config, step, batch rows and recorder, resizes the masks once per
grid, and matches each layer's output features inside the partner regions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import TransferConfig
from .correspondence import CorrespondenceField, nearest_neighbors
from .layers import BatchLayout
from .masks import matching_mask
from .recording import Recorder


@dataclass
class RegionPair:
    """A target region that takes its features only from one reference region.

    ``target_mask`` and ``ref_mask`` are (H, W) 0/1 masks at image resolution;
    ``reference`` is the index of the reference image (its appearance row).
    """

    target_mask: torch.Tensor
    ref_mask: torch.Tensor
    reference: int = 0


class InjectionState:
    """What the processors share during one run: config, step, region pairs, recorder.

    Masks are resized once per grid and kept; nothing here is global.
    """

    def __init__(self, config: TransferConfig, latent_shape: tuple[int, int],
                 pairs: list[RegionPair], device,
                 dift_field: CorrespondenceField | None = None,
                 recorder: Recorder | None = None):
        if not pairs:
            raise ValueError("at least one (target, reference) region pair is needed")
        self.config = config
        self.latent_shape = latent_shape
        self.pairs = pairs
        self.device = device
        self.dift_field = dift_field
        self.recorder = recorder
        self.step: int = -1
        # What the processors do at this step, decided once per step outside the UNet, so
        # a compiled UNet (Models.compile_unet) sees flags, never the step number.
        self.active = False  # inject (match or refresh)
        self.refresh = False  # a structure-refresh step
        self.layers: list[str] = []  # the injected layers (set by the `injection` manager)
        self.attention_now: frozenset[str] = frozenset()  # layers whose weights to record
        self._notes: list[tuple] = []  # recorder calls of this step, handed over at its end
        self.layout = BatchLayout.for_guidance(True, self.references)
        self._masks: dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._fields: dict[tuple[int, int], CorrespondenceField] = {}

    @property
    def references(self) -> int:
        return max(p.reference for p in self.pairs) + 1

    def begin_step(self, step: int, layout: BatchLayout) -> None:
        self.end_step()
        self.step, self.layout = step, layout
        self.active = self.config.injects_at(step)
        self.refresh = self.active and self.config.refreshes_at(step)
        rec = self.recorder
        self.attention_now = frozenset(
            name for name in self.layers if rec is not None and rec.wants_attention(name, step))

    def set_layers(self, layers) -> None:
        """The injected layers' processor names (from the ``injection`` manager); a
        recorder that can check the layer names it was asked for checks them now."""
        self.layers = list(layers)
        check = getattr(self.recorder, "check_layers", None)
        if check is not None:
            check(self.layers)

    def note(self, hook: str, layer: str, *payload) -> None:
        """Called by the processors for the recorder (``hook`` is ``injection``,
        ``matches`` or ``attention``): kept in order and passed on by :meth:`end_step`
        with the step number."""
        if self.recorder is not None:
            self._notes.append((hook, layer, payload))

    def end_step(self) -> None:
        """Hand this step's notes to the recorder (after the UNet call)."""
        notes, self._notes = self._notes, []
        for hook, layer, payload in notes:
            getattr(self.recorder, f"on_{hook}")(layer, self.step, *payload)

    def grid(self, tokens: int) -> tuple[int, int]:
        h, w = self.latent_shape
        f = math.isqrt(h * w // tokens)
        return h // f, w // f

    def masks(self, grid: tuple[int, int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per pair, the flattened 0/1 (target, reference) matching masks on ``grid``
        (resized by ``config.mask_resize``)."""
        if grid not in self._masks:
            mode = self.config.mask_resize
            self._masks[grid] = [
                (matching_mask(p.target_mask, grid, mode).flatten().to(self.device),
                 matching_mask(p.ref_mask, grid, mode).flatten().to(self.device))
                for p in self.pairs]
        return self._masks[grid]

    def precompute(self, grids) -> None:
        for g in grids:
            self.masks(g)
            if self.dift_field is not None:
                self.dift(g)

    def dift(self, grid: tuple[int, int]) -> CorrespondenceField:
        if grid not in self._fields:
            f = self.dift_field.resize(grid, grid)
            self._fields[grid] = CorrespondenceField(f.index.to(self.device),
                                                     f.score.to(self.device), grid, grid)
        return self._fields[grid]

    def match(self, layer: str, target: torch.Tensor, refs: torch.Tensor,
              grid: tuple[int, int]) -> CorrespondenceField:
        """Correspondence for this layer and step.

        ``target`` is (N, C), ``refs`` is (R, N, C) for R reference images. The field's
        indices point into the R x N reference positions (``index // N`` is the image).
        Each pair matches its target region only inside its reference region; where
        target regions overlap, the later pair wins.
        """
        if self.config.correspondence == "dift" and self.dift_field is not None:
            fld = self.dift(grid)
        else:
            n = refs.shape[1]
            index = torch.full((target.shape[0],), -1, dtype=torch.long, device=target.device)
            score = torch.zeros(target.shape[0], device=target.device)
            for pair, (tm, rm) in zip(self.pairs, self.masks(grid)):
                idx, sc = nearest_neighbors(target, refs[pair.reference], tm, rm)
                hit = idx >= 0
                index = torch.where(hit, idx + pair.reference * n, index)
                score = torch.where(hit, sc, score)
            fld = CorrespondenceField(index, score, grid, grid)
        self.note("matches", layer, fld)
        return fld
