"""Training data for the toy model: creatures drawn on the fly from the training seeds.

:class:`CreatureStream` is an endless, species-balanced, seeded stream of
:func:`e4e_lab.toy.world.sample` creatures (training seeds only); :func:`make_loader`
batches it (optionally in worker processes); :func:`images_to_tensor` and
:func:`random_crops` turn a batch into what the networks take.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from . import world


def _draw_training_seed(rng: np.random.Generator) -> int:
    """A seed drawn uniformly from ``world.TRAIN_SEEDS`` (never a held-out seed)."""
    return int(world.TRAIN_SEEDS[int(rng.integers(len(world.TRAIN_SEEDS)))])


class CreatureStream(IterableDataset):
    """An endless, species-balanced stream of toy-world creatures.

    Each item is ``{"image": (H, W, 3) uint8 tensor, "prompt": str, "seed": int}``. The
    stream is a pure function of ``key`` (run seed, phase, first step) and the worker
    index: every DataLoader worker draws its own seeds, and a resumed phase draws a new
    but reproducible stream. Species cycle in order (offset per worker), so every batch a
    worker assembles is balanced to within one creature.
    """

    def __init__(self, key: tuple[int, ...], size: int) -> None:
        super().__init__()
        self.key = tuple(int(k) for k in key)
        self.size = int(size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        rng = np.random.default_rng([*self.key, worker])
        index = worker
        while True:
            seed = _draw_training_seed(rng)
            species = world.SPECIES[index % len(world.SPECIES)]
            creature = world.sample(seed, size=self.size, species=species)
            yield {"image": torch.from_numpy(np.ascontiguousarray(creature.image)),
                   "prompt": creature.prompt, "seed": seed}
            index += 1


def _worker_init(_: int) -> None:
    # rendering is numpy/Pillow: one thread per worker leaves the cores to training
    torch.set_num_threads(1)


def make_loader(stream: CreatureStream, batch_size: int, workers: int,
                device: torch.device) -> DataLoader:
    """A DataLoader over ``stream``; several workers keep a GPU fed (pinned memory)."""
    extra: dict[str, Any] = {}
    if workers > 0:
        extra = dict(persistent_workers=True, prefetch_factor=4, worker_init_fn=_worker_init)
    return DataLoader(stream, batch_size=batch_size, num_workers=workers,
                      pin_memory=device.type == "cuda", **extra)


def images_to_tensor(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [-1, 1] on ``device``."""
    images = images.to(device, non_blocking=True)
    return images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def random_crops(images: torch.Tensor, crop: int, generator: torch.Generator) -> torch.Tensor:
    """One random ``crop`` x ``crop`` window per image (the whole image when crop is 0)."""
    size = images.shape[-1]
    if not crop or crop >= size:
        return images
    corners = torch.randint(0, size - crop + 1, (images.shape[0], 2), generator=generator,
                            device=generator.device).tolist()
    return torch.stack([img[:, y:y + crop, x:x + crop] for img, (y, x) in zip(images, corners)])


