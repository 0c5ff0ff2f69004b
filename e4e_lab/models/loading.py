"""Stage 0: loading the Stable Diffusion pipeline (real weights, the toy or the tiny model).

``load_pipeline(model)`` takes:

- ``"toy"``: the toy model shipped in ``e4e_lab/toy/weights`` (trained here on the
  synthetic creatures of :mod:`e4e_lab.toy.world`; it knows nothing else);
- ``"tiny"``: the offline tiny model (random weights, for tests: its images are noise);
- ``"auto"``: the real SD 1.5 if it can be had (local Hugging Face cache first, then
  the hub when reachable), else the toy model, saying so in one line;
- a hub id (``stable-diffusion-v1-5/stable-diffusion-v1-5`` is the default real model);
- a local folder written by ``save_pretrained``.

The scheduler is always replaced by a DDIM scheduler built from the model's own
scheduler config. fp16 on CUDA, fp32 elsewhere, unless ``dtype`` says otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch

from ..errors import ModelBusy, ModelUnavailableError, TransferCancelled
from .tiny import is_tiny_folder, tiny_model_path

log = logging.getLogger(__name__)

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
#: The shipped toy model (a ``save_pretrained`` folder with a MANIFEST.json of sums).
TOY_WEIGHTS = Path(__file__).resolve().parents[1] / "toy" / "weights"
TOY_MARKER = "E4E_TOY_MODEL.txt"
#: What every UI says while an offline model is in use: one wording, from here.
BANNERS = {
    "toy": "toy model: trained on synthetic creatures; it knows nothing else",
    "tiny": "tiny model: random weights, for tests; its images are noise, not results",
    "random": "sd15-random: Stable Diffusion 1.5's layers with random weights, for "
              "measuring speed and memory; its images are noise, not results",
}
#: Model kinds whose weights are random: their images are not meaningful.
RANDOM_KINDS = ("tiny", "random")
TINY_WARNING = BANNERS["tiny"]


@dataclass
class Models:
    """A loaded pipeline plus what the stages need to know about it."""

    pipe: "object"  # diffusers.StableDiffusionPipeline
    model_id: str
    device: torch.device
    dtype: torch.dtype
    kind: str  # "real", "toy", "tiny" or "random" (see BANNERS)
    fingerprint: str
    # held while the UNet runs: a transfer installs its attention processors on it, so
    # another thread's UNet use (inversion, DIFT features) must wait (see :meth:`in_use`)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    @contextlib.contextmanager
    def in_use(self, blocking: bool = True, action: str = "use the model", cancel=None):
        """Hold the model for one UNet job. With ``blocking=False``, raise
        :class:`~e4e_lab.errors.ModelBusy` at once if another thread holds it. A blocking
        wait with ``cancel`` (a ``threading.Event``) ends with
        :class:`~e4e_lab.errors.TransferCancelled` when it is set."""
        if not self._acquire(blocking, cancel, action):
            raise ModelBusy(f"a transfer is running on this model: {action} when it has "
                            "finished (or stop it)")
        try:
            yield self
        finally:
            self.lock.release()

    def _acquire(self, blocking: bool, cancel, action: str) -> bool:
        if not blocking or cancel is None:
            return self.lock.acquire(blocking=blocking)
        while not self.lock.acquire(timeout=0.1):
            if cancel.is_set():
                raise TransferCancelled(0, 0, f"waiting for the model to {action}")
        return True

    def compile_unet(self, backend: str = "inductor", mode: str | None = None) -> "Models":
        """``torch.compile`` the UNet in place (``--compile``; off by default).

        The module stays the same object, so the attention processors a transfer installs
        still apply. They decide what to do once per step, outside the UNet (see
        :class:`~e4e_lab.method.regions.InjectionState`), so dynamo compiles a graph per
        kind of step (plain, match, refresh) and per batch shape, not one per step.
        Compiled kernels may round differently from eager ones, so the fingerprint (hence
        the inversion cache key) names the backend. Compiling costs tens of seconds to
        minutes at the first calls and pays off over many GPU calls, rarely on a CPU.
        """
        if getattr(self.pipe.unet, "_e4e_compiled", None) != (backend, mode):
            self.pipe.unet.compile(backend=backend, mode=mode, dynamic=False)
            self.pipe.unet._e4e_compiled = (backend, mode)
            base = self.fingerprint.split("+compiled")[0]
            self.fingerprint = f"{base}+compiled-{backend}-{mode or 'default'}"
        return self

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
    def is_tiny(self) -> bool:
        """Whether the weights are random (tiny or sd15-random): images not meaningful."""
        return self.kind in RANDOM_KINDS

    @property
    def is_toy(self) -> bool:
        return self.kind == "toy"

    @property
    def banner(self) -> str | None:
        """What every UI shows while an offline model is in use (None for real weights)."""
        return BANNERS.get(self.kind)


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


def _fingerprint(model_id: str, pipe, weights: str | None = None) -> str:
    """What the inversion cache keys on (:func:`.fingerprint.model_fingerprint`): every
    component's config and weights. ``model_id`` is deliberately left out: a local
    model's id is its folder, and moving a folder does not change what it computes."""
    from .fingerprint import model_fingerprint

    return model_fingerprint(pipe, weights)


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
                       "tiny", device, dtype, "tiny")
    if model == "toy":
        return _load_toy(device, dtype)
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
        if (TOY_WEIGHTS / "model_index.json").exists():
            log.warning("no weights of %s found locally or on the hub: using the %s",
                        DEFAULT_MODEL, BANNERS["toy"])
            return _load_toy(device, dtype, announce=False)
        log.warning("no weights of %s found, and no toy model in %s: using the %s",
                    DEFAULT_MODEL, TOY_WEIGHTS, BANNERS["tiny"])
        return _finish(_from_pretrained(str(tiny_model_path(cache_dir)), dtype, True),
                       "tiny", device, dtype, "tiny", announce=False)
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
    return _finish(pipe, model, device, dtype, _folder_kind(Path(source)) if local else "real")


def _folder_kind(folder: Path) -> str:
    if is_tiny_folder(folder):
        return "tiny"
    return "toy" if (folder / TOY_MARKER).exists() else "real"


def _load_toy(device, dtype, announce: bool = True) -> Models:
    """The shipped toy model, its files checked against their recorded sums first."""
    from ..toy.model import verify_manifest

    if not (TOY_WEIGHTS / "model_index.json").exists():
        raise ModelUnavailableError(
            f"the toy model is missing from {TOY_WEIGHTS}: restore it from the repository "
            "(git checkout e4e_lab/toy/weights) or train it with `python -m e4e_lab.toy.train`")
    problems = verify_manifest(TOY_WEIGHTS)
    if problems:
        raise ModelUnavailableError(
            f"the toy model in {TOY_WEIGHTS} does not match its MANIFEST.json ({problems[0]}"
            f"{' and more' if len(problems) > 1 else ''}): restore it from the repository")
    return _finish(_from_pretrained(str(TOY_WEIGHTS), dtype, True), "toy", device, dtype, "toy",
                   announce=announce)


def _finish(pipe, model_id: str, device, dtype, kind: str, announce: bool = True) -> Models:
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.eval().requires_grad_(False)
    if announce and kind in BANNERS:
        log.warning("e4e-lab is using the %s", BANNERS[kind])
    return Models(pipe=pipe, model_id=model_id, device=torch.device(device), dtype=dtype,
                  kind=kind, fingerprint=_fingerprint(model_id, pipe))
