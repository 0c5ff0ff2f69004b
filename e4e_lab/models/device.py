"""Checking where a session runs: the device, the dtype, the cache folder and whether an
image size fits in the device's memory, before any model or tensor is made.

Each check raises a :class:`~e4e_lab.errors.ConfigError` that names the input and the fix,
instead of the untyped errors torch raises later (``RuntimeError`` for a device string
it cannot parse or a GPU that is not there, ``MemoryError`` for a size too large).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ..errors import ConfigError
from ..method.config import MAX_SIZE

#: Accepted dtype names (``Lab(dtype="fp16")``, ``--dtype``) and what they stand for.
DTYPE_NAMES = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
               "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
               "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}
_DEVICE = re.compile(r"(cpu|cuda|mps)(:(\d+))?")
_DEVICE_HINT = "'cpu', 'cuda', 'cuda:N' (a GPU index) or 'mps'"


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """``device`` as a :class:`torch.device` that exists here (None stays None: the
    default, CUDA when available); else a :class:`ConfigError` saying what is available."""
    if device is None:
        return None
    if not isinstance(device, (str, torch.device)):
        raise ConfigError("device", device, f"a device name: {_DEVICE_HINT}")
    m = _DEVICE.fullmatch(str(device).strip().lower())
    if m is None:
        raise ConfigError("device", str(device), f"a device name: {_DEVICE_HINT}")
    kind, index = m.group(1), m.group(3)
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError("device", str(device), "no CUDA GPU is usable here (no GPU, "
                              "no driver, or CUDA_VISIBLE_DEVICES hides it): use 'cpu'")
        if index is not None and int(index) >= count:
            raise ConfigError("device", str(device), f"this machine has {count} CUDA "
                              f"GPU(s): use cuda:0 .. cuda:{count - 1}")
    if kind == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError("device", str(device), "Apple MPS is not available here: use 'cpu'")
    if kind != "cuda" and index not in (None, "0"):
        raise ConfigError("device", str(device), f"'{kind}' takes no index: use '{kind}'")
    return torch.device(kind if kind != "cuda" or index is None else f"cuda:{index}")


def resolve_dtype(dtype) -> torch.dtype | None:
    """``dtype`` (a torch dtype or one of :data:`DTYPE_NAMES`) as a floating torch dtype;
    None stays None (float16 on CUDA, float32 elsewhere)."""
    if dtype is None:
        return None
    if isinstance(dtype, str) and dtype.strip().lower().removeprefix("torch.") in DTYPE_NAMES:
        return DTYPE_NAMES[dtype.strip().lower().removeprefix("torch.")]
    if dtype in (torch.float16, torch.bfloat16, torch.float32):
        return dtype
    raise ConfigError("dtype", dtype, "torch.float16, torch.bfloat16 or torch.float32 (or "
                      "the strings 'float16'/'fp16', 'bfloat16'/'bf16', 'float32'/'fp32')")


def check_cache_dir(cache_dir) -> None:
    """A cache folder that exists must be a folder (a missing one is created later); with
    no ``cache_dir``, the same holds for ``$E4E_LAB_CACHE`` when it is set."""
    name = "cache_dir"
    if cache_dir is None:
        cache_dir, name = os.environ.get("E4E_LAB_CACHE") or None, "E4E_LAB_CACHE"
        if cache_dir is None:
            return
    if not isinstance(cache_dir, (str, os.PathLike)):
        raise ConfigError(name, cache_dir, "a folder path")
    path = Path(cache_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(name, str(path), "a folder (it is created if missing), not a file: "
                          "give another path, or leave it out for the default")


def check_session(device, dtype, cache_dir):
    """:func:`resolve_device`, :func:`resolve_dtype` and :func:`check_cache_dir` for
    ``Lab(...)``; returns (device, dtype)."""
    check_cache_dir(cache_dir)
    return resolve_device(device), resolve_dtype(dtype)


# ------------------------------------------------------------------ memory --

def estimate_bytes(size: int, element_bytes: int = 4, steps: int = 100,
                   latent_factor: int = 8) -> int:
    """A rough lower bound on the memory a transfer at ``size`` px needs besides the
    weights: the VAE holds a few (about six) 128-channel maps at full resolution while it
    encodes and decodes, and the two stored trajectories keep ``2 (steps + 1)`` latents
    (4 channels at ``size / latent_factor``, float32) per image."""
    vae = 6 * 128 * size * size * element_bytes
    latents = 2 * 2 * (steps + 1) * 4 * (size // latent_factor) ** 2 * 4
    return vae + latents


def available_bytes(device: torch.device | str | None) -> int | None:
    """Free memory of ``device`` (GPU: what CUDA reports free; CPU: MemAvailable from
    /proc/meminfo), or None when it cannot be told."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_fits(size: int, device=None, dtype: torch.dtype | None = None) -> None:
    """Refuse a ``size`` above :data:`MAX_SIZE`, or whose :func:`estimate_bytes` exceeds
    the free memory of ``device`` (default: CUDA when available), before anything is
    allocated."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError("size", size, f"a positive integer up to {MAX_SIZE}")
    if size > MAX_SIZE:
        raise ConfigError("size", size, f"at most {MAX_SIZE} px")
    dev = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    element = torch.finfo(dtype).bits // 8 if dtype is not None else (
        2 if dev.type == "cuda" else 4)
    need, free = estimate_bytes(size, element), available_bytes(dev)
    if free is not None and need > free:
        where = "GPU memory" if dev.type == "cuda" else "RAM"
        raise ConfigError("size", size, f"a transfer at {size} px needs at least "
                          f"{need / 2**30:.1f} GiB, but only {free / 2**30:.1f} GiB of "
                          f"{where} is free: use a smaller size (512 for SD 1.5)")
