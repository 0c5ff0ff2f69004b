"""Masked AdaIN of one latent towards another, with the statistics it matches (for the
method walkthrough)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..method.adain import masked_adain, masked_stats
from ..method.masks import adain_masks


@dataclass
class AdainDemo:
    """Masked AdaIN of one latent towards another, with the statistics it matches."""

    before: torch.Tensor  # (4, h, w)
    after: torch.Tensor
    ref: torch.Tensor
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (mean, std) per channel


def adain_demo(x: torch.Tensor, ref: torch.Tensor, x_mask: torch.Tensor,
               ref_mask: torch.Tensor, mode: str = "reference") -> AdainDemo:
    """Apply masked AdaIN (stage 4f) to a (4, h, w) latent; masks at any resolution,
    brought to the latent grid as ``mask_resize`` = ``mode`` does in a transfer."""
    xm, blend = adain_masks(x_mask, tuple(x.shape[-2:]), mode)
    rm, _ = adain_masks(ref_mask, tuple(ref.shape[-2:]), mode)
    after = masked_adain(x, ref, xm, rm, blend=blend)
    stats = {"before (target mask)": masked_stats(x, xm),
             "reference (reference mask)": masked_stats(ref, rm),
             "after (target mask)": masked_stats(after, xm)}
    return AdainDemo(x, after, ref, stats)
