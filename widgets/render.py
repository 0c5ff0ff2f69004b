"""Turning tensors into pixels for display: uint8 conversion, colour maps, overlays, PNG.

Pure numpy/Pillow (no widget classes), so that the cost of a click can be measured
without a frontend (``benchmarks/bench_explorer_click.py``).
"""

from __future__ import annotations

import colorsys
import io
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

# Anchor colours of the heat colour map (dark violet -> red -> pale yellow), interpolated
# to a 256-entry table once.
_HEAT_ANCHORS = [(0.00, (4, 4, 20)), (0.25, (78, 22, 120)), (0.50, (180, 50, 120)),
                 (0.75, (248, 130, 90)), (1.00, (252, 250, 190))]
_GREY_ANCHORS = [(0.0, (0, 0, 0)), (1.0, (255, 255, 255))]


def _table(anchors) -> np.ndarray:
    xs = np.linspace(0.0, 1.0, 256)
    pos = [a[0] for a in anchors]
    return np.stack([np.interp(xs, pos, [a[1][ch] for a in anchors]) for ch in range(3)],
                    axis=1).round().astype(np.uint8)


COLORMAPS = {"heat": _table(_HEAT_ANCHORS), "grey": _table(_GREY_ANCHORS)}

# Colours (RGB) used across the widgets.
TARGET_COLOR = (0, 220, 255)
MATCH_COLOR = (255, 60, 60)
OBJECT_COLOR = (40, 200, 80)
BACKGROUND_COLOR = (230, 40, 40)
UNUSED_COLOR = (255, 0, 200)


def hue_color(hue: float, saturation: float = 0.85, value: float = 1.0) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, saturation, value)
    return round(r * 255), round(g * 255), round(b * 255)


def palette_hue(n: int) -> float:
    """Hue of the n-th colour of a palette: golden-ratio steps, so that every prefix of
    the sequence is spread around the colour wheel."""
    return (0.08 + n * 0.618034) % 1.0


def palette(count: int) -> list[tuple[int, int, int]]:
    """``count`` distinct saturated colours (parts, pairs)."""
    return [hue_color(palette_hue(n)) for n in range(count)]


def pair_colors(n: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(target, reference) box colours of pair n: one hue per pair, the target's strong
    and the reference's pale, so a pair reads as one colour family."""
    hue = palette_hue(n)
    return hue_color(hue, 1.0, 0.95), hue_color(hue, 0.45, 1.0)


def css(color: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*color)


def ink(background: tuple[int, int, int]) -> str:
    """Black or white, whichever reads better on ``background`` (relative luminance)."""
    r, g, b = background
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 140 else "white"


def to_uint8(image) -> np.ndarray:
    """(H, W, 3) uint8 from a (3, H, W) float tensor in [0, 1], a LoadedImage, or an array."""
    if hasattr(image, "to_uint8"):
        return image.to_uint8()
    if isinstance(image, torch.Tensor):
        arr = image.detach().float().clamp(0, 1).mul(255).round().byte().cpu()
        return arr.permute(1, 2, 0).numpy() if arr.ndim == 3 else arr.numpy()
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    return arr


def as_numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float32)


@lru_cache(maxsize=64)
def _nearest_index(src: int, dst: int) -> np.ndarray:
    return np.minimum((np.arange(dst) * src) // dst, src - 1)


def resize_nearest(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an (h, w, ...) array (grid cells stay crisp)."""
    h, w = arr.shape[:2]
    if (h, w) == (height, width):
        return arr
    return arr[_nearest_index(h, height)][:, _nearest_index(w, width)]


def resize_smooth(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear (Pillow) resize of an (h, w, 3|4) uint8 image."""
    if arr.shape[:2] == (height, width):
        return arr
    return np.asarray(Image.fromarray(arr).resize((width, height), Image.BILINEAR))


def normalize(values: np.ndarray, valid: np.ndarray | None = None,
              vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Scale to [0, 1] by [vmin, vmax] (default: min and max over the valid entries)."""
    v = values if valid is None or not valid.any() else values[valid]
    lo = float(v.min()) if vmin is None else vmin
    hi = float(v.max()) if vmax is None else vmax
    return np.clip((values - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)


def colorize(values, cmap: str = "heat", valid=None, vmin=None, vmax=None) -> np.ndarray:
    """(h, w) values -> (h, w, 3) uint8 through a colour table."""
    v = as_numpy(values)
    ok = None if valid is None else as_numpy(valid) > 0
    idx = (normalize(v, ok, vmin, vmax) * 255).astype(np.uint8)
    return COLORMAPS[cmap][idx]


def heat_rgba(values, opacity: float = 0.6, valid=None, cmap: str = "heat",
              vmin=None, vmax=None, invalid_opacity: float = 0.15) -> np.ndarray:
    """(h, w, 4) uint8 overlay: colour-mapped values; cells outside ``valid`` fainter."""
    v = as_numpy(values)
    rgba = np.empty(v.shape + (4,), dtype=np.uint8)
    rgba[..., :3] = colorize(v, cmap, valid, vmin, vmax)
    alpha = np.full(v.shape, opacity * 255, dtype=np.float32)
    if valid is not None:
        alpha[as_numpy(valid) <= 0] = invalid_opacity * 255
    rgba[..., 3] = alpha.round().astype(np.uint8)
    return rgba


def mask_rgba(mask, color=OBJECT_COLOR, opacity: float = 0.5) -> np.ndarray:
    """(h, w, 4) uint8: ``color`` where the mask is set, transparent elsewhere."""
    m = as_numpy(mask) > 0
    rgba = np.zeros(m.shape + (4,), dtype=np.uint8)
    rgba[m, :3] = color
    rgba[m, 3] = int(round(opacity * 255))
    return rgba


def label_rgba(labels, colors, opacity: float = 0.55, highlight: int | None = None,
               dim: float = 0.15) -> np.ndarray:
    """(h, w, 4) uint8 overlay of an (h, w) label map: label i in ``colors[i]``, negative
    labels transparent; with ``highlight`` the other labels are faded to ``dim``."""
    lab = np.asarray(as_numpy(labels), dtype=np.int64)
    table = np.zeros((len(colors) + 1, 4), dtype=np.uint8)  # last row: transparent
    table[:-1, :3] = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    table[:-1, 3] = round(opacity * 255)
    if highlight is not None:
        table[:-1, 3] = round(dim * 255)
        table[highlight, 3] = round(max(opacity, 0.75) * 255)
    return table[np.where(lab >= 0, lab, len(colors))]


def composite(image: np.ndarray, overlay: np.ndarray) -> np.ndarray:
    """Alpha-blend an (h, w, 4) overlay (resized to the image) over an (H, W, 3) image."""
    h, w = image.shape[:2]
    ov = resize_nearest(overlay, h, w).astype(np.float32)
    a = ov[..., 3:4] / 255.0
    return (image.astype(np.float32) * (1 - a) + ov[..., :3] * a).round().astype(np.uint8)


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def display_shape(image_size: tuple[int, int], display_size: int) -> tuple[int, int]:
    """(height, width) on screen of an image of ``image_size`` = (width, height) whose
    longer side is shown at ``display_size`` pixels."""
    w, h = image_size
    s = display_size / max(w, h)
    return max(1, round(h * s)), max(1, round(w * s))
