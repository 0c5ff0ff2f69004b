"""The input formats: boxes, the boxes JSON and the multi-object pairs JSON.

Boxes are ``[x0, y0, x1, y1]`` in model-resolution pixels. A boxes JSON maps file
names to boxes, ``{"_size": 512, "cat.png": [x0, y0, x1, y1], ...}``; a pairs JSON
(``--pairs``) lists object pairs, ``{"_size": 512, "objects": [{"target_box": [...],
"appearance": PATH, "appearance_box": [...]}, ...]}``. Either may declare the resolution
its boxes were drawn at (``"_size"``). Files are parsed as data, never evaluated; a bad
file raises :class:`~e4e_lab.errors.BoxError`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from ..errors import BoxError

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
