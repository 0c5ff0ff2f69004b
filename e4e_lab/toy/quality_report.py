"""The records of a toy-world quality run: per-pair and per-method rows, and summaries.

:func:`e4e_lab.toy.quality.evaluate_toy` fills a :class:`ToyQuality` with one
:class:`PairRow` per held-out pair (the method-independent measures) and one
:class:`MethodRow` per method and pair, then :meth:`ToyQuality.summarise` reduces them
to a :class:`MethodSummary` per method and a :class:`PairSummary` (:class:`Stat`: mean,
standard deviation and count of the finite values).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np


@dataclass
class MethodRow:
    """One method's scores on one pair."""

    pair: int
    method: str
    seconds: float  # the transfer alone (inversion excluded: shared by every method)
    part_colour: float
    part_colour_chance: float
    part_colour_pixels: int
    background_mae: float
    background_psnr: float
    silhouette_iou: float
    mask: str = "object"  # the masks the transfer used (see MASK_KINDS)


@dataclass
class PairRow:
    """What one pair measures independently of the methods.

    ``part_colour_structure`` is the part-colour accuracy of the unchanged structure
    image (an empirical chance level); ``silhouette_iou_structure`` the IoU of the
    structure image's own silhouette by :func:`result_silhouette` (the rule's ceiling on
    this pair); ``vae_psnr_*`` the VAE's encode+decode PSNR of each image.
    """

    pair: int
    structure_seed: int
    appearance_seed: int
    species: str
    part_colour_chance: float
    part_colour_structure: float
    silhouette_iou_structure: float
    pck: float
    pck_chance: float
    pck_ceiling: float
    pck_keypoints: int
    vae_psnr_structure: float
    vae_psnr_appearance: float
    inversion_seconds: float
    dift_seconds: float


@dataclass(frozen=True)
class Stat:
    """Mean and (population) standard deviation over the finite values; n counts them."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> "Stat":
        v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
        if len(v) == 0:
            return cls(float("nan"), float("nan"), 0)
        return cls(float(v.mean()), float(v.std()), int(len(v)))


@dataclass(frozen=True)
class MethodSummary:
    """One method over every pair. ``background_psnr`` averages the finite values only
    (an untouched background has PSNR inf); ``background_psnr_inf`` counts the others."""

    method: str
    pairs: int
    part_colour: Stat
    part_colour_chance: Stat
    background_mae: Stat
    background_psnr: Stat
    background_psnr_inf: int
    silhouette_iou: Stat
    seconds: Stat


@dataclass(frozen=True)
class PairSummary:
    """The method-independent measures over every pair."""

    pairs: int
    pck: Stat
    pck_chance: Stat
    pck_ceiling: Stat
    vae_psnr: Stat  # both images of every pair
    part_colour_structure: Stat
    silhouette_iou_structure: Stat
    inversion_seconds: Stat
    dift_seconds: Stat


@dataclass
class ToyQuality:
    """The result of :func:`evaluate_toy`.

    ``images`` holds uint8 (H, W, 3) pictures of the first ``keep_images`` pairs, keyed
    by (pair, "structure" | "appearance" | method); ``unavailable`` maps methods that were
    asked for but not measured to the reason.
    """

    model: str
    is_tiny: bool
    size: int
    config: dict
    methods: tuple[str, ...]
    rows: list[MethodRow] = field(default_factory=list)
    pairs: list[PairRow] = field(default_factory=list)
    summaries: dict[str, MethodSummary] = field(default_factory=dict)
    pair_summary: PairSummary | None = None
    unavailable: dict[str, str] = field(default_factory=dict)
    images: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)

    def summarise(self) -> None:
        """(Re)compute :attr:`summaries` and :attr:`pair_summary` from the rows."""
        self.summaries = {}
        for m in self.methods:
            rows = [r for r in self.rows if r.method == m]
            self.summaries[m] = MethodSummary(
                m, len(rows), Stat.of(r.part_colour for r in rows),
                Stat.of(r.part_colour_chance for r in rows),
                Stat.of(r.background_mae for r in rows),
                Stat.of(r.background_psnr for r in rows),
                sum(1 for r in rows if r.background_psnr == float("inf")),
                Stat.of(r.silhouette_iou for r in rows), Stat.of(r.seconds for r in rows))
        p = self.pairs
        self.pair_summary = PairSummary(
            len(p), Stat.of(r.pck for r in p), Stat.of(r.pck_chance for r in p),
            Stat.of(r.pck_ceiling for r in p),
            Stat.of([r.vae_psnr_structure for r in p] + [r.vae_psnr_appearance for r in p]),
            Stat.of(r.part_colour_structure for r in p),
            Stat.of(r.silhouette_iou_structure for r in p),
            Stat.of(r.inversion_seconds for r in p), Stat.of(r.dift_seconds for r in p))
