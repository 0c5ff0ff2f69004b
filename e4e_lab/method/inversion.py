"""Stage 2: edit-friendly DDPM inversion (Huberman-Spiegelglas et al., eta = 1).

1. Encode the image: ``x_0`` = VAE mode x scaling factor.
2. Draw every ``x_t`` independently from ``q(x_t | x_0)``, each image from its own
   stream seeded by (run seed, image digest) (:mod:`e4e_lab.method.seeding`): the two images
   of a pair get independent noise, as in the published code.
3. Predict the noise at every ``x_t`` with classifier-free guidance. Each prediction
   only needs its own ``x_t``, so an image's timesteps (and both CFG halves) run in
   batches instead of 2 x steps sequential UNet calls. A batch never mixes images, and
   an image's timesteps are cut into chunks of a fixed size (part of the cache key), so
   an image's inversion is bit-identical whether it is inverted alone, with a partner,
   or after its partner was read from the cache (kernels may round differently at
   another batch size or composition).
4. Solve, in one vectorised pass, the noise maps ``z_t`` that make the DDPM step from
   ``x_t`` land exactly on ``x_{t-1}``.

Denoising from ``x_T`` with the stored ``z_t`` and the same noise predictions gives
back ``x_0`` to float precision. Unlike the published code we keep the noise map of
the last step (it zeroes it, so its reconstructions end at the posterior mean and not
at ``x_0``).

Results are cached on disk keyed by the fitted image's pixels, the model's fingerprint
(its weights and the configs of every component, not where it lives), the step count,
the prompt, the CFG scale, the seed, the FreeU mode, the dtype and the UNet chunk size
(the published code keyed by file stem inside a per-pair folder and reused stale
latents).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..errors import ConfigError, DeviceOutOfMemoryError
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


def cache_spec(models: Models, image: LoadedImage, config: InversionConfig,
               chunk: int | None = None) -> dict:
    """What an inversion depends on; ``chunk`` (timesteps per UNet call) defaults to
    :func:`unet_chunk`'s choice."""
    chunk = unet_chunk(models, image) if chunk is None else chunk
    return {
        "stage": "ddpm-inversion-v3", "image_sha256": image.digest,
        "image_size": list(image.size), "model_fingerprint": models.fingerprint,
        "steps": config.num_steps, "prompt": config.prompt, "cfg": config.cfg_scale,
        "seed": config.seed, "freeu": config.freeu, "dtype": str(models.dtype),
        "unet_chunk": chunk,
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
    """UNet batch for inversion (both CFG halves): 64 on a CPU; on a GPU 32, or the
    largest power of two below it that half of the free memory holds (scaled from SD
    1.5's size by latent area, UNet width and dtype). Powers of two keep the choice, and
    so the cache key it enters (see :func:`unet_chunk`), stable from run to run."""
    if models.device.type != "cuda":
        return 64
    free, _ = torch.cuda.mem_get_info(models.device)
    width = models.unet.config.block_out_channels[0] / 320
    per_sample = (_SAMPLE_BYTES_SD15 * latent_hw[0] * latent_hw[1] / 4096 * width
                  * torch.finfo(models.dtype).bits / 16)
    fits = int(free * 0.5 // max(per_sample, 1))
    size = 32
    while size > 2 and size > fits:
        size //= 2
    return size


def unet_chunk(models: Models, image: LoadedImage, batch_size: int | None = None) -> int:
    """Timesteps of one image per UNet call (``batch_size`` counts both CFG halves).

    Kernels may round differently at another batch size, so the chunk is part of the
    cache key: an inversion is only reused when it was computed with the same chunks.
    """
    if batch_size is None:
        f = models.vae_scale_factor
        batch_size = default_batch_size(models, (image.size[1] // f, image.size[0] // f))
    return max(1, int(batch_size) // 2)


def _invert_one(models: Models, image: LoadedImage, config: InversionConfig, chunk: int,
                embeddings: tuple, step: Callable[[int], None]) -> tuple:
    """(xts, zs, timesteps) of one image, computed from it alone: its own VAE call, its
    own noise stream and UNet batches of its own timesteps in fixed chunks of ``chunk``."""
    device = models.device
    timesteps = schedule.timesteps_for(models.scheduler, config.num_steps)
    coef = schedule.coefficients(models.scheduler, timesteps, eta=1.0, device=device)
    x0 = encode(models, [image])[0].contiguous()  # (4, h, w) float32
    # the image's own stream (run seed + content digest): independent noise across
    # images, and a draw that does not depend on what else is inverted with it
    noise = torch.randn((len(timesteps),) + tuple(x0.shape),
                        generator=image_generator(config.seed, image.digest, "inversion"))
    xts = coef.alpha_t.sqrt() * x0 + (1 - coef.alpha_t).sqrt() * noise.to(device)  # (T, ...)
    cond, uncond = embeddings
    steps = timesteps.to(device)
    eps = []
    with freeu(models.unet, config.freeu):
        for start in range(0, len(xts), chunk):
            eps.append(guided_eps(models, xts[start:start + chunk], steps[start:start + chunk],
                                  cond, uncond, config.cfg_scale, 2 * chunk))
            step(len(eps[-1]))
    targets = torch.cat([xts[1:], x0[None]])  # x_{t-1} for every step
    zs, landed = schedule.solve_noise(torch.cat(eps), xts, targets, coef,
                                      models.scheduler.config.prediction_type)
    traj = torch.cat([xts[:1], landed])  # keep x_T, then the landings
    # contiguous: the VAE leaves channels-last strides, and the UNet's kernels round
    # differently on them than on the contiguous tensors read back from the cache
    return traj.float().cpu().contiguous(), zs.float().cpu().contiguous(), timesteps.cpu()


@torch.no_grad()
def invert_uncached(models: Models, images: Sequence[LoadedImage], config: InversionConfig,
                    batch_size: int | None = None,
                    progress: Callable[[int, int], None] | None = None,
                    chunks: Sequence[int] | None = None,
                    on_result: Callable[[int, tuple], None] | None = None) -> list[tuple]:
    """Invert several images, one after the other (see :func:`_invert_one`: an image's
    result does not depend on the others); returns [(xts, zs, timesteps)] per image.
    ``chunks`` (one per image) overrides :func:`unet_chunk`'s choice from ``batch_size``;
    ``on_result(n, result)`` is called as soon as image ``n`` is done."""
    if chunks is None:
        chunks = [unet_chunk(models, im, batch_size) for im in images]
    embeddings = text_embeddings(models, config.prompt)
    total = len(images) * len(schedule.timesteps_for(models.scheduler, config.num_steps))
    done = [0]

    def step(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(done[0], total)

    step(0)  # announce the total before the first (slow) UNet batch
    results = []
    for n, (image, chunk) in enumerate(zip(images, chunks)):
        results.append(_invert_one(models, image, config, chunk, embeddings, step))
        if on_result is not None:
            on_result(n, results[-1])
    return results


@dataclass(frozen=True)
class InversionKey:
    """What one image's inversion depends on (``spec``), its cache key (the spec's
    digest) and the UNet chunk size the spec names, which the inversion then uses."""

    spec: dict
    key: str
    chunk: int


def inversion_keys(models: Models, images: Sequence[LoadedImage], config: InversionConfig,
                   batch_size: int | None = None) -> list[InversionKey]:
    """The cache key of each image's inversion, computed once: ``Lab`` looks them up in
    its memory cache and hands them to :func:`invert` for the disk cache. On a GPU the
    chunk size follows the free memory, so keys made now also fix the chunks used."""
    out = []
    for im in images:
        chunk = unet_chunk(models, im, batch_size)
        spec = cache_spec(models, im, config, chunk)
        out.append(InversionKey(spec, key_of(spec), chunk))
    return out


def invert(models: Models, images: Sequence[LoadedImage], config: InversionConfig,
           cache: TensorCache | None = None, batch_size: int | None = None,
           progress: Callable[[int, int], None] | None = None,
           keys: Sequence[InversionKey] | None = None) -> list[InversionResult]:
    """Invert images, reusing cached trajectories; each uncached image is inverted on
    its own, so what the cache holds never changes a result. ``keys`` (one per image,
    from :func:`inversion_keys` with the same ``config``) saves computing them again."""
    if keys is None:
        keys = inversion_keys(models, images, config, batch_size)
    elif len(keys) != len(images):
        raise ConfigError("keys", f"{len(keys)} keys", f"one per image ({len(images)}), "
                          "from inversion_keys(models, images, config)")
    specs, chunks = [k.spec for k in keys], [k.chunk for k in keys]
    keys = [k.key for k in keys]
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

        def store(n: int, result: tuple) -> None:  # at once: a kill later keeps it
            if cache is not None:
                key = unique[n]
                cache.put(key, specs[first[key]], dict(zip(("xts", "zs", "timesteps"), result)))

        try:
            computed = invert_uncached(models, [images[first[k]] for k in unique], config,
                                       progress=progress, on_result=store,
                                       chunks=[chunks[first[k]] for k in unique])
        except torch.cuda.OutOfMemoryError:
            w, h = images[first[unique[0]]].size
            raise DeviceOutOfMemoryError(
                f"the GPU ran out of memory inverting {len(unique)} image(s) at {w}x{h}: "
                "reduce the inversion batch size (batch_size=) or --size, or close other "
                "GPU programs") from None
        for key, (xts, zs, ts) in zip(unique, computed):
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
