"""Stage 0: loading the Stable Diffusion pipeline (real weights or the tiny model).

``load_pipeline(model)`` takes:

- ``"tiny"``: the offline tiny model (random weights, images not meaningful);
- ``"auto"``: the real SD 1.5 if it can be had (local Hugging Face cache first, then
  the hub when reachable), else the tiny model with a loud warning;
- a hub id (``stable-diffusion-v1-5/stable-diffusion-v1-5`` is the default real model);
- a local folder written by ``save_pretrained``.

The scheduler is always replaced by a DDIM scheduler built from the model's own
scheduler config. fp16 on CUDA, fp32 elsewhere, unless ``dtype`` says otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch

from ..errors import ModelBusy, ModelUnavailableError
from .tiny import is_tiny_folder, tiny_model_path

log = logging.getLogger(__name__)

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
TINY_WARNING = ("e4e-lab is using the TINY OFFLINE MODEL with random weights: "
                "images are not meaningful. Load real Stable Diffusion weights for real results.")


@dataclass
class Models:
    """A loaded pipeline plus what the stages need to know about it."""

    pipe: "object"  # diffusers.StableDiffusionPipeline
    model_id: str
    device: torch.device
    dtype: torch.dtype
    is_tiny: bool
    fingerprint: str
    # held while the UNet runs: a transfer installs its attention processors on it, so
    # another thread's UNet use (inversion, DIFT features) must wait (see :meth:`in_use`)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    @contextlib.contextmanager
    def in_use(self, blocking: bool = True, action: str = "use the model"):
        """Hold the model for one UNet job. With ``blocking=False``, raise
        :class:`~e4e_lab.errors.ModelBusy` at once if another thread holds it."""
        if not self.lock.acquire(blocking=blocking):
            raise ModelBusy(f"a transfer is running on this model: {action} when it has "
                            "finished (or stop it)")
        try:
            yield self
        finally:
            self.lock.release()

    @property
    def unet(self):
        return self.pipe.unet

    @property
    def vae(self):
        return self.pipe.vae

    @property
    def scheduler(self):
        return self.pipe.scheduler

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Image sizes must be multiples of this (VAE factor x UNet downsampling)."""
        return self.vae_scale_factor * 2 ** (len(self.pipe.unet.config.block_out_channels) - 1)

    @property
    def default_size(self) -> int:
        return int(self.pipe.unet.config.sample_size) * self.vae_scale_factor

    @property
    def banner(self) -> str | None:
        """The warning every UI shows while the tiny model is in use (else None)."""
        return TINY_WARNING if self.is_tiny else None


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def _hub_reachable(timeout: float = 2.0) -> bool:
    """A bounded probe: can a TCP connection to the hub endpoint be opened in time?

    Name resolution ignores socket timeouts, so the probe runs in a daemon thread and
    is abandoned after ``timeout`` seconds.
    """
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname
    if not host:
        return False
    result: list[bool] = []

    def probe():
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _fingerprint(model_id: str, pipe) -> str:
    h = hashlib.sha256(model_id.encode())
    h.update(json.dumps(dict(pipe.unet.config), sort_keys=True, default=str).encode())
    h.update(json.dumps(dict(pipe.vae.config), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _from_pretrained(source: str, dtype: torch.dtype, local_files_only: bool):
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            # newer diffusers prefer `dtype=`; `torch_dtype=` works on every version we support
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = StableDiffusionPipeline.from_pretrained(
                source, torch_dtype=dtype, safety_checker=None, feature_extractor=None,
                requires_safety_checker=False, local_files_only=local_files_only,
            )
    finally:
        diffusers_logging.enable_progress_bar()
        transformers_logging.enable_progress_bar()
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return pipe


def load_pipeline(model: str = "auto", device: str | torch.device | None = None,
                  dtype: torch.dtype | None = None, local_files_only: bool | None = None,
                  cache_dir: str | os.PathLike | None = None) -> Models:
    """Load a Stable Diffusion pipeline ready for the stages.

    Raises :class:`ModelUnavailableError` naming what was looked for and how to fix it.
    """
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    if model == "tiny":
        return _finish(_from_pretrained(str(tiny_model_path(cache_dir)), dtype, True),
                       "tiny", device, dtype, True)
    if model == "auto":
        try:
            models = _load_real(DEFAULT_MODEL, device, dtype, local_files_only=True)
            return models
        except ModelUnavailableError:
            pass
        if not _offline() and local_files_only is not True and _hub_reachable():
            try:
                return _load_real(DEFAULT_MODEL, device, dtype, local_files_only=False)
            except ModelUnavailableError as exc:
                log.warning("could not download %s (%s)", DEFAULT_MODEL, exc)
        # the tiny model's own warning follows (every load of it says so, in _finish)
        log.warning("no weights of %s found locally or on the hub: falling back to the tiny "
                    "offline model", DEFAULT_MODEL)
        return load_pipeline("tiny", device, dtype, cache_dir=cache_dir)
    return _load_real(model, device, dtype,
                      local_files_only=bool(local_files_only) or _offline())


def _load_real(model: str, device, dtype, local_files_only: bool) -> Models:
    if not isinstance(model, str) or not model.strip():
        raise ModelUnavailableError(
            f"no model given ({model!r}): name a hub id such as {DEFAULT_MODEL}, a local "
            "folder, 'auto', or --model tiny")
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "model_index.json").exists():
            raise ModelUnavailableError(
                f"model folder '{path}' has no model_index.json: give a folder written by "
                "diffusers' save_pretrained, a hub id, or --model tiny")
        source, local = str(path), True
    elif model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelUnavailableError(
            f"model folder '{path}' does not exist: check the path, or use --model tiny")
    else:
        source, local = model, local_files_only
    try:
        pipe = _from_pretrained(source, dtype, local)
    except Exception as exc:  # diffusers raises OSError, ValueError, EnvironmentError...
        if path.exists():
            raise ModelUnavailableError(
                f"model folder '{path}' could not be loaded ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}): it is incomplete or damaged; "
                "save it again with diffusers' save_pretrained, or use --model tiny") from None
        where = "in the local Hugging Face cache" if local else "on the hub"
        raise ModelUnavailableError(
            f"model '{model}' could not be loaded {where} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Download it on a machine with "
            f"network with `hf download {model}` (or point --model at a local "
            "folder), or use --model tiny for the offline test model") from None
    return _finish(pipe, model, device, dtype, is_tiny_folder(source) if local else False)


def _finish(pipe, model_id: str, device, dtype, is_tiny: bool) -> Models:
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.eval().requires_grad_(False)
    if is_tiny:
        log.warning(TINY_WARNING)
    return Models(pipe=pipe, model_id=model_id, device=torch.device(device), dtype=dtype,
                  is_tiny=is_tiny, fingerprint=_fingerprint(model_id, pipe))
