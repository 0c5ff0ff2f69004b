"""Per-image random streams derived from the run seed and the image's content.

The published code draws each image's inversion noise from one global generator, one
image after the other, so the appearance and structure images get independent noise.
Drawing both from a generator re-seeded with the same seed would give them *identical*
noise, and matching between two such trajectories collapses towards "same position"
early in denoising. Deriving the seed from (run seed, image digest, purpose) keeps the
draws independent across images, reproducible for one image whatever it is batched
with (so cached inversions stay valid), and different for each use of an image.
"""

from __future__ import annotations

import hashlib

import torch


def derived_seed(seed: int, digest: str, purpose: str) -> int:
    """A 63-bit seed from the run ``seed``, an image ``digest`` and a ``purpose`` label."""
    h = hashlib.sha256(f"e4e-lab:{purpose}:{seed}:{digest}".encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def image_generator(seed: int, digest: str, purpose: str) -> torch.Generator:
    """A CPU generator for one image's draws (CPU so the draw is the same on every device)."""
    return torch.Generator("cpu").manual_seed(derived_seed(seed, digest, purpose))
