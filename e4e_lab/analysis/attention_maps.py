"""Attention maps: where one query position of a self-attention layer looks, from the
attention probabilities a run recorded, and in which image's layout its keys lie."""

from __future__ import annotations

import torch

from .grids import Grid


ATTENTION_BRANCHES = ("output", "plain", "appearance", "structure")


def attention_map(probs: torch.Tensor, query_cell: int, grid: Grid,
                  head: int | None = None) -> torch.Tensor:
    """(rows, cols) attention of one query position over the keys of a self-attention
    layer; ``probs`` is (heads, N, N); ``head=None`` averages the heads."""
    row = probs[:, query_cell].float()
    row = row.mean(0) if head is None else row[head]
    return row.reshape(grid)


def key_layout(injection: str, branch: str) -> str:
    """Which image's layout the keys of ``branch`` follow: ``"appearance"`` or
    ``"structure"`` (the output is built in the structure's layout; under the
    Cross-Image baseline the output attends to the appearance image's positions)."""
    if branch == "appearance" or (branch == "output" and injection == "cross-image"):
        return "appearance"
    return "structure"


def query_layout(branch: str) -> str:
    return "appearance" if branch == "appearance" else "structure"


def attention_entropy(weights: torch.Tensor) -> float:
    """Entropy (nats) of an attention row: low = focused, log(N) = uniform."""
    p = weights.flatten().float().clamp_min(0)
    p = p / p.sum().clamp_min(1e-12)
    return float(-(p * p.clamp_min(1e-12).log()).sum())
