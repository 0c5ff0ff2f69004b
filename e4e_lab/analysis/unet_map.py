"""Stage 0 for the walkthrough: the models, and where in the UNet the injected layers sit.

Read from the loaded modules' configs (any SD-1.5-shaped pipeline: SD 1.5 itself, the
toy model, the tiny one), so the picture is of the model actually loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..method.layers import injected_layers
from .grids import latent_grid

_ATTN1 = re.compile(r"^(down_blocks\.\d+|mid_block|up_blocks\.\d+)\..*\.attn1\.processor$")


@dataclass
class UNetBlock:
    """One block of the UNet at the resolution it works on."""

    name: str  # "down_blocks.0", "mid_block", "up_blocks.3"
    side: str  # "down", "mid" or "up"
    block_type: str  # diffusers class name, e.g. "CrossAttnUpBlock2D"
    grid: tuple[int, int]  # (rows, cols) of its feature maps
    channels: int
    self_attention: list[str] = field(default_factory=list)  # its attn1 processor names
    injected: list[str] = field(default_factory=list)  # those the method replaces


@dataclass
class UNetMap:
    """The pipeline at one image size: VAE, text encoder and the UNet's blocks."""

    image_size: tuple[int, int]  # (width, height) in model pixels
    latent_grid: tuple[int, int]
    latent_channels: int
    text_tokens: int
    text_width: int
    blocks: list[UNetBlock]

    @property
    def injected(self) -> list[str]:
        return [n for b in self.blocks for n in b.injected]


def unet_map(models, image_size: tuple[int, int]) -> UNetMap:
    """The blocks of ``models.unet`` for an image of ``image_size`` = (width, height)."""
    unet, cfg = models.unet, models.unet.config
    lat = latent_grid(models, image_size)
    levels = len(cfg.block_out_channels)
    attn: dict[str, list[str]] = {}
    for name in unet.attn_processors:
        m = _ATTN1.match(name)
        if m:
            attn.setdefault(m.group(1), []).append(name)
    injected = set(injected_layers(unet))
    scaled = lambda f: (lat[0] // f, lat[1] // f)  # noqa: E731
    blocks = [UNetBlock(f"down_blocks.{j}", "down", t, scaled(2 ** j), cfg.block_out_channels[j])
              for j, t in enumerate(cfg.down_block_types)]
    blocks.append(UNetBlock("mid_block", "mid", cfg.mid_block_type or "none",
                            scaled(2 ** (levels - 1)), cfg.block_out_channels[-1]))
    blocks += [UNetBlock(f"up_blocks.{i}", "up", t, scaled(2 ** (levels - 1 - i)),
                         list(reversed(cfg.block_out_channels))[i])
               for i, t in enumerate(cfg.up_block_types)]
    for b in blocks:
        b.self_attention = attn.get(b.name, [])
        b.injected = [n for n in b.self_attention if n in injected]
    text = models.pipe.text_encoder.config
    return UNetMap(tuple(image_size), lat, int(cfg.in_channels),
                   int(models.pipe.tokenizer.model_max_length), int(text.hidden_size), blocks)
