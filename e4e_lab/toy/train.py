"""Train the toy model on the toy world: ``python -m e4e_lab.toy.train --out DIR``.

Two phases, as Stable Diffusion was made:

1. ``vae``: the autoencoder alone, on random crops (it is fully convolutional), with an
   L1 + MSE reconstruction loss and LDM's tiny KL weight. Its ``scaling_factor`` is then
   set to 1/std of the latents of fresh training images (posterior mode, as the library
   encodes), as SD's 0.18215 was.
2. ``unet``: the UNet and the text encoder together, epsilon prediction on
   ``DDPMScheduler.add_noise`` noise at uniform timesteps, with ``"a photo of a
   {species}"`` prompts dropped to ``""`` 10% of the time (so classifier-free guidance
   means something). An EMA of both networks is kept and is what gets saved.

Images are drawn on the fly by :func:`e4e_lab.toy.world.sample` from seeds in
``world.TRAIN_SEEDS`` only, species balanced, by ``--workers`` DataLoader processes
(each with its own seed stream, all derived from ``--seed``). The same code runs on CPU
(fp32) and CUDA (bf16 autocast through accelerate, TF32 matmuls); only the device and
the precision differ.

Checkpoints (``DIR/checkpoints/``) are written every ``--checkpoint-every`` steps, at
the end of a phase, when ``--max-minutes`` stops a phase and on Ctrl-C; ``--resume``
continues from the latest one. The result is ``DIR/pipeline/``: a ``save_pretrained``
folder (float16 safetensors, tokenizer files included) that the library loads like any
model, with ``E4E_TOY_MODEL.txt`` and a ``MANIFEST.json`` (file digests, command line,
device, versions, steps, wall times and losses; see :func:`verify_manifest`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from . import world
from .model import (ToyModelConfig, build_toy_pipeline, fp16_megabytes, parameter_counts,
                    save_toy_pipeline, training_scheduler, verify_manifest, write_manifest)

__all__ = ["TrainConfig", "PhaseReport", "CreatureStream", "train", "main", "verify_manifest"]

log = logging.getLogger(__name__)

PHASES = ("vae", "unet")
STATE_FILE = "state.json"
VAE_DONE = "vae-done"
# Defaults sized for a 2-core CPU (measured, idle machine, 2 torch threads): the VAE at
# batch 8 on 64 px crops runs ~3-4 steps/s, the UNet at batch 16 ~0.8 steps/s, so the
# whole run takes ~50 min; the per-phase caps (12 + 44 min) bound it on a busy machine.
DEFAULT_VAE_STEPS = 2000
DEFAULT_UNET_STEPS = 2000
DEFAULT_MAX_MINUTES = (12.0, 44.0)


# --- configuration --------------------------------------------------------------------

@dataclass
class TrainConfig:
    """Everything a training run depends on (the CLI's options)."""

    out: Path
    device: str = "cpu"
    seed: int = 0
    model: ToyModelConfig = field(default_factory=ToyModelConfig)
    vae_steps: int = DEFAULT_VAE_STEPS
    unet_steps: int = DEFAULT_UNET_STEPS
    vae_batch_size: int = 8
    unet_batch_size: int = 16
    vae_lr: float = 1e-3
    unet_lr: float = 3e-4
    #: the VAE trains on random square crops of this many pixels (0: whole images)
    vae_crop: int = 64
    #: LDM's weighting: KL summed over the latent against reconstruction per pixel
    kl_weight: float = 1e-6
    prompt_dropout: float = 0.1
    warmup_fraction: float = 0.05
    ema_max_decay: float = 0.9999
    #: EMA warm-up exponent: 3/4 suits runs of thousands of steps (diffusers' advice)
    ema_power: float = 0.75
    #: DataLoader worker processes (0: render in the training process, best on 2 cores)
    workers: int = 0
    #: torch CPU threads for the training process (None: torch's default)
    threads: int | None = None
    #: wall-clock cap per phase in minutes (None: no cap): one value for both phases, or
    #: (vae, unet)
    max_minutes: float | tuple[float | None, float | None] | None = DEFAULT_MAX_MINUTES
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    resume: bool = False
    #: sample a few creatures with the finished pipeline into DIR/preview.png
    #: fresh training images whose latents set the VAE's scaling_factor
    scale_images: int = 128
    preview: bool = True
    progress: bool = True
    command: str = ""

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}")
        for name in ("vae_steps", "unet_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("vae_batch_size", "unet_batch_size", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.workers < 0:
            raise ValueError("workers must be >= 0")
        if not 0.0 <= self.prompt_dropout <= 1.0:
            raise ValueError("prompt_dropout must be in [0, 1]")
        if self.vae_crop and (self.vae_crop > self.model.image_size
                              or self.vae_crop % self.model.vae_factor):
            raise ValueError(f"vae_crop {self.vae_crop} must be at most the image size and a "
                             f"multiple of {self.model.vae_factor}")

    def minutes_cap(self, phase: str) -> float | None:
        """The wall-clock cap of ``phase`` in minutes (None: none)."""
        if isinstance(self.max_minutes, (tuple, list)):
            return self.max_minutes[PHASES.index(phase)]
        return self.max_minutes

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    @property
    def pipeline_dir(self) -> Path:
        return self.out / "pipeline"

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings (recorded in checkpoints and in the manifest)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["out"] = str(self.out)
        data["model"] = self.model.to_dict()
        return data


@dataclass
class PhaseReport:
    """What one phase did, across all the sessions that trained it."""

    name: str
    steps_requested: int
    steps_done: int = 0
    wall_seconds: float = 0.0
    final_loss: float | None = None
    stopped_early: bool = False
    resumed_from_step: int | None = None
    batch_size: int = 0
    lr: float = 0.0
    samples_per_second: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- data -----------------------------------------------------------------------------

def _draw_training_seed(rng: np.random.Generator) -> int:
    """A seed drawn uniformly from ``world.TRAIN_SEEDS`` (never a held-out seed)."""
    return int(world.TRAIN_SEEDS[int(rng.integers(len(world.TRAIN_SEEDS)))])


class CreatureStream(IterableDataset):
    """An endless, species-balanced stream of toy-world creatures.

    Each item is ``{"image": (H, W, 3) uint8 tensor, "prompt": str, "seed": int}``. The
    stream is a pure function of ``key`` (run seed, phase, first step) and the worker
    index: every DataLoader worker draws its own seeds, and a resumed phase draws a new
    but reproducible stream. Species cycle in order (offset per worker), so every batch a
    worker assembles is balanced to within one creature.
    """

    def __init__(self, key: tuple[int, ...], size: int) -> None:
        super().__init__()
        self.key = tuple(int(k) for k in key)
        self.size = int(size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        rng = np.random.default_rng([*self.key, worker])
        index = worker
        while True:
            seed = _draw_training_seed(rng)
            species = world.SPECIES[index % len(world.SPECIES)]
            creature = world.sample(seed, size=self.size, species=species)
            yield {"image": torch.from_numpy(np.ascontiguousarray(creature.image)),
                   "prompt": creature.prompt, "seed": seed}
            index += 1


def _worker_init(_: int) -> None:
    # rendering is numpy/Pillow: one thread per worker leaves the cores to training
    torch.set_num_threads(1)


def make_loader(stream: CreatureStream, batch_size: int, workers: int,
                device: torch.device) -> DataLoader:
    """A DataLoader over ``stream``; several workers keep a GPU fed (pinned memory)."""
    extra: dict[str, Any] = {}
    if workers > 0:
        extra = dict(persistent_workers=True, prefetch_factor=4, worker_init_fn=_worker_init)
    return DataLoader(stream, batch_size=batch_size, num_workers=workers,
                      pin_memory=device.type == "cuda", **extra)


def images_to_tensor(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [-1, 1] on ``device``."""
    images = images.to(device, non_blocking=True)
    return images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def random_crops(images: torch.Tensor, crop: int, generator: torch.Generator) -> torch.Tensor:
    """One random ``crop`` x ``crop`` window per image (the whole image when crop is 0)."""
    size = images.shape[-1]
    if not crop or crop >= size:
        return images
    corners = torch.randint(0, size - crop + 1, (images.shape[0], 2), generator=generator,
                            device=generator.device).tolist()
    return torch.stack([img[:, y:y + crop, x:x + crop] for img, (y, x) in zip(images, corners)])


# --- losses ---------------------------------------------------------------------------

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


# --- checkpoints ----------------------------------------------------------------------

def _checkpoint_name(phase: str, step: int) -> str:
    return f"{phase}-{step:07d}"


def latest_checkpoint(root: Path, phase: str) -> Path | None:
    """The finished checkpoint of ``phase`` with the most steps (None if there is none)."""
    found = []
    for folder in root.glob(f"{phase}-[0-9]*"):
        state = folder / STATE_FILE
        if state.is_file():
            found.append((json.loads(state.read_text(encoding="utf-8"))["step"], folder))
    return max(found)[1] if found else None


def _prune_checkpoints(root: Path, phase: str, keep: int) -> None:
    folders = sorted(root.glob(f"{phase}-[0-9]*"))
    for folder in folders[:-keep]:
        shutil.rmtree(folder, ignore_errors=True)


def _save_generator(generator: torch.Generator, folder: Path) -> None:
    from safetensors.torch import save_file

    save_file({"state": generator.get_state()}, str(folder / "generator.safetensors"))


def _load_generator(generator: torch.Generator, folder: Path) -> None:
    from safetensors.torch import load_file

    generator.set_state(load_file(str(folder / "generator.safetensors"))["state"])


def _save_emas(emas: dict[str, Any], modules: dict[str, torch.nn.Module], folder: Path) -> None:
    """EMA weights in safetensors (named like the network's parameters) + their counters."""
    from safetensors.torch import save_file

    if not emas:
        return
    meta = {}
    for name, ema in emas.items():
        names = [n for n, _ in modules[name].named_parameters()]
        save_file({n: p.detach().contiguous().cpu() for n, p in zip(names, ema.shadow_params)},
                  str(folder / f"ema_{name}.safetensors"))
        meta[name] = {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}
    (folder / "ema.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


def _load_emas(emas: dict[str, Any], modules: dict[str, torch.nn.Module], folder: Path) -> None:
    from safetensors.torch import load_file

    if not emas:
        return
    meta = json.loads((folder / "ema.json").read_text(encoding="utf-8"))
    for name, ema in emas.items():
        weights = load_file(str(folder / f"ema_{name}.safetensors"))
        shadow = [weights[n] for n, _ in modules[name].named_parameters()]
        ema.load_state_dict(dict(meta[name], shadow_params=shadow))
        ema.to(device=next(modules[name].parameters()).device)


# --- one phase ------------------------------------------------------------------------

@dataclass
class Phase:
    """One training phase: its networks, loss and the knobs that differ between phases."""

    name: str
    modules: dict[str, torch.nn.Module]
    loss: Callable[[dict[str, Any], torch.Generator], torch.Tensor]
    steps: int
    batch_size: int
    lr: float
    use_ema: bool = False


@dataclass
class _Run:
    """The live state of a phase being trained (what a checkpoint holds, and the clocks)."""

    optimizer: Any
    schedule: Any
    emas: dict[str, Any]
    generator: torch.Generator
    params: list[torch.nn.Parameter]
    report: PhaseReport
    step: int = 0
    session_start: float = field(default_factory=time.monotonic)
    # time and steps not yet folded into the report
    segment_start: float = field(default_factory=time.monotonic)
    segment_first_step: int = 0
    recent_losses: list[float] = field(default_factory=list)

    def account(self) -> None:
        """Fold the time, steps and losses since the last call into ``report``."""
        now = time.monotonic()
        elapsed, steps = now - self.segment_start, self.step - self.segment_first_step
        self.report.wall_seconds += elapsed
        self.report.steps_done = self.step
        if steps > 0 and elapsed > 0:
            self.report.samples_per_second = steps * self.report.batch_size / elapsed
        if self.recent_losses:
            self.report.final_loss = float(np.mean(self.recent_losses))
        self.segment_start, self.segment_first_step = now, self.step


class Trainer:
    """Runs the phases of one :class:`TrainConfig` on one accelerate ``Accelerator``."""

    def __init__(self, cfg: TrainConfig) -> None:
        from accelerate import Accelerator

        self.cfg = cfg
        on_cuda = cfg.device == "cuda"
        if on_cuda and not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
        self.accelerator = Accelerator(cpu=not on_cuda,
                                       mixed_precision="bf16" if on_cuda else "no")
        self.device = self.accelerator.device

    def run(self, phase: Phase) -> PhaseReport:
        """Train ``phase`` to its step count (or its time cap), starting from its latest
        checkpoint with --resume; the networks end in eval mode holding the EMA weights."""
        run = self._start(phase)
        stream = CreatureStream((self.cfg.seed, PHASES.index(phase.name), run.step),
                                self.cfg.model.image_size)
        batches = iter(make_loader(stream, phase.batch_size, self.cfg.workers, self.device))
        try:
            self._loop(phase, run, batches)
        except KeyboardInterrupt:
            log.warning("%s: interrupted at step %d; saving a checkpoint", phase.name, run.step)
            self._checkpoint(phase, run)
            raise
        self._checkpoint(phase, run)
        for name, ema in run.emas.items():
            ema.copy_to(phase.modules[name].parameters())
        for module in phase.modules.values():
            module.eval().requires_grad_(False)
        self.accelerator.free_memory()
        return run.report

    def _start(self, phase: Phase) -> _Run:
        """Optimizer, LR schedule, EMA and noise generator of ``phase``, resumed if asked."""
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel

        cfg = self.cfg
        for module in phase.modules.values():
            module.to(self.device).train().requires_grad_(True)
        params = [p for m in phase.modules.values() for p in m.parameters()]
        optimizer = torch.optim.AdamW(params, lr=phase.lr, weight_decay=1e-2)
        schedule = get_scheduler("cosine", optimizer,
                                 num_warmup_steps=int(cfg.warmup_fraction * phase.steps),
                                 num_training_steps=max(phase.steps, 1))
        *_, optimizer, schedule = self.accelerator.prepare(*phase.modules.values(), optimizer,
                                                           schedule)
        emas = ({name: EMAModel(m.parameters(), decay=cfg.ema_max_decay, use_ema_warmup=True,
                                power=cfg.ema_power, foreach=True)
                 for name, m in phase.modules.items()} if phase.use_ema else {})
        generator = torch.Generator(self.device).manual_seed(
            cfg.seed * 1000 + PHASES.index(phase.name))
        report = PhaseReport(phase.name, phase.steps, batch_size=phase.batch_size, lr=phase.lr)
        run = _Run(optimizer, schedule, emas, generator, params, report)
        if cfg.resume:
            self._resume(phase, run)
        return run

    def _loop(self, phase: Phase, run: _Run, batches: Iterator[dict[str, Any]]) -> None:
        from tqdm.auto import tqdm

        with tqdm(total=phase.steps, initial=run.step, desc=phase.name, dynamic_ncols=True,
                  disable=not self.cfg.progress) as bar:
            while run.step < phase.steps:
                if self._out_of_time(phase, run.session_start):
                    run.report.stopped_early = True
                    log.info("%s: --max-minutes reached after %d steps", phase.name, run.step)
                    return
                loss = self._step(phase, run, next(batches))
                run.step += 1
                run.recent_losses = (run.recent_losses + [loss])[-50:]
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(run.recent_losses):.4f}")
                if run.step % self.cfg.checkpoint_every == 0 and run.step < phase.steps:
                    self._checkpoint(phase, run)

    def _step(self, phase: Phase, run: _Run, batch: dict[str, Any]) -> float:
        """One optimisation step (and EMA update); returns the loss."""
        with self.accelerator.autocast():
            loss = phase.loss(batch, run.generator)
        self.accelerator.backward(loss)
        self.accelerator.clip_grad_norm_(run.params, 1.0)
        run.optimizer.step()
        run.schedule.step()
        run.optimizer.zero_grad(set_to_none=True)
        for name, ema in run.emas.items():
            ema.step(phase.modules[name].parameters())
        return float(loss.detach())

    def _out_of_time(self, phase: Phase, started: float) -> bool:
        cap = self.cfg.minutes_cap(phase.name)
        return cap is not None and time.monotonic() - started >= cap * 60.0

    # -- checkpoints --

    def _checkpoint(self, phase: Phase, run: _Run) -> Path:
        """Write ``checkpoints/<phase>-<step>/`` atomically (a staging folder renamed):
        accelerate's state (weights, optimizer, LR schedule), EMA weights, the noise
        generator and ``state.json`` (step, report, settings)."""
        run.account()
        root = self.cfg.checkpoints
        final = root / _checkpoint_name(phase.name, run.step)
        staging = root / f".staging-{final.name}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        self.accelerator.save_state(str(staging), safe_serialization=True)
        _save_emas(run.emas, phase.modules, staging)
        _save_generator(run.generator, staging)
        state = {"phase": phase.name, "step": run.step, "report": run.report.to_dict(),
                 "config": self.cfg.describe()}
        (staging / STATE_FILE).write_text(json.dumps(state, indent=2), encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        _prune_checkpoints(root, phase.name, self.cfg.keep_checkpoints)
        log.info("checkpoint %s", final)
        return final

    def _resume(self, phase: Phase, run: _Run) -> None:
        """Load the latest checkpoint of ``phase`` into ``run`` (if there is one)."""
        folder = latest_checkpoint(self.cfg.checkpoints, phase.name)
        if folder is None:
            return
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        _check_same_model(state["config"], self.cfg)
        self.accelerator.load_state(str(folder))
        _load_emas(run.emas, phase.modules, folder)
        _load_generator(run.generator, folder)
        saved = state["report"]
        run.step = run.segment_first_step = int(state["step"])
        run.report.wall_seconds = saved["wall_seconds"]
        run.report.final_loss = saved["final_loss"]
        run.report.resumed_from_step = run.report.steps_done = run.step
        log.info("%s: resuming from %s (step %d)", phase.name, folder, run.step)


def _check_same_model(saved: dict[str, Any], cfg: TrainConfig) -> None:
    """Refuse to resume a checkpoint of another architecture or run seed."""
    mine = cfg.describe()
    for key in ("model", "seed"):
        if saved.get(key) != mine[key]:
            raise ValueError(f"cannot resume: the checkpoint's {key} is {saved.get(key)} but "
                             f"this run's is {mine[key]} (use another --out, or the same "
                             "options)")


# --- the two phases -------------------------------------------------------------------

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
    staging = done.parent / f".staging-{done.name}"
    shutil.rmtree(staging, ignore_errors=True)
    vae.save_pretrained(staging, safe_serialization=True)
    (staging / "phase.json").write_text(json.dumps(report.to_dict(), indent=2),
                                        encoding="utf-8")
    shutil.rmtree(done, ignore_errors=True)
    staging.rename(done)


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


# --- outputs --------------------------------------------------------------------------

def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return (f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads")


def git_commit(where: Path) -> dict[str, Any] | None:
    """The repository's HEAD commit and whether the work tree was dirty (None outside git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=where, capture_output=True, text=True, timeout=10,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head, "dirty": bool(dirty)}


def _versions() -> dict[str, str]:
    import accelerate
    import diffusers
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__}


def write_pipeline(pipe, cfg: TrainConfig, reports: list[PhaseReport], device: torch.device,
                   counts: dict[str, int]) -> Path:
    """Save the trained pipeline (float16) to DIR/pipeline with its marker and manifest."""
    final = cfg.pipeline_dir
    staging = cfg.out / ".staging-pipeline"
    shutil.rmtree(staging, ignore_errors=True)
    save_toy_pipeline(pipe, staging)
    metadata = {
        "format": "e4e-toy-model-1",
        "command": cfg.command,
        "device": device_name(device),
        "versions": _versions(),
        "git": git_commit(Path(__file__).resolve().parent),
        "world_version": world.VERSION,
        "seed": cfg.seed,
        "scaling_factor": float(pipe.vae.config.scaling_factor),
        "parameters": counts,
        "fp16_megabytes": {k: round(fp16_megabytes(v), 3) for k, v in counts.items()},
        "phases": {r.name: r.to_dict() for r in reports},
        "train_config": cfg.describe(),
    }
    write_manifest(staging, metadata)
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    return final


@torch.no_grad()
def write_preview(pipe, path: Path, device: torch.device, per_species: int = 3,
                  steps: int = 20, guidance: float = 3.0) -> Path:
    """A grid of sampled creatures (one row per species) from the trained pipeline."""
    from PIL import Image

    pipe.set_progress_bar_config(disable=True)
    prompts = [f"a photo of a {s}" for s in world.SPECIES for _ in range(per_species)]
    generator = torch.Generator(device).manual_seed(0)
    images = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance,
                  generator=generator, output_type="np").images
    size = images.shape[1]
    grid = (images.reshape(len(world.SPECIES), per_species, size, size, 3)
            .transpose(0, 2, 1, 3, 4).reshape(len(world.SPECIES) * size, per_species * size, 3))
    Image.fromarray((grid * 255).round().astype(np.uint8)).save(path)
    return path


# --- the whole run --------------------------------------------------------------------

def _check_out_folder(cfg: TrainConfig) -> None:
    has_checkpoints = cfg.checkpoints.is_dir() and any(cfg.checkpoints.iterdir())
    if has_checkpoints and not cfg.resume:
        raise FileExistsError(f"{cfg.checkpoints} already holds checkpoints: pass --resume to "
                              "continue that run, or choose another --out")


@contextlib.contextmanager
def torch_settings(cfg: TrainConfig) -> Iterator[None]:
    """The process-wide torch settings of a run (CPU threads; TF32 and cuDNN autotuning
    on CUDA), restored afterwards so that a caller's process is left as it was."""
    saved = (torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved[1:]


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run both phases and write DIR/pipeline; returns the manifest's metadata."""
    _check_out_folder(cfg)
    with torch_settings(cfg):
        return _train(cfg)


def _train(cfg: TrainConfig) -> dict[str, Any]:
    cfg.checkpoints.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg)
    pipe = build_toy_pipeline(cfg.model, cfg.seed)
    counts = parameter_counts(pipe)
    log.info("toy model: %s parameters (%.1f MB in float16)", counts,
             fp16_megabytes(counts["total"]))
    reports = [train_vae(trainer, pipe), train_unet(trainer, pipe)]
    if cfg.preview:
        write_preview(pipe, cfg.out / "preview.png", trainer.device)
    folder = write_pipeline(pipe, cfg, reports, trainer.device, counts)
    return json.loads((folder / "MANIFEST.json").read_text(encoding="utf-8"))


# --- the CLI --------------------------------------------------------------------------

def _model_config(text: str | None, size: int) -> ToyModelConfig:
    """Default sizes, ``--model-config`` overrides (JSON text or a JSON file), ``--size``."""
    base = ToyModelConfig()
    if text:
        path = Path(text)
        base = ToyModelConfig.from_json(path.read_text(encoding="utf-8")
                                        if path.is_file() else text)
    return base.replace(image_size=size)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m e4e_lab.toy.train", description=(
        "Train the toy Stable-Diffusion-shaped model on the toy world's creatures."))
    p.add_argument("--out", required=True, type=Path, help="run folder (checkpoints/, pipeline/)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast on cuda)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=128, help="image size in pixels")
    p.add_argument("--vae-steps", type=int, default=DEFAULT_VAE_STEPS)
    p.add_argument("--unet-steps", type=int, default=DEFAULT_UNET_STEPS)
    p.add_argument("--batch-size", type=int, default=None, help="both phases' batch size")
    p.add_argument("--vae-batch-size", type=int, default=None)
    p.add_argument("--unet-batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=TrainConfig.unet_lr,
                   help="learning rate of the UNet + text encoder phase")
    p.add_argument("--vae-lr", type=float, default=TrainConfig.vae_lr)
    p.add_argument("--vae-crop", type=int, default=TrainConfig.vae_crop,
                   help="VAE training crop in pixels (0: whole images)")
    p.add_argument("--workers", type=int, default=TrainConfig.workers,
                   help="DataLoader worker processes rendering creatures")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--max-minutes", type=float, nargs="+", default=list(DEFAULT_MAX_MINUTES),
                   metavar="M", help="wall-clock cap per phase (one value, or VAE then UNet; "
                   "default 12 44); a phase that reaches it stops early and is saved")
    p.add_argument("--checkpoint-every", type=int, default=TrainConfig.checkpoint_every)
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in --out")
    p.add_argument("--model-config", default=None,
                   help="JSON object (or file) overriding ToyModelConfig fields")
    p.add_argument("--no-preview", action="store_true", help="skip DIR/preview.png")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    return p


def _minutes(values: list[float] | None) -> float | tuple[float, float] | None:
    if values is None or len(values) == 1:
        return values[0] if values else None
    if len(values) != 2:
        raise ValueError("--max-minutes takes one value (both phases) or two (VAE, UNet)")
    return (values[0], values[1])


def config_from_args(args: argparse.Namespace, command: str) -> TrainConfig:
    batch = args.batch_size
    return TrainConfig(
        out=args.out, device=args.device, seed=args.seed,
        model=_model_config(args.model_config, args.size),
        vae_steps=args.vae_steps, unet_steps=args.unet_steps,
        vae_batch_size=args.vae_batch_size or batch or TrainConfig.vae_batch_size,
        unet_batch_size=args.unet_batch_size or batch or TrainConfig.unet_batch_size,
        vae_lr=args.vae_lr, unet_lr=args.lr, vae_crop=args.vae_crop, workers=args.workers,
        threads=args.threads, max_minutes=_minutes(args.max_minutes),
        checkpoint_every=args.checkpoint_every, resume=args.resume,
        preview=not args.no_preview, progress=not args.quiet, command=command,
    )


def _summary(manifest: dict[str, Any], folder: Path) -> str:
    lines = [f"toy model written to {folder}"]
    for name in PHASES:
        phase = manifest["phases"][name]
        lines.append(f"  {name}: {phase['steps_done']}/{phase['steps_requested']} steps in "
                     f"{phase['wall_seconds'] / 60:.1f} min, final loss {phase['final_loss']}")
    lines.append(f"  scaling_factor {manifest['scaling_factor']:.5f}, "
                 f"{manifest['fp16_megabytes']['total']:.1f} MB in float16")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = shlex.join([Path(sys.executable).name, "-m", "e4e_lab.toy.train", *argv])
    try:
        cfg = config_from_args(args, command)
    except ValueError as exc:
        build_parser().error(str(exc))
    manifest = train(cfg)
    print(_summary(manifest, cfg.pipeline_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
