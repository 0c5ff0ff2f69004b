"""Stable Diffusion 1.5's architecture with seeded RANDOM weights, built in memory.

``build_sd15_random`` makes a UNet, VAE and CLIP text encoder with the layer sizes of
SD 1.5's published configuration, random weights, the CLIP BPE tokenizer of the tiny
model and SD 1.5's DDIM schedule. Nothing is downloaded or saved. Its images are not
meaningful: it exists so that the real compute cost (time and memory per stage) can be
measured on machines without the real weights, e.g. by ``benchmarks/bench_transfer.py``.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .loading import BANNERS, Models, _fingerprint
from .tiny import SD15_SCHEDULER, write_clip_tokenizer_files

log = logging.getLogger(__name__)

MODEL_ID = "sd15-random"
RANDOM_WARNING = f"e4e-lab is using the {BANNERS['random']}"

#: SD 1.5 UNet (``unet/config.json`` of the published model), the values that matter.
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False,
    flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1,
    mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
    cross_attention_dim=768, attention_head_dim=8,
)
#: SD 1.5 VAE (``vae/config.json``).
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=512,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, act_fn="silu",
    norm_num_groups=32, scaling_factor=0.18215,
)
#: CLIP ViT-L/14 text encoder (``text_encoder/config.json``). The special token ids are
#: those of the tokenizer we build (the published config keeps legacy ids 0/2, which
#: changes nothing for the last hidden state that Stable Diffusion uses).
SD15_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
    layer_norm_eps=1e-5, projection_dim=768, pad_token_id=49407, bos_token_id=49406,
    eos_token_id=49407,
)


@dataclass
class RandomModels(Models):
    """:class:`Models` of kind ``random``, with the seed that made the weights."""

    seed: int = 0


def _tokenizer():
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_clip_tokenizer_files(Path(tmp))
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=77)


def build_sd15_pipeline(seed: int = 0, device: str | torch.device = "cpu"):
    """A ``StableDiffusionPipeline`` with SD 1.5's layer sizes and seeded random weights.

    The modules are created directly on ``device`` in float32 (a GPU initialises the
    860M UNet parameters in well under a second; a CPU takes tens of seconds).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD15_VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT))
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=_tokenizer(), unet=unet,
        scheduler=DDIMScheduler(**SD15_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def _cast(pipe, dtype: torch.dtype) -> None:
    """Cast the modules (diffusers warns about ``to(dtype)`` on models it did not load;
    nothing here needs to stay in float32, so the warning is silenced)."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        for module in (pipe.unet, pipe.vae, pipe.text_encoder):
            module.to(dtype=dtype)
    finally:
        diffusers_logging.set_verbosity(level)


def build_sd15_random(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                      seed: int = 0) -> RandomModels:
    """SD 1.5-sized random-weight models, ready for the stages (no download, no save).

    The same ``seed`` on the same device gives the same weights, so a float16 and a
    float32 copy built with one seed differ only by rounding.
    """
    device = torch.device(device)
    pipe = build_sd15_pipeline(seed, device)
    if dtype != torch.float32:
        _cast(pipe, dtype)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.eval().requires_grad_(False)
    log.warning(RANDOM_WARNING)
    # the seed, the device and torch's version fix the weights: no need to hash 1 GB
    fingerprint = _fingerprint(MODEL_ID, pipe, weights=f"sd15-random:seed={seed}:"
                               f"device={device.type}:torch={torch.__version__}")
    return RandomModels(pipe=pipe, model_id=MODEL_ID, device=device, dtype=dtype, kind="random",
                        fingerprint=fingerprint, seed=seed)
