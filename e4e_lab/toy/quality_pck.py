"""Keypoint correspondence in the toy world: PCK of DIFT nearest-neighbour matches.

:func:`dift_pck` matches the structure creature's keypoints into the appearance
creature through the model's DIFT features and scores them against the appearance's
true keypoints (PCK@:data:`PCK_ALPHA` with the object-box normaliser, as SPair-71k),
with the chance level (:func:`random_point_pck`) and the ceiling that the feature grid
allows. Points are (x, y) model pixels; a grid is (rows, cols).

Not :func:`e4e_lab.analysis.metrics.pck`: that one scores a
:class:`~e4e_lab.method.correspondence.CorrespondenceField` with an image-size
threshold; this one matches raw feature maps and uses the object box.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

PCK_ALPHA: float = 0.1


@dataclass(frozen=True)
class PckScore:
    """PCK of one pair's keypoint matches.

    ``pck``: share of keypoints matched within the threshold (nan without common
    keypoints); ``chance``: the expected PCK of a uniformly random location in the
    appearance object (:func:`random_point_pck`); ``ceiling``: the PCK of a perfect
    matcher on the same grid (the true keypoint's cell, at its centre), which the grid's
    coarseness caps; ``keypoints``: how many were matched; ``threshold``: in pixels.
    """

    pck: float
    chance: float
    ceiling: float
    keypoints: int
    threshold: float


def pck_threshold(box: Sequence[float], alpha: float = PCK_ALPHA) -> float:
    """``alpha * max(box width, box height)`` in pixels (the object-box normaliser of
    PCK@alpha, as in SPair-71k), for a box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    return alpha * max(x1 - x0, y1 - y0)


def cell_of(points: np.ndarray, grid: tuple[int, int], image_size: tuple[int, int]
            ) -> np.ndarray:
    """(K,) flat cell indices on an (h, w) ``grid`` of (K, 2) (x, y) pixel points in an
    image of ``image_size`` = (width, height)."""
    (h, w), (width, height) = grid, image_size
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    col = np.clip(np.floor(pts[:, 0] / width * w), 0, w - 1).astype(np.int64)
    row = np.clip(np.floor(pts[:, 1] / height * h), 0, h - 1).astype(np.int64)
    return row * w + col


def cell_centres(cells: np.ndarray, grid: tuple[int, int], image_size: tuple[int, int]
                 ) -> np.ndarray:
    """(K, 2) (x, y) pixel centres of flat cell indices on an (h, w) grid."""
    (h, w), (width, height) = grid, image_size
    cells = np.asarray(cells, dtype=np.int64)
    return np.stack([(cells % w + 0.5) / w * width, (cells // w + 0.5) / h * height], axis=1)


def match_points(source: torch.Tensor, target: torch.Tensor, points: np.ndarray,
                 image_size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour (cosine) matches of (K, 2) pixel points of the source image
    into the target image, as (K, 2) pixel cell centres of the target grid.

    ``source`` and ``target`` are (C, h, w) feature maps of two images of
    ``image_size`` = (width, height); each point takes the feature of the cell it lies in.
    """
    c = source.shape[0]
    queries = source.reshape(c, -1).T[torch.from_numpy(cell_of(points, tuple(source.shape[1:]),
                                                                image_size))]
    q = F.normalize(queries.float(), dim=1)
    r = F.normalize(target.reshape(c, -1).T.float(), dim=1)
    best = (q @ r.T).argmax(dim=1).numpy()
    return cell_centres(best, tuple(target.shape[1:]), image_size)


def pck(predicted: np.ndarray, truth: np.ndarray, threshold: float) -> float:
    """Share of (K, 2) predicted points within ``threshold`` pixels of the true ones."""
    predicted, truth = np.asarray(predicted, float), np.asarray(truth, float)
    if len(truth) == 0:
        return float("nan")
    return float((np.linalg.norm(predicted - truth, axis=1) <= threshold).mean())


def random_point_pck(truth: np.ndarray, object_mask: np.ndarray, threshold: float) -> float:
    """Chance level of PCK: the expected PCK of a location drawn uniformly among the
    object's pixel centres, for (K, 2) true keypoints (exact, not sampled)."""
    truth = np.asarray(truth, float).reshape(-1, 2)
    rows, cols = np.nonzero(np.asarray(object_mask, dtype=bool))
    if len(truth) == 0 or len(rows) == 0:
        return float("nan")
    centres = np.stack([cols + 0.5, rows + 0.5], axis=1)  # (N, 2)
    d2 = ((truth[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)  # (K, N)
    return float((d2 <= threshold ** 2).mean())


def dift_pck(structure_features: torch.Tensor, appearance_features: torch.Tensor,
             structure_keypoints: Mapping[str, Sequence[float]],
             appearance_keypoints: Mapping[str, Sequence[float]],
             appearance_box: Sequence[float], appearance_mask: np.ndarray,
             image_size: tuple[int, int], alpha: float = PCK_ALPHA) -> PckScore:
    """PCK@alpha of DIFT correspondence from the structure to the appearance.

    For every structure keypoint whose name the appearance also has, the structure
    feature of its cell is matched (cosine, nearest neighbour, whole appearance grid)
    and the matched cell's centre is correct when within ``alpha * max(width, height)``
    of the appearance's object box (:func:`pck_threshold`) of the appearance keypoint of
    that name. This measures whether the model's features know which part is which,
    which the transfer's matching relies on. Chance: :func:`random_point_pck` on the
    appearance's object; ceiling: see :class:`PckScore`.
    """
    names = [n for n in structure_keypoints if n in appearance_keypoints]
    threshold = pck_threshold(appearance_box, alpha)
    if not names:
        return PckScore(float("nan"), float("nan"), float("nan"), 0, threshold)
    src = np.array([structure_keypoints[n] for n in names], dtype=np.float64)
    truth = np.array([appearance_keypoints[n] for n in names], dtype=np.float64)
    predicted = match_points(structure_features, appearance_features, src, image_size)
    grid = tuple(appearance_features.shape[1:])
    best_possible = cell_centres(cell_of(truth, grid, image_size), grid, image_size)
    return PckScore(pck(predicted, truth, threshold),
                    random_point_pck(truth, appearance_mask, threshold),
                    pck(best_possible, truth, threshold), len(names), threshold)
