"""Stage 1: images, loaded and fitted to the model resolution.

Images are loaded as RGB (EXIF orientation applied, transparency composited on a
stated background, 16-bit and CMYK and palette images converted), then fitted to
the model resolution: ``stretch`` (the reference's behaviour), ``center-crop`` or
``pad``, with a bicubic filter (the published code's, Pillow's default) or Lanczos.
Their boxes are read by :mod:`e4e_lab.io.formats` and their masks are made and resized
by :mod:`e4e_lab.method.masks`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError
from ..io.files import require_regular_file
from .config import FIT_MODES, MAX_SIZE, RESAMPLE_MODES

log = logging.getLogger(__name__)

#: Refuse images larger than this many pixels before decoding them (bomb guard).
MAX_PIXELS = 64_000_000
#: Background on which transparent images are composited (RGB 0-255).
DEFAULT_BACKGROUND = (255, 255, 255)

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor, bytes, bytearray,
                  memoryview, io.BytesIO]


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


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8."""
    arr = pixels.detach().float().clamp(0, 1).mul(255).round().byte().cpu()
    return arr.permute(1, 2, 0).contiguous().numpy()


def open_image(path: Path) -> Image.Image:
    """Open and decode an image file, refusing missing, empty, damaged and bomb-sized
    files with an :class:`ImageError` that names the file."""
    if require_regular_file(path, "image", ImageError).st_size == 0:
        raise ImageError(f"image '{path}' is an empty file (0 bytes)")
    return _decode(path, str(path))


#: Encoded bytes given in memory (an upload) larger than this are refused unread.
MAX_ENCODED_BYTES = 256 * 2**20
BytesLike = Union[bytes, bytearray, memoryview, io.BytesIO]


def open_image_bytes(data: BytesLike, name: str = "upload") -> Image.Image:
    """Decode an encoded image (PNG, JPEG...) held in memory, e.g. the bytes of a
    notebook upload, with the checks and messages of :func:`open_image`."""
    raw = data.getvalue() if isinstance(data, io.BytesIO) else bytes(data)
    if not raw:
        raise ImageError(f"image '{name}' is empty (0 bytes)")
    if len(raw) > MAX_ENCODED_BYTES:
        raise ImageError(f"image '{name}' is {len(raw) / 2**20:.0f} MiB, over the "
                         f"{MAX_ENCODED_BYTES // 2**20} MiB limit for an image: downscale it")
    return _decode(io.BytesIO(raw), name)


def _decode(fp, name: str) -> Image.Image:
    """Open and fully decode ``fp`` (a path or a binary buffer) named ``name``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(fp)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image '{name}' declares absurdly large dimensions ({exc}); "
                         f"refused before decoding (limit {MAX_PIXELS / 1e6:.0f} MP): "
                         "downscale it first") from None
    except UnidentifiedImageError:  # Pillow's text names its buffer object: not useful
        raise ImageError(f"image '{name}' cannot be read as an image (its bytes are in no "
                         "format Pillow knows); give a PNG, JPEG, WebP or other format "
                         "Pillow reads") from None
    except OSError as exc:
        raise ImageError(f"image '{name}' cannot be opened: {exc}") from None
    _check_dimensions(img.size, name)
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"image '{name}' is damaged or truncated ({exc}); "
                         "re-export or re-download it") from None
    return img


def check_image_file(path: str | os.PathLike) -> tuple[int, int]:
    """Open and decode an image file only to validate it; returns its (width, height).

    Raises the same :class:`ImageError` as :func:`load_image`, so a command line can
    refuse a bad file before it loads any model.
    """
    img = open_image(Path(path))
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
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 1 <= v <= MAX_SIZE
            for v in wh)):
        raise ImageError(f"target size {size!r} must be a positive integer up to {MAX_SIZE} "
                         "or (width, height)")
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
    """Load a file path, PIL image, (H, W[, C]) uint8 array, (3, H, W) tensor in [0, 1],
    or the encoded bytes of an image file (``bytes`` or ``io.BytesIO``, e.g. an upload)."""
    src = None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        src, name = str(path), name or path.name
        img = open_image(path)
    elif isinstance(source, (bytes, bytearray, memoryview, io.BytesIO)):
        img = open_image_bytes(source, name or "upload")
    elif isinstance(source, Image.Image):
        _check_dimensions(source.size, name or "image")
        img = source
    elif isinstance(source, np.ndarray):
        img = _array_to_pil(source, name or "array")
    elif isinstance(source, torch.Tensor):
        img = Image.fromarray(to_uint8(_tensor_pixels(source, name or "tensor")))
    else:
        raise ImageError(f"cannot load an image from a {type(source).__name__}: give a path, "
                         "a PIL image, a numpy array, a (3, H, W) tensor or an image file's bytes")
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
            _check_unit_range(arr, f"image array '{name}'")
            arr = np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)
        elif arr.dtype == np.uint16:
            arr = (arr // 257).astype(np.uint8)
        else:
            raise ImageError(f"image array '{name}' has dtype {arr.dtype}: use uint8 "
                             "(0..255), uint16 (0..65535) or float in [0, 1]")
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[arr.shape[2]]
    return Image.fromarray(arr[..., 0] if mode == "L" else arr, mode)


#: Float pixels may overshoot [0, 1] by this much (resampling ringing) and are clamped.
RANGE_TOLERANCE = 1e-3


def _check_unit_range(values, what: str) -> None:
    """Refuse NaN/Inf and float pixels outside [0, 1] (a 0..255 image would turn white)."""
    t = torch.as_tensor(values)
    if not bool(torch.isfinite(t).all()):
        raise ImageError(f"{what} holds NaN or Inf values: give finite pixels in [0, 1]")
    lo, hi = float(t.min()), float(t.max())
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        hint = (" (it looks like 0..255: divide by 255, or pass uint8)" if hi <= 255 and lo >= 0
                else "")
        raise ImageError(f"{what} has float values in [{lo:.4g}, {hi:.4g}], outside [0, 1]"
                         f"{hint}")


def _tensor_pixels(source: torch.Tensor, name: str) -> torch.Tensor:
    """A (3, H, W) image tensor as float in [0, 1]: uint8 is divided by 255, floats must
    already be in [0, 1]; empty, NaN/Inf and other dtypes are refused."""
    what = f"image tensor '{name}'"
    if source.ndim != 3 or source.shape[0] != 3:
        raise ImageError(f"{what} must be (3, H, W): 3 colour channels first, got shape "
                         f"{tuple(source.shape)}")
    if 0 in source.shape:
        raise ImageError(f"{what} is empty (shape {tuple(source.shape)}): give an image "
                         "with at least one pixel")
    _check_dimensions((int(source.shape[2]), int(source.shape[1])), name)
    if source.dtype == torch.uint8:
        return source.float() / 255.0
    if not source.dtype.is_floating_point:
        raise ImageError(f"{what} has dtype {source.dtype}: use float in [0, 1] or uint8 "
                         "(0..255)")
    _check_unit_range(source.detach(), what)
    return source


def check_image_source(source, argument: str) -> None:
    """Validate an in-memory image (array or tensor) given as ``argument`` before any
    work, so the error names the argument; paths, PIL and loaded images pass through
    (they are checked when loaded)."""
    if isinstance(source, torch.Tensor):
        _tensor_pixels(source, argument)
    elif isinstance(source, np.ndarray):
        _array_to_pil(source, argument)
