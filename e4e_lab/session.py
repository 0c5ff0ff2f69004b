"""A small session object for notebooks and the CLI.

``Lab`` holds the loaded models and the caches and exposes the stages one at a time,
so a notebook can load a pair, invert it once, and re-run the transfer many times::

    lab = Lab(model="auto")                 # real SD 1.5 if available, else the toy model
    pair = lab.pair("app.png", "struct.png", appearance_box=[...], structure_box=[...])
    result = lab.transfer(pair, TransferConfig(domain="bird", injection="v"))
    several = lab.pair("struct.png", objects=read_pairs("pairs.json"))  # several objects
    result = lab.transfer(several, TransferConfig(domain="bird"))

Nothing is global. Each ``Lab`` keeps its own in-memory inversions; the on-disk cache is
safe to share between sessions and processes. ``Lab(models=...)`` shares one loaded
:class:`~e4e_lab.models.loading.Models` between sessions: the UNet, the attention
processors a running transfer installs on it, and its lock (:meth:`Models.in_use`), so
only one of them runs the UNet at a time and the others wait (or get
:class:`~e4e_lab.errors.ModelBusy`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import torch

from .errors import ConfigError, MaskError
from .io.cache import TensorCache
from .io.formats import (Box, MaskMode, ObjectSpec, lookup_box, parse_box, read_boxes,
                         warn_unmatched)
from .io.paths import cache_root
from .method.config import TransferConfig
from .method.correspondence import CorrespondenceField
from .method.images import ImageLike, LoadedImage, check_image_source, load_image
from .method.inversion import InversionResult, invert, inversion_keys
from .method.pairs import MultiPair, Pair, refuse_one_object_arguments
from .method.masks import as_mask, full_mask, object_mask, require_nonempty
from .method.regions import RegionPair
from .method.transfer import StepEvent, TransferResult, run_multi_transfer
from .models.device import check_fits, check_session
from .models.loading import Models, load_pipeline
from .progress import BarFactory, SessionBars, on_steps

log = logging.getLogger(__name__)


class Lab:
    """Models + caches + the stages, for one user session.

    ``progress``: ``True`` shows a ``tqdm.auto`` bar (with a time estimate) for every
    inversion, DIFT feature computation and denoising loop, ``False`` (the default) none,
    and a tqdm-like factory makes the bars itself (:mod:`e4e_lab.progress`);
    ``widgets.open_lab`` turns them on. Widgets that show their own progress turn them
    off in their worker threads (:func:`e4e_lab.progress.quiet`).
    """

    def __init__(self, model: str = "auto", device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None, cache_dir: str | os.PathLike | None = None,
                 use_disk_cache: bool = True, sam=None, sam_checkpoint: str | None = None,
                 models: Models | None = None, progress: bool | BarFactory = False):
        device, dtype = check_session(device, dtype, cache_dir)  # typed errors, not torch's
        #: progress bars of inversions, DIFT features and denoising (e4e_lab.progress)
        self.bars = SessionBars(progress)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else cache_root()
        self.models = models or load_pipeline(model, device=device, dtype=dtype,
                                              cache_dir=self.cache_dir)
        self.disk_cache = TensorCache(self.cache_dir, "inversions") if use_disk_cache else None
        self._inversions: dict[str, InversionResult] = {}
        self._sam = sam
        self.sam_checkpoint = sam_checkpoint
        self._said_no_sam = False

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
        check_fits(size, self.models.device, self.models.dtype)  # before allocating
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

    def _mask_source(self, mode: MaskMode, boxes: list, given: list) -> MaskMode | str:
        """What a run's config.json records as its masks' origin: ``"given"`` when every
        mask was passed in, else the concrete mode (``auto`` resolved to what it did)."""
        if all(m is not None for m in given):
            return "given"
        if mode is not MaskMode.AUTO:
            return mode
        if all(b is None for b in boxes):
            return MaskMode.NONE
        return mode.resolve(True, self.sam_available())

    def mask(self, image: LoadedImage, box: Box | None, mode: MaskMode | str = MaskMode.AUTO
             ) -> torch.Tensor:
        """Object mask of an image by ``mode``: SAM-HQ from the box, the box itself, or
        everything (also without a box)."""
        mode = MaskMode.parse(mode)
        if box is None or mode is MaskMode.NONE:
            return full_mask(image.size)
        resolved = mode.resolve(True, self.sam_available())
        if mode is MaskMode.AUTO and resolved is MaskMode.BOX and not self._said_no_sam:
            self._said_no_sam = True  # once per session, not once per image
            log.warning("no SAM-HQ checkpoint found: using boxes as masks "
                        "(pass sam_checkpoint / --sam-checkpoint for object masks)")
        sam = self.sam() if resolved is MaskMode.SAM else None
        mask = object_mask(image, box, resolved, sam)
        if sam is not None and mask.sum() == 0:
            raise MaskError(f"SAM-HQ returned an empty mask for '{image.name}' in box {list(box)}: "
                            "adjust the box, add a positive click, or use --mask box")
        return mask

    def _box_and_mask(self, image: LoadedImage, box, given, mode: MaskMode,
                      names: tuple[str, str, str]) -> tuple[Box | None, torch.Tensor]:
        """``image``'s box (validated) and object mask: ``given`` if there is one, else made
        from the box by ``mode``; an empty mask is refused. ``names`` name the box, the
        given mask and the mask in errors."""
        box_name, mask_name, what = names
        b = None if box is None else parse_box(box, image.size, box_name)
        m = as_mask(given, image.size, mask_name) if given is not None else \
            self.mask(image, b, mode)
        require_nonempty(m, what)
        return b, m

    def pair(self, appearance: ImageLike | LoadedImage | None = None,
             structure: ImageLike | LoadedImage | None = None, appearance_box=None,
             structure_box=None, boxes: dict | str | os.PathLike | None = None,
             mask: MaskMode | str = MaskMode.AUTO, size: int | None = None,
             fit: str = "stretch", appearance_mask=None, structure_mask=None,
             resample: str = "bicubic", *, objects: list[ObjectSpec | dict] | None = None
             ) -> Pair | MultiPair:
        """The images of a run at model resolution with their boxes and masks.

        One object: ``lab.pair(appearance, structure, appearance_box=..., ...)`` loads
        both images, resolves their boxes (given, or looked up by file name in ``boxes``:
        a boxes document or its JSON file, :func:`~e4e_lab.io.formats.read_boxes`) and
        computes their masks (or validates given ones); returns a :class:`Pair`.

        Several: ``lab.pair(structure, objects=[...])`` (the one image, first argument or
        ``structure=``, is the structure) takes the objects of a ``--pairs`` file
        (:class:`~e4e_lab.io.formats.ObjectSpec`, or dicts with its keys: ``appearance``,
        an image or a path, and optionally ``target_box`` / ``appearance_box`` in model
        pixels or at the spec's ``boxes_size``, ``target_mask`` / ``appearance_mask``);
        objects that name the same appearance source share one reference image. Returns
        a :class:`MultiPair`; one ``Lab.transfer`` runs either.
        """
        if objects is None:
            for name, image in (("appearance", appearance), ("structure", structure)):
                if image is None:
                    raise ConfigError(name, None, f"an image (path, PIL image, array or "
                                      f"LoadedImage); for several objects pass "
                                      f"lab.pair(structure, objects=[...])")
            return self._one_pair(appearance, structure, appearance_box, structure_box, boxes,
                                  mask, size, fit, appearance_mask, structure_mask, resample)
        if structure is None:  # lab.pair(structure, objects=[...])
            appearance, structure = None, appearance
        given = dict(appearance=appearance, appearance_box=appearance_box,
                     structure_box=structure_box, boxes=boxes,
                     appearance_mask=appearance_mask, structure_mask=structure_mask)
        refuse_one_object_arguments(given)
        if structure is None:
            raise ConfigError("structure", None, "the structure image: "
                              "lab.pair(structure, objects=[...])")
        return self._objects_pair(structure, objects, MaskMode.parse(mask), size, fit, resample)

    def multi_pair(self, structure, objects, **options) -> MultiPair:
        """``lab.pair(structure, objects=objects, ...)`` (kept for code written before)."""
        return self.pair(structure, objects=objects, **options)

    def _one_pair(self, appearance, structure, appearance_box, structure_box, boxes, mask,
                  size, fit, appearance_mask, structure_mask, resample) -> Pair:
        """:meth:`pair` of one object."""
        mode = MaskMode.parse(mask)
        check_image_source(appearance, "appearance")
        check_image_source(structure, "structure")
        app, struct = (src if isinstance(src, LoadedImage)
                       else self.load_image(src, size, fit, resample=resample)
                       for src in (appearance, structure))
        if app.size != struct.size:
            raise ConfigError("size", (app.size, struct.size),
                              "both images must have the same model resolution")
        boxes = read_boxes(boxes, struct.size) if boxes else None
        warn_unmatched(boxes, [im.name for im, b in ((app, appearance_box),
                                                      (struct, structure_box)) if b is None])
        resolved = []
        for img, box, given, role in ((app, appearance_box, appearance_mask, "appearance"),
                                      (struct, structure_box, structure_mask, "structure")):
            if box is None and boxes:
                box = lookup_box(boxes, img.name)
            resolved.append(self._box_and_mask(
                img, box, given, mode, (f"{role} box", f"{role} mask", f"the {role} mask")))
        (ab, am), (sb, sm) = resolved
        used = self._mask_source(mode, [ab, sb], [appearance_mask, structure_mask])
        return Pair(app, struct, ab, sb, am, sm, used)

    def _objects_pair(self, structure, objects: list[ObjectSpec | dict], mode: MaskMode,
                      size: int | None, fit: str, resample: str) -> MultiPair:
        """:meth:`pair` of several objects."""
        struct = structure if isinstance(structure, LoadedImage) else \
            self.load_image(structure, size, fit, resample=resample)
        if not objects:
            raise ConfigError("objects", objects, "at least one object pair")
        refs: dict[str, LoadedImage] = {}  # by source, in order of first use
        regions, boxes, given = [], [], []
        for n, obj in enumerate(objects):
            spec = ObjectSpec.from_dict(obj, f"objects[{n}]")
            given += [spec.target_mask, spec.appearance_mask]
            ref = self._reference(spec.appearance, refs, struct, n, fit, resample)
            t_box, a_box = spec.boxes_at(struct.size)
            tb, tm = self._box_and_mask(
                struct, t_box, spec.target_mask, mode, (f"objects[{n}].target_box",
                f"objects[{n}].target_mask", f"the target mask of object {n}"))
            ab, am = self._box_and_mask(
                refs[ref], a_box, spec.appearance_mask, mode, (f"objects[{n}].appearance_box",
                f"objects[{n}].appearance_mask", f"the appearance mask of object {n}"))
            regions.append(RegionPair(tm, am, list(refs).index(ref)))
            boxes.append((tb, ab))
        used = self._mask_source(mode, [b for pair in boxes for b in pair], given)
        return MultiPair(struct, list(refs.values()), regions, boxes, used)

    def _reference(self, src, refs: dict[str, LoadedImage], structure: LoadedImage, n: int,
                   fit: str, resample: str) -> str:
        """The key of object ``n``'s appearance image in ``refs``, loading it (at the
        structure's size) the first time a source is named."""
        key = src.digest if isinstance(src, LoadedImage) else str(src)
        if key not in refs:
            img = src if isinstance(src, LoadedImage) else self.load_image(
                src, structure.size[0], fit, resample=resample)
            if img.size != structure.size:
                raise ConfigError(f"objects[{n}].appearance", img.size,
                                  f"the structure's size {structure.size}")
            refs[key] = img
        return key

    # -------------------------------------------------------------- stage 2 --
    def invert(self, images: list[LoadedImage], config: TransferConfig,
               progress: Callable[[int, int], None] | None = None) -> list[InversionResult]:
        """Inversions of ``images`` (memory cache, then disk cache, then computed together).

        Each image's key is computed once (:func:`~e4e_lab.method.inversion.inversion_keys`)
        and serves both caches."""
        from .method import schedule

        inv_cfg = config.inversion
        keys = inversion_keys(self.models, images, inv_cfg)
        missing = [n for n, k in enumerate(keys) if k.key not in self._inversions]
        if missing:
            def what(total: int) -> str:  # called in the lock, as the work starts
                per_image = len(schedule.timesteps_for(self.models.scheduler,
                                                       inv_cfg.num_steps))
                return f"inverting {total // per_image} image(s)"

            with self.models.in_use(), self.bars.track(what, "step", progress) as report:
                done = invert(self.models, [images[n] for n in missing], inv_cfg,
                              cache=self.disk_cache, progress=report,
                              keys=[keys[n] for n in missing])
            # by position: on a GPU the chunk size in a key follows the free memory when
            # the key is made; the inversion runs with the chunks ``keys`` name
            for n, res in zip(missing, done):
                self._inversions[keys[n].key] = res
        return [self._inversions[k.key] for k in keys]

    def forget_inversions(self) -> None:
        """Drop the inversions kept in memory (the disk cache keeps them): a long loop over
        many pairs, such as the toy-world benchmark, then holds one pair's at a time."""
        self._inversions.clear()

    # -------------------------------------------------------------- stage 4 --
    def dift_field(self, pair: Pair | MultiPair, config: TransferConfig,
                   cancel=None) -> CorrespondenceField:
        """The DIFT correspondence of a one-object pair's target and reference regions
        (``cancel``: a ``threading.Event`` that stops it between batches of noise draws)."""
        from .models.dift import DiftSettings, dift_field

        if len(pair.regions) != 1:
            raise ConfigError("correspondence", "dift", "a DIFT field is made for one object "
                              "pair: use correspondence='match' with several objects")
        (region,) = pair.regions
        return dift_field(self.models, pair.structure, pair.references[region.reference],
                          region.target_mask, region.ref_mask, DiftSettings.from_config(config),
                          cancel=cancel, progress=self.bars)

    def transfer(self, pair: Pair | MultiPair, config: TransferConfig,
                 callback: Callable[[StepEvent], None] | None = None, cancel=None,
                 inversion_progress: Callable[[int, int], None] | None = None,
                 recorder=None) -> TransferResult:
        """Invert (cached) and run the transfer of one object pair or several; returns a
        :class:`TransferResult`. Each target region matches only inside its partner.

        Holds the model (:meth:`Models.in_use`) for the whole run: the transfer installs
        its attention processors on the shared UNet.
        """
        with self.models.in_use():
            *refs, structure = self.invert(pair.references + [pair.structure], config,
                                           progress=inversion_progress)
            field = self.dift_field(pair, config, cancel) \
                if config.correspondence == "dift" else None
            with self.bars.track("denoising") as report:
                steps = on_steps(report, callback, config.denoising_steps)
                return run_multi_transfer(self.models, refs, structure, pair.regions, config,
                                          callback=steps, cancel=cancel, dift_field=field,
                                          recorder=recorder)

    transfer_multi = transfer  # the same call (kept for code written before they were one)
