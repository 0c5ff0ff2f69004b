"""The groups of a transfer's settings: small frozen dataclasses, each validated.

:class:`~e4e_lab.method.config.TransferConfig` holds one of each: what determines the
inversion, where denoising starts and how its counter reads the ranges, the guidance,
the injection, masked AdaIN, the Cross-Image Attention baseline, DIFT, and what the
viewers record. Every field is declared once, with :func:`setting`: its default, its
*flat* name (the keyword of ``TransferConfig(...)``, the key of ``config.json``, the
name an error gives) and its one validator. A validator is called as
``check(flat_name, value, num_steps)``: a few bounds depend on the step count, which a
group alone does not know; constructed on its own, a group checks them against
:data:`MAX_STEPS`, and ``TransferConfig`` checks them again against its ``num_steps``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from ..errors import ConfigError

INJECTION_MODES = ("feature", "v", "kv", "cross-image", "none")
CORRESPONDENCE_SOURCES = ("match", "dift")
FIT_MODES = ("stretch", "center-crop", "pad")
#: Resampling filters for fitting images to the model size (bicubic: the published code's).
RESAMPLE_MODES = ("bicubic", "lanczos")
#: "reference": FreeU where the published code applies it (every decoder-block input);
#: "diffusers": diffusers' ``enable_freeu`` (up-blocks 0-1, filtering the skips); "off".
FREEU_MODES = ("reference", "diffusers", "off")
#: How masks reach a layer grid. "reference": bilinear (no antialias) as published, a cell
#: counts for matching when its value is > 0, AdaIN takes statistics on cells equal to 1
#: and blends with the soft values; "area": area average thresholded at 0.5 everywhere.
MASK_RESIZE_MODES = ("reference", "area")
#: "published": the step counter of the published code, which lags one UNet call (its
#: injection tests see step i - 1) and widens the AdaIN range by one at each end;
#: "exact": the ranges read literally at each denoising step.
SCHEDULES = ("published", "exact")
#: Largest scheduler step count (and bound of the step thresholds).
MAX_STEPS = 1000
#: Largest model resolution (image side, pixels) accepted anywhere; what a device can
#: hold is checked separately (:func:`e4e_lab.models.device.check_fits`).
MAX_SIZE = 4096

Injection = Literal["feature", "v", "kv", "cross-image", "none"]
#: ``check(flat_name, value, num_steps)``: raises :class:`ConfigError` for a bad value.
Check = Callable[[str, Any, int], None]


def setting(default, flat: str, check: Check, normalise: Callable | None = None):
    """A group field: its default, its flat name, its validator, and how a value is
    normalised first (JSON gives lists for tuples; older configs gave booleans)."""
    return field(default=default,
                 metadata={"flat": flat, "check": check, "normalise": normalise})


def checked(cls, values: dict[str, Any], num_steps: int) -> dict[str, Any]:
    """``values`` (every field of group ``cls``, by field name) normalised and validated,
    the step bounds read against ``num_steps``."""
    out = {}
    for f in dataclasses.fields(cls):
        value = values[f.name]
        if f.metadata["normalise"] is not None:
            value = f.metadata["normalise"](value)
        f.metadata["check"](f.metadata["flat"], value, num_steps)
        out[f.name] = value
    return out


def group_values(group) -> dict[str, Any]:
    """A group's fields by field name (shallow: the values themselves)."""
    return {f.name: getattr(group, f.name) for f in dataclasses.fields(group)}


class _Group:
    """Validates (and normalises) every field of a group on construction."""

    def __post_init__(self):
        for name, value in checked(type(self), group_values(self), MAX_STEPS).items():
            object.__setattr__(self, name, value)


# -- validators ----------------------------------------------------------------
def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_float_in(value, lo, hi) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and value == value and lo <= value <= hi)


def _check_int(name, value, lo, hi, hint: str = ""):
    if not _is_int(value) or not lo <= value <= hi:
        raise ConfigError(name, value, hint or f"an integer in [{lo}, {hi}]")


def _int_in(lo: int, hi: int, hint: str = "") -> Check:
    return lambda name, value, steps: _check_int(name, value, lo, hi, hint)


def _float_in(lo: float, hi: float) -> Check:
    def check(name, value, steps):
        if not _is_float_in(value, lo, hi):
            raise ConfigError(name, value, f"a number in [{lo}, {hi}]")
    return check


def _one_of(choices: tuple[str, ...]) -> Check:
    def check(name, value, steps):
        if value not in choices:
            raise ConfigError(name, value, f"one of {', '.join(choices)}")
    return check


def _boolean(name, value, steps):
    if not isinstance(value, bool):
        raise ConfigError(name, value, "true or false")


def _domain(name, value, steps):
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(name, value, "a non-empty word such as 'bird'")


def _prompt_template(name, value, steps):
    if not isinstance(value, str) or "{domain}" not in value:
        raise ConfigError(name, value, "a string containing '{domain}'")
    try:  # other placeholders or stray braces would fail later, at prompt time
        value.format(domain="x")
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise ConfigError(name, value,
                          "a string whose only placeholder is '{domain}' (write other "
                          f"braces as '{{{{' and '}}}}'; {type(exc).__name__}: {exc})"
                          ) from None


def _skip_steps(name, value, steps):
    _check_int(name, value, 0, steps - 1,
               hint=f"an integer in [0, {steps - 1}]: skip_steps must leave at least one of "
               f"the {steps} steps")


def _step_range(name, value, steps):
    ok = (isinstance(value, tuple) and len(value) == 2 and all(_is_int(v) for v in value)
          and 0 <= value[0] <= value[1] <= steps)
    if not ok:
        raise ConfigError(name, value,
                          f"a pair (start, end) of integers with 0 <= start <= end <= {steps}")


def _scale_pair(name, value, steps):
    if not (isinstance(value, tuple) and len(value) == 2
            and all(_is_float_in(v, 0.0, 100.0) for v in value)):
        raise ConfigError(name, value,
                          "a pair (start, end) of scales, each a number in [0.0, 100.0]")


def _layer_names(name, value, steps):
    if not (isinstance(value, tuple) and all(isinstance(n, str) for n in value)):
        raise ConfigError(name, value, "a list of attention processor names (strings)")


def _step_list(name, value, steps):
    if not isinstance(value, tuple):
        raise ConfigError(name, value, f"a list of step indices in [0, {steps}]")
    if not all(_is_int(s) and 0 <= s <= steps for s in value):
        raise ConfigError(name, value,
                          f"a list of step indices, integers in [0, {steps}]")


def _tuple(value):
    """Tuples survive JSON round trips as lists: normalise them."""
    return tuple(value) if isinstance(value, list) else value


def _freeu_mode(value):
    """``True`` / ``False`` (older configs) stand for the default FreeU and for off."""
    if isinstance(value, bool):
        return "reference" if value else "off"
    return value


# -- the groups ----------------------------------------------------------------
@dataclass(frozen=True)
class InversionConfig(_Group):
    """What determines an inversion (and therefore its cache key)."""

    num_steps: int = setting(100, "num_steps", _int_in(1, MAX_STEPS))
    cfg_scale: float = setting(3.5, "inversion_cfg", _float_in(0.0, 100.0))
    prompt_template: str = setting("A photo of a {domain}", "prompt_template",
                                   _prompt_template)
    domain: str = setting("object", "domain", _domain)
    seed: int = setting(0, "seed", _int_in(0, 2**63 - 1))
    freeu: str = setting("reference", "freeu", _one_of(FREEU_MODES), _freeu_mode)

    @property
    def prompt(self) -> str:
        return self.prompt_template.format(domain=self.domain.strip())


@dataclass(frozen=True)
class DenoisingConfig(_Group):
    """Where denoising starts, how its step counter reads the ranges (:data:`SCHEDULES`)
    and how masks reach the layer grids (:data:`MASK_RESIZE_MODES`)."""

    skip_steps: int = setting(32, "skip_steps", _skip_steps)
    schedule: str = setting("published", "schedule", _one_of(SCHEDULES))
    mask_resize: str = setting("reference", "mask_resize", _one_of(MASK_RESIZE_MODES))


@dataclass(frozen=True)
class GuidanceConfig(_Group):
    """Classifier-free guidance of the denoising (the Cross-Image baseline has its own
    schedule, :class:`CrossImageConfig`)."""

    scale: float = setting(2.5, "guidance", _float_in(0.0, 100.0))


@dataclass(frozen=True)
class InjectionConfig(_Group):
    """What the injected layers take from the appearance, on which steps, matched how,
    and the structure refresh (every ``refresh_every``-th counter below
    ``refresh_until``; 0 turns it off)."""

    mode: Injection = setting("feature", "injection", _one_of(INJECTION_MODES))
    correspondence: Literal["match", "dift"] = setting(
        "match", "correspondence", _one_of(CORRESPONDENCE_SOURCES))
    feat_range: tuple[int, int] = setting((10, 70), "feat_range", _step_range, _tuple)
    refresh_every: int = setting(
        5, "refresh_every",
        _int_in(0, MAX_STEPS, f"an integer in [0, {MAX_STEPS}]; 0 turns the structure "
                "refresh off"))
    refresh_until: int = setting(40, "refresh_until", _int_in(0, MAX_STEPS))


@dataclass(frozen=True)
class AdainConfig(_Group):
    """Masked AdaIN on the latents after the DDPM step, on the steps of ``range``."""

    enabled: bool = setting(True, "adain", _boolean)
    range: tuple[int, int] = setting((50, 100), "adain_range", _step_range, _tuple)


@dataclass(frozen=True)
class CrossImageConfig(_Group):
    """The Cross-Image Attention baseline (``injection="cross-image"``): its attention
    contrast, its guidance schedule (linear from start to end) and the first step of
    its AdaIN."""

    contrast: float = setting(1.67, "cross_image_contrast", _float_in(0.0, 100.0))
    guidance: tuple[float, float] = setting((3.5, 1.75), "cross_image_guidance",
                                            _scale_pair, _tuple)
    adain_start: int = setting(20, "cross_image_adain_start", _int_in(0, MAX_STEPS))


@dataclass(frozen=True)
class DiftConfig(_Group):
    """The DIFT correspondence source (``correspondence="dift"``): timestep, UNet
    up-block and ensemble size of the featurizer."""

    timestep: int = setting(261, "dift_timestep", _int_in(0, 999))
    block: int = setting(1, "dift_block", _int_in(0, 16))
    ensemble: int = setting(8, "dift_ensemble", _int_in(1, 256))


@dataclass(frozen=True)
class RecordingConfig(_Group):
    """What a run records for the viewers (costly: explicit attention weights)."""

    matches: bool = setting(False, "record_matches", _boolean)
    attention_layers: tuple[str, ...] = setting((), "record_attention_layers", _layer_names,
                                                _tuple)
    attention_steps: tuple[int, ...] = setting((), "record_attention_steps", _step_list,
                                               _tuple)
