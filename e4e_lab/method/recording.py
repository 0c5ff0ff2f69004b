"""What a run records for the viewers: injection calls, matches and attention maps.

The attention processors call a :class:`Recorder`'s hooks; recording never changes
the result. :class:`RunRecorder` keeps what the config asked for.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..errors import E4ELabWarning
from .config import TransferConfig
from .correspondence import CorrespondenceField


class Recorder(Protocol):
    """Hooks called by the processor; all optional to implement meaningfully."""

    def wants_attention(self, layer: str, step: int) -> bool: ...

    def on_injection(self, layer: str, step: int, kind: str) -> None: ...

    def on_matches(self, layer: str, step: int, field: CorrespondenceField) -> None: ...

    def on_attention(self, layer: str, step: int, probs: dict[str, torch.Tensor],
                     grid: tuple[int, int]) -> None: ...


@dataclass
class RunRecorder:
    """Keeps what a run was asked to record: calls, matches and attention maps.

    ``calls`` lists every (layer, step, kind) where the processor changed something
    (kind is ``match``, ``refresh`` or ``cross``). ``matches[(layer, step)]`` holds
    correspondence fields (on the CPU) when ``record_matches``; ``attention`` holds
    float16 CPU attention weights per branch for the requested layers and steps.
    """

    record_matches: bool = False
    attention_layers: tuple[str, ...] = ()
    attention_steps: tuple[int, ...] = ()
    calls: list[tuple[str, int, str]] = field(default_factory=list)
    matches: dict[tuple[str, int], CorrespondenceField] = field(default_factory=dict)
    attention: dict[tuple[str, int], dict[str, torch.Tensor]] = field(default_factory=dict)
    grids: dict[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: TransferConfig) -> "RunRecorder":
        return cls(config.record_matches, tuple(config.record_attention_layers),
                   tuple(config.record_attention_steps))

    def wants_attention(self, layer: str, step: int) -> bool:
        return ((layer in self.attention_layers or "*" in self.attention_layers)
                and (not self.attention_steps or step in self.attention_steps))

    def on_injection(self, layer: str, step: int, kind: str) -> None:
        self.calls.append((layer, step, kind))

    def check_layers(self, known) -> list[str]:
        """Warn (:class:`~e4e_lab.errors.E4ELabWarning`) about ``attention_layers`` that
        are none of the ``known`` processor names (they would record nothing); returns
        them. Called when the injected layers are installed, before the first step."""
        known = set(known)
        unknown = [n for n in self.attention_layers if n != "*" and n not in known]
        if unknown:
            sample = ", ".join(sorted(known)[:3]) + (", ..." if len(known) > 3 else "")
            warnings.warn(f"record_attention_layers names {unknown} that are not injected "
                          f"attention layers of this model, so nothing is recorded for them; "
                          f"use '*' or names such as {sample}", E4ELabWarning, stacklevel=2)
        return unknown

    def on_matches(self, layer: str, step: int, field: CorrespondenceField) -> None:
        self.grids[layer] = field.target_shape
        if self.record_matches:
            self.matches[(layer, step)] = CorrespondenceField(
                field.index.cpu(), field.score.cpu(), field.target_shape, field.ref_shape)

    def on_attention(self, layer: str, step: int, probs: dict[str, torch.Tensor],
                     grid: tuple[int, int]) -> None:
        self.grids[layer] = grid
        self.attention[(layer, step)] = {k: v.half().cpu() for k, v in probs.items()}

    @property
    def nbytes(self) -> int:
        """Memory the recorded attention weights and matches hold (bytes): what recording
        costs in memory, which the viewers state."""
        maps = sum(t.nbytes for probs in self.attention.values() for t in probs.values())
        fields = sum(f.index.nbytes + f.score.nbytes for f in self.matches.values())
        return maps + fields
