"""Stage 4f: masked AdaIN on latents.

Per channel, the output latent is normalised with its statistics inside the target
mask and re-scaled with the appearance latent's statistics inside the reference mask
(unbiased variance + 1e-5), then blended back with blending weights ``W``::

    z <- (1 - W) z + W * ((z - mu_z) / sigma_z * sigma_a + mu_a)

As published, the statistics masks are the cells where the resized masks equal 1 and
``W`` is the soft (bilinear) target mask, so edge cells are blended partially
(:func:`e4e_lab.method.masks.adain_masks`); by default ``W`` is the statistics mask itself.

Statistics are computed in float32. A mask with fewer than two pixels has no defined
unbiased variance: the latent is returned unchanged (the Cross-Image Attention code
produced NaN and black images there).
"""

from __future__ import annotations

import torch

EPS = 1e-5


def masked_stats(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of (C, h, w) ``x`` inside the (h, w) 0/1 ``mask``."""
    m = mask.to(x.device, torch.float32)
    n = m.sum()
    xf = x.float()
    mean = (xf * m).sum(dim=(1, 2)) / n
    var = (((xf - mean[:, None, None]) ** 2) * m).sum(dim=(1, 2)) / (n - 1)
    return mean, (var + EPS).sqrt()


def masked_adain(x: torch.Tensor, ref: torch.Tensor, x_mask: torch.Tensor,
                 ref_mask: torch.Tensor, masks_checked: bool = False,
                 blend: torch.Tensor | None = None) -> torch.Tensor:
    """Masked AdaIN of one (C, h, w) latent towards another; masks are (h, w) 0/1.

    ``blend`` is the (h, w) blending weight in [0, 1] (default: ``x_mask``).
    ``masks_checked=True`` skips the small-mask guard (a host sync on a GPU) for callers
    that validated both masks once before a loop.
    """
    if not masks_checked and (x_mask.sum() < 2 or ref_mask.sum() < 2):
        return x
    mu_x, sd_x = masked_stats(x, x_mask)
    mu_r, sd_r = masked_stats(ref, ref_mask)
    styled = (x.float() - mu_x[:, None, None]) / sd_x[:, None, None] * sd_r[:, None, None] \
        + mu_r[:, None, None]
    m = (x_mask if blend is None else blend).to(x.device, torch.float32)
    return ((1 - m) * x.float() + m * styled).to(x.dtype)
