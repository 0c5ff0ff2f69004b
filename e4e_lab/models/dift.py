"""DIFT-style diffusion features (Tang et al., "Emergent Correspondence from Image
Diffusion"): noise the image latent to timestep ``t``, run the UNet, and keep the
output of one decoder up-block, averaged over an ensemble of noise draws.

The UNet forward is stopped right after the needed block by a forward hook (the
blocks after it are never run). DIFT's own settings are SD 2.1, t = 261, up-block 1
and 8 draws; any SD UNet can serve, and SD 1.5 is the memory-cheap default here
because it is already loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import TransferCancelled
from ..method.correspondence import CorrespondenceField
from ..method.images import LoadedImage
from ..method.latents import encode
from ..method.seeding import image_generator
from ..progress import Progress, reporting
from .freeu import freeu
from .loading import Models


class _Stop(Exception):
    def __init__(self, output):
        self.output = output


@dataclass
class DiftFeatures:
    """(C, h, w) float32 DIFT features of one image and the settings that made them."""

    features: torch.Tensor
    timestep: int
    block: int
    ensemble: int

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.features.shape[1:])


@torch.no_grad()
def up_block_features(models: Models, latents: torch.Tensor, t: int, block: int,
                      text_emb: torch.Tensor) -> torch.Tensor:
    """Output of ``unet.up_blocks[block]`` for (B, 4, h, w) noisy latents at timestep t."""
    unet = models.unet
    if not 0 <= block < len(unet.up_blocks):
        raise ValueError(f"DIFT block index {block} is out of range: this UNet has "
                         f"{len(unet.up_blocks)} up-blocks (0..{len(unet.up_blocks) - 1})")

    def stop(_module, _inputs, output):
        raise _Stop(output)

    handle = unet.up_blocks[block].register_forward_hook(stop)
    try:
        with freeu(unet, "off"):
            unet(latents.to(models.dtype), torch.tensor(t, device=models.device),
                 encoder_hidden_states=text_emb.expand(len(latents), -1, -1))
    except _Stop as done:
        return done.output.float()
    finally:
        handle.remove()
    raise RuntimeError("the UNet finished without reaching the hooked up-block")


@torch.no_grad()
def dift_features(models: Models, image: LoadedImage, timestep: int = 261, block: int = 1,
                  ensemble: int = 8, prompt: str = "", seed: int = 0,
                  batch_size: int = 8, cancel=None,
                  on_draws: Callable[[int], None] | None = None) -> DiftFeatures:
    """DIFT features of one image (prompt "" or e.g. "a photo of a bird").

    The ensemble's noise is drawn from the image's own stream (``seed`` + its digest):
    two images never share noise, as in DIFT, where each image is noised independently.
    ``cancel`` (anything with ``is_set()``) is checked before each batch of draws and
    raises :class:`~e4e_lab.errors.TransferCancelled`; ``on_draws(n)`` is called after
    each batch with the number of draws it ran.
    """
    x0 = encode(models, [image])
    gen = image_generator(seed, image.digest, "dift")
    noise = torch.randn((ensemble,) + tuple(x0.shape[1:]), generator=gen).to(models.device)
    a = models.scheduler.alphas_cumprod[timestep].to(models.device, torch.float32)
    noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
    emb, _ = models.pipe.encode_prompt(prompt, models.device, 1, False)
    total, done = None, 0
    for chunk in noisy.split(batch_size):
        if cancel is not None and cancel.is_set():
            raise TransferCancelled(done, ensemble, "DIFT features", "noise draw")
        feats = up_block_features(models, chunk, timestep, block, emb).sum(0)
        total = feats if total is None else total + feats
        done += len(chunk)
        if on_draws is not None:
            on_draws(len(chunk))
    return DiftFeatures((total / ensemble).cpu(), timestep, block, ensemble)


@dataclass(frozen=True)
class DiftSettings:
    """How DIFT features are made: timestep, up-block, ensemble draws, prompt, seed."""

    timestep: int = 261
    block: int = 1
    ensemble: int = 8
    prompt: str = ""
    seed: int = 0

    @classmethod
    def from_config(cls, config, ensemble: int | None = None) -> "DiftSettings":
        """The settings of a :class:`~e4e_lab.method.config.TransferConfig` (its
        ``dift_*`` fields, the inversion prompt and the seed); ``ensemble`` overrides."""
        return cls(config.dift_timestep, config.dift_block,
                   config.dift_ensemble if ensemble is None else ensemble,
                   config.inversion.prompt, config.seed)


def pair_dift_features(models: Models, target: LoadedImage, reference: LoadedImage,
                       settings: DiftSettings = DiftSettings(), blocking: bool = True,
                       action: str = "compute DIFT features", cancel=None,
                       progress: Progress = None) -> tuple[DiftFeatures, DiftFeatures]:
    """DIFT features of both images of a pair: the one way every caller (transfer, part
    discovery, the explorer) computes them.

    The UNet is held for both images (:meth:`Models.in_use`): a transfer running in
    another thread has its processors installed on it. With ``blocking=False`` a busy
    model raises :class:`~e4e_lab.errors.ModelBusy` at once instead of waiting.
    ``cancel`` (a ``threading.Event``) stops the work, while it waits for the model or
    between two batches of noise draws, with :class:`~e4e_lab.errors.TransferCancelled`;
    ``progress`` reports the draws of both images (:func:`e4e_lab.progress.reporting`:
    a callback, ``True`` for a bar, or a session's bars).
    """
    s = settings
    total, done = 2 * s.ensemble, [0]
    try:
        with models.in_use(blocking, action, cancel), reporting(progress, "DIFT features",
                                                                "draw") as report:
            def draws(n: int) -> None:
                done[0] += n
                if report is not None:
                    report(done[0], total)

            draws(0)
            return tuple(dift_features(models, image, s.timestep, s.block, s.ensemble,
                                       s.prompt, s.seed, cancel=cancel, on_draws=draws)
                         for image in (target, reference))
    except TransferCancelled:  # while waiting for the model, or between two batches
        raise TransferCancelled(done[0], total, "DIFT features", "noise draw") from None


def dift_field(models: Models, target: LoadedImage, reference: LoadedImage,
               target_mask: torch.Tensor | None = None, ref_mask: torch.Tensor | None = None,
               settings: DiftSettings = DiftSettings(), blocking: bool = True, cancel=None,
               progress: Progress = None) -> CorrespondenceField:
    """Target -> reference correspondence from DIFT features, restricted to the masks."""
    ft, fr = pair_dift_features(models, target, reference, settings, blocking, cancel=cancel,
                                progress=progress)
    return CorrespondenceField.from_features(ft.features, fr.features, target_mask, ref_mask)
