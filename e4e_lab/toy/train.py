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

This module is the entry point (:func:`train`, :func:`main` and the command line) and
re-exports the names of the modules that do the work: ``train_config`` (settings and
phase reports), ``train_data`` (the creature stream), ``train_loop`` (the
:class:`Trainer` shared by both phases), ``train_checkpoints`` (checkpoint files),
``train_phases`` (the VAE and UNet phases and their losses) and ``train_outputs`` (the
pipeline folder, its manifest and the preview).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any, Iterator

import torch

from .model import (ToyModelConfig, build_toy_pipeline, fp16_megabytes, parameter_counts,
                    verify_manifest)
from .train_config import (DEFAULT_MAX_MINUTES, DEFAULT_UNET_STEPS, DEFAULT_VAE_STEPS, PHASES,
                           PhaseReport, TrainConfig)
from .train_data import CreatureStream
from .train_loop import Trainer
from .train_outputs import write_pipeline, write_preview
from .train_phases import train_unet, train_vae

# The rest of what this module defined before it was split, importable from here still.
from .train_checkpoints import STATE_FILE, latest_checkpoint  # noqa: F401
from .train_data import images_to_tensor, make_loader, random_crops  # noqa: F401
from .train_loop import Phase  # noqa: F401
from .train_outputs import device_name, git_commit  # noqa: F401
from .train_phases import (VAE_DONE, diffusion_loss, drop_prompts, encode_prompts,  # noqa: F401
                           latent_scaling_factor, vae_loss)

__all__ = ["TrainConfig", "PhaseReport", "CreatureStream", "train", "main", "verify_manifest"]

log = logging.getLogger(__name__)


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
