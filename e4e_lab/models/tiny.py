"""A tiny Stable-Diffusion-shaped pipeline with seeded random weights, built offline.

It has SD 1.5's structure (3 CrossAttnDownBlock2D + DownBlock2D, UpBlock2D + 3
CrossAttnUpBlock2D, two resnets per block so three decoder self-attention layers
per resolution, an 8x VAE, a CLIP text encoder and SD 1.5's DDIM schedule), but
narrow layers and random weights: its images are NOT meaningful. It exists so the
whole suite can be learnt, tested and demonstrated on a CPU with no downloads.

It is built once into a cache folder with ``save_pretrained`` (with a MANIFEST.json of
its files' sums, checked on every start: a damaged build is rebuilt) and then loaded
with the same ``from_pretrained`` path as a real model. When the cache folder cannot
be written, it is built into a temporary folder for this process. The tokenizer is a
real CLIP BPE tokenizer made from the ``bpe_simple_vocab_16e6.txt.gz`` that the PyPI
package ``clip-anytorch`` ships (located through importlib, never imported).
"""

from __future__ import annotations

import atexit
import gzip
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..io.cache import sweep_stale, temp_name, warn_unusable
from ..io.paths import cache_root

log = logging.getLogger(__name__)

TINY_VERSION = "tiny-sd-v1"
TINY_SEED = 20240611
#: SD 1.5's scheduler configuration (DDIM, scaled-linear betas, "leading" spacing).
SD15_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
    timestep_spacing="leading",
)
_VOCAB_SIZE = 49408


def clip_bpe_path() -> Path:
    """The CLIP BPE merges file shipped by the ``clip-anytorch`` package."""
    from ..errors import ModelUnavailableError

    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            "the tiny model's tokenizer needs the vocabulary shipped by the PyPI package "
            "'clip-anytorch': pip install clip-anytorch")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "bpe_simple_vocab_16e6.txt.gz"
        if path.exists():
            return path
    raise ModelUnavailableError("package 'clip' is installed but has no "
                                "bpe_simple_vocab_16e6.txt.gz: pip install clip-anytorch")


def _byte_alphabet() -> list[str]:
    """CLIP's byte-level alphabet, in vocabulary order.

    Printable bytes stand for themselves and come first, in byte order; the other
    bytes follow, mapped to code points from 256 upwards.
    """
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1))
                 + list(range(ord("\u00ae"), ord("\u00ff") + 1)))
    rest = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + k) for k in range(len(rest))]


def write_clip_tokenizer_files(folder: Path) -> None:
    """Write ``vocab.json`` and ``merges.txt`` of the CLIP BPE tokenizer into ``folder``."""
    with gzip.open(clip_bpe_path(), "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    # line 0 is a version header; CLIP uses the first 48894 merges
    merges = lines[1:1 + _VOCAB_SIZE - 256 * 2 - 2]
    alphabet = _byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}),
                                       encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n",
                                       encoding="utf-8")


def _build(folder: Path) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(TINY_SEED)
    text_dim = 64
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(32, 64, 96, 96), layers_per_block=2, norm_num_groups=8,
        cross_attention_dim=text_dim, attention_head_dim=4,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=8,
        sample_size=128,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=_VOCAB_SIZE, hidden_size=text_dim, intermediate_size=2 * text_dim,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
        projection_dim=text_dim,
    ))
    with tempfile.TemporaryDirectory() as tmp:
        write_clip_tokenizer_files(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=77)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler(**SD15_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    (folder / "E4E_TINY_MODEL.txt").write_text(
        "Tiny Stable-Diffusion-shaped model with seeded RANDOM weights, built offline by "
        "e4e-lab for tests and demos. Its images are not meaningful.\n", encoding="utf-8")
    from ..toy.model import write_manifest

    write_manifest(folder, {"model": TINY_VERSION})


def build_once(folder: Path, build, verify=None) -> Path:
    """Run ``build(staging_folder)`` once for ``folder`` (safe across processes).

    The builder writes into a staging folder that is renamed into place, so a reader
    never sees a half-written model; ``E4E_TINY_MODEL.txt`` marks a finished build.
    ``verify(folder)`` (optional) lists what is wrong with a finished build: a damaged
    one is rebuilt, with a warning. Staging folders that a killed build left behind
    are removed.
    """
    from filelock import FileLock

    if _finished(folder, verify, warn=False):
        sweep_stale(folder.parent, f".{folder.name}[-.]*")
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if _finished(folder, verify, warn=True):
            return folder
        # under the lock every build has finished: what staging is left is dead
        sweep_stale(folder.parent, f".{folder.name}[-.]*", everything=True)
        log.info("building an offline random-weight model into %s", folder)
        staging = folder.parent / temp_name(f".{folder.name}")
        staging.mkdir()
        try:
            build(staging)
            _check_weights(staging, folder)
            if folder.exists():
                shutil.rmtree(folder)
            staging.rename(folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def _finished(folder: Path, verify, warn: bool) -> bool:
    """Whether ``folder`` holds a finished build that ``verify`` finds nothing wrong with."""
    if not (folder / "E4E_TINY_MODEL.txt").exists():
        return False
    problems = verify(folder) if verify is not None else []
    if problems and warn and not (folder / "MANIFEST.json").exists():
        log.info("the cached model in %s has no MANIFEST.json (an older e4e-lab built "
                 "it): rebuilding it", folder)
    elif problems and warn:
        log.warning("the cached model in %s is damaged (%s%s): rebuilding it", folder,
                    problems[0], " and more" if len(problems) > 1 else "")
    return not problems


def _check_weights(staging: Path, folder: Path) -> None:
    """Refuse a build whose model components have a config but no weights.

    transformers' ``save_pretrained`` silently skips the weights on a torch.distributed
    rank other than 0; marking such a build finished would poison the cache.
    """
    empty = sorted(d.name for d in staging.iterdir() if (d / "config.json").is_file()
                   and not any(d.glob("*.safetensors")))
    if empty:
        from ..errors import ModelUnavailableError

        raise ModelUnavailableError(
            f"building '{folder.name}' wrote no weights for {', '.join(empty)} (under "
            "torch.distributed only rank 0 writes them): load the model on the main "
            "process first (accelerate's main_process_first), or run once without a "
            "launcher to fill the cache")


def _verify_tiny(folder: Path) -> list[str]:
    from ..toy.model import verify_manifest

    return verify_manifest(folder)


_TEMPORARY: dict[str, Path] = {}


def tiny_model_path(root: Path | None = None) -> Path:
    """Folder of the tiny pipeline, built on first use (and rebuilt when damaged). When
    ``root`` cannot hold it (a file, read-only, full), it is built once per process into
    a temporary folder, with one warning."""
    root = Path(root) if root is not None else cache_root()
    try:
        return build_once(root / "models" / TINY_VERSION, _build, _verify_tiny)
    except OSError as exc:
        warn_unusable(root, exc)
    if TINY_VERSION not in _TEMPORARY:
        tmp = Path(tempfile.mkdtemp(prefix="e4e-lab-tiny-"))
        atexit.register(shutil.rmtree, tmp, True)
        _TEMPORARY[TINY_VERSION] = build_once(tmp / TINY_VERSION, _build, _verify_tiny)
    return _TEMPORARY[TINY_VERSION]


def is_tiny_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / "E4E_TINY_MODEL.txt").exists()
