"""Stage 1's result: the images of a run at model resolution with their boxes and masks.

A :class:`Pair` is one structure image and one appearance image; a :class:`MultiPair` is
a structure image with several (target region, reference region) pairs. Both expose
``structure``, ``references`` and ``regions``, so one transfer runs either
(``Lab.transfer``); ``describe()`` is what a run's config.json says of its inputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..io.formats import Box, MaskMode
from .images import LoadedImage
from .regions import RegionPair


def _source(image: LoadedImage) -> str:
    """How a run's config.json names an input image: its path, else its name."""
    return image.source or image.name


def _describe(structure: LoadedImage, mask_mode: MaskMode | str, /, **inputs) -> dict:
    """A run's inputs for its config.json: ``inputs``, then the keys every pair shares."""
    return {**inputs, "mask": mask_mode, "size": list(structure.size), "fit": structure.fit,
            "resample": structure.resample}


@dataclass
class MultiPair:
    """A structure image with several (target region, reference region) pairs.

    ``references`` are the distinct reference images; ``regions[n].reference`` indexes
    them. ``boxes[n]`` is the (target box, reference box) of pair n, either may be None.
    """

    structure: LoadedImage
    references: list[LoadedImage]
    regions: list[RegionPair]
    boxes: list[tuple[Box | None, Box | None]]
    mask_mode: MaskMode | str  # a MaskMode, or how masks made elsewhere were made

    @property
    def size(self) -> tuple[int, int]:
        return self.structure.size

    def describe(self) -> dict:
        """JSON-able inputs (config.json): the structure and the object pairs, which read
        like the ``objects`` of a ``--pairs`` file."""
        objects = [{"target_box": tb, "appearance": _source(self.references[r.reference]),
                    "appearance_box": ab} for r, (tb, ab) in zip(self.regions, self.boxes)]
        return _describe(self.structure, self.mask_mode, structure=_source(self.structure),
                         objects=objects)

    def strip_inputs(self) -> list[tuple[str, LoadedImage]]:
        """(label, image) of the strip's panels before the result: structure | references."""
        many = len(self.references) > 1
        return [("structure", self.structure)] + [
            (f"appearance {n + 1}" if many else "appearance", ref)
            for n, ref in enumerate(self.references)]


@dataclass
class Pair:
    """An appearance/structure pair at model resolution with its boxes and masks."""

    appearance: LoadedImage
    structure: LoadedImage
    appearance_box: Box | None
    structure_box: Box | None
    appearance_mask: torch.Tensor  # (H, W) 0/1
    structure_mask: torch.Tensor
    mask_mode: MaskMode | str  # a MaskMode, or how masks made elsewhere were made ("edited")

    @property
    def size(self) -> tuple[int, int]:
        return self.structure.size

    def describe(self) -> dict:
        """JSON-able inputs (config.json): both images and their boxes."""
        return _describe(self.structure, self.mask_mode, appearance=_source(self.appearance),
                         structure=_source(self.structure), appearance_box=self.appearance_box,
                         structure_box=self.structure_box)

    def strip_inputs(self) -> list[tuple[str, LoadedImage]]:
        """(label, image) of the strip's panels before the result: structure | appearance."""
        return [("structure", self.structure), ("appearance", self.appearance)]

    # A pair is a multi-object pair of one object: the same two views as MultiPair's
    # fields, so one Lab.transfer runs both.
    @property
    def references(self) -> list[LoadedImage]:
        return [self.appearance]

    @property
    def regions(self) -> list[RegionPair]:
        return [RegionPair(self.structure_mask.float(), self.appearance_mask.float(), 0)]


#: Where each one-object argument of ``Lab.pair`` goes when a pair has ``objects=``.
_PER_OBJECT = {"appearance": "objects[n]['appearance']",
               "appearance_box": "objects[n]['appearance_box']",
               "structure_box": "objects[n]['target_box']",
               "boxes": "each object's boxes (a --pairs file: read_pairs)",
               "appearance_mask": "objects[n]['appearance_mask']",
               "structure_mask": "objects[n]['target_mask']"}


def _short(value) -> object:
    """How an error message shows an argument: small values as they are, else the type."""
    return value if isinstance(value, (str, os.PathLike, list, tuple, int)) and \
        len(repr(value)) < 80 else type(value).__name__


def refuse_one_object_arguments(given: dict) -> None:
    """``Lab.pair(..., objects=...)`` refuses the arguments of a one-object pair: the
    first one given is a ConfigError saying where it goes instead."""
    for name, value in given.items():
        if value is not None:
            raise ConfigError(name, _short(value), f"with objects= it goes in "
                              f"{_PER_OBJECT[name]}; or drop objects= for one pair")
