"""What a finished toy-model run writes: the pipeline folder with its manifest, and a
preview.

:func:`write_pipeline` saves ``DIR/pipeline`` (float16 ``save_pretrained`` folder, its
marker and ``MANIFEST.json``: command, device, versions, git commit, world version,
parameters, phase reports, settings); :func:`write_preview` samples a grid of creatures
into ``DIR/preview.png``.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import world
from .model import fp16_megabytes, save_toy_pipeline, write_manifest
from .train_checkpoints import staged_folder
from .train_config import PhaseReport, TrainConfig


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
    with staged_folder(cfg.pipeline_dir) as staging:
        save_toy_pipeline(pipe, staging)
        write_manifest(staging, _metadata(pipe, cfg, reports, device, counts))
    return cfg.pipeline_dir


def _metadata(pipe, cfg: TrainConfig, reports: list[PhaseReport], device: torch.device,
              counts: dict[str, int]) -> dict[str, Any]:
    """What the manifest records besides the file digests."""
    return {
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


@torch.no_grad()
def write_preview(pipe, path: Path, device: torch.device, per_species: int = 3,
                  steps: int = 20, guidance: float = 3.0) -> Path:
    """A grid of sampled creatures (one row per species) from the trained pipeline."""
    from PIL import Image

    pipe.set_progress_bar_config(disable=True)
    prompts = [world.prompt_of(s) for s in world.SPECIES for _ in range(per_species)]
    generator = torch.Generator(device).manual_seed(0)
    images = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance,
                  generator=generator, output_type="np").images
    size = images.shape[1]
    grid = (images.reshape(len(world.SPECIES), per_species, size, size, 3)
            .transpose(0, 2, 1, 3, 4).reshape(len(world.SPECIES) * size, per_species * size, 3))
    Image.fromarray((grid * 255).round().astype(np.uint8)).save(path)
    return path
