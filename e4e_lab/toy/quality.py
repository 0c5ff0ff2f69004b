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
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..method.config import TransferConfig
from ..method.images import to_uint8
from . import world

log = logging.getLogger(__name__)

#: Injection modes measured by default (all of :data:`e4e_lab.method.config.INJECTION_MODES`).
DEFAULT_METHODS: tuple[str, ...] = ("feature", "v", "kv", "cross-image", "none")
PAINT_BY_EXAMPLE = "paint-by-example"
#: Why Paint-by-Example is listed but not measured: its only offline instance is the
#: tiny random-weight one, and scoring random weights would report noise.
PBE_UNAVAILABLE = "not available: no Paint-by-Example model trained in the toy world"
KNOWN_METHODS: tuple[str, ...] = DEFAULT_METHODS + (PAINT_BY_EXAMPLE,)

#: Colour distance (RGB 0-255) beyond which a result pixel differs from the background:
#: half of the least distance the world keeps between any part and the background's
#: mean colour (:data:`~e4e_lab.toy.world.MIN_COLOR_DISTANCE`).
SILHOUETTE_THRESHOLD: float = world.MIN_COLOR_DISTANCE / 2
#: Pixels the structure's object is grown by before measuring the background: the
#: transfer blends latents across the mask edge, and the VAE smears edges a little.
BACKGROUND_DILATION: int = 3
PCK_ALPHA: float = 0.1


# ---------------------------------------------------------------- helpers --

def as_rgb255(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """An (H, W, 3) float64 array in 0-255 from an (H, W, 3) array in 0-255 (uint8 or
    float) or a (3, H, W) tensor in [0, 1]."""
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError("an image tensor must be (3, H, W) in [0, 1], got "
                             f"{tuple(image.shape)}")
        return image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).double().numpy() * 255.0
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"an image array must be (H, W, 3) in 0-255, got {arr.shape}")
    return arr


def interior(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose four neighbours carry the same label (image-border
    pixels are never interior). For one part this is exactly
    ``world.part_mask(sample, name, interior=True)``; edge pixels mix colours, so
    colours are measured on interiors."""
    labels = np.asarray(labels)
    core = np.zeros(labels.shape, dtype=bool)
    c = labels[1:-1, 1:-1]
    core[1:-1, 1:-1] = ((c == labels[:-2, 1:-1]) & (c == labels[2:, 1:-1])
                        & (c == labels[1:-1, :-2]) & (c == labels[1:-1, 2:]))
    return core


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """(H, W) bool mask grown by ``radius`` pixels (a (2r+1)-square max filter)."""
    mask = np.asarray(mask, dtype=bool)
    if radius <= 0:
        return mask.copy()
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.max_pool2d(t, 2 * radius + 1, stride=1, padding=radius)[0, 0].numpy() > 0


def psnr(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor,
         mask: np.ndarray | None = None) -> float:
    """PSNR in dB (peak 255) between two images, over ``mask`` when given; inf when
    identical, nan when the mask is empty."""
    diff = as_rgb255(a) - as_rgb255(b)
    if mask is not None:
        diff = diff[np.asarray(mask, dtype=bool)]
    if diff.size == 0:
        return float("nan")
    mse = float(np.mean(diff * diff))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


# ------------------------------------------------------ part colour accuracy --

@dataclass(frozen=True)
class PartColourScore:
    """Part-colour accuracy of one result.

    ``accuracy``: share of measured pixels nearest to the right colour (nan when no
    pixel was measured); ``chance``: 1 / the number of candidate colours, the expected
    accuracy of a result whose colours are unrelated to the parts; ``pixels``: how
    many pixels were measured; ``parts``: the measured part names.
    """

    accuracy: float
    chance: float
    pixels: int
    parts: tuple[str, ...]


def part_colour_accuracy(result: np.ndarray | torch.Tensor, target_parts: np.ndarray,
                         reference_colors: Mapping[str, Sequence[float]],
                         skip: Iterable[str] = world.DETAIL_PARTS) -> PartColourScore:
    """Does each target part take the colour of the same-named reference part?

    ``target_parts`` is the structure's (H, W) part map (indices into
    :data:`~e4e_lab.toy.world.PART_NAMES`), ``reference_colors`` the appearance's
    nominal part colours (``Sample.part_colors``). The candidates are the reference's
    parts not in ``skip`` (default: the tiny eye and beak, too small for a reliable
    colour). Measured pixels: the interior pixels (:func:`interior`) of target parts
    that are candidates (a part the reference lacks is skipped). A pixel is correct when
    its result colour is nearer (RGB distance) to the reference colour of its own part
    than to the colour of every other candidate.

    This measures semantic colour transfer: colour statistics alone (AdaIN) cannot put
    the head's colour on the head, because the world draws colours independently of
    parts. Chance level: ``1 / len(candidates)`` (about 1/4 to 1/5), reported with it.
    """
    names = tuple(n for n in world.PART_NAMES[1:] if n in reference_colors and n not in set(skip))
    if not names:
        return PartColourScore(float("nan"), float("nan"), 0, ())
    palette = np.array([reference_colors[n] for n in names], dtype=np.float64)  # (K, 3)
    lut = np.full(len(world.PART_NAMES), -1, dtype=np.int64)
    lut[[world.PART_INDEX[n] for n in names]] = np.arange(len(names))
    labels = np.asarray(target_parts).astype(np.int64)
    wanted = lut[labels]
    measured = interior(labels) & (wanted >= 0)
    count = int(measured.sum())
    chance = 1.0 / len(names)
    if count == 0:
        return PartColourScore(float("nan"), chance, 0, ())
    colours = as_rgb255(result)[measured]  # (N, 3)
    dist = np.linalg.norm(colours[:, None, :] - palette[None, :, :], axis=2)  # (N, K)
    correct = dist.argmin(axis=1) == wanted[measured]
    present = tuple(names[k] for k in np.unique(wanted[measured]))
    return PartColourScore(float(correct.mean()), chance, count, present)


# --------------------------------------------------- background preservation --

@dataclass(frozen=True)
class BackgroundScore:
    """Background error: mean absolute error (0-255 units) and PSNR (dB) over
    ``pixels`` background pixels."""

    mae: float
    psnr: float
    pixels: int


def background_error(result: np.ndarray | torch.Tensor, structure: np.ndarray | torch.Tensor,
                     object_mask: np.ndarray, dilation: int = BACKGROUND_DILATION
                     ) -> BackgroundScore:
    """How much the result changed the structure's background.

    Compared outside ``object_mask`` (the structure's object, e.g. ``parts > 0``) grown
    by ``dilation`` pixels, so that the blended object edge does not count. A method
    that edits only the object scores MAE 0 / PSNR inf; the VAE alone costs a little
    (compare with the VAE reconstruction PSNR). No chance level: lower MAE is better.
    """
    outside = ~dilate(object_mask, dilation)
    n = int(outside.sum())
    if n == 0:
        return BackgroundScore(float("nan"), float("nan"), 0)
    diff = as_rgb255(result)[outside] - as_rgb255(structure)[outside]
    return BackgroundScore(float(np.abs(diff).mean()), psnr(result, structure, outside), n)


# --------------------------------------------------- structure preservation --

def background_estimate(image: np.ndarray | torch.Tensor, object_mask: np.ndarray,
                        margin: int = 1) -> np.ndarray:
    """(H, W, 3) estimate of ``image``'s background behind its object, in 0-255.

    Outside the object the estimate is the image itself. Inside, it is the mean of the
    known background pixels (outside the object grown by ``margin``, which leaves out
    the anti-aliased edge ring) in the smallest square window of side ``2**k + 1``
    around the pixel that holds any: a local fill that follows the world's smooth
    gradients and noise and averages its stripes and checks.
    """
    img = as_rgb255(image)
    obj = np.asarray(object_mask, dtype=bool)
    known = ~dilate(obj, margin)
    if not known.any():
        raise ValueError("background_estimate: no background pixel is known")
    t_img = torch.from_numpy(img.transpose(2, 0, 1).copy())[None]  # (1, 3, H, W) float64
    t_known = torch.from_numpy(known.astype(np.float64))[None, None]
    estimate = img.copy()
    todo = obj.copy()
    radius = 1
    while todo.any():
        k = 2 * radius + 1
        num = F.avg_pool2d(t_img * t_known, k, stride=1, padding=radius, count_include_pad=True)
        den = F.avg_pool2d(t_known, k, stride=1, padding=radius, count_include_pad=True)
        ready = todo & (den[0, 0].numpy() > 0)
        fill = (num[0] / den[0].clamp_min(1e-12)).numpy().transpose(1, 2, 0)
        estimate[ready] = fill[ready]
        todo &= ~ready
        radius *= 2
    return estimate


def result_silhouette(result: np.ndarray | torch.Tensor, structure: np.ndarray | torch.Tensor,
                      object_mask: np.ndarray, threshold: float = SILHOUETTE_THRESHOLD
                      ) -> np.ndarray:
    """(H, W) bool: the result's object, without a segmenter.

    A result pixel is "object" when its RGB distance from the structure's background
    estimate (:func:`background_estimate`) exceeds ``threshold`` (default 30, half the
    least part-to-background distance of the world). Outside the structure's object the
    estimate is the structure image itself, so a result that paints over the background
    grows its silhouette; inside, a result that lets the background through shrinks it.
    """
    estimate = background_estimate(structure, object_mask)
    return np.linalg.norm(as_rgb255(result) - estimate, axis=2) > threshold


def silhouette_iou(predicted: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union of two (H, W) bool masks (1 when both are empty)."""
    p, t = np.asarray(predicted, dtype=bool), np.asarray(target, dtype=bool)
    union = int((p | t).sum())
    return 1.0 if union == 0 else float((p & t).sum()) / union


# ----------------------------------------------------------------- DIFT PCK --

@dataclass(frozen=True)
class PckScore:
    """PCK of one pair's keypoint matches.

    ``pck``: share of keypoints matched within the threshold (nan without common
    keypoints); ``chance``: the expected PCK of a uniformly random location in the
    appearance object (:func:`random_point_pck`); ``ceiling``: the PCK of a perfect
    matcher on the same grid (the true keypoint's cell, at its centre), which the grid's
    coarseness caps; ``keypoints``: how many were matched; ``threshold``: in pixels.
    """

    pck: float
    chance: float
    ceiling: float
    keypoints: int
    threshold: float


def pck_threshold(box: Sequence[float], alpha: float = PCK_ALPHA) -> float:
    """``alpha * max(box width, box height)`` in pixels (the object-box normaliser of
    PCK@alpha, as in SPair-71k), for a box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    return alpha * max(x1 - x0, y1 - y0)


def cell_of(points: np.ndarray, grid: tuple[int, int], image_size: tuple[int, int]
            ) -> np.ndarray:
    """(K,) flat cell indices on an (h, w) ``grid`` of (K, 2) (x, y) pixel points in an
    image of ``image_size`` = (width, height)."""
    (h, w), (width, height) = grid, image_size
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    col = np.clip(np.floor(pts[:, 0] / width * w), 0, w - 1).astype(np.int64)
    row = np.clip(np.floor(pts[:, 1] / height * h), 0, h - 1).astype(np.int64)
    return row * w + col


def cell_centres(cells: np.ndarray, grid: tuple[int, int], image_size: tuple[int, int]
                 ) -> np.ndarray:
    """(K, 2) (x, y) pixel centres of flat cell indices on an (h, w) grid."""
    (h, w), (width, height) = grid, image_size
    cells = np.asarray(cells, dtype=np.int64)
    return np.stack([(cells % w + 0.5) / w * width, (cells // w + 0.5) / h * height], axis=1)


def match_points(source: torch.Tensor, target: torch.Tensor, points: np.ndarray,
                 image_size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour (cosine) matches of (K, 2) pixel points of the source image
    into the target image, as (K, 2) pixel cell centres of the target grid.

    ``source`` and ``target`` are (C, h, w) feature maps of two images of
    ``image_size`` = (width, height); each point takes the feature of the cell it lies in.
    """
    c = source.shape[0]
    queries = source.reshape(c, -1).T[torch.from_numpy(cell_of(points, tuple(source.shape[1:]),
                                                                image_size))]
    q = F.normalize(queries.float(), dim=1)
    r = F.normalize(target.reshape(c, -1).T.float(), dim=1)
    best = (q @ r.T).argmax(dim=1).numpy()
    return cell_centres(best, tuple(target.shape[1:]), image_size)


def pck(predicted: np.ndarray, truth: np.ndarray, threshold: float) -> float:
    """Share of (K, 2) predicted points within ``threshold`` pixels of the true ones."""
    predicted, truth = np.asarray(predicted, float), np.asarray(truth, float)
    if len(truth) == 0:
        return float("nan")
    return float((np.linalg.norm(predicted - truth, axis=1) <= threshold).mean())


def random_point_pck(truth: np.ndarray, object_mask: np.ndarray, threshold: float) -> float:
    """Chance level of PCK: the expected PCK of a location drawn uniformly among the
    object's pixel centres, for (K, 2) true keypoints (exact, not sampled)."""
    truth = np.asarray(truth, float).reshape(-1, 2)
    rows, cols = np.nonzero(np.asarray(object_mask, dtype=bool))
    if len(truth) == 0 or len(rows) == 0:
        return float("nan")
    centres = np.stack([cols + 0.5, rows + 0.5], axis=1)  # (N, 2)
    d2 = ((truth[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)  # (K, N)
    return float((d2 <= threshold ** 2).mean())


def dift_pck(structure_features: torch.Tensor, appearance_features: torch.Tensor,
             structure_keypoints: Mapping[str, Sequence[float]],
             appearance_keypoints: Mapping[str, Sequence[float]],
             appearance_box: Sequence[float], appearance_mask: np.ndarray,
             image_size: tuple[int, int], alpha: float = PCK_ALPHA) -> PckScore:
    """PCK@alpha of DIFT correspondence from the structure to the appearance.

    For every structure keypoint whose name the appearance also has, the structure
    feature of its cell is matched (cosine, nearest neighbour, whole appearance grid)
    and the matched cell's centre is correct when within ``alpha * max(width, height)``
    of the appearance's object box (:func:`pck_threshold`) of the appearance keypoint of
    that name. This measures whether the model's features know which part is which,
    which the transfer's matching relies on. Chance: :func:`random_point_pck` on the
    appearance's object; ceiling: see :class:`PckScore`.
    """
    names = [n for n in structure_keypoints if n in appearance_keypoints]
    threshold = pck_threshold(appearance_box, alpha)
    if not names:
        return PckScore(float("nan"), float("nan"), float("nan"), 0, threshold)
    src = np.array([structure_keypoints[n] for n in names], dtype=np.float64)
    truth = np.array([appearance_keypoints[n] for n in names], dtype=np.float64)
    predicted = match_points(structure_features, appearance_features, src, image_size)
    grid = tuple(appearance_features.shape[1:])
    best_possible = cell_centres(cell_of(truth, grid, image_size), grid, image_size)
    return PckScore(pck(predicted, truth, threshold),
                    random_point_pck(truth, appearance_mask, threshold),
                    pck(best_possible, truth, threshold), len(names), threshold)


# ---------------------------------------------------------------- evaluation --

@dataclass
class MethodRow:
    """One method's scores on one pair."""

    pair: int
    method: str
    seconds: float  # the transfer alone (inversion excluded: shared by every method)
    part_colour: float
    part_colour_chance: float
    part_colour_pixels: int
    background_mae: float
    background_psnr: float
    silhouette_iou: float
    mask: str = "object"  # the masks the transfer used (see MASK_KINDS)


@dataclass
class PairRow:
    """What one pair measures independently of the methods.

    ``part_colour_structure`` is the part-colour accuracy of the unchanged structure
    image (an empirical chance level); ``silhouette_iou_structure`` the IoU of the
    structure image's own silhouette by :func:`result_silhouette` (the rule's ceiling on
    this pair); ``vae_psnr_*`` the VAE's encode+decode PSNR of each image.
    """

    pair: int
    structure_seed: int
    appearance_seed: int
    species: str
    part_colour_chance: float
    part_colour_structure: float
    silhouette_iou_structure: float
    pck: float
    pck_chance: float
    pck_ceiling: float
    pck_keypoints: int
    vae_psnr_structure: float
    vae_psnr_appearance: float
    inversion_seconds: float
    dift_seconds: float


@dataclass(frozen=True)
class Stat:
    """Mean and (population) standard deviation over the finite values; n counts them."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> "Stat":
        v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
        if len(v) == 0:
            return cls(float("nan"), float("nan"), 0)
        return cls(float(v.mean()), float(v.std()), int(len(v)))


@dataclass(frozen=True)
class MethodSummary:
    """One method over every pair. ``background_psnr`` averages the finite values only
    (an untouched background has PSNR inf); ``background_psnr_inf`` counts the others."""

    method: str
    pairs: int
    part_colour: Stat
    part_colour_chance: Stat
    background_mae: Stat
    background_psnr: Stat
    background_psnr_inf: int
    silhouette_iou: Stat
    seconds: Stat


@dataclass(frozen=True)
class PairSummary:
    """The method-independent measures over every pair."""

    pairs: int
    pck: Stat
    pck_chance: Stat
    pck_ceiling: Stat
    vae_psnr: Stat  # both images of every pair
    part_colour_structure: Stat
    silhouette_iou_structure: Stat
    inversion_seconds: Stat
    dift_seconds: Stat


@dataclass
class ToyQuality:
    """The result of :func:`evaluate_toy`.

    ``images`` holds uint8 (H, W, 3) pictures of the first ``keep_images`` pairs, keyed
    by (pair, "structure" | "appearance" | method); ``unavailable`` maps methods that were
    asked for but not measured to the reason.
    """

    model: str
    is_tiny: bool
    size: int
    config: dict
    methods: tuple[str, ...]
    rows: list[MethodRow] = field(default_factory=list)
    pairs: list[PairRow] = field(default_factory=list)
    summaries: dict[str, MethodSummary] = field(default_factory=dict)
    pair_summary: PairSummary | None = None
    unavailable: dict[str, str] = field(default_factory=dict)
    images: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)

    def summarise(self) -> None:
        """(Re)compute :attr:`summaries` and :attr:`pair_summary` from the rows."""
        self.summaries = {}
        for m in self.methods:
            rows = [r for r in self.rows if r.method == m]
            self.summaries[m] = MethodSummary(
                m, len(rows), Stat.of(r.part_colour for r in rows),
                Stat.of(r.part_colour_chance for r in rows),
                Stat.of(r.background_mae for r in rows),
                Stat.of(r.background_psnr for r in rows),
                sum(1 for r in rows if r.background_psnr == float("inf")),
                Stat.of(r.silhouette_iou for r in rows), Stat.of(r.seconds for r in rows))
        p = self.pairs
        self.pair_summary = PairSummary(
            len(p), Stat.of(r.pck for r in p), Stat.of(r.pck_chance for r in p),
            Stat.of(r.pck_ceiling for r in p),
            Stat.of([r.vae_psnr_structure for r in p] + [r.vae_psnr_appearance for r in p]),
            Stat.of(r.part_colour_structure for r in p),
            Stat.of(r.silhouette_iou_structure for r in p),
            Stat.of(r.inversion_seconds for r in p), Stat.of(r.dift_seconds for r in p))


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
    from ..models.dift import dift_features

    with lab.models.in_use():
        return dift_features(lab.models, image, timestep=config.dift_timestep,
                             block=config.dift_block, ensemble=config.dift_ensemble,
                             prompt=prompt, seed=config.seed).features


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
