"""VAE encoding and decoding (stages 2 and 5), and cheap previews of latents."""

from __future__ import annotations

import torch

from .images import LoadedImage


@torch.no_grad()
def encode(models, images: list[LoadedImage]) -> torch.Tensor:
    """(B, 4, h, w) float32 latents: the VAE posterior mode times the scaling factor."""
    vae = models.vae
    pixels = torch.stack([im.pixels for im in images]).to(models.device, vae.dtype)
    dist = vae.encode(pixels * 2 - 1).latent_dist
    return dist.mode().float() * vae.config.scaling_factor


@torch.no_grad()
def decode(models, latents: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
    """(B, 3, H, W) float32 images in [0, 1] from (B, 4, h, w) latents."""
    vae = models.vae
    out = []
    for chunk in latents.split(batch_size):
        x = vae.decode(chunk.to(models.device, vae.dtype) / vae.config.scaling_factor).sample
        out.append(((x.float() + 1) / 2).clamp(0, 1))
    return torch.cat(out)


# Approximate linear map from SD 1.x latents to RGB, for instant previews (no VAE).
_SD_LATENT_RGB = torch.tensor([
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
])


def fast_preview(latent: torch.Tensor) -> torch.Tensor:
    """(3, h, w) rough RGB in [0, 1] from one (4, h, w) latent with a fixed linear map.

    Meant for live previews every few steps; decode with the VAE for the real image.
    """
    rgb = torch.einsum("chw,cr->rhw", latent.float().cpu(), _SD_LATENT_RGB)
    return ((rgb + 1) / 2).clamp(0, 1)
