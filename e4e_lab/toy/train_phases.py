"""The two phases of toy-model training and their losses.

1. :func:`train_vae`: the autoencoder alone (:func:`vae_loss`: L1 + MSE reconstruction
   plus LDM's tiny KL weight, on random crops), then its ``scaling_factor`` from
   :func:`latent_scaling_factor`; the result is kept in ``checkpoints/vae-done`` so that
   ``--resume`` skips the phase.
2. :func:`train_unet`: the UNet and the text encoder on the frozen VAE's scaled latents
   (:func:`diffusion_loss`: epsilon prediction, prompts dropped for classifier-free
   guidance), with EMA weights.

Both run through :class:`e4e_lab.toy.train_loop.Trainer`.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from .model import training_scheduler
from .train_checkpoints import staged_folder
from .train_config import PHASES, PhaseReport
from .train_data import CreatureStream, images_to_tensor, make_loader, random_crops
from .train_loop import Phase, Trainer

log = logging.getLogger("e4e_lab.toy.train")  # one logger for the whole training run

VAE_DONE = "vae-done"


def vae_loss(vae, images: torch.Tensor, generator: torch.Generator, kl_weight: float
             ) -> torch.Tensor:
    """L1 + MSE reconstruction of a posterior sample, plus LDM's weighted KL term."""
    posterior = vae.encode(images).latent_dist
    recon = vae.decode(posterior.sample(generator=generator)).sample.float()
    target = images.float()
    reconstruction = F.l1_loss(recon, target) + F.mse_loss(recon, target)
    kl_per_pixel = posterior.kl().float().mean() / target[0].numel()
    return reconstruction + kl_weight * kl_per_pixel


def drop_prompts(prompts: list[str], p: float, generator: torch.Generator) -> list[str]:
    """Replace each prompt by "" with probability ``p`` (classifier-free guidance)."""
    keep = torch.rand(len(prompts), generator=generator, device=generator.device) >= p
    return [text if k else "" for text, k in zip(prompts, keep.tolist())]


def encode_prompts(text_encoder, tokenizer, prompts: list[str],
                   device: torch.device) -> torch.Tensor:
    """CLIP embeddings as the SD pipeline computes them (padded to 77 tokens, last hidden
    state), running the encoder once per distinct prompt."""
    unique = sorted(set(prompts))
    ids = tokenizer(unique, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids.to(device)
    embeddings = text_encoder(ids)[0]
    index = torch.tensor([unique.index(p) for p in prompts], device=device)
    return embeddings[index]


def diffusion_loss(unet, text_encoder, tokenizer, vae, noise_scheduler, images: torch.Tensor,
                   prompts: list[str], generator: torch.Generator, prompt_dropout: float
                   ) -> torch.Tensor:
    """Epsilon-prediction MSE at a uniform timestep on scaled VAE latents (posterior mode)."""
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mode().float() * vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=generator, device=latents.device)
    steps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                          generator=generator, device=latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, steps)
    cond = encode_prompts(text_encoder, tokenizer, drop_prompts(prompts, prompt_dropout,
                                                                generator), latents.device)
    prediction = unet(noisy, steps, cond).sample
    return F.mse_loss(prediction.float(), noise.float())


@torch.no_grad()
def latent_scaling_factor(vae, batches: Iterator[dict[str, Any]], count: int,
                          device: torch.device) -> float:
    """1 / std of the posterior-mode latents of ``count`` fresh training images."""
    total, total_sq, numel, seen = 0.0, 0.0, 0, 0
    while seen < count:
        images = images_to_tensor(next(batches)["image"], device)
        latents = vae.encode(images).latent_dist.mode().double()
        total += latents.sum().item()
        total_sq += latents.square().sum().item()
        numel += latents.numel()
        seen += latents.shape[0]
    variance = total_sq / numel - (total / numel) ** 2
    return 1.0 / math.sqrt(max(variance, 1e-12))



def train_vae(trainer: Trainer, pipe) -> PhaseReport:
    """Phase 1 (or its saved result): the VAE, then its latent scaling factor."""
    from diffusers import AutoencoderKL

    cfg = trainer.cfg
    done = cfg.checkpoints / VAE_DONE
    if cfg.resume and (done / "config.json").is_file():
        pipe.vae = AutoencoderKL.from_pretrained(done).to(trainer.device).eval()
        pipe.vae.requires_grad_(False)
        report = PhaseReport(**json.loads((done / "phase.json").read_text(encoding="utf-8")))
        log.info("vae: already trained (%d steps), loaded from %s", report.steps_done, done)
        return report

    def loss(batch: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
        images = images_to_tensor(batch["image"], trainer.device)
        return vae_loss(pipe.vae, random_crops(images, cfg.vae_crop, generator), generator,
                        cfg.kl_weight)

    phase = Phase("vae", {"vae": pipe.vae}, loss, cfg.vae_steps, cfg.vae_batch_size, cfg.vae_lr)
    report = trainer.run(phase)
    stream = CreatureStream((cfg.seed, len(PHASES), 0), cfg.model.image_size)
    batches = iter(make_loader(stream, min(32, cfg.scale_images), 0, trainer.device))
    scale = latent_scaling_factor(pipe.vae, batches, cfg.scale_images, trainer.device)
    pipe.vae.register_to_config(scaling_factor=scale)
    log.info("vae: scaling_factor = %.5f", scale)
    _save_vae_done(pipe.vae, report, done)
    return report


def _save_vae_done(vae, report: PhaseReport, done: Path) -> None:
    with staged_folder(done) as staging:
        vae.save_pretrained(staging, safe_serialization=True)
        (staging / "phase.json").write_text(json.dumps(report.to_dict(), indent=2),
                                            encoding="utf-8")


def train_unet(trainer: Trainer, pipe) -> PhaseReport:
    """Phase 2: the UNet and the text encoder on the frozen VAE's scaled latents."""
    cfg = trainer.cfg
    noise_scheduler = training_scheduler()
    pipe.vae.to(trainer.device).eval().requires_grad_(False)

    def loss(batch: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
        images = images_to_tensor(batch["image"], trainer.device)
        return diffusion_loss(pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.vae,
                              noise_scheduler, images, list(batch["prompt"]), generator,
                              cfg.prompt_dropout)

    phase = Phase("unet", {"unet": pipe.unet, "text_encoder": pipe.text_encoder}, loss,
                  cfg.unet_steps, cfg.unet_batch_size, cfg.unet_lr, use_ema=True)
    return trainer.run(phase)
