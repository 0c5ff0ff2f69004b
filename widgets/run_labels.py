"""What a run actually used, in words: for the transfer panel's status and the gallery.

A ``TransferConfig`` holds every knob, but not every knob applies to every injection
mode: the Cross-Image Attention baseline follows its own guidance schedule
(``cross_image_guidance``) and starts masked AdaIN at ``cross_image_adain_start``,
whatever the guidance slider and the AdaIN range say; without injection there is no
matching, so neither the correspondence source nor the feature range applies. The
texts below read the effective values from the config's own schedule methods
(``guidance_at``, ``steps``), so they say what the denoising loop does.
"""

from __future__ import annotations

#: config fields the panel controls, and why each does not apply in a mode
IGNORED_BY_MODE = {
    "cross-image": {
        "guidance": "cross-image follows its own guidance schedule (cross_image_guidance)",
        "adain_range": "cross-image starts masked AdaIN at cross_image_adain_start and keeps "
                       "it to the end",
        "correspondence": "cross-image attends to the whole reference, unmatched",
    },
    "none": {
        "correspondence": "no injection: nothing is matched",
        "feat_range": "no injection: no step injects features",
    },
}


def ignored(config_or_mode) -> dict[str, str]:
    """``{field: why}`` for the panel's fields that the run's mode ignores."""
    mode = config_or_mode if isinstance(config_or_mode, str) else config_or_mode.injection.mode
    return IGNORED_BY_MODE.get(mode, {})


def guidance_text(config) -> str:
    """The guidance the run used: one scale, or the schedule's first and last scale."""
    first, last = config.guidance_at(0), config.guidance_at(config.denoising_steps - 1)
    if first == last:
        return f"g={first:g}"
    return f"g={first:.3g}\u2192{last:.3g} (schedule)"


def adain_text(config) -> str:
    """The denoising steps with masked AdaIN, as the run used them."""
    steps = config.steps()["adain"]
    if not steps:
        return "no adain"
    if config.injection.mode == "cross-image":
        return f"adain from step {steps[0]} (cross-image)"
    return f"adain={list(config.adain_range)}"


def matching_text(config) -> str:
    """How the run found its correspondence ('' when it matches nothing)."""
    if "correspondence" in ignored(config):
        return ""
    return "DIFT field" if config.correspondence == "dift" else "matched features"


def run_summary(config) -> str:
    """One line: mode, matching, guidance, skip, feature range, AdaIN, seed, FreeU."""
    parts = [config.injection.mode]
    if matching_text(config):
        parts.append(matching_text(config))
    parts.append(guidance_text(config))
    parts.append(f"skip={config.skip_steps}")
    if "feat_range" not in ignored(config):
        parts.append(f"feat={list(config.feat_range)}")
    parts += [adain_text(config), f"seed={config.seed}"]
    if config.freeu != "reference":
        parts.append(f"FreeU {config.freeu}")
    return ", ".join(parts)


def effective_params(config) -> dict[str, object]:
    """The panel's fields with the values the run used (ignored ones marked so)."""
    d = config.to_dict()
    out = {}
    for name, value in d.items():
        if name == "guidance":
            out[name] = guidance_text(config)[2:]
        elif name == "adain_range" and config.injection.mode == "cross-image":
            out[name] = adain_text(config)
        elif name in ignored(config):
            out[name] = "n/a"
        else:
            out[name] = value
    return out
