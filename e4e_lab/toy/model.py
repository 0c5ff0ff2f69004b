"""The toy world's model: a small Stable Diffusion 1.5 built from SD's own classes.

Offline users have no Stable Diffusion weights, and the tiny random-weight model only
shows noise. The toy model is trained (``python -m e4e_lab.toy.train``) on the
procedurally generated creatures of :mod:`e4e_lab.toy.world`, so the library's stages
(inversion, DIFT features, attention injection) show something meaningful on it.

It uses the very classes a real SD 1.5 checkpoint loads into, with SD 1.5's layout:

- ``AutoencoderKL`` with 4 latent channels but a factor-4 downsampling (three levels),
  so a 128 px image has a 32x32 latent;
- ``UNet2DConditionModel`` with 3 ``CrossAttnDownBlock2D`` + ``DownBlock2D`` and
  ``UpBlock2D`` + 3 ``CrossAttnUpBlock2D``, two resnets per block (three decoder
  self-attention layers per resolution; the library injects at 32x32 and 16x16);
- a small ``CLIPTextModel`` (full CLIP vocabulary) with the real CLIP BPE tokenizer;
- SD 1.5's DDIM scheduler configuration for the saved pipeline, and a
  ``DDPMScheduler`` with the same betas for the training noise.

Everything is narrow so that the fp16 weights stay under ~28 MB and a CPU can train it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..models.tiny import SD15_SCHEDULER, write_clip_tokenizer_files

#: Name of the marker file in a saved toy pipeline folder.
TOY_MARKER = "E4E_TOY_MODEL.txt"
TOY_MARKER_TEXT = "toy model: trained on synthetic creatures; it knows nothing else\n"

CLIP_VOCAB_SIZE = 49408
CLIP_BOS_ID = 49406
CLIP_EOS_ID = 49407
#: CLIP's context length; SD pads every prompt to it.
CLIP_MAX_LENGTH = 77


@dataclass(frozen=True)
class ToyModelConfig:
    """Sizes of the toy model's three networks (everything else is SD 1.5's layout).

    ``image_size`` is the training resolution in pixels; the latent is
    ``image_size // 4`` on a side (``vae_channels`` has three levels).
    """

    image_size: int = 128
    latent_channels: int = 4
    # VAE: one width per level; n levels give a 2**(n-1) downsampling
    vae_channels: tuple[int, ...] = (32, 64, 64)
    vae_layers_per_block: int = 1
    vae_norm_groups: int = 16
    # UNet: one width per block (SD 1.5: 320, 640, 1280, 1280)
    unet_channels: tuple[int, ...] = (32, 64, 128, 128)
    unet_layers_per_block: int = 2
    unet_norm_groups: int = 16
    #: channels per attention head; each block gets ``width // unet_head_dim`` heads
    unet_head_dim: int = 32
    # CLIP text encoder
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate: int = 256

    def __post_init__(self) -> None:
        object.__setattr__(self, "vae_channels", tuple(int(c) for c in self.vae_channels))
        object.__setattr__(self, "unet_channels", tuple(int(c) for c in self.unet_channels))
        if len(self.unet_channels) != 4:
            raise ValueError("unet_channels needs four widths (SD 1.5 has four UNet blocks), "
                             f"got {self.unet_channels}")
        if any(c % self.unet_head_dim for c in self.unet_channels):
            raise ValueError(f"every UNet width {self.unet_channels} must be a multiple of "
                             f"unet_head_dim={self.unet_head_dim}")
        if self.image_size % self.size_multiple:
            raise ValueError(f"image_size {self.image_size} must be a multiple of "
                             f"{self.size_multiple} (VAE factor x UNet downsampling)")

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae_factor

    @property
    def size_multiple(self) -> int:
        return self.vae_factor * 2 ** (len(self.unet_channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    def replace(self, **overrides: Any) -> "ToyModelConfig":
        """A copy with some fields changed; unknown field names raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown toy model setting(s) {unknown}; known: {sorted(names)}")
        return dataclasses.replace(self, **overrides)

    @classmethod
    def from_json(cls, text: str, base: "ToyModelConfig | None" = None) -> "ToyModelConfig":
        """``base`` (default sizes) with the overrides of a JSON object applied."""
        overrides = json.loads(text)
        if not isinstance(overrides, dict):
            raise ValueError("a toy model config must be a JSON object of field overrides")
        return (base or cls()).replace(**overrides)


def build_vae(cfg: ToyModelConfig):
    """SD's ``AutoencoderKL`` with ``len(cfg.vae_channels)`` levels (factor 4 by default).

    ``scaling_factor`` starts at 1; training sets it to 1/std of the latents.
    """
    from diffusers import AutoencoderKL

    levels = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=cfg.vae_channels, layers_per_block=cfg.vae_layers_per_block,
        norm_num_groups=cfg.vae_norm_groups, sample_size=cfg.image_size, scaling_factor=1.0,
    )


def build_unet(cfg: ToyModelConfig):
    """SD 1.5's UNet layout with narrow blocks and ``cfg.text_hidden`` cross-attention."""
    from diffusers import UNet2DConditionModel

    # diffusers' historical naming: `attention_head_dim` here is the number of heads
    heads = tuple(c // cfg.unet_head_dim for c in cfg.unet_channels)
    return UNet2DConditionModel(
        sample_size=cfg.latent_size, in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=cfg.unet_channels, layers_per_block=cfg.unet_layers_per_block,
        norm_num_groups=cfg.unet_norm_groups, cross_attention_dim=cfg.text_hidden,
        attention_head_dim=heads,
    )


def build_text_encoder(cfg: ToyModelConfig):
    """A narrow ``CLIPTextModel`` over CLIP's full 49408-token vocabulary."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, hidden_size=cfg.text_hidden,
        intermediate_size=cfg.text_intermediate, num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads, max_position_embeddings=CLIP_MAX_LENGTH,
        projection_dim=cfg.text_hidden, hidden_act="quick_gelu",
        bos_token_id=CLIP_BOS_ID, eos_token_id=CLIP_EOS_ID, pad_token_id=CLIP_EOS_ID,
    ))


def build_tokenizer():
    """The real CLIP BPE tokenizer (the tiny model's vocabulary files), 77 tokens long."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_clip_tokenizer_files(Path(tmp))
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=CLIP_MAX_LENGTH)


def inference_scheduler():
    """SD 1.5's DDIM scheduler (the one saved with the pipeline)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SD15_SCHEDULER)


def training_scheduler():
    """A ``DDPMScheduler`` with SD 1.5's betas: the forward (noising) process of training."""
    from diffusers import DDPMScheduler

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
            "prediction_type", "clip_sample", "steps_offset", "timestep_spacing")
    return DDPMScheduler(**{k: SD15_SCHEDULER[k] for k in keys})


def build_toy_pipeline(cfg: ToyModelConfig, seed: int = 0):
    """An untrained toy ``StableDiffusionPipeline`` (fp32, CPU), initialised from ``seed``.

    The random initialisation is drawn from a private generator state: the caller's
    global RNG is left as it was.
    """
    from diffusers import StableDiffusionPipeline

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae, unet, text_encoder = build_vae(cfg), build_unet(cfg), build_text_encoder(cfg)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=build_tokenizer(), unet=unet,
        scheduler=inference_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def parameter_counts(pipe) -> dict[str, int]:
    """Number of parameters of each network of a pipeline, and their total."""
    counts = {name: sum(p.numel() for p in getattr(pipe, name).parameters())
              for name in ("vae", "unet", "text_encoder")}
    counts["total"] = sum(counts.values())
    return counts


def fp16_megabytes(count: int) -> float:
    """Size in MB (10**6 bytes) of ``count`` parameters stored in float16."""
    return count * 2 / 1e6


def save_toy_pipeline(pipe, folder: str | Path) -> Path:
    """Write ``pipe`` with ``save_pretrained`` (safetensors, float16) plus the toy marker.

    The pipeline's networks are converted to float16 in place (the caller is done with
    them); loading with ``torch_dtype=torch.float32`` converts them back.
    """
    folder = Path(folder)
    for name in ("vae", "unet", "text_encoder"):
        # .half(): diffusers' .to(dtype) warns about fp32-only modules these models lack
        getattr(pipe, name).to("cpu").half()
    pipe.save_pretrained(folder, safe_serialization=True)
    (folder / TOY_MARKER).write_text(TOY_MARKER_TEXT, encoding="utf-8")
    return folder


def is_toy_folder(path: str | Path) -> bool:
    """Whether ``path`` is a pipeline folder written by :func:`save_toy_pipeline`."""
    return (Path(path) / TOY_MARKER).is_file()


# --- the manifest of a saved pipeline folder ------------------------------------------

MANIFEST_NAME = "MANIFEST.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_digests(folder: str | Path) -> dict[str, dict[str, Any]]:
    """``{relative posix path: {"sha256", "size"}}`` of every file under ``folder``
    except the manifest itself."""
    folder = Path(folder)
    return {path.relative_to(folder).as_posix(): {"sha256": _sha256(path),
                                                  "size": path.stat().st_size}
            for path in sorted(folder.rglob("*"))
            if path.is_file() and path.relative_to(folder).as_posix() != MANIFEST_NAME}


def write_manifest(folder: str | Path, metadata: dict[str, Any]) -> Path:
    """Write ``folder/MANIFEST.json``: ``metadata`` plus the digests of every file."""
    folder = Path(folder)
    manifest = dict(metadata, files=folder_digests(folder))
    path = folder / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def verify_manifest(folder: str | Path) -> list[str]:
    """Differences between ``folder`` and its ``MANIFEST.json``: one line per missing,
    changed or unlisted file (empty when the folder is exactly what was written)."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    try:
        listed = json.loads(path.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"{MANIFEST_NAME}: unreadable ({type(exc).__name__}: {exc})"]
    found = folder_digests(folder)
    problems = [f"{name}: missing" for name in sorted(set(listed) - set(found))]
    problems += [f"{name}: not in the manifest" for name in sorted(set(found) - set(listed))]
    for name in sorted(set(listed) & set(found)):
        want, have = listed[name], found[name]
        if want.get("size") != have["size"]:
            problems.append(f"{name}: size {have['size']} != {want.get('size')}")
        elif want.get("sha256") != have["sha256"]:
            problems.append(f"{name}: sha256 differs")
    return problems
