"""Stage 1: object masks, and masks brought to the grids the method works on.

A mask is an (H, W) float tensor of 0/1 at image resolution: the whole image, a box,
a SAM-HQ mask (:func:`object_mask`, by :class:`~e4e_lab.io.formats.MaskMode`) or a
user's mask (:func:`as_mask`, :func:`load_mask`). :func:`matching_mask` and :func:`adain_masks` bring it to a layer
or latent grid the way the published code does (or by area averaging), and
:func:`mask_at` is the area rule used for display and analysis.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MaskError
from ..io.formats import Box, MaskMode
from .config import MASK_RESIZE_MODES
from .images import LoadedImage, open_image

def box_mask(box: Box, size: tuple[int, int]) -> torch.Tensor:
    """(H, W) float mask of 1 inside ``box`` for an image of ``size`` = (width, height)."""
    w, h = size
    m = torch.zeros(h, w)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = 1.0
    return m


def full_mask(size: tuple[int, int]) -> torch.Tensor:
    w, h = size
    return torch.ones(h, w)


def object_mask(image: LoadedImage, box: Box | None, mode: MaskMode | str = MaskMode.SAM,
                masker=None, points: Sequence[tuple[float, float]] = (),
                labels: Sequence[int] = ()) -> torch.Tensor:
    """(H, W) 0/1 mask of an image by ``mode`` (:class:`~e4e_lab.io.formats.MaskMode`):
    SAM-HQ (``masker``) from the box and clicks, the box, or the whole image (also
    without a box, or without a box or a click for SAM-HQ).

    ``labels`` are 1 for object clicks and 0 for background clicks; ``auto`` uses SAM-HQ
    when a masker and a box are given, else the box.
    """
    mode = MaskMode.parse(mode).resolve(box is not None, masker is not None)
    if mode is MaskMode.NONE or (mode is MaskMode.BOX and box is None):
        return full_mask(image.size)
    if mode is MaskMode.BOX:
        return box_mask(box, image.size)
    if masker is None:
        raise ValueError("SAM-HQ is not loaded: pass a masker (Lab.sam()) or use mode 'box'")
    if box is None and not points:
        return full_mask(image.size)
    return masker.mask(image, box, list(points) or None, list(labels) or None)


def load_mask(path: str | os.PathLike | None, fit: str = "stretch") -> torch.Tensor | None:
    """An (H, W) 0/1 mask from an image file (white or any value >= 128 = object), at the
    file's own size (``Lab.pair`` brings it to the model size), or None without a path.
    Only ``stretch`` fitting keeps a mask aligned with its image."""
    if path is None:
        return None
    if fit != "stretch":
        raise MaskError(f"mask '{path}' can only be used with --fit stretch (got {fit})")
    img = open_image(Path(path))
    return as_mask(np.array(img.convert("L")), name=f"mask '{path}'")


def as_mask(mask, size: tuple[int, int] | None = None, name: str = "mask") -> torch.Tensor:
    """Validate a user mask (array or tensor, bool/0-1/0-255) as an (H, W) float 0/1 tensor.

    With ``size`` = (width, height), a mask of another size is resized (nearest).
    """
    try:
        m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    except (TypeError, ValueError) as exc:
        raise MaskError(f"{name} must be a 2-D (H, W) array of numbers or booleans, got a "
                        f"{type(mask).__name__} ({exc})") from None
    while m.ndim > 2 and 1 in (m.shape[0], m.shape[-1]):  # (1, H, W), (H, W, 1), (1, 1, H, W)
        m = m.squeeze(0) if m.shape[0] == 1 else m.squeeze(-1)
    if m.ndim != 2 or 0 in m.shape:
        raise MaskError(f"{name} must be a 2-D (H, W) array, got shape {tuple(m.shape)}")
    if m.is_complex():
        raise MaskError(f"{name} has complex values: give booleans, 0/1 or 0-255 values")
    m = m.float()
    if not torch.isfinite(m).all():
        raise MaskError(f"{name} contains NaN or Inf values")
    if m.max() > 1:
        m = m / 255.0
    m = (m >= 0.5).float()
    if size is not None and (m.shape[1], m.shape[0]) != tuple(size):
        m = F.interpolate(m[None, None], size=(size[1], size[0]), mode="nearest")[0, 0]
    return m


def mask_at(mask: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Resize an (H, W) mask to a grid ``shape`` = (h, w): area average, then >= 0.5.

    A thin object that would vanish at a coarse grid keeps every cell it touches.
    """
    m = mask.float()
    if tuple(m.shape) == tuple(shape):
        return (m >= 0.5).float()
    area = F.interpolate(m[None, None], size=tuple(shape), mode="area")[0, 0]
    out = (area >= 0.5).float()
    if out.sum() == 0 and m.sum() > 0:
        out = (area > 0).float()
    return out


def mask_weights(mask: torch.Tensor, shape: tuple[int, int],
                 mode: str = "reference") -> torch.Tensor:
    """An (H, W) 0/1 mask on a grid ``shape`` = (h, w), as soft weights in [0, 1].

    ``reference``: bilinear resizing without antialiasing (``align_corners=False``), as
    the published code resizes its SAM masks for matching and AdaIN; ``area``: the
    binary :func:`mask_at`.
    """
    if mode not in MASK_RESIZE_MODES:
        raise ValueError(f"mask resize mode {mode!r} is unknown: use one of "
                         f"{', '.join(MASK_RESIZE_MODES)}")
    if mode == "area":
        return mask_at(mask, shape)
    m = mask.float()
    if tuple(m.shape) == tuple(shape):
        return m
    return F.interpolate(m[None, None], size=tuple(shape), mode="bilinear",
                         align_corners=False, antialias=False)[0, 0]


def matching_mask(mask: torch.Tensor, shape: tuple[int, int],
                  mode: str = "reference") -> torch.Tensor:
    """The 0/1 cells of ``shape`` that take part in matching.

    ``reference``: every cell with a positive bilinear weight (the published code
    multiplies features by the resized mask and matches every non-zero vector).
    """
    return (mask_weights(mask, shape, mode) > 0).float()


def adain_masks(mask: torch.Tensor, shape: tuple[int, int],
                mode: str = "reference") -> tuple[torch.Tensor, torch.Tensor]:
    """(statistics mask, blending weights) of a mask on the latent grid ``shape``.

    ``reference``: statistics over the cells whose bilinear weight is 1 (the published
    code tests ``== 1``; we allow 1e-6 of rounding so that interpolation weights at
    non-integer scale ratios cannot drop interior cells) and blending with the soft
    weights, so object edges are blended partially. ``area``: both the binary mask.
    """
    weights = mask_weights(mask, shape, mode)
    if mode == "area":
        return weights, weights
    return (weights >= 1 - 1e-6).float(), weights


def require_nonempty(mask: torch.Tensor, name: str) -> None:
    if mask.sum() == 0:
        raise MaskError(f"{name} is empty (no pixel selected): draw a larger box, pick another "
                        "SAM point, or use --mask box / --mask none")
