"""Other appearance-transfer methods, for side-by-side comparison.

Cross-Image Attention (arXiv 2311.03335) is an injection mode of our own loop
(``TransferConfig(injection="cross-image")``) so that it shares the inversions. This
module adds Paint-by-Example (arXiv 2211.13227) through diffusers'
``PaintByExamplePipeline``: it repaints the structure's object region (the mask) with
the reference object, guided by a CLIP image embedding of the reference crop. It does
not use inversions; it uses the same seed.

``load_paint_by_example("Fantasy-Studio/Paint-by-Example")`` loads the real weights;
``"tiny"`` builds a randomly initialised instance offline (tests, demos: its images are
not meaningful), saved once and loaded through the same ``from_pretrained`` path.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import ModelUnavailableError
from ..io.paths import cache_root
from ..method.images import to_uint8
from ..models.loading import default_device, default_dtype
from ..models.tiny import TINY_SEED, build_once, tiny_model_path

PBE_MODEL = "Fantasy-Studio/Paint-by-Example"
TINY_PBE_VERSION = "tiny-paint-by-example-v1"


def _pipeline_class():
    try:
        from diffusers import PaintByExamplePipeline
    except ImportError:  # moved under deprecated/ in recent diffusers, still exported
        from diffusers.pipelines.deprecated.paint_by_example import PaintByExamplePipeline
    return PaintByExamplePipeline


def _encoder_class():
    try:
        from diffusers.pipelines.paint_by_example import PaintByExampleImageEncoder
    except ImportError:
        from diffusers.pipelines.deprecated.paint_by_example import PaintByExampleImageEncoder
    return PaintByExampleImageEncoder


def _build_tiny(folder: Path) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig

    torch.manual_seed(TINY_SEED + 1)
    proj = 64
    encoder = _encoder_class()(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=224, patch_size=32, projection_dim=proj), proj_size=proj)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=9, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(32, 64, 96, 96), layers_per_block=2, norm_num_groups=8,
        cross_attention_dim=proj, attention_head_dim=4)
    sd = tiny_model_path()  # reuse the tiny SD's VAE and scheduler
    vae = AutoencoderKL.from_pretrained(sd / "vae")
    scheduler = DDIMScheduler.from_pretrained(sd / "scheduler")
    processor = CLIPImageProcessor(size={"shortest_edge": 224},
                                   crop_size={"height": 224, "width": 224})
    pipe = _pipeline_class()(vae=vae, image_encoder=encoder, unet=unet, scheduler=scheduler,
                             safety_checker=None, feature_extractor=processor,
                             requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    (folder / "E4E_TINY_MODEL.txt").write_text("Tiny Paint-by-Example with RANDOM weights.\n")


def tiny_pbe_path(root: Path | None = None) -> Path:
    """Folder of the tiny random Paint-by-Example, built on first use."""
    return build_once((Path(root) if root else cache_root()) / "models" / TINY_PBE_VERSION,
                      _build_tiny)


def _load_components(source: str, dtype, local: bool):
    """The pipeline assembled from its saved components.

    Recent diffusers cannot resolve this deprecated pipeline's image encoder from
    ``model_index.json``, so each component is loaded with its own ``from_pretrained``.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPImageProcessor

    kw = dict(local_files_only=local)
    return _pipeline_class()(
        vae=AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **kw),
        image_encoder=_encoder_class().from_pretrained(source, subfolder="image_encoder",
                                                       torch_dtype=dtype, **kw),
        unet=UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype,
                                                  **kw),
        scheduler=DDIMScheduler.from_pretrained(source, subfolder="scheduler", **kw),
        feature_extractor=CLIPImageProcessor.from_pretrained(source, subfolder="feature_extractor",
                                                             **kw),
        safety_checker=None, requires_safety_checker=False)


@dataclass
class PaintByExample:
    pipe: object
    model_id: str
    device: torch.device
    is_tiny: bool


def load_paint_by_example(model: str = PBE_MODEL, device=None, dtype=None,
                          local_files_only: bool = False) -> PaintByExample:
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    tiny = model == "tiny"
    source = str(tiny_pbe_path()) if tiny else model
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            pipe = _load_components(source, dtype, tiny or local_files_only)
    except Exception as exc:
        raise ModelUnavailableError(
            f"Paint-by-Example '{model}' could not be loaded ({type(exc).__name__}); download "
            f"it with `hf download {PBE_MODEL}`, or use 'tiny' offline") from None
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return PaintByExample(pipe, model, device, tiny)


def _crop(pixels: torch.Tensor, box) -> Image.Image:
    img = Image.fromarray(to_uint8(pixels))
    return img.crop(tuple(box)) if box is not None else img


@torch.no_grad()
def paint_by_example(pbe: PaintByExample, pair, seed: int = 0, steps: int = 50,
                     guidance: float = 5.0) -> torch.Tensor:
    """Repaint the structure's masked object with the appearance's object (crop of its box).

    Returns a (3, H, W) float32 CPU image in [0, 1] at the pair's size.
    """
    w, h = pair.size
    mask = Image.fromarray((pair.structure_mask.numpy() * 255).astype(np.uint8))
    gen = torch.Generator("cpu").manual_seed(seed)
    out = pbe.pipe(example_image=_crop(pair.appearance.pixels, pair.appearance_box),
                   image=Image.fromarray(to_uint8(pair.structure.pixels)), mask_image=mask,
                   height=h, width=w, num_inference_steps=steps, guidance_scale=guidance,
                   generator=gen, output_type="np").images[0]
    return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1).float().clamp(0, 1)
