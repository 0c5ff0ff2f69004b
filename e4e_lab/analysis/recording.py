"""Recording a transfer for the viewers: its matches and the features they came from.

:class:`FeatureRecorder` is a :class:`~e4e_lab.method.recording.RunRecorder` that also
keeps the normalised hidden states entering the injected self-attention layers, for
chosen layers and steps, so that a recorded match can be explained by its heatmap;
:func:`match_changes` says how settled the correspondence is from step to step.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterable

import torch

from ..method.config import TransferConfig
from ..method.correspondence import CorrespondenceField
from ..method.layers import BatchLayout, injected_layers
from ..method.recording import RunRecorder
from .grids import short_layer_name
from .lookup import FeatureLookup


@dataclass
class FeatureRecorder(RunRecorder):
    """A :class:`RunRecorder` that also keeps the features matching used.

    At each match of a wanted (layer, step) it stores the normalised hidden states that
    enter self-attention for the output (queries) and appearance (candidates) rows, as
    (N, C) CPU tensors in ``features[(layer, step)]``. They are taken by a forward
    pre-hook on each injected ``attn1`` module, installed by :meth:`attached`; the
    transfer's math is untouched. ``feature_steps`` empty means every matched step
    (mind the memory at 512 px: about 10 MB per 64x64 layer and step in float32).
    """

    feature_layers: tuple[str, ...] = ("*",)
    feature_steps: tuple[int, ...] = ()
    features: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict)
    _pending: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def wants_features(self, layer: str, step: int) -> bool:
        return ((layer in self.feature_layers or "*" in self.feature_layers)
                and (not self.feature_steps or step in self.feature_steps))

    def on_matches(self, layer: str, step: int, fld: CorrespondenceField) -> None:
        super().on_matches(layer, step, fld)
        hidden = self._pending.pop(layer, None)
        if hidden is None or not self.wants_features(layer, step):
            return
        if hidden.shape[0] not in (3, 4):
            return
        lay = BatchLayout.for_guidance(hidden.shape[0] == 4)
        self.features[(layer, step)] = (hidden[lay.output].detach().cpu().clone(),
                                        hidden[lay.appearance].detach().cpu().clone())

    @contextlib.contextmanager
    def attached(self, unet):
        """Install the pre-hooks on the injected layers' attention modules for a run."""
        modules = dict(unet.named_modules())
        handles = []

        def hook_for(layer):
            def hook(_module, args, kwargs):
                hidden = args[0] if args else kwargs.get("hidden_states")
                if hidden is not None:
                    self._pending[layer] = hidden

            return hook

        for layer in injected_layers(unet):
            module = modules.get(layer.removesuffix(".processor"))
            if module is not None and (layer in self.feature_layers or "*" in self.feature_layers):
                handles.append(module.register_forward_pre_hook(hook_for(layer), with_kwargs=True))
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
            self._pending.clear()

    def lookup(self, layer: str, step: int, target_mask: torch.Tensor | None = None,
               ref_mask: torch.Tensor | None = None) -> FeatureLookup | None:
        """The recorded features at (layer, step) as a lookup, or None if not recorded."""
        if (layer, step) not in self.features:
            return None
        grid = self.grids[layer]
        target, ref = self.features[(layer, step)]
        return FeatureLookup.from_rows(target, ref, grid, grid, target_mask, ref_mask,
                                       source=f"{short_layer_name(layer)}, step {step}")


def transfer_with_features(lab, pair, config: TransferConfig,
                           feature_steps: Iterable[int] = (),
                           feature_layers: Iterable[str] = ("*",), **kwargs):
    """``lab.transfer`` recording matches at every step and features at ``feature_steps``
    (every matched step if empty). ``result.recorder`` is the :class:`FeatureRecorder`."""
    rec = FeatureRecorder(record_matches=True,
                          attention_layers=tuple(config.record_attention_layers),
                          attention_steps=tuple(config.record_attention_steps),
                          feature_layers=tuple(feature_layers),
                          feature_steps=tuple(feature_steps))
    # hold the model before hooking it: another thread's UNet pass must not be recorded
    with lab.models.in_use(), rec.attached(lab.models.unet):
        return lab.transfer(pair, config, recorder=rec, **kwargs)


def recorded_layers(recorder) -> list[str]:
    """Layers with recorded matches, in recording order."""
    return list(dict.fromkeys(layer for layer, _ in recorder.matches))


def recorded_steps(recorder, layer: str) -> list[int]:
    return sorted(step for lay, step in recorder.matches if lay == layer)


def match_changes(recorder, layer: str) -> list[tuple[int, float]]:
    """(step, fraction of target cells whose match differs from the previous recorded
    step), over the cells matched at both steps: how settled the correspondence is."""
    steps = recorded_steps(recorder, layer)
    out = []
    for prev, step in zip(steps, steps[1:]):
        a, b = recorder.matches[(layer, prev)].index, recorder.matches[(layer, step)].index
        both = (a >= 0) & (b >= 0)
        n = int(both.sum())
        out.append((step, float((a[both] != b[both]).sum()) / n if n else 0.0))
    return out
