"""Which fields differ between the configs of several runs."""

from __future__ import annotations

from typing import Sequence

from ..method.config import TransferConfig


def config_diff(configs: Sequence[TransferConfig]) -> dict[str, list]:
    """Fields whose values differ between configs, with each config's value."""
    dicts = [c.to_dict() for c in configs]
    if not dicts:
        return {}
    return {k: [d[k] for d in dicts] for k in dicts[0]
            if any(d[k] != dicts[0][k] for d in dicts[1:])}
