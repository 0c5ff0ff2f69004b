"""Transfer quality measured in the toy world, where the right answer is known.

A held-out toy pair (:func:`e4e_lab.toy.world.pair`) is two creatures of one species
with independently drawn part colours and poses. A good appearance transfer paints the
structure creature's head in the appearance creature's head colour, its tail in the
appearance's tail colour, and so on, keeps the background and keeps the silhouette.
Because the world knows every part map, colour and keypoint, these can be measured
exactly instead of through proxy metrics:

- :func:`part_colour_accuracy` (higher is better; chance about 1 / number of parts):
  over the interior pixels of the structure's parts, the share whose result colour is
  nearest to the appearance's nominal colour of the same-named part.
- :func:`background_error` (lower MAE, higher PSNR are better; 0 / inf for an
  untouched background): the result against the structure image outside the
  structure's (dilated) object.
- :func:`silhouette_iou` of :func:`result_silhouette` (higher is better; 1 = same
  outline): the result's object, found by its colour distance from an estimate of the
  structure's background, against the structure's true object.
- :func:`dift_pck` (higher is better; its chance level per pair is
  :func:`random_point_pck`): PCK@0.1 of nearest-neighbour DIFT matches of the
  structure's keypoints into the appearance, with the object-box normaliser.

:func:`evaluate_toy` runs a list of methods (injection modes of
:class:`~e4e_lab.method.config.TransferConfig`) over N held-out pairs on one
:class:`~e4e_lab.session.Lab` and returns a :class:`ToyQuality` with per-pair rows and
per-method summaries. ``benchmarks/quality_toy.py`` is its command line.

Images are accepted as (H, W, 3) arrays in 0-255 (uint8 or float) or as (3, H, W)
tensors in [0, 1] (what the library returns); colour distances are Euclidean in RGB
0-255, the space in which the world keeps its colours apart
(:data:`~e4e_lab.toy.world.MIN_COLOR_DISTANCE`).

This module runs the benchmark (which methods, which pairs, which masks) and is the
API; the measures themselves live in :mod:`~e4e_lab.toy.quality_images` (part colours,
background, silhouette) and :mod:`~e4e_lab.toy.quality_pck` (keypoints), and the rows
and summaries in :mod:`~e4e_lab.toy.quality_report`. Every name of those is importable
from here too.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from ..method.config import TransferConfig
from ..method.images import to_uint8
from . import world
from .quality_images import (BACKGROUND_DILATION, SILHOUETTE_THRESHOLD, BackgroundScore,
                             PartColourScore, as_rgb255, background_error, background_estimate,
                             dilate, interior, part_colour_accuracy, psnr, result_silhouette,
                             silhouette_iou)
from .quality_pck import (PCK_ALPHA, PckScore, cell_centres, cell_of, dift_pck, match_points,
                          pck, pck_threshold, random_point_pck)
from .quality_report import MethodRow, MethodSummary, PairRow, PairSummary, Stat, ToyQuality

__all__ = [
    "DEFAULT_METHODS", "PAINT_BY_EXAMPLE", "PBE_UNAVAILABLE", "KNOWN_METHODS", "MASK_KINDS",
    "check_methods", "scaled_config", "vae_psnr", "evaluate_pair", "evaluate_toy",
    # measures (quality_images, quality_pck) and records (quality_report), re-exported
    "SILHOUETTE_THRESHOLD", "BACKGROUND_DILATION", "PCK_ALPHA", "as_rgb255", "interior",
    "dilate", "psnr", "PartColourScore", "part_colour_accuracy", "BackgroundScore",
    "background_error", "background_estimate", "result_silhouette", "silhouette_iou",
    "PckScore", "pck_threshold", "cell_of", "cell_centres", "match_points", "pck",
    "random_point_pck", "dift_pck", "MethodRow", "PairRow", "Stat", "MethodSummary",
    "PairSummary", "ToyQuality",
]

log = logging.getLogger(__name__)

#: Injection modes measured by default (all of :data:`e4e_lab.method.config.INJECTION_MODES`).
DEFAULT_METHODS: tuple[str, ...] = ("feature", "v", "kv", "cross-image", "none")
PAINT_BY_EXAMPLE = "paint-by-example"
#: Why Paint-by-Example is listed but not measured: its only offline instance is the
#: tiny random-weight one, and scoring random weights would report noise.
PBE_UNAVAILABLE = "not available: no Paint-by-Example model trained in the toy world"
KNOWN_METHODS: tuple[str, ...] = DEFAULT_METHODS + (PAINT_BY_EXAMPLE,)


def check_methods(methods: Iterable[str]) -> tuple[str, ...]:
    """The methods as a tuple, each one of :data:`KNOWN_METHODS` (ValueError otherwise)."""
    methods = tuple(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in KNOWN_METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown methods {unknown}: choose from {', '.join(KNOWN_METHODS)}")
    return methods


def scaled_config(steps: int = 100, **changes) -> TransferConfig:
    """The default :class:`~e4e_lab.method.config.TransferConfig` with its step thresholds
    scaled from the 100-step defaults to ``steps`` (the same proportions), plus
    ``changes``."""
    if steps == 100:
        return TransferConfig(**changes)
    s = steps / 100
    scaled = dict(num_steps=steps, skip_steps=round(32 * s),
                  feat_range=(round(10 * s), round(70 * s)),
                  adain_range=(round(50 * s), steps), refresh_until=round(40 * s),
                  refresh_every=max(2, round(5 * s)), cross_image_adain_start=round(20 * s))
    return TransferConfig(**{**scaled, **changes})


def vae_psnr(models, image) -> float:
    """PSNR (dB) of the model's VAE encode + decode of one :class:`LoadedImage`: what
    the latent space loses before any transfer (a ceiling on background PSNR)."""
    from ..method.latents import decode, encode

    with models.in_use():
        recon = decode(models, encode(models, [image]))[0].cpu()
    return psnr(recon, image.pixels)


@dataclass
class _PairInputs:
    structure: world.Sample
    appearance: world.Sample
    pair: object  # e4e_lab.session.Pair
    mask: str = "object"  # one of MASK_KINDS


#: Masks tried in turn for a pair: the world's exact object masks, then its boxes, then
#: the whole image. A later kind is used only when the transfer refuses a mask (it needs
#: 2 cells on every injected grid: a thin creature at a small size can cover fewer).
MASK_KINDS: tuple[str, ...] = ("object", "box", "image")


def _mask_of(sample: world.Sample, kind: str) -> np.ndarray:
    if kind == "object":
        return sample.parts > 0
    mask = np.zeros(sample.parts.shape, dtype=bool)
    if kind == "box":
        x0, y0, x1, y1 = sample.box
        mask[y0:y1, x0:x1] = True
    else:
        mask[:] = True
    return mask


def _load_pair(lab, index: int, size: int, kind: str = "object") -> _PairInputs:
    s, a = world.pair(index, size, heldout=True)
    images = [lab.load_image(x.image, size, name=f"toy-{x.seed}.png") for x in (a, s)]
    pair = lab.pair(images[0], images[1], appearance_box=list(a.box), structure_box=list(s.box),
                    appearance_mask=_mask_of(a, kind), structure_mask=_mask_of(s, kind),
                    size=size)
    return _PairInputs(s, a, pair, kind)


def _transfer(lab, inputs: _PairInputs, config: TransferConfig, index: int):
    """``lab.transfer``, moving to the next of :data:`MASK_KINDS` while the transfer
    refuses the pair's masks; returns (result, the inputs used, which may be new)."""
    from ..errors import MaskError

    while True:
        try:
            return lab.transfer(inputs.pair, config), inputs
        except MaskError as exc:
            kind = MASK_KINDS.index(inputs.mask) + 1
            if kind == len(MASK_KINDS):
                raise
            log.warning("pair %d: the transfer refused the %s masks (%s); using %s masks",
                        index, inputs.mask, exc, MASK_KINDS[kind])
            inputs = _load_pair(lab, index, inputs.pair.size[0], MASK_KINDS[kind])


def _dift(lab, image, prompt: str, config: TransferConfig) -> torch.Tensor:
    """DIFT features of one image with its own prompt (a toy pair's two images have
    different ones), in the settings every DIFT caller takes from a config."""
    from ..models.dift import DiftSettings, dift_features

    s = DiftSettings.from_config(config)
    with lab.models.in_use():
        return dift_features(lab.models, image, s.timestep, s.block, s.ensemble, prompt,
                             s.seed).features


def evaluate_pair(lab, index: int, methods: Sequence[str], base: TransferConfig, size: int,
                  keep_images: bool = False,
                  on_method: Callable[[str], None] | None = None
                  ) -> tuple[PairRow, list[MethodRow], dict[tuple[int, str], np.ndarray]]:
    """Every method on held-out pair ``index`` (same inversions and seed), scored.

    ``base``: the config every method starts from (its domain is replaced by the
    species, its injection by the method). The masks are the world's exact object
    masks, or the next of :data:`MASK_KINDS` where the transfer refuses them (logged,
    and recorded in each row's ``mask``). ``on_method(method)`` is called after each.
    """
    inputs = _load_pair(lab, index, size)
    s, a, pair = inputs.structure, inputs.appearance, inputs.pair
    cfg = base.replace(domain=s.species)
    t0 = time.perf_counter()
    lab.invert([pair.appearance, pair.structure], cfg)
    inversion_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    f_struct, f_app = _dift(lab, pair.structure, s.prompt, cfg), _dift(lab, pair.appearance,
                                                                        a.prompt, cfg)
    dift_s = time.perf_counter() - t0
    obj = s.parts > 0
    width_height = (size, size)
    kp = dift_pck(f_struct, f_app, s.keypoints, a.keypoints, a.box, a.parts > 0, width_height)
    own = part_colour_accuracy(s.image, s.parts, a.part_colors)
    pair_row = PairRow(
        index, s.seed, a.seed, s.species, own.chance, own.accuracy,
        silhouette_iou(result_silhouette(s.image, s.image, obj), obj),
        kp.pck, kp.chance, kp.ceiling, kp.keypoints,
        vae_psnr(lab.models, pair.structure), vae_psnr(lab.models, pair.appearance),
        inversion_s, dift_s)
    images: dict[tuple[int, str], np.ndarray] = {}
    if keep_images:
        images[(index, "structure")] = s.image
        images[(index, "appearance")] = a.image
    rows = []
    for method in methods:
        t0 = time.perf_counter()
        result, inputs = _transfer(lab, inputs, cfg.replace(injection=method), index)
        seconds = time.perf_counter() - t0
        out = to_uint8(result.image)  # scored as saved: 8-bit, like the inputs
        colour = part_colour_accuracy(out, s.parts, a.part_colors)
        bg = background_error(out, s.image, obj)
        iou = silhouette_iou(result_silhouette(out, s.image, obj), obj)
        rows.append(MethodRow(index, method, seconds, colour.accuracy, colour.chance,
                              colour.pixels, bg.mae, bg.psnr, iou, inputs.mask))
        if keep_images:
            images[(index, method)] = out
        log.debug("pair %d %s: part colour %.3f (chance %.3f), bg MAE %.2f, IoU %.3f, %.1fs",
                  index, method, colour.accuracy, colour.chance, bg.mae, iou, seconds)
        if on_method is not None:
            on_method(method)
    return pair_row, rows, images


def evaluate_toy(lab, methods: Iterable[str] = DEFAULT_METHODS, pairs: int | Sequence[int] = 50,
                 size: int | None = None, base: TransferConfig | None = None,
                 keep_images: int = 0,
                 progress: Callable[[int, str], None] | None = None) -> ToyQuality:
    """Run ``methods`` over held-out toy pairs on ``lab`` and score them.

    ``pairs``: a count N (pairs 0..N-1 of :func:`~e4e_lab.toy.world.pair`) or a list of
    pair indices. ``size``: model pixels (default the model's); the world renders at it,
    so nothing is resampled. ``base``: the starting config (default
    :func:`scaled_config` ``(100)``); each pair uses its species as the domain, so the
    prompt is "A photo of a {species}". Both images are inverted once per pair and every
    method uses those inversions and ``base.seed``; the in-memory inversions are dropped
    after each pair. The masks are the world's exact object masks (``parts > 0``).

    Methods are injection modes (:data:`DEFAULT_METHODS`); ``"paint-by-example"`` is
    recorded in ``unavailable`` (:data:`PBE_UNAVAILABLE`) and not run. ``keep_images``:
    keep the pictures of the first that many pairs. ``progress(pair, method)`` is called
    after each method.
    """
    methods = check_methods(methods)
    size = lab.check_size(size)
    base = base if base is not None else scaled_config(100)
    indices = list(range(pairs)) if isinstance(pairs, int) else [int(i) for i in pairs]
    runnable = tuple(m for m in methods if m != PAINT_BY_EXAMPLE)
    report = ToyQuality(lab.models.model_id, lab.is_tiny, size, base.to_dict(), runnable)
    if PAINT_BY_EXAMPLE in methods:
        report.unavailable[PAINT_BY_EXAMPLE] = PBE_UNAVAILABLE
    for n, index in enumerate(indices):
        def tick(method: str, index: int = index) -> None:
            if progress is not None:
                progress(index, method)

        pair_row, rows, images = evaluate_pair(lab, index, runnable, base, size,
                                               keep_images=n < keep_images, on_method=tick)
        report.pairs.append(pair_row)
        report.rows.extend(rows)
        report.images.update(images)
        lab.forget_inversions()
    report.summarise()
    return report
