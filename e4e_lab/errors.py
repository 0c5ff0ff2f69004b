"""Typed errors for e4e-lab.

Every error raised on purpose by the library derives from :class:`E4ELabError`.
Messages name the input at fault and say how to fix it; the CLI prints them as a
single ``error:`` line and exits with status 2.
"""

from __future__ import annotations


class E4ELabError(Exception):
    """Base class of every error the library raises on purpose."""


class ConfigError(E4ELabError, ValueError):
    """A configuration field has a value outside its allowed range."""

    def __init__(self, field: str, value, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"config field '{field}' = {value!r} is invalid: {allowed}")


class ImageError(E4ELabError, ValueError):
    """An image file or array cannot be used."""


class BoxError(E4ELabError, ValueError):
    """A bounding box or a boxes JSON file is malformed."""


class MaskError(E4ELabError, ValueError):
    """A mask is empty, of the wrong shape, or otherwise unusable."""


class ModelUnavailableError(E4ELabError, RuntimeError):
    """A model (diffusion pipeline, SAM-HQ checkpoint...) cannot be loaded."""


class NumericalError(E4ELabError, FloatingPointError):
    """NaN or Inf appeared in the latents during a stage."""


class DeviceOutOfMemoryError(E4ELabError, MemoryError):
    """The accelerator ran out of memory at a stage boundary."""


class ModelBusy(E4ELabError, RuntimeError):
    """The UNet is in use by a transfer running in another thread."""


class TransferCancelled(E4ELabError):
    """The run was stopped between two of its steps by the caller (denoising steps of a
    transfer; noise draws of DIFT features: ``what`` and ``unit`` say which)."""

    def __init__(self, step: int, total: int, what: str = "transfer", unit: str = "step"):
        self.step, self.total, self.what = step, total, what
        super().__init__(f"{what} cancelled before {unit} {step} of {total}")


class E4ELabWarning(UserWarning):
    """Input that is accepted but probably not what was meant: a step range that no
    denoising step reaches, a boxes file that names none of the images, attention layers
    that do not exist. The run goes on; the command line prints one ``warning:`` line."""
