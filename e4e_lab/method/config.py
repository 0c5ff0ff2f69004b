"""The one configuration object of an appearance transfer.

Defaults follow the published Eye-for-an-eye code (see ``docs/method.md``):
100 scheduler steps of which the first 32 are skipped, guidance 2.5, feature
injection on denoising steps [10, 70), masked AdaIN on [50, 100), a structure
refresh every 5th step below 40, inversion with CFG 3.5.

Step indices ``i`` count the denoising steps from 0 (so with 100 steps and 32
skipped, ``i`` runs over 0..67). Ranges are half-open ``[start, end)`` and may
reach up to ``num_steps`` (an end past the last denoising step means "to the
end"), as in the reference's defaults. The thresholds ``refresh_until`` and
``cross_image_adain_start`` (and the period ``refresh_every``) may exceed the
step count (up to ``MAX_STEPS``): a short schedule does not have to lower them.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ConfigError, E4ELabWarning

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


@dataclass(frozen=True)
class FreeUConfig:
    """FreeU's factors: backbone scales ``b1``/``b2`` and low-frequency scales ``s1``/``s2``
    (the published code's values for SD 1.5; see :mod:`e4e_lab.models.freeu`)."""

    s1: float = 0.9
    s2: float = 0.2
    b1: float = 1.2
    b2: float = 1.4


@dataclass(frozen=True)
class InversionConfig:
    """What determines an inversion (and therefore its cache key)."""

    num_steps: int = 100
    cfg_scale: float = 3.5
    prompt_template: str = "A photo of a {domain}"
    domain: str = "object"
    seed: int = 0
    freeu: str = "reference"

    def __post_init__(self):
        object.__setattr__(self, "freeu", _freeu_mode(self.freeu))
        _check_int("num_steps", self.num_steps, 1, MAX_STEPS)
        _check_float("cfg_scale", self.cfg_scale, 0.0, 100.0)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_choice("freeu", self.freeu, FREEU_MODES)
        if not isinstance(self.domain, str) or not self.domain.strip():
            raise ConfigError("domain", self.domain, "a non-empty word such as 'bird'")
        if not isinstance(self.prompt_template, str) or "{domain}" not in self.prompt_template:
            raise ConfigError(
                "prompt_template", self.prompt_template, "a string containing '{domain}'"
            )
        try:  # other placeholders or stray braces would fail later, at prompt time
            self.prompt_template.format(domain="x")
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise ConfigError("prompt_template", self.prompt_template,
                              "a string whose only placeholder is '{domain}' (write other "
                              f"braces as '{{{{' and '}}}}'; {type(exc).__name__}: {exc})"
                              ) from None

    @property
    def prompt(self) -> str:
        return self.prompt_template.format(domain=self.domain.strip())


@dataclass(frozen=True)
class TransferConfig:
    """Every knob of one appearance transfer, validated on construction."""

    # inversion (shared by both images)
    num_steps: int = 100
    inversion_cfg: float = 3.5
    prompt_template: str = "A photo of a {domain}"
    domain: str = "object"
    seed: int = 0
    freeu: str = "reference"
    # denoising
    skip_steps: int = 32
    guidance: float = 2.5
    injection: Injection = "feature"
    correspondence: Literal["match", "dift"] = "match"
    feat_range: tuple[int, int] = (10, 70)
    adain: bool = True
    adain_range: tuple[int, int] = (50, 100)
    refresh_every: int = 5
    refresh_until: int = 40
    schedule: str = "published"
    mask_resize: str = "reference"
    # Cross-Image Attention baseline (injection="cross-image")
    cross_image_contrast: float = 1.67
    cross_image_guidance: tuple[float, float] = (3.5, 1.75)
    cross_image_adain_start: int = 20
    # DIFT correspondence source (correspondence="dift")
    dift_timestep: int = 261
    dift_block: int = 1
    dift_ensemble: int = 8
    # recording, for the viewers (costly: explicit attention weights)
    record_matches: bool = False
    record_attention_layers: tuple[str, ...] = ()
    record_attention_steps: tuple[int, ...] = ()

    def __post_init__(self):
        # tuples survive JSON round trips as lists: normalise them
        for name in ("feat_range", "adain_range", "cross_image_guidance",
                     "record_attention_layers", "record_attention_steps"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "freeu", _freeu_mode(self.freeu))
        # named as here, not as InversionConfig's cfg_scale, in the error message
        _check_float("inversion_cfg", self.inversion_cfg, 0.0, 100.0)
        self.inversion  # validates the inversion fields
        _check_int("skip_steps", self.skip_steps, 0, self.num_steps - 1,
                   hint=f"an integer in [0, {self.num_steps - 1}]: skip_steps must leave at "
                   f"least one of the {self.num_steps} steps")
        _check_float("guidance", self.guidance, 0.0, 100.0)
        for name in ("adain", "record_matches"):
            _check_bool(name, getattr(self, name))
        _check_choice("injection", self.injection, INJECTION_MODES)
        _check_choice("correspondence", self.correspondence, CORRESPONDENCE_SOURCES)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("mask_resize", self.mask_resize, MASK_RESIZE_MODES)
        for name in ("feat_range", "adain_range"):
            _check_range(name, getattr(self, name), self.num_steps)
        _check_int("refresh_every", self.refresh_every, 0, MAX_STEPS,
                   hint=f"an integer in [0, {MAX_STEPS}]; 0 turns the structure refresh off")
        _check_int("refresh_until", self.refresh_until, 0, MAX_STEPS)
        _check_float("cross_image_contrast", self.cross_image_contrast, 0.0, 100.0)
        g = self.cross_image_guidance
        if not (isinstance(g, tuple) and len(g) == 2 and all(_is_float_in(v, 0.0, 100.0)
                                                             for v in g)):
            raise ConfigError("cross_image_guidance", g,
                              "a pair (start, end) of scales, each a number in [0.0, 100.0]")
        _check_int("cross_image_adain_start", self.cross_image_adain_start, 0, MAX_STEPS)
        _check_int("dift_timestep", self.dift_timestep, 0, 999)
        _check_int("dift_block", self.dift_block, 0, 16)
        _check_int("dift_ensemble", self.dift_ensemble, 1, 256)
        layers = self.record_attention_layers
        if not (isinstance(layers, tuple) and all(isinstance(n, str) for n in layers)):
            raise ConfigError("record_attention_layers", layers,
                              "a list of attention processor names (strings)")
        steps = self.record_attention_steps
        if not isinstance(steps, tuple):
            raise ConfigError("record_attention_steps", steps,
                              f"a list of step indices in [0, {self.num_steps}]")
        if not all(_is_int(s) and 0 <= s <= self.num_steps for s in steps):
            raise ConfigError("record_attention_steps", steps,
                              f"a list of step indices, integers in [0, {self.num_steps}]")
        for message in self.unreached():
            warnings.warn(message, E4ELabWarning, stacklevel=3)  # where it was constructed

    # -- derived views -------------------------------------------------------
    @property
    def inversion(self) -> InversionConfig:
        return InversionConfig(
            num_steps=self.num_steps, cfg_scale=self.inversion_cfg,
            prompt_template=self.prompt_template, domain=self.domain, seed=self.seed,
            freeu=self.freeu,
        )

    @property
    def denoising_steps(self) -> int:
        return self.num_steps - self.skip_steps

    def counter(self, i: int) -> int:
        """The step number that the range tests of UNet call ``i`` compare against.

        The published code sets its counter in the callback *after* each step, so the
        UNet call of denoising step ``i`` sees ``i - 1`` (and step 0 sees 0). With
        ``schedule="exact"`` the counter is ``i`` itself.
        """
        return max(i - 1, 0) if self.schedule == "published" else i

    def injects_at(self, i: int) -> bool:
        """Whether denoising step ``i`` rearranges features (or attends across images)."""
        if self.injection == "none":
            return False
        return self.feat_range[0] <= self.counter(i) < self.feat_range[1]

    def refreshes_at(self, i: int) -> bool:
        """Whether step ``i`` takes the structure's features instead of matched ones."""
        c = self.counter(i)
        return (self.injects_at(i) and self.refresh_every > 0 and c % self.refresh_every == 0
                and c < self.refresh_until)

    def adain_at(self, i: int) -> bool:
        """Whether masked AdaIN follows the DDPM step of denoising step ``i``.

        The published callback runs after step ``i`` with ``i`` itself and tests
        ``start - 1 <= i < end + 1``: one step wider than the range at each end.
        """
        if not self.adain:
            return False
        if self.injection == "cross-image":
            return i >= self.cross_image_adain_start
        start, end = self.adain_range
        if self.schedule == "published":
            start, end = start - 1, end + 1
        return start <= i < end

    def unreached(self) -> list[str]:
        """What the config asks for but no denoising step of its schedule does: the
        feature range (when injecting) and the AdaIN range (when AdaIN is on), read
        through :meth:`counter` (the published schedule's one-step lag included).
        Constructing such a config warns (:class:`~e4e_lab.errors.E4ELabWarning`)."""
        n, out = self.denoising_steps, []
        lead = f"the {n} denoising steps ({self.num_steps} steps, {self.skip_steps} skipped)"
        published = self.schedule == "published"
        if self.injection != "none" and not any(self.injects_at(i) for i in range(n)):
            out.append(f"feat_range {self.feat_range} reaches no denoising step: {lead} see "
                       f"step counters {self.counter(0)}..{self.counter(n - 1)}"
                       + (" (the published schedule lags one step)" if published else "")
                       + ", so nothing is injected; move the range onto them (or use "
                       "injection 'none' to turn injection off)")
        if self.adain and not any(self.adain_at(i) for i in range(n)):
            cross = self.injection == "cross-image"
            name = "cross_image_adain_start" if cross else "adain_range"
            out.append(f"{name} {getattr(self, name)} reaches no denoising step: {lead} are "
                       f"numbered 0..{n - 1}"
                       + (" (the published schedule widens the AdaIN range by one at each "
                          "end)" if published and not cross else "")
                       + ", so AdaIN never runs; move it onto them (or turn AdaIN off, "
                       "adain=False / --no-adain)")
        idle = [s for s in self.record_attention_steps if s >= n or not self.injects_at(s)]
        if self.record_attention_layers and idle:
            out.append(f"record_attention_steps {idle} are not injecting steps of {lead}, and "
                       "attention is recorded only where it is injected: pick steps from "
                       f"{self.steps()['match'] + self.steps()['refresh']}")
        return out

    def steps(self) -> dict[str, list[int]]:
        """The denoising steps of each kind of work: ``match`` (matched injection),
        ``refresh`` (structure features) and ``adain``."""
        idx = range(self.denoising_steps)
        return {"match": [i for i in idx if self.injects_at(i) and not self.refreshes_at(i)],
                "refresh": [i for i in idx if self.refreshes_at(i)],
                "adain": [i for i in idx if self.adain_at(i)]}

    def guidance_at(self, i: int) -> float:
        """Guidance scale at step ``i`` (linear decay for the Cross-Image baseline)."""
        if self.injection != "cross-image":
            return self.guidance
        start, end = self.cross_image_guidance
        n = max(self.denoising_steps - 1, 1)
        return start + (end - start) * min(i, n) / n

    # -- serialisation -------------------------------------------------------
    def replace(self, **changes: Any) -> "TransferConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TransferConfig":
        if not isinstance(data, dict):
            raise ConfigError("config", type(data).__name__, "a JSON object of config fields")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(unknown[0], data[unknown[0]],
                              f"unknown field; known fields are {', '.join(sorted(known))}")
        return cls(**data)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(name, value, lo, hi, hint: str = ""):
    if not _is_int(value) or not lo <= value <= hi:
        raise ConfigError(name, value, hint or f"an integer in [{lo}, {hi}]")


def _freeu_mode(value):
    """``True`` / ``False`` (older configs) stand for the default FreeU and for off."""
    if isinstance(value, bool):
        return "reference" if value else "off"
    return value


def _check_choice(name, value, choices):
    if value not in choices:
        raise ConfigError(name, value, f"one of {', '.join(choices)}")


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise ConfigError(name, value, "true or false")


def _is_float_in(value, lo, hi) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and value == value and lo <= value <= hi)


def _check_float(name, value, lo, hi):
    if not _is_float_in(value, lo, hi):
        raise ConfigError(name, value, f"a number in [{lo}, {hi}]")


def _check_range(name, value, num_steps):
    ok = (isinstance(value, tuple) and len(value) == 2 and all(_is_int(v) for v in value)
          and 0 <= value[0] <= value[1] <= num_steps)
    if not ok:
        raise ConfigError(name, value,
                          f"a pair (start, end) of integers with 0 <= start <= end <= {num_steps}")
