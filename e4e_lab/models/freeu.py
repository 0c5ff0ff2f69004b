"""FreeU (Si et al., arXiv 2309.11497) as the published Eye-for-an-eye code applies it.

The published code modifies the *backbone* features ``h`` (B, C, H, W) at the input of
every decoder (up) block, before the block runs::

    h[:, :C/2] <- b * h[:, :C/2]                      (the first half of the channels)
    h          <- IFFT2( M_s * FFT2(h) )              (real part)

where ``M_s`` is ``s`` on the 2 x 2 lowest-frequency cells (after centring the spectrum)
and 1 elsewhere. On SD 1.5 it picks the factors by channel count: the three up-blocks
fed 1280 channels (0, 1 and 2) take ``(b1, s1) = (1.2, 0.9)`` and the last one, fed 640
channels (the 64 x 64 block where matching happens), takes ``(b2, s2) = (1.4, 0.2)``.
For any UNet we state the same rule by position: every up-block but the last takes
``(b1, s1)``, the last takes ``(b2, s2)`` (identical on SD 1.5). Skip connections are
left alone. It applies to every UNet pass (inversion and denoising).

diffusers' built-in ``enable_freeu`` differs: only up-blocks 0 and 1, and the Fourier
filter goes to the skip connections. It stays available as ``freeu="diffusers"``.

The reference placement is installed with forward pre-hooks on the up-blocks, so the
UNet's own forward is untouched and removing the hooks restores it exactly. The FFT runs
in float32 (half-precision FFTs are not available on every device) and the result is
cast back to the features' dtype.
"""

from __future__ import annotations

import contextlib

import torch

from ..method.config import FREEU_MODES, FreeUConfig


def low_frequency_scale(x: torch.Tensor, scale: float, threshold: int = 1) -> torch.Tensor:
    """Multiply the ``2 threshold`` x ``2 threshold`` lowest spatial frequencies of
    (B, C, H, W) ``x`` by ``scale`` (FreeU's Fourier filter)."""
    freq = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    h, w = freq.shape[-2:]
    cy, cx = h // 2, w // 2
    gain = torch.ones((h, w), device=x.device)
    gain[max(cy - threshold, 0):cy + threshold, max(cx - threshold, 0):cx + threshold] = scale
    freq = torch.fft.ifftshift(freq * gain, dim=(-2, -1))
    return torch.fft.ifftn(freq, dim=(-2, -1)).real.to(x.dtype)


def reference_freeu(h: torch.Tensor, b: float, s: float) -> torch.Tensor:
    """The published FreeU step on backbone features entering an up-block."""
    half = h.shape[1] // 2
    h = torch.cat([h[:, :half] * b, h[:, half:]], dim=1)
    return low_frequency_scale(h, s)


def reference_factors(unet, factors: FreeUConfig) -> list[tuple[float, float]]:
    """(b, s) per up-block: ``(b1, s1)`` for all but the last, ``(b2, s2)`` for the last."""
    n = len(unet.up_blocks)
    return [(factors.b1, factors.s1)] * (n - 1) + [(factors.b2, factors.s2)]


def _pre_hook(b: float, s: float):
    def hook(_module, args, kwargs):
        if "hidden_states" in kwargs:
            kwargs = {**kwargs, "hidden_states": reference_freeu(kwargs["hidden_states"], b, s)}
        else:
            args = (reference_freeu(args[0], b, s),) + tuple(args[1:])
        return args, kwargs
    return hook


@contextlib.contextmanager
def freeu(unet, mode: str = "reference", factors: FreeUConfig | None = None):
    """FreeU on ``unet`` for the duration of the block: ``mode`` is one of
    :data:`~e4e_lab.method.config.FREEU_MODES`. The UNet is restored on exit."""
    if mode not in FREEU_MODES:
        raise ValueError(f"FreeU mode {mode!r} is unknown: use one of {', '.join(FREEU_MODES)}")
    factors = factors or FreeUConfig()
    unet.disable_freeu()  # whatever was left on, only this block's FreeU applies
    if mode == "off":
        yield
        return
    if mode == "diffusers":
        unet.enable_freeu(s1=factors.s1, s2=factors.s2, b1=factors.b1, b2=factors.b2)
        try:
            yield
        finally:
            unet.disable_freeu()
        return
    handles = [block.register_forward_pre_hook(_pre_hook(b, s), with_kwargs=True)
               for block, (b, s) in zip(unet.up_blocks, reference_factors(unet, factors))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
