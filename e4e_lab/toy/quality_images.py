"""The image measures of a transfer in the toy world: part colours, background, outline.

Each compares a result with the held-out pair's known ground truth (see
:mod:`e4e_lab.toy.quality` for what the numbers mean and which way is better):
:func:`part_colour_accuracy`, :func:`background_error`, and :func:`silhouette_iou` of
:func:`result_silhouette`; plus the small image helpers they share (:func:`as_rgb255`,
:func:`dilate`, :func:`psnr`, and :func:`interior`, which the world's own
``part_mask(..., interior=True)`` uses too). The keypoint measure is in
:mod:`e4e_lab.toy.quality_pck`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import world
from .world_render import interior

__all__ = [
    "SILHOUETTE_THRESHOLD", "BACKGROUND_DILATION", "as_rgb255", "interior", "dilate", "psnr",
    "PartColourScore", "part_colour_accuracy", "BackgroundScore", "background_error",
    "background_estimate", "result_silhouette", "silhouette_iou",
]

#: Colour distance (RGB 0-255) beyond which a result pixel differs from the background:
#: half of the least distance the world keeps between any part and the background's
#: mean colour (:data:`~e4e_lab.toy.world.MIN_COLOR_DISTANCE`).
SILHOUETTE_THRESHOLD: float = world.MIN_COLOR_DISTANCE / 2
#: Pixels the structure's object is grown by before measuring the background: the
#: transfer blends latents across the mask edge, and the VAE smears edges a little.
BACKGROUND_DILATION: int = 3


# ---------------------------------------------------------------- helpers --

def as_rgb255(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """An (H, W, 3) float64 array in 0-255 from an (H, W, 3) array in 0-255 (uint8 or
    float) or a (3, H, W) tensor in [0, 1]."""
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError("an image tensor must be (3, H, W) in [0, 1], got "
                             f"{tuple(image.shape)}")
        return image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).double().numpy() * 255.0
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"an image array must be (H, W, 3) in 0-255, got {arr.shape}")
    return arr


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """(H, W) bool mask grown by ``radius`` pixels (a (2r+1)-square max filter)."""
    mask = np.asarray(mask, dtype=bool)
    if radius <= 0:
        return mask.copy()
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.max_pool2d(t, 2 * radius + 1, stride=1, padding=radius)[0, 0].numpy() > 0


def psnr(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor,
         mask: np.ndarray | None = None) -> float:
    """PSNR in dB (peak 255) between two images, over ``mask`` when given; inf when
    identical, nan when the mask is empty."""
    diff = as_rgb255(a) - as_rgb255(b)
    if mask is not None:
        diff = diff[np.asarray(mask, dtype=bool)]
    if diff.size == 0:
        return float("nan")
    mse = float(np.mean(diff * diff))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


# ------------------------------------------------------ part colour accuracy --

@dataclass(frozen=True)
class PartColourScore:
    """Part-colour accuracy of one result.

    ``accuracy``: share of measured pixels nearest to the right colour (nan when no
    pixel was measured); ``chance``: 1 / the number of candidate colours, the expected
    accuracy of a result whose colours are unrelated to the parts; ``pixels``: how
    many pixels were measured; ``parts``: the measured part names.
    """

    accuracy: float
    chance: float
    pixels: int
    parts: tuple[str, ...]


def part_colour_accuracy(result: np.ndarray | torch.Tensor, target_parts: np.ndarray,
                         reference_colors: Mapping[str, Sequence[float]],
                         skip: Iterable[str] = world.DETAIL_PARTS) -> PartColourScore:
    """Does each target part take the colour of the same-named reference part?

    ``target_parts`` is the structure's (H, W) part map (indices into
    :data:`~e4e_lab.toy.world.PART_NAMES`), ``reference_colors`` the appearance's
    nominal part colours (``Sample.part_colors``). The candidates are the reference's
    parts not in ``skip`` (default: the tiny eye and beak, too small for a reliable
    colour). Measured pixels: the interior pixels (:func:`interior`) of target parts
    that are candidates (a part the reference lacks is skipped). A pixel is correct when
    its result colour is nearer (RGB distance) to the reference colour of its own part
    than to the colour of every other candidate.

    This measures semantic colour transfer: colour statistics alone (AdaIN) cannot put
    the head's colour on the head, because the world draws colours independently of
    parts. Chance level: ``1 / len(candidates)`` (about 1/4 to 1/5), reported with it.
    """
    names = tuple(n for n in world.PART_NAMES[1:] if n in reference_colors and n not in set(skip))
    if not names:
        return PartColourScore(float("nan"), float("nan"), 0, ())
    palette = np.array([reference_colors[n] for n in names], dtype=np.float64)  # (K, 3)
    lut = np.full(len(world.PART_NAMES), -1, dtype=np.int64)
    lut[[world.PART_INDEX[n] for n in names]] = np.arange(len(names))
    labels = np.asarray(target_parts).astype(np.int64)
    wanted = lut[labels]
    measured = interior(labels) & (wanted >= 0)
    count = int(measured.sum())
    chance = 1.0 / len(names)
    if count == 0:
        return PartColourScore(float("nan"), chance, 0, ())
    colours = as_rgb255(result)[measured]  # (N, 3)
    dist = np.linalg.norm(colours[:, None, :] - palette[None, :, :], axis=2)  # (N, K)
    correct = dist.argmin(axis=1) == wanted[measured]
    present = tuple(names[k] for k in np.unique(wanted[measured]))
    return PartColourScore(float(correct.mean()), chance, count, present)


# --------------------------------------------------- background preservation --

@dataclass(frozen=True)
class BackgroundScore:
    """Background error: mean absolute error (0-255 units) and PSNR (dB) over
    ``pixels`` background pixels."""

    mae: float
    psnr: float
    pixels: int


def background_error(result: np.ndarray | torch.Tensor, structure: np.ndarray | torch.Tensor,
                     object_mask: np.ndarray, dilation: int = BACKGROUND_DILATION
                     ) -> BackgroundScore:
    """How much the result changed the structure's background.

    Compared outside ``object_mask`` (the structure's object, e.g. ``parts > 0``) grown
    by ``dilation`` pixels, so that the blended object edge does not count. A method
    that edits only the object scores MAE 0 / PSNR inf; the VAE alone costs a little
    (compare with the VAE reconstruction PSNR). No chance level: lower MAE is better.
    """
    outside = ~dilate(object_mask, dilation)
    n = int(outside.sum())
    if n == 0:
        return BackgroundScore(float("nan"), float("nan"), 0)
    diff = as_rgb255(result)[outside] - as_rgb255(structure)[outside]
    return BackgroundScore(float(np.abs(diff).mean()), psnr(result, structure, outside), n)


# --------------------------------------------------- structure preservation --

def background_estimate(image: np.ndarray | torch.Tensor, object_mask: np.ndarray,
                        margin: int = 1) -> np.ndarray:
    """(H, W, 3) estimate of ``image``'s background behind its object, in 0-255.

    Outside the object the estimate is the image itself. Inside, it is the mean of the
    known background pixels (outside the object grown by ``margin``, which leaves out
    the anti-aliased edge ring) in the smallest square window of side ``2**k + 1``
    around the pixel that holds any: a local fill that follows the world's smooth
    gradients and noise and averages its stripes and checks.
    """
    img = as_rgb255(image)
    obj = np.asarray(object_mask, dtype=bool)
    known = ~dilate(obj, margin)
    if not known.any():
        raise ValueError("background_estimate: no background pixel is known")
    t_img = torch.from_numpy(img.transpose(2, 0, 1).copy())[None]  # (1, 3, H, W) float64
    t_known = torch.from_numpy(known.astype(np.float64))[None, None]
    estimate = img.copy()
    todo = obj.copy()
    radius = 1
    while todo.any():
        k = 2 * radius + 1
        num = F.avg_pool2d(t_img * t_known, k, stride=1, padding=radius, count_include_pad=True)
        den = F.avg_pool2d(t_known, k, stride=1, padding=radius, count_include_pad=True)
        ready = todo & (den[0, 0].numpy() > 0)
        fill = (num[0] / den[0].clamp_min(1e-12)).numpy().transpose(1, 2, 0)
        estimate[ready] = fill[ready]
        todo &= ~ready
        radius *= 2
    return estimate


def result_silhouette(result: np.ndarray | torch.Tensor, structure: np.ndarray | torch.Tensor,
                      object_mask: np.ndarray, threshold: float = SILHOUETTE_THRESHOLD
                      ) -> np.ndarray:
    """(H, W) bool: the result's object, without a segmenter.

    A result pixel is "object" when its RGB distance from the structure's background
    estimate (:func:`background_estimate`) exceeds ``threshold`` (default 30, half the
    least part-to-background distance of the world). Outside the structure's object the
    estimate is the structure image itself, so a result that paints over the background
    grows its silhouette; inside, a result that lets the background through shrinks it.
    """
    estimate = background_estimate(structure, object_mask)
    return np.linalg.norm(as_rgb255(result) - estimate, axis=2) > threshold


def silhouette_iou(predicted: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union of two (H, W) bool masks (1 when both are empty)."""
    p, t = np.asarray(predicted, dtype=bool), np.asarray(target, dtype=bool)
    union = int((p | t).sum())
    return 1.0 if union == 0 else float((p & t).sum()) / union
