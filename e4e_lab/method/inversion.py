"""Stage 2: edit-friendly DDPM inversion (Huberman-Spiegelglas et al., eta = 1).

1. Encode the image: ``x_0`` = VAE mode x scaling factor.
2. Draw every ``x_t`` independently from ``q(x_t | x_0)``, each image from its own
   stream seeded by (run seed, image digest) (:mod:`e4e_lab.method.seeding`): the two images
   of a pair get independent noise, as in the published code.
3. Predict the noise at every ``x_t`` with classifier-free guidance. Each prediction
   only needs its own ``x_t``, so all timesteps (and several images, and both CFG
   halves) run in large batches instead of 2 x steps sequential UNet calls.
4. Solve, in one vectorised pass, the noise maps ``z_t`` that make the DDPM step from
   ``x_t`` land exactly on ``x_{t-1}``.

Denoising from ``x_T`` with the stored ``z_t`` and the same noise predictions gives
back ``x_0`` to float precision. Unlike the published code we keep the noise map of
the last step (it zeroes it, so its reconstructions end at the posterior mean and not
at ``x_0``).

Results are cached on disk keyed by the fitted image's pixels, the model, the step
count, the prompt, the CFG scale, the seed, the FreeU mode and the dtype (the published
code keyed by file stem inside a per-pair folder and reused stale latents).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..errors import DeviceOutOfMemoryError
from ..io.cache import TensorCache, key_of
from ..models.freeu import freeu
from ..models.loading import Models
from . import schedule
from .config import InversionConfig
from .images import LoadedImage
from .latents import encode
from .seeding import image_generator


@dataclass
class InversionResult:
    """The trajectory of one image.

    ``xts[k]`` is the latent at ``timesteps[k]`` (most noisy first) for k < T and
    ``xts[T]`` is the clean latent ``x_0``; ``zs[k]`` is the noise map of the step from
    ``xts[k]`` to ``xts[k + 1]``. All float32, shape (T(+1), 4, h, w).
    """

    name: str
    xts: torch.Tensor
    zs: torch.Tensor
    timesteps: torch.Tensor
    config: InversionConfig
    key: str
    from_cache: bool = False

    @property
    def x0(self) -> torch.Tensor:
        return self.xts[-1]

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def to(self, device) -> "InversionResult":
        return InversionResult(self.name, self.xts.to(device), self.zs.to(device),
                               self.timesteps, self.config, self.key, self.from_cache)


def cache_spec(models: Models, image: LoadedImage, config: InversionConfig) -> dict:
    return {
        "stage": "ddpm-inversion-v2", "image_sha256": image.digest,
        "image_size": list(image.size), "model": models.model_id,
        "model_fingerprint": models.fingerprint, "steps": config.num_steps,
        "prompt": config.prompt, "cfg": config.cfg_scale, "seed": config.seed,
        "freeu": config.freeu, "dtype": str(models.dtype),
        "scheduler": {k: v for k, v in dict(models.scheduler.config).items()
                      if not k.startswith("_")},
    }


@torch.no_grad()
def text_embeddings(models: Models, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(conditional, unconditional) CLIP embeddings, each (1, 77, D)."""
    cond, uncond = models.pipe.encode_prompt(prompt, models.device, 1, True, negative_prompt="")
    return cond, uncond


def guided_eps(models: Models, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
               uncond: torch.Tensor, scale: float, batch_size: int) -> torch.Tensor:
    """UNet output with CFG for many (x_t, t) pairs, both halves in the same batches."""
    unet, out = models.unet, []
    half = max(1, batch_size // 2)
    for start in range(0, len(x), half):
        xb, tb = x[start:start + half], t[start:start + half]
        n = len(xb)
        latents = torch.cat([xb, xb]).to(models.dtype)
        emb = torch.cat([uncond.expand(n, -1, -1), cond.expand(n, -1, -1)])
        pred = unet(latents, torch.cat([tb, tb]), encoder_hidden_states=emb).sample.float()
        e_u, e_c = pred.chunk(2)
        out.append(e_u + scale * (e_c - e_u))
    return torch.cat(out)


#: Activation memory of one UNet sample in inversion, SD 1.5 at a 64x64 latent in fp16
#: with SDPA (skip connections, feed-forward and attention buffers), with headroom.
_SAMPLE_BYTES_SD15 = 160 * 2**20


def default_batch_size(models: Models, latent_hw: tuple[int, int] = (64, 64)) -> int:
    """UNet batch for inversion: 64 on a CPU; on a GPU 32, or fewer when half of the free
    memory would not hold 32 samples (scaled from SD 1.5's size by latent area, UNet
    width and dtype). A fixed size where memory allows keeps results reproducible."""
    if models.device.type != "cuda":
        return 64
    free, _ = torch.cuda.mem_get_info(models.device)
    width = models.unet.config.block_out_channels[0] / 320
    per_sample = (_SAMPLE_BYTES_SD15 * latent_hw[0] * latent_hw[1] / 4096 * width
                  * torch.finfo(models.dtype).bits / 16)
    fits = int(free * 0.5 // max(per_sample, 1))
    return max(2, min(32, fits - fits % 2))


@torch.no_grad()
def invert_uncached(models: Models, images: Sequence[LoadedImage], config: InversionConfig,
                    batch_size: int | None = None,
                    progress: Callable[[int, int], None] | None = None) -> list[tuple]:
    """Invert several images at once; returns [(xts, zs, timesteps)] per image."""
    device = models.device
    timesteps = schedule.timesteps_for(models.scheduler, config.num_steps)
    coef = schedule.coefficients(models.scheduler, timesteps, eta=1.0, device=device)
    n_img, n_t = len(images), len(timesteps)
    x0 = encode(models, list(images))  # (B, 4, h, w) float32
    batch_size = batch_size or default_batch_size(models, tuple(x0.shape[-2:]))
    # Each image draws from its own stream (run seed + content digest): independent noise
    # across images, and a draw that does not depend on what else is inverted with it.
    noise = torch.stack([
        torch.randn((n_t,) + tuple(x0.shape[1:]),
                    generator=image_generator(config.seed, im.digest, "inversion"))
        for im in images]).to(device)
    xts = coef.alpha_t.sqrt() * x0[:, None] + (1 - coef.alpha_t).sqrt() * noise  # (B, T, ...)
    cond, uncond = text_embeddings(models, config.prompt)

    flat_x = xts.reshape((-1,) + tuple(x0.shape[1:]))
    flat_t = timesteps.to(device).repeat(n_img)
    eps_chunks, done = [], 0
    chunk = max(1, batch_size // 2) * 4
    with freeu(models.unet, config.freeu):
        for start in range(0, len(flat_x), chunk):
            eps_chunks.append(guided_eps(models, flat_x[start:start + chunk],
                                         flat_t[start:start + chunk], cond, uncond,
                                         config.cfg_scale, batch_size))
            done += len(eps_chunks[-1])
            if progress is not None:
                progress(done, len(flat_x))
    eps = torch.cat(eps_chunks).reshape(xts.shape)

    pred_type = models.scheduler.config.prediction_type
    results = []
    for b in range(n_img):
        targets = torch.cat([xts[b, 1:], x0[b:b + 1]])  # x_{t-1} for every step
        zs, landed = schedule.solve_noise(eps[b], xts[b], targets, coef, pred_type)
        traj = torch.cat([xts[b, :1], landed])  # keep x_T, then the landings
        # contiguous: the VAE leaves channels-last strides, and the UNet's kernels round
        # differently on them than on the contiguous tensors read back from the cache
        results.append((traj.float().cpu().contiguous(), zs.float().cpu().contiguous(),
                        timesteps.cpu()))
    return results


def invert(models: Models, images: Sequence[LoadedImage], config: InversionConfig,
           cache: TensorCache | None = None, batch_size: int | None = None,
           progress: Callable[[int, int], None] | None = None) -> list[InversionResult]:
    """Invert images, reusing cached trajectories; uncached images are batched together."""
    specs = [cache_spec(models, im, config) for im in images]
    keys = [key_of(s) for s in specs]
    found: dict[int, InversionResult] = {}
    if cache is not None:
        for i, (im, key, spec) in enumerate(zip(images, keys, specs)):
            hit = cache.get(key, spec)
            if hit is not None:
                found[i] = InversionResult(im.name, hit["xts"], hit["zs"], hit["timesteps"],
                                           config, key, from_cache=True)
    todo = [i for i in range(len(images)) if i not in found]
    # the same image twice (or two files with the same pixels) is inverted once
    unique = list(dict.fromkeys(keys[i] for i in todo))
    if unique:
        first = {k: next(i for i in todo if keys[i] == k) for k in unique}
        try:
            computed = invert_uncached(models, [images[first[k]] for k in unique], config,
                                       batch_size=batch_size, progress=progress)
        except torch.cuda.OutOfMemoryError:
            w, h = images[first[unique[0]]].size
            raise DeviceOutOfMemoryError(
                f"the GPU ran out of memory inverting {len(unique)} image(s) at {w}x{h}: "
                "reduce the inversion batch size (batch_size=) or --size, or close other "
                "GPU programs") from None
        for key, (xts, zs, ts) in zip(unique, computed):
            if cache is not None:
                cache.put(key, specs[first[key]], {"xts": xts, "zs": zs, "timesteps": ts})
            for i in todo:
                if keys[i] == key:
                    found[i] = InversionResult(images[i].name, xts, zs, ts, config, key)
    return [found[i] for i in range(len(images))]


@torch.no_grad()
def reconstruct(models: Models, inversion: InversionResult, start: int = 0,
                cfg_scale: float | None = None) -> torch.Tensor:
    """Denoise ``xts[start]`` with the stored noise maps (sequentially); returns x_0.

    With the inversion's own CFG scale this reproduces ``inversion.x0`` (the round-trip
    invariant). Used by tests and the method walkthrough.
    """
    cfg = inversion.config
    scale = cfg.cfg_scale if cfg_scale is None else cfg_scale
    coef = schedule.coefficients(models.scheduler, inversion.timesteps, device=models.device)
    cond, uncond = text_embeddings(models, cfg.prompt)
    x = inversion.xts[start:start + 1].to(models.device)
    pred_type = models.scheduler.config.prediction_type
    with freeu(models.unet, cfg.freeu):
        for k in range(start, inversion.num_steps):
            t = inversion.timesteps[k:k + 1].to(models.device)
            eps = guided_eps(models, x, t, cond, uncond, scale, 2)
            x = schedule.ddpm_step(eps, x, inversion.zs[k:k + 1].to(models.device), coef[k],
                                   pred_type)
    return x[0]
