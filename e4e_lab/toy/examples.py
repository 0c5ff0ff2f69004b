"""Example pairs from the toy world, written as files the CLI and the notebooks read.

One held-out pair per species: a *structure* creature and an *appearance* creature of
the same species in another pose and colouring, each with its object mask (the world's
exact part map, as a PNG) and its box. The PNGs carry a text chunk naming their seed,
so that the session can tell toy-world images from photos (the toy model knows only
its creatures, and says so when given anything else)::

    python -m e4e_lab.toy.examples example/toy

writes ``{species}_structure.png``, ``{species}_appearance.png``, their ``*_mask.png``,
``boxes.json`` (model pixels, ``"_size"`` the image size) and ``pairs.json`` (the format
``e4e-lab evaluate --pairs-dir`` reads).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from . import world

#: Key of the PNG text chunk that marks an image drawn by the toy world.
PNG_KEY = "e4e-toy-world"


def example_pairs(size: int = 128) -> dict[str, tuple[world.Sample, world.Sample]]:
    """The first held-out pair of each species (``world.pair`` order): deterministic."""
    found: dict[str, tuple[world.Sample, world.Sample]] = {}
    index = 0
    while len(found) < len(world.SPECIES):
        structure, appearance = world.pair(index, size)
        found.setdefault(structure.species, (structure, appearance))
        index += 1
    return {species: found[species] for species in world.SPECIES}


def save_png(sample: world.Sample, path: Path, role: str) -> None:
    """The sample's image with its provenance in a PNG text chunk."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PNG_KEY, json.dumps({"seed": sample.seed, "size": sample.size,
                                       "species": sample.species, "role": role,
                                       "version": world.VERSION}))
    Image.fromarray(sample.image).save(path, pnginfo=info)


def save_mask(sample: world.Sample, path: Path) -> None:
    Image.fromarray(((sample.parts > 0) * 255).astype(np.uint8)).save(path)


def write_examples(folder: str | os.PathLike, size: int = 128) -> list[Path]:
    """Write the example pairs into ``folder``; returns the files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written, boxes, pairs = [], {"_size": size}, []
    for species, (structure, appearance) in example_pairs(size).items():
        for role, s in (("structure", structure), ("appearance", appearance)):
            image, mask = folder / f"{species}_{role}.png", folder / f"{species}_{role}_mask.png"
            save_png(s, image, role)
            save_mask(s, mask)
            boxes[image.name] = list(s.box)
            written += [image, mask]
        pairs.append({"name": f"{species}_pair", "appearance": f"{species}_appearance.png",
                      "structure": f"{species}_structure.png", "domain": species})
    for name, data in (("boxes.json", boxes), ("pairs.json", pairs)):
        (folder / name).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        written.append(folder / name)
    return written


def toy_world_info(path: str | os.PathLike) -> dict | None:
    """The toy-world provenance recorded in a PNG (None for any other image or file)."""
    try:
        with Image.open(path) as img:
            text = img.info.get(PNG_KEY)
    except OSError:
        return None
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m e4e_lab.toy.examples",
                                description="Write one held-out toy-world pair per species.")
    p.add_argument("folder", type=Path)
    p.add_argument("--size", type=int, default=128)
    args = p.parse_args(argv)
    for path in write_examples(args.folder, args.size):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
