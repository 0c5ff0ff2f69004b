"""A small session object for notebooks and the CLI.

``Lab`` holds the loaded models and the caches and exposes the stages one at a time,
so a notebook can load a pair, invert it once, and re-run the transfer many times::

    lab = Lab(model="auto")                 # real SD 1.5 if available, else tiny
    pair = lab.pair("app.png", "struct.png", appearance_box=[...], structure_box=[...])
    result = lab.transfer(pair, TransferConfig(domain="bird", injection="v"))

Nothing is global: two ``Lab`` objects never share state except the on-disk cache,
which is safe to share.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .errors import ConfigError, MaskError
from .io.cache import TensorCache
from .io.formats import Box, lookup_box, parse_box, scale_boxes
from .io.paths import cache_root
from .method.config import TransferConfig
from .method.correspondence import CorrespondenceField
from .method.images import ImageLike, LoadedImage, load_image
from .method.inversion import InversionResult, invert
from .method.masks import as_mask, box_mask, full_mask, require_nonempty
from .method.regions import RegionPair
from .method.transfer import StepEvent, TransferResult, run_multi_transfer, run_transfer
from .models.loading import Models, load_pipeline

log = logging.getLogger(__name__)

MASK_MODES = ("auto", "sam", "box", "none")


def _source(image: LoadedImage) -> str:
    """How a run's config.json names an input image: its path, else its name."""
    return image.source or image.name


def _describe(structure: LoadedImage, mask_mode: str, /, **inputs) -> dict:
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
    mask_mode: str

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
    mask_mode: str

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


class Lab:
    """Models + caches + the stages, for one user session."""

    def __init__(self, model: str = "auto", device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None, cache_dir: str | os.PathLike | None = None,
                 use_disk_cache: bool = True, sam=None, sam_checkpoint: str | None = None,
                 models: Models | None = None):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else cache_root()
        self.models = models or load_pipeline(model, device=device, dtype=dtype,
                                              cache_dir=self.cache_dir)
        self.disk_cache = TensorCache(self.cache_dir, "inversions") if use_disk_cache else None
        self._inversions: dict[str, InversionResult] = {}
        self._sam = sam
        self.sam_checkpoint = sam_checkpoint

    # ---------------------------------------------------------------- info --
    @property
    def is_tiny(self) -> bool:
        return self.models.is_tiny

    @property
    def banner(self) -> str | None:
        return self.models.banner

    def check_size(self, size: int | None) -> int:
        size = self.models.default_size if size is None else size
        m = self.models.size_multiple
        if isinstance(size, bool) or not isinstance(size, int) or size < m or size % m:
            raise ConfigError("size", size, f"a positive multiple of {m} for this model "
                              f"(default {self.models.default_size})")
        return size

    # -------------------------------------------------------------- stage 1 --
    def load_image(self, source: ImageLike, size: int | None = None, fit: str = "stretch",
                   name: str | None = None, resample: str = "bicubic") -> LoadedImage:
        image = load_image(source, self.check_size(size), fit=fit, name=name, resample=resample)
        if self.models.is_toy and isinstance(source, (str, os.PathLike)):
            from .toy.examples import toy_world_info

            if toy_world_info(source) is None:
                log.warning("'%s' is not a toy-world image, but the model is the %s: expect "
                            "a meaningless result (load real Stable Diffusion weights for "
                            "photos)", image.name, self.models.banner)
        return image

    def sam(self):
        """The SAM-HQ masker (loaded on first use)."""
        if self._sam is None:
            from .models.sam import SamMasker

            self._sam = SamMasker.load(self.sam_checkpoint, device=self.models.device)
        return self._sam

    def sam_available(self) -> bool:
        from .models.sam import find_checkpoint

        return self._sam is not None or find_checkpoint(self.sam_checkpoint) is not None

    def mask(self, image: LoadedImage, box: Box | None, mode: str = "auto") -> torch.Tensor:
        """Object mask of an image: SAM-HQ from the box, the box itself, or everything."""
        if mode not in MASK_MODES:
            raise ConfigError("mask", mode, f"one of {', '.join(MASK_MODES)}")
        if mode == "auto":
            mode = "sam" if (box is not None and self.sam_available()) else "box"
            if box is not None and mode == "box":
                log.warning("no SAM-HQ checkpoint found: using the box of '%s' as its mask "
                            "(pass sam_checkpoint / --sam-checkpoint for object masks)",
                            image.name)
        if mode == "none" or box is None:
            return full_mask(image.size)
        if mode == "box":
            return box_mask(box, image.size)
        mask = self.sam().mask(image, box)
        if mask.sum() == 0:
            raise MaskError(f"SAM-HQ returned an empty mask for '{image.name}' in box {list(box)}: "
                            "adjust the box, add a positive click, or use --mask box")
        return mask

    def pair(self, appearance: ImageLike | LoadedImage, structure: ImageLike | LoadedImage,
             appearance_box=None, structure_box=None, boxes: dict | None = None,
             mask: str = "auto", size: int | None = None, fit: str = "stretch",
             appearance_mask=None, structure_mask=None, resample: str = "bicubic") -> Pair:
        """Load both images, resolve their boxes (given, or looked up by file name in
        ``boxes``) and compute their masks (or validate given ones)."""
        imgs = []
        for src in (appearance, structure):
            imgs.append(src if isinstance(src, LoadedImage)
                        else self.load_image(src, size, fit, resample=resample))
        app, struct = imgs
        if app.size != struct.size:
            raise ConfigError("size", (app.size, struct.size),
                              "both images must have the same model resolution")
        boxes = scale_boxes(boxes, struct.size) if boxes else None
        resolved, masks = [], []
        for img, box, given, role in ((app, appearance_box, appearance_mask, "appearance"),
                                      (struct, structure_box, structure_mask, "structure")):
            if box is None and boxes:
                box = lookup_box(boxes, img.name)
            b = None if box is None else parse_box(box, img.size, f"{role} box")
            resolved.append(b)
            if given is not None:
                m = as_mask(given, img.size, f"{role} mask")
            else:
                m = self.mask(img, b, mask)
            require_nonempty(m, f"the {role} mask")
            masks.append(m)
        return Pair(app, struct, resolved[0], resolved[1], masks[0], masks[1], mask)

    def multi_pair(self, structure: ImageLike | LoadedImage, objects: list[dict],
                   mask: str = "auto", size: int | None = None, fit: str = "stretch",
                   boxes_size: int | tuple[int, int] | None = None,
                   resample: str = "bicubic") -> MultiPair:
        """A structure image and a list of objects, each a dict with ``appearance`` (an image
        or path), and optionally ``target_box`` / ``appearance_box`` (model pixels, or
        at ``boxes_size`` when given) or ``target_mask`` / ``appearance_mask``.

        Objects that name the same appearance source share one reference image.
        """
        struct = structure if isinstance(structure, LoadedImage) else \
            self.load_image(structure, size, fit, resample=resample)
        if not objects:
            raise ConfigError("objects", objects, "at least one object pair")
        refs: list[LoadedImage] = []
        ref_index: dict[str, int] = {}
        regions, boxes = [], []
        for n, obj in enumerate(objects):
            if not isinstance(obj, dict) or "appearance" not in obj:
                raise ConfigError(f"objects[{n}]", obj, "a dict with an 'appearance' image")
            src = obj["appearance"]
            key = src.digest if isinstance(src, LoadedImage) else str(src)
            if key not in ref_index:
                img = src if isinstance(src, LoadedImage) else self.load_image(
                    src, struct.size[0], fit, resample=resample)
                if img.size != struct.size:
                    raise ConfigError(f"objects[{n}].appearance", img.size,
                                      f"the structure's size {struct.size}")
                ref_index[key] = len(refs)
                refs.append(img)
            r = ref_index[key]
            scaled = scale_boxes({"_size": boxes_size, "t": obj.get("target_box"),
                                  "a": obj.get("appearance_box")}, struct.size) \
                if boxes_size is not None else {"t": obj.get("target_box"),
                                                "a": obj.get("appearance_box")}
            tb = None if scaled["t"] is None else parse_box(scaled["t"], struct.size,
                                                            f"objects[{n}].target_box")
            ab = None if scaled["a"] is None else parse_box(scaled["a"], struct.size,
                                                            f"objects[{n}].appearance_box")
            tm = (as_mask(obj["target_mask"], struct.size, f"objects[{n}].target_mask")
                  if obj.get("target_mask") is not None else self.mask(struct, tb, mask))
            am = (as_mask(obj["appearance_mask"], struct.size, f"objects[{n}].appearance_mask")
                  if obj.get("appearance_mask") is not None else self.mask(refs[r], ab, mask))
            require_nonempty(tm, f"the target mask of object {n}")
            require_nonempty(am, f"the appearance mask of object {n}")
            regions.append(RegionPair(tm, am, r))
            boxes.append((tb, ab))
        return MultiPair(struct, refs, regions, boxes, mask)

    def transfer_multi(self, multi: MultiPair, config: TransferConfig,
                       callback: Callable[[StepEvent], None] | None = None, cancel=None,
                       inversion_progress: Callable[[int, int], None] | None = None,
                       recorder=None) -> TransferResult:
        """Multi-object transfer: each target region matches only inside its partner."""
        with self.models.in_use():
            invs = self.invert(multi.references + [multi.structure], config,
                               progress=inversion_progress)
            return run_multi_transfer(self.models, invs[:-1], invs[-1], multi.regions, config,
                                      callback=callback, cancel=cancel, recorder=recorder)

    # -------------------------------------------------------------- stage 2 --
    def invert(self, images: list[LoadedImage], config: TransferConfig,
               progress: Callable[[int, int], None] | None = None) -> list[InversionResult]:
        """Inversions of ``images`` (memory cache, then disk cache, then computed together)."""
        from .io.cache import key_of
        from .method.inversion import cache_spec

        inv_cfg = config.inversion
        keys = [key_of(cache_spec(self.models, im, inv_cfg)) for im in images]
        missing = [im for im, k in zip(images, keys) if k not in self._inversions]
        if missing:
            with self.models.in_use():
                for res in invert(self.models, missing, inv_cfg, cache=self.disk_cache,
                                  progress=progress):
                    self._inversions[res.key] = res
        return [self._inversions[k] for k in keys]

    def forget_inversions(self) -> None:
        self._inversions.clear()

    # -------------------------------------------------------------- stage 4 --
    def dift_field(self, pair: Pair, config: TransferConfig) -> CorrespondenceField:
        from .models.dift import dift_field

        with self.models.in_use():
            return dift_field(self.models, pair.structure, pair.appearance,
                              pair.structure_mask, pair.appearance_mask,
                              timestep=config.dift_timestep, block=config.dift_block,
                              ensemble=config.dift_ensemble, prompt=config.inversion.prompt,
                              seed=config.seed)

    def transfer(self, pair: Pair, config: TransferConfig,
                 callback: Callable[[StepEvent], None] | None = None, cancel=None,
                 inversion_progress: Callable[[int, int], None] | None = None,
                 recorder=None) -> TransferResult:
        """Invert (cached) and run the transfer; returns a :class:`TransferResult`.

        Holds the model (:meth:`Models.in_use`) for the whole run: the transfer installs
        its attention processors on the shared UNet.
        """
        with self.models.in_use():
            app_inv, struct_inv = self.invert([pair.appearance, pair.structure], config,
                                              progress=inversion_progress)
            field = self.dift_field(pair, config) if config.correspondence == "dift" else None
            return run_transfer(self.models, app_inv, struct_inv, pair.appearance_mask,
                                pair.structure_mask, config, callback=callback, cancel=cancel,
                                dift_field=field, recorder=recorder)
