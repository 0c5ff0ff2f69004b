"""Grids and cells: model pixels <-> cells of the grids the method works on.

The latent grid (masked AdaIN) and the grids of the injected self-attention layers
(matching), which layers work on which grid, and what a mask looks like there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..method.layers import injected_layers, layer_level
from ..method.masks import adain_masks, matching_mask

Grid = tuple[int, int]  # (rows, cols)


def pixel_to_cell(x: float, y: float, image_size: tuple[int, int], grid: Grid) -> int:
    """Flat row-major index of the ``grid`` cell holding model pixel (x, y).

    ``image_size`` is (width, height); pixels outside the image are clamped to it.
    """
    w, h = image_size
    rows, cols = grid
    r = min(max(int(y * rows / h), 0), rows - 1)
    c = min(max(int(x * cols / w), 0), cols - 1)
    return r * cols + c


def cell_center(index: int, grid: Grid, image_size: tuple[int, int]) -> tuple[float, float]:
    """Model-pixel (x, y) centre of a flat grid cell."""
    w, h = image_size
    rows, cols = grid
    r, c = divmod(int(index), cols)
    return (c + 0.5) * w / cols, (r + 0.5) * h / rows


def cell_rect(index: int, grid: Grid, image_size: tuple[int, int]
              ) -> tuple[float, float, float, float]:
    """Model-pixel box [x0, y0, x1, y1] covered by a flat grid cell."""
    w, h = image_size
    rows, cols = grid
    r, c = divmod(int(index), cols)
    return c * w / cols, r * h / rows, (c + 1) * w / cols, (r + 1) * h / rows


def latent_grid(models, image_size: tuple[int, int]) -> Grid:
    """(rows, cols) of the latent of an image of ``image_size`` = (width, height)."""
    f = models.vae_scale_factor
    return image_size[1] // f, image_size[0] // f


@dataclass(frozen=True)
class LayerGrid:
    """One resolution seen by matching: its grid and the injected layers working on it."""

    grid: Grid
    layers: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.grid[0]}x{self.grid[1]}"


def injected_grids(models, image_size: tuple[int, int]) -> list[LayerGrid]:
    """The grids of the injected decoder self-attention layers, finest first."""
    lh, lw = latent_grid(models, image_size)
    groups: dict[Grid, list[str]] = {}
    for name in injected_layers(models.unet):
        f = layer_level(name, models.unet)
        groups.setdefault((lh // f, lw // f), []).append(name)
    return [LayerGrid(g, tuple(names))
            for g, names in sorted(groups.items(), key=lambda kv: -kv[0][0] * kv[0][1])]


def layer_masks(models, mask: torch.Tensor, mode: str = "reference"
                ) -> list[tuple[str, Grid, torch.Tensor]]:
    """What matching and AdaIN see of an (H, W) mask with ``mask_resize`` = ``mode``:
    ``(label, grid, mask)`` at the latent resolution (masked AdaIN's blending weights;
    its statistics use the cells equal to 1) and at each injected-layer resolution
    (the cells that take part in matching)."""
    size = (mask.shape[1], mask.shape[0])
    lat = latent_grid(models, size)
    out = [(f"latent {lat[0]}x{lat[1]} (AdaIN)", lat, adain_masks(mask, lat, mode)[1])]
    for lg in injected_grids(models, size):
        n = len(lg.layers)
        out.append((f"{lg.label} ({n} layer{'s' if n != 1 else ''}, matching)", lg.grid,
                    matching_mask(mask, lg.grid, mode)))
    return out


def short_layer_name(name: str) -> str:
    """``up_blocks.3.attentions.1.transformer_blocks.0.attn1.processor`` -> ``up3.attn1``."""
    parts = name.split(".")
    try:
        return f"up{parts[1]}.attn{parts[3]}"
    except IndexError:
        return name
