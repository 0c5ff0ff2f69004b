"""The settings of a toy-model training run, and the report each phase leaves.

:class:`TrainConfig` holds everything a run depends on (what the command line of
:mod:`e4e_lab.toy.train` sets), with the defaults sized for a 2-core CPU;
:class:`PhaseReport` is what one phase did, as written to checkpoints and the manifest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .model import ToyModelConfig

PHASES = ("vae", "unet")
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


