"""Stage 1: images, bounding boxes and masks.

Images are loaded as RGB (EXIF orientation applied, transparency composited on a
stated background, 16-bit and CMYK and palette images converted), then fitted to
the model resolution: ``stretch`` (the reference's behaviour), ``center-crop`` or
``pad``, with a bicubic filter (the published code's, Pillow's default) or Lanczos.
Boxes are ``[x0, y0, x1, y1]`` in model-resolution pixels. Masks are float tensors of
0/1 at any resolution; :func:`matching_mask` and :func:`adain_masks` bring them to a
layer or latent grid the way the published code does (or by area averaging), and
:func:`mask_at` is the area rule used for display and analysis.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import FIT_MODES, MASK_RESIZE_MODES, RESAMPLE_MODES
from .errors import BoxError, ImageError, MaskError

log = logging.getLogger(__name__)

#: Refuse images larger than this many pixels before decoding them (bomb guard).
MAX_PIXELS = 64_000_000
#: Background on which transparent images are composited (RGB 0-255).
DEFAULT_BACKGROUND = (255, 255, 255)

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]


@dataclass
class LoadedImage:
    """An image fitted to the model resolution.

    ``pixels`` is (3, H, W) float32 in [0, 1]. ``digest`` is the SHA-256 of the fitted
    8-bit pixels: the content key used by the inversion cache.
    """

    name: str
    pixels: torch.Tensor
    original_size: tuple[int, int]  # (width, height) before fitting, EXIF orientation applied
    fit: str
    source: str | None = None
    resample: str = "bicubic"

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) at model resolution."""
        return int(self.pixels.shape[2]), int(self.pixels.shape[1])

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.to_uint8().tobytes()).hexdigest()

    def to_uint8(self) -> np.ndarray:
        """(H, W, 3) uint8 array."""
        return to_uint8(self.pixels)

    def to_pil(self) -> Image.Image:
        return Image.fromarray(self.to_uint8())


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8."""
    arr = pixels.detach().float().clamp(0, 1).mul(255).round().byte().cpu()
    return arr.permute(1, 2, 0).contiguous().numpy()


def _open(path: Path) -> Image.Image:
    if not path.exists():
        raise ImageError(f"image '{path}' does not exist: check the path")
    if path.is_dir():
        raise ImageError(f"image '{path}' is a folder, not an image file")
    if path.stat().st_size == 0:
        raise ImageError(f"image '{path}' is an empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image '{path}' declares absurdly large dimensions ({exc}); "
                         f"refused before decoding (limit {MAX_PIXELS / 1e6:.0f} MP): "
                         "downscale it first") from None
    except UnidentifiedImageError as exc:
        raise ImageError(f"image '{path}' cannot be read as an image ({exc}); "
                         "give a PNG, JPEG, WebP or other format Pillow reads") from None
    except OSError as exc:
        raise ImageError(f"image '{path}' cannot be opened: {exc}") from None
    _check_dimensions(img.size, str(path))
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"image '{path}' is damaged or truncated ({exc}); "
                         "re-export or re-download it") from None
    return img


def check_image_file(path: str | os.PathLike) -> tuple[int, int]:
    """Open and decode an image file only to validate it; returns its (width, height).

    Raises the same :class:`ImageError` as :func:`load_image`, so a command line can
    refuse a bad file before it loads any model.
    """
    img = _open(Path(path))
    try:
        return img.size
    finally:
        img.close()


def _check_dimensions(size: tuple[int, int], name: str):
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageError(f"image '{name}' has zero size ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise ImageError(f"image '{name}' is {w}x{h} = {w * h / 1e6:.0f} megapixels, over the "
                         f"{MAX_PIXELS / 1e6:.0f} MP limit (possible decompression bomb); "
                         "downscale it first")


def to_rgb(img: Image.Image, background: tuple[int, int, int] = DEFAULT_BACKGROUND
           ) -> Image.Image:
    """Convert any Pillow image to 8-bit RGB, correctly.

    EXIF orientation is applied; alpha (RGBA, LA, palette transparency) is composited
    on ``background``; 16/32-bit integer and float greyscale are rescaled rather than
    clipped; CMYK, YCbCr, LAB and palette images go through Pillow's conversions.
    """
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # broken EXIF must not make the image unusable
        log.warning("ignoring unreadable EXIF orientation")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        if img.mode == "F":
            finite = arr[np.isfinite(arr)]
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
            arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        elif img.mode.startswith("I;16"):
            arr = arr / 65535.0
        else:  # 32-bit "I": the smallest of the 8/16/32-bit ranges that holds the data
            top = arr.max(initial=0)
            arr = arr / (255.0 if top <= 255 else 65535.0 if top <= 65535 else 2.0 ** 31 - 1)
        grey = np.clip(np.nan_to_num(arr) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    # alpha bands, or a tRNS transparent colour/palette entry (P, L and RGB PNGs)
    has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        img.mode in ("P", "L", "RGB") and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return img.convert("RGB")


_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


def fit_image(img: Image.Image, size: int | tuple[int, int], fit: str = "stretch",
              background: tuple[int, int, int] = DEFAULT_BACKGROUND,
              resample: str = "bicubic") -> Image.Image:
    """Fit an RGB image to ``size`` (an int for square, or (width, height)).

    ``resample`` is the filter: ``bicubic`` (the published code resizes with Pillow's
    default, bicubic) or ``lanczos``.
    """
    if fit not in FIT_MODES:
        raise ImageError(f"fit mode '{fit}' is unknown: use one of {', '.join(FIT_MODES)}")
    if resample not in RESAMPLE_MODES:
        raise ImageError(f"resample filter '{resample}' is unknown: use one of "
                         f"{', '.join(RESAMPLE_MODES)}")
    wh = (size, size) if isinstance(size, (int, np.integer)) else size
    if not (isinstance(wh, (tuple, list)) and len(wh) == 2 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in wh)):
        raise ImageError(f"target size {size!r} must be a positive integer or (width, height)")
    tw, th = int(wh[0]), int(wh[1])
    w, h = img.size
    resample = _FILTERS[resample]
    if fit == "stretch":
        return img.resize((tw, th), resample)
    if fit == "center-crop":
        scale = max(tw / w, th / h)
        cw, ch = max(1, min(w, round(tw / scale))), max(1, min(h, round(th / scale)))
        left, top = (w - cw) // 2, (h - ch) // 2
        return img.crop((left, top, left + cw, top + ch)).resize((tw, th), resample)
    scale = min(tw / w, th / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new("RGB", (tw, th), tuple(background))
    canvas.paste(img.resize((nw, nh), resample), ((tw - nw) // 2, (th - nh) // 2))
    return canvas


def load_image(source: ImageLike, size: int | tuple[int, int] = 512, fit: str = "stretch",
               name: str | None = None,
               background: tuple[int, int, int] = DEFAULT_BACKGROUND,
               resample: str = "bicubic") -> LoadedImage:
    """Load a file path, PIL image, (H, W[, C]) uint8 array or (3, H, W) tensor in [0, 1]."""
    src = None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        src, name = str(path), name or path.name
        img = _open(path)
    elif isinstance(source, Image.Image):
        _check_dimensions(source.size, name or "image")
        img = source
    elif isinstance(source, np.ndarray):
        img = _array_to_pil(source, name or "array")
    elif isinstance(source, torch.Tensor):
        if source.ndim != 3 or source.shape[0] != 3:
            raise ImageError(f"image tensor '{name or 'tensor'}' must be (3, H, W) in [0, 1], "
                             f"got shape {tuple(source.shape)}")
        img = Image.fromarray(to_uint8(source))
    else:
        raise ImageError(f"cannot load an image from a {type(source).__name__}: give a path, "
                         "a PIL image, a numpy array or a (3, H, W) tensor")
    name = name or "image"
    upright = to_rgb(img, background)
    original = upright.size  # after EXIF orientation: the size the user sees
    rgb = fit_image(upright, size, fit, background, resample)
    pixels = torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1)
    return LoadedImage(name=name, pixels=pixels.float() / 255.0, original_size=original,
                       fit=fit, source=src, resample=resample)


def _array_to_pil(arr: np.ndarray, name: str) -> Image.Image:
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or 0 in arr.shape:
        raise ImageError(f"image array '{name}' must be (H, W), (H, W, 3) or (H, W, 4), "
                         f"got shape {arr.shape}")
    _check_dimensions((arr.shape[1], arr.shape[0]), name)
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            arr = np.clip(np.nan_to_num(arr) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        elif arr.dtype == np.uint16:
            arr = (arr // 257).astype(np.uint8)
        else:
            raise ImageError(f"image array '{name}' has dtype {arr.dtype}: use uint8, "
                             "uint16 or float in [0, 1]")
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[arr.shape[2]]
    return Image.fromarray(arr[..., 0] if mode == "L" else arr, mode)


# ---------------------------------------------------------------- boxes -----

Box = tuple[int, int, int, int]


def parse_box(value, size: tuple[int, int], name: str = "box", clip: bool = True) -> Box:
    """Validate ``[x0, y0, x1, y1]`` for an image of ``size`` = (width, height).

    Coordinates must be finite numbers with x0 < x1 and y0 < y1. Boxes reaching
    past the image are clipped to it (documented behaviour) when ``clip`` is true;
    a box entirely outside, or of zero area after clipping, is refused.
    """
    w, h = size
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 1:
        value = value.tolist()  # a box from a widget or an array of boxes
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise BoxError(f"{name} must be four numbers [x0, y0, x1, y1], got {value!r}")
    vals = list(value)
    if len(vals) != 4:
        raise BoxError(f"{name} must be four numbers [x0, y0, x1, y1], got {len(vals)} values")
    nums = []
    for v in vals:
        if isinstance(v, (bool, np.bool_)) or not isinstance(
                v, (int, float, np.integer, np.floating)):
            raise BoxError(f"{name} has a non-numeric coordinate {v!r}; use numbers in pixels")
        try:
            f = float(v)
        except OverflowError:  # an integer too large for a float
            f = math.inf
        if not math.isfinite(f):
            raise BoxError(f"{name} has a non-finite or absurdly large coordinate {v!r}")
        nums.append(f)
    x0, y0, x1, y1 = nums
    if x1 <= x0 or y1 <= y0:
        raise BoxError(f"{name} {vals} is inverted or has zero area: need x0 < x1 and y0 < y1")
    if clip:
        cx0, cy0 = max(0.0, x0), max(0.0, y0)
        cx1, cy1 = min(float(w), x1), min(float(h), y1)
        if cx1 - cx0 < 1 or cy1 - cy0 < 1:
            raise BoxError(f"{name} {vals} lies outside the {w}x{h} image; boxes are in "
                           "model-resolution pixels")
        x0, y0, x1, y1 = cx0, cy0, cx1, cy1
    elif x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        raise BoxError(f"{name} {vals} reaches outside the {w}x{h} image")
    return (int(math.floor(x0)), int(math.floor(y0)), int(math.ceil(x1)), int(math.ceil(y1)))


def _read_json(path: Path, what: str):
    """A small JSON file parsed as data, with a :class:`BoxError` naming ``what``."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BoxError(f"{what} '{path}' is not UTF-8 text ({exc.reason} at byte "
                       f"{exc.start}): give a JSON file") from None
    except OSError as exc:
        raise BoxError(f"{what} '{path}' cannot be read: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BoxError(f"{what} '{path}' is not valid JSON ({exc})") from None
    except RecursionError:
        raise BoxError(f"{what} '{path}' is nested too deeply to be a {what}") from None


def load_boxes(path: str | os.PathLike) -> dict[str, list[float]]:
    """Read a boxes JSON file: ``{"file name": [x0, y0, x1, y1], ...}`` (parsed as data)."""
    p = Path(path)
    data = _read_json(p, "boxes file")
    if not isinstance(data, dict):
        raise BoxError(f"boxes file '{p}' must hold an object {{\"file name\": [x0, y0, x1, y1]}}")
    return data


def object_pairs(data, where: str) -> tuple[list[dict], int | list | None]:
    """The objects and ``_size`` of a multi-object pairs document::

        {"_size": 512, "objects": [{"target_box": [x0, y0, x1, y1], "appearance": PATH,
                                    "appearance_box": [...]}, ...]}

    (boxes optional; ``_size`` the resolution the boxes were drawn at). ``where`` names
    the document in errors.
    """
    objects = data.get("objects") if isinstance(data, dict) else None
    if not isinstance(objects, list) or not objects:
        raise BoxError(f'{where} must be an object {{"_size": 512, "objects": '
                       '[{"target_box": [...], "appearance": PATH, "appearance_box": '
                       "[...]}, ...]} with at least one object")
    for n, obj in enumerate(objects):
        if not isinstance(obj, dict) or obj.get("appearance") is None:
            raise BoxError(f'{where}: objects[{n}] must be an object with "appearance": '
                           f"PATH, got {obj!r}")
    return objects, data.get("_size")


def load_object_pairs(path: str | os.PathLike) -> tuple[list[dict], int | list | None]:
    """Read a ``--pairs`` JSON file (:func:`object_pairs`); appearance paths are made
    relative to the file's folder. Returns (objects, ``_size``)."""
    p = Path(path)
    where = f"pairs file '{p}'"
    objects, size = object_pairs(_read_json(p, "pairs file"), where)
    for n, obj in enumerate(objects):
        if not isinstance(obj["appearance"], str):
            raise BoxError(f"{where}: objects[{n}].appearance must be a path, "
                           f"got {obj['appearance']!r}")
    return [{**obj, "appearance": str(p.parent / obj["appearance"])} for obj in objects], size


def save_boxes(path: str | os.PathLike, boxes: dict[str, Sequence[float]],
               size: int | tuple[int, int] | None = None) -> None:
    """Write a boxes JSON file (atomically); ``size`` records the resolution they are in."""
    from .cache import atomic_write_text

    data: dict = {} if size is None else {"_size": size if isinstance(size, int) else list(size)}
    data.update({k: [int(round(v)) for v in b] for k, b in boxes.items()})
    atomic_write_text(Path(path), json.dumps(data, indent=2))


def scale_boxes(boxes: dict, size: tuple[int, int]) -> dict:
    """Boxes rescaled from the resolution they declare (``"_size"``) to ``size`` = (w, h).

    A boxes file may say at which model resolution its boxes were drawn, as
    ``"_size": 512`` or ``"_size": [w, h]``; without it boxes are taken as they are.
    """
    if not isinstance(boxes, dict):
        raise BoxError(f'boxes must be an object {{"file name": [x0, y0, x1, y1]}}, '
                       f"got a {type(boxes).__name__}")
    declared = boxes.get("_size")
    out = {k: v for k, v in boxes.items() if not str(k).startswith("_")}
    if declared is None:
        return out
    if isinstance(declared, (int, float)) and not isinstance(declared, bool):
        declared = (declared, declared)
    if (not isinstance(declared, (list, tuple)) or len(declared) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                       and 0 < v < 1e9 for v in declared)):
        raise BoxError(f'boxes "_size" must be a positive number or [width, height], '
                       f"got {declared!r}")
    sx, sy = size[0] / declared[0], size[1] / declared[1]
    scaled = {}
    for k, v in out.items():
        try:
            if isinstance(v, (list, tuple)) and len(v) == 4 and all(
                    isinstance(c, (int, float)) and not isinstance(c, bool) for c in v):
                scaled[k] = [v[0] * sx, v[1] * sy, v[2] * sx, v[3] * sy]
                continue
        except OverflowError:  # an integer too large for a float
            pass
        scaled[k] = v  # left for parse_box to report
    return scaled


def lookup_box(boxes: dict, image_name: str) -> list[float] | None:
    """The box for an image: exact file name, then the name without folders, then the stem."""
    if not boxes:
        return None
    base = Path(image_name).name
    for key in (image_name, base, Path(base).stem):
        if key in boxes:
            return boxes[key]
    stems = {Path(k).stem: v for k, v in boxes.items()}
    return stems.get(Path(base).stem)


# ---------------------------------------------------------------- masks -----

def box_mask(box: Box, size: tuple[int, int]) -> torch.Tensor:
    """(H, W) float mask of 1 inside ``box`` for an image of ``size`` = (width, height)."""
    w, h = size
    m = torch.zeros(h, w)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = 1.0
    return m


def full_mask(size: tuple[int, int]) -> torch.Tensor:
    w, h = size
    return torch.ones(h, w)


def load_mask(path: str | os.PathLike | None, fit: str = "stretch") -> torch.Tensor | None:
    """An (H, W) 0/1 mask from an image file (white or any value >= 128 = object), at the
    file's own size (``Lab.pair`` brings it to the model size), or None without a path.
    Only ``stretch`` fitting keeps a mask aligned with its image."""
    if path is None:
        return None
    if fit != "stretch":
        raise MaskError(f"mask '{path}' can only be used with --fit stretch (got {fit})")
    img = _open(Path(path))
    return as_mask(np.array(img.convert("L")), name=f"mask '{path}'")


def as_mask(mask, size: tuple[int, int] | None = None, name: str = "mask") -> torch.Tensor:
    """Validate a user mask (array or tensor, bool/0-1/0-255) as an (H, W) float 0/1 tensor.

    With ``size`` = (width, height), a mask of another size is resized (nearest).
    """
    try:
        m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    except (TypeError, ValueError) as exc:
        raise MaskError(f"{name} must be a 2-D (H, W) array of numbers or booleans, got a "
                        f"{type(mask).__name__} ({exc})") from None
    while m.ndim > 2 and 1 in (m.shape[0], m.shape[-1]):  # (1, H, W), (H, W, 1), (1, 1, H, W)
        m = m.squeeze(0) if m.shape[0] == 1 else m.squeeze(-1)
    if m.ndim != 2 or 0 in m.shape:
        raise MaskError(f"{name} must be a 2-D (H, W) array, got shape {tuple(m.shape)}")
    if m.is_complex():
        raise MaskError(f"{name} has complex values: give booleans, 0/1 or 0-255 values")
    m = m.float()
    if not torch.isfinite(m).all():
        raise MaskError(f"{name} contains NaN or Inf values")
    if m.max() > 1:
        m = m / 255.0
    m = (m >= 0.5).float()
    if size is not None and (m.shape[1], m.shape[0]) != tuple(size):
        m = F.interpolate(m[None, None], size=(size[1], size[0]), mode="nearest")[0, 0]
    return m


def mask_at(mask: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Resize an (H, W) mask to a grid ``shape`` = (h, w): area average, then >= 0.5.

    A thin object that would vanish at a coarse grid keeps every cell it touches.
    """
    m = mask.float()
    if tuple(m.shape) == tuple(shape):
        return (m >= 0.5).float()
    area = F.interpolate(m[None, None], size=tuple(shape), mode="area")[0, 0]
    out = (area >= 0.5).float()
    if out.sum() == 0 and m.sum() > 0:
        out = (area > 0).float()
    return out


def mask_weights(mask: torch.Tensor, shape: tuple[int, int],
                 mode: str = "reference") -> torch.Tensor:
    """An (H, W) 0/1 mask on a grid ``shape`` = (h, w), as soft weights in [0, 1].

    ``reference``: bilinear resizing without antialiasing (``align_corners=False``), as
    the published code resizes its SAM masks for matching and AdaIN; ``area``: the
    binary :func:`mask_at`.
    """
    if mode not in MASK_RESIZE_MODES:
        raise ValueError(f"mask resize mode {mode!r} is unknown: use one of "
                         f"{', '.join(MASK_RESIZE_MODES)}")
    if mode == "area":
        return mask_at(mask, shape)
    m = mask.float()
    if tuple(m.shape) == tuple(shape):
        return m
    return F.interpolate(m[None, None], size=tuple(shape), mode="bilinear",
                         align_corners=False, antialias=False)[0, 0]


def matching_mask(mask: torch.Tensor, shape: tuple[int, int],
                  mode: str = "reference") -> torch.Tensor:
    """The 0/1 cells of ``shape`` that take part in matching.

    ``reference``: every cell with a positive bilinear weight (the published code
    multiplies features by the resized mask and matches every non-zero vector).
    """
    return (mask_weights(mask, shape, mode) > 0).float()


def adain_masks(mask: torch.Tensor, shape: tuple[int, int],
                mode: str = "reference") -> tuple[torch.Tensor, torch.Tensor]:
    """(statistics mask, blending weights) of a mask on the latent grid ``shape``.

    ``reference``: statistics over the cells whose bilinear weight is 1 (the published
    code tests ``== 1``; we allow 1e-6 of rounding so that interpolation weights at
    non-integer scale ratios cannot drop interior cells) and blending with the soft
    weights, so object edges are blended partially. ``area``: both the binary mask.
    """
    weights = mask_weights(mask, shape, mode)
    if mode == "area":
        return weights, weights
    return (weights >= 1 - 1e-6).float(), weights


def require_nonempty(mask: torch.Tensor, name: str) -> None:
    if mask.sum() == 0:
        raise MaskError(f"{name} is empty (no pixel selected): draw a larger box, pick another "
                        "SAM point, or use --mask box / --mask none")
