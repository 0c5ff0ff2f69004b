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

A :class:`TransferConfig` is made of the groups of :mod:`.config_groups`
(``config.inversion``, ``config.injection``, ``config.adain``, ...), and is built and
changed with the *flat* names the CLI and ``config.json`` use (:data:`FLAT_FIELDS`)::

    config = TransferConfig(injection="v", adain=False, guidance=3.0, feat_range=(5, 60))
    config.injection.mode, config.adain.enabled, config.guidance.scale  # 'v', False, 3.0
    config.feat_range == config.injection.feat_range                    # a shorthand
    config.replace(skip_steps=10).denoising.skip_steps                  # 10

``injection``, ``adain`` and ``guidance`` name groups; every other flat name is also a
read-only shorthand for its group's field.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, E4ELabWarning
from .config_groups import (CORRESPONDENCE_SOURCES, FIT_MODES, FREEU_MODES, INJECTION_MODES,
                            MASK_RESIZE_MODES, MAX_SIZE, MAX_STEPS, RESAMPLE_MODES, SCHEDULES,
                            AdainConfig, CrossImageConfig, DenoisingConfig, DiftConfig,
                            GuidanceConfig, InjectionConfig, Injection, InversionConfig,
                            RecordingConfig, checked, group_values)

__all__ = [
    "CORRESPONDENCE_SOURCES", "FIT_MODES", "FREEU_MODES", "INJECTION_MODES",
    "MASK_RESIZE_MODES", "MAX_SIZE", "MAX_STEPS", "RESAMPLE_MODES", "SCHEDULES", "FLAT_FIELDS",
    "AdainConfig", "CrossImageConfig", "DenoisingConfig", "DiftConfig", "FreeUConfig",
    "GuidanceConfig", "InjectionConfig", "Injection", "InversionConfig", "RecordingConfig",
    "TransferConfig",
]

#: The flat settings, in the order of ``to_dict()`` and ``config.json``.
FLAT_FIELDS = (
    "num_steps", "inversion_cfg", "prompt_template", "domain", "seed", "freeu",
    "skip_steps", "guidance", "injection", "correspondence", "feat_range", "adain",
    "adain_range", "refresh_every", "refresh_until", "schedule", "mask_resize",
    "cross_image_contrast", "cross_image_guidance", "cross_image_adain_start",
    "dift_timestep", "dift_block", "dift_ensemble",
    "record_matches", "record_attention_layers", "record_attention_steps",
)
_UNKNOWN = f"unknown field; known fields are {', '.join(sorted(FLAT_FIELDS))}"


@dataclass(frozen=True)
class FreeUConfig:
    """FreeU's factors: backbone scales ``b1``/``b2`` and low-frequency scales ``s1``/``s2``
    (the published code's values for SD 1.5; see :mod:`e4e_lab.models.freeu`)."""

    s1: float = 0.9
    s2: float = 0.2
    b1: float = 1.2
    b2: float = 1.4


@dataclass(frozen=True, init=False)
class TransferConfig:
    """Every knob of one appearance transfer, in groups, validated on construction.

    Takes flat settings (:data:`FLAT_FIELDS`) and whole groups as keywords; a flat
    setting given with its group overrides that field of the group.
    """

    # the inversion first: its num_steps bounds the other groups' step ranges
    inversion: InversionConfig = field(default_factory=InversionConfig)
    denoising: DenoisingConfig = field(default_factory=DenoisingConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    injection: InjectionConfig = field(default_factory=InjectionConfig)
    adain: AdainConfig = field(default_factory=AdainConfig)
    cross_image: CrossImageConfig = field(default_factory=CrossImageConfig)
    dift: DiftConfig = field(default_factory=DiftConfig)
    recording: RecordingConfig = field(default_factory=RecordingConfig)

    def __init__(self, **settings: Any):
        self._build(_assemble(_DEFAULTS, settings))

    def _build(self, groups: dict[str, Any]) -> None:
        for name, group in groups.items():
            object.__setattr__(self, name, group)
        for message in self.unreached():  # 3: where it was constructed or replaced
            warnings.warn(message, E4ELabWarning, stacklevel=3)

    # -- derived views -------------------------------------------------------
    @property
    def denoising_steps(self) -> int:
        return self.inversion.num_steps - self.denoising.skip_steps

    def counter(self, i: int) -> int:
        """The step number that the range tests of UNet call ``i`` compare against.

        The published code sets its counter in the callback *after* each step, so the
        UNet call of denoising step ``i`` sees ``i - 1`` (and step 0 sees 0). With
        ``schedule="exact"`` the counter is ``i`` itself.
        """
        return max(i - 1, 0) if self.denoising.schedule == "published" else i

    def injects_at(self, i: int) -> bool:
        """Whether denoising step ``i`` rearranges features (or attends across images)."""
        if self.injection.mode == "none":
            return False
        start, end = self.injection.feat_range
        return start <= self.counter(i) < end

    def refreshes_at(self, i: int) -> bool:
        """Whether step ``i`` takes the structure's features instead of matched ones."""
        c, every = self.counter(i), self.injection.refresh_every
        return (self.injects_at(i) and every > 0 and c % every == 0
                and c < self.injection.refresh_until)

    def adain_at(self, i: int) -> bool:
        """Whether masked AdaIN follows the DDPM step of denoising step ``i``.

        The published callback runs after step ``i`` with ``i`` itself and tests
        ``start - 1 <= i < end + 1``: one step wider than the range at each end.
        """
        if not self.adain.enabled:
            return False
        if self.injection.mode == "cross-image":
            return i >= self.cross_image.adain_start
        start, end = self.adain.range
        if self.denoising.schedule == "published":
            start, end = start - 1, end + 1
        return start <= i < end

    def unreached(self) -> list[str]:
        """What the config asks for but no denoising step of its schedule does: the
        feature range (when injecting) and the AdaIN range (when AdaIN is on), read
        through :meth:`counter` (the published schedule's one-step lag included).
        Constructing such a config warns (:class:`~e4e_lab.errors.E4ELabWarning`)."""
        n, out = self.denoising_steps, []
        lead = (f"the {n} denoising steps ({self.inversion.num_steps} steps, "
                f"{self.denoising.skip_steps} skipped)")
        published = self.denoising.schedule == "published"
        if self.injection.mode != "none" and not any(self.injects_at(i) for i in range(n)):
            out.append(f"feat_range {self.injection.feat_range} reaches no denoising step: "
                       f"{lead} see step counters {self.counter(0)}..{self.counter(n - 1)}"
                       + (" (the published schedule lags one step)" if published else "")
                       + ", so nothing is injected; move the range onto them (or use "
                       "injection 'none' to turn injection off)")
        if self.adain.enabled and not any(self.adain_at(i) for i in range(n)):
            cross = self.injection.mode == "cross-image"
            name = "cross_image_adain_start" if cross else "adain_range"
            out.append(f"{name} {self.get(name)} reaches no denoising step: {lead} are "
                       f"numbered 0..{n - 1}"
                       + (" (the published schedule widens the AdaIN range by one at each "
                          "end)" if published and not cross else "")
                       + ", so AdaIN never runs; move it onto them (or turn AdaIN off, "
                       "adain=False / --no-adain)")
        rec = self.recording
        idle = [s for s in rec.attention_steps if s >= n or not self.injects_at(s)]
        if rec.attention_layers and idle:
            steps = self.steps()
            out.append(f"record_attention_steps {idle} are not injecting steps of {lead}, and "
                       "attention is recorded only where it is injected: pick steps from "
                       f"{steps['match'] + steps['refresh']}")
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
        if self.injection.mode != "cross-image":
            return self.guidance.scale
        start, end = self.cross_image.guidance
        n = max(self.denoising_steps - 1, 1)
        return start + (end - start) * min(i, n) / n

    # -- flat settings and serialisation -------------------------------------
    def get(self, flat: str) -> Any:
        """The value of the flat setting ``flat`` (``get("injection")`` is the mode)."""
        if flat not in _WHERE:
            raise ConfigError(flat, None, _UNKNOWN)
        group, name = _WHERE[flat]
        return getattr(getattr(self, group), name)

    def replace(self, **changes: Any) -> "TransferConfig":
        """A copy with flat settings (or whole groups) changed; each flat setting lands
        in its group: ``replace(skip_steps=10)`` changes ``denoising.skip_steps``."""
        new = object.__new__(type(self))
        new._build(_assemble({g: getattr(self, g) for g in _GROUPS}, changes))
        return new

    def to_dict(self) -> dict[str, Any]:
        """The flat settings, in the order of :data:`FLAT_FIELDS`."""
        return {flat: self.get(flat) for flat in FLAT_FIELDS}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TransferConfig":
        if not isinstance(data, dict):
            raise ConfigError("config", type(data).__name__, "a JSON object of config fields")
        unknown = sorted(set(data) - set(FLAT_FIELDS))
        if unknown:
            raise ConfigError(unknown[0], data[unknown[0]], _UNKNOWN)
        return cls(**data)


#: The group classes by attribute name, in the order of the fields.
_GROUPS: dict[str, type] = {f.name: f.default_factory
                            for f in dataclasses.fields(TransferConfig)}
#: Where each flat setting lives: flat name -> (group, field).
_WHERE: dict[str, tuple[str, str]] = {
    f.metadata["flat"]: (group, f.name)
    for group, cls in _GROUPS.items() for f in dataclasses.fields(cls)}
_DEFAULTS = {name: cls() for name, cls in _GROUPS.items()}


def _shorthand(flat: str, group: str, name: str) -> property:
    return property(lambda self: getattr(getattr(self, group), name),
                    doc=f"``{group}.{name}``: the setting ``{flat}``, read-only")


for _flat, (_group, _name) in _WHERE.items():
    if _flat not in _GROUPS:  # injection, adain and guidance name their groups
        setattr(TransferConfig, _flat, _shorthand(_flat, _group, _name))
del _flat, _group, _name


def _assemble(base: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """The groups of ``base`` with ``settings`` applied: a group given whole replaces
    its base, then flat settings override their fields; every field is validated, the
    step bounds against the resulting ``num_steps``."""
    given, flat = dict(base), {}
    for key, value in settings.items():
        cls = _GROUPS.get(key)
        if cls is not None and isinstance(value, cls):
            given[key] = value
        elif key in _WHERE:
            flat[key] = value
        elif cls is not None:
            raise ConfigError(key, value, f"the group {cls.__name__}(...), or its "
                              "settings as flat keywords")
        else:
            raise TypeError(f"TransferConfig got an unexpected keyword argument '{key}'")
    groups, num_steps = {}, MAX_STEPS
    for name, cls in _GROUPS.items():
        changed = {_WHERE[k][1]: v for k, v in flat.items() if _WHERE[k][0] == name}
        values = checked(cls, group_values(given[name]) | changed, num_steps)
        groups[name] = cls(**values) if changed else given[name]
        if name == "inversion":
            num_steps = groups[name].num_steps
    return groups
