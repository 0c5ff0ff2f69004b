"""The input formats: boxes, mask modes, object specs, and the JSON files that hold them.

One reader and one writer per file format, used by the CLI, :class:`~e4e_lab.session.Lab`
and every widget:

- a **boxes JSON** maps image file names to boxes, ``{"_size": 512, "cat.png": [x0, y0,
  x1, y1], ...}`` (:func:`read_boxes`, :func:`write_boxes`, :func:`lookup_box`);
- a **pairs JSON** (``--pairs``) lists the objects of a multi-object run, ``{"_size": 512,
  "objects": [{"target_box": [...], "appearance": PATH, "appearance_box": [...]}, ...]}``,
  appearance paths relative to the file (:func:`read_pairs`, :func:`write_pairs`);
- a **pairs folder** (``e4e-lab evaluate --pairs-dir``) holds ``pairs.json``, a list of
  ``{"name", "appearance", "structure", "domain"}``, and optionally a ``boxes.json``
  (:func:`read_pairs_folder`).

Boxes are ``[x0, y0, x1, y1]`` in model pixels, or at the resolution a file declares
(``"_size": 512`` or ``[width, height]``), from which the readers rescale them. Files are
parsed as data, never evaluated; a bad file raises :class:`~e4e_lab.errors.BoxError`.
Nothing here imports torch: the command line checks its inputs before loading a model.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import numbers
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import BoxError, ConfigError, E4ELabWarning
from .files import read_json as _read_json
from .files import write_json as _write_json

Box = tuple[int, int, int, int]
Size = tuple[int, int]  # (width, height)
#: Bounds of a document's ``"_size"`` (pixels): beyond them the boxes would be rescaled
#: by absurd factors.
MIN_DECLARED_SIZE, MAX_DECLARED_SIZE = 8, 65536


class MaskMode(enum.StrEnum):
    """How the object mask of an image is made (``--mask``, ``Lab.pair(mask=...)``, the
    mask editor)."""

    AUTO = "auto"  #: SAM-HQ when a box is given and a checkpoint is found, else the box
    SAM = "sam"  #: SAM-HQ from the box (and clicks)
    BOX = "box"  #: the box itself
    NONE = "none"  #: the whole image

    @classmethod
    def parse(cls, value) -> "MaskMode":
        """``value`` as a mode, or a :class:`ConfigError` listing the modes."""
        try:
            return cls(value)
        except ValueError:
            raise ConfigError("mask", value, f"one of {', '.join(cls)}") from None

    def resolve(self, has_box: bool, sam_available: bool) -> "MaskMode":
        """The concrete mode: ``AUTO`` becomes ``SAM`` with a box and SAM-HQ, else ``BOX``."""
        if self is not MaskMode.AUTO:
            return self
        return MaskMode.SAM if has_box and sam_available else MaskMode.BOX


# ------------------------------------------------------------------ boxes --

def parse_box(value, size: Size, name: str = "box", clip: bool = True) -> Box:
    """Validate ``[x0, y0, x1, y1]`` for an image of ``size`` = (width, height).

    Coordinates must be finite numbers with x0 < x1 and y0 < y1. Boxes reaching
    past the image are clipped to it (documented behaviour) when ``clip`` is true;
    a box entirely outside, or of zero area after clipping, is refused.
    """
    w, h = size
    if hasattr(value, "tolist") and getattr(value, "ndim", None) == 1:
        value = value.tolist()  # a box from a widget: a numpy array or a tensor
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise BoxError(f"{name} must be four numbers [x0, y0, x1, y1], got {value!r}")
    vals = list(value)
    if len(vals) != 4:
        raise BoxError(f"{name} must be four numbers [x0, y0, x1, y1], got {len(vals)} values")
    nums = []
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):  # numpy scalars included
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


def declared_size(value, what: str = "boxes") -> Size | None:
    """A document's ``"_size"`` (a number or [width, height]) as (width, height), or None."""
    if value is None:
        return None
    given = value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value, value)
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                       and MIN_DECLARED_SIZE <= v <= MAX_DECLARED_SIZE for v in value)):
        raise BoxError(f'{what} "_size" must be the resolution the boxes were drawn at, a '
                       f"number of pixels in [{MIN_DECLARED_SIZE}, {MAX_DECLARED_SIZE}] or "
                       f"[width, height], got {given!r}")
    return value[0], value[1]


def rescale_box(box, drawn_at: Size | None, size: Size):
    """A box drawn at resolution ``drawn_at`` expressed at ``size`` (both (width, height));
    anything but four plain numbers is returned as it is, for :func:`parse_box` to report."""
    if drawn_at is None or box is None:
        return box
    sx, sy = size[0] / drawn_at[0], size[1] / drawn_at[1]
    try:
        if isinstance(box, (list, tuple)) and len(box) == 4 and all(
                isinstance(c, (int, float)) and not isinstance(c, bool) for c in box):
            return [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]
    except OverflowError:  # an integer too large for a float
        pass
    return box


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


def warn_unmatched(boxes: dict | None, names: Sequence[str]) -> None:
    """Warn (:class:`~e4e_lab.errors.E4ELabWarning`) when a boxes document names none of
    the images ``names`` that look a box up in it: each then gets a whole-image mask."""
    names = list(dict.fromkeys(names))
    if not boxes or not names or any(lookup_box(boxes, n) is not None for n in names):
        return
    keys = [k for k in boxes if not str(k).startswith("_")]
    shown = ", ".join(repr(k) for k in keys[:5]) + (", ..." if len(keys) > 5 else "")
    warnings.warn(f"the boxes file names none of the images ({', '.join(map(repr, names))}; "
                  f"its entries: {shown or 'none'}): whole-image masks are used. Name each "
                  "image by its file name or stem in the boxes file", E4ELabWarning,
                  stacklevel=3)


# ------------------------------------------------------------- JSON files --

def _size_entry(size: int | Sequence[int]):
    """How a document records its resolution: one number for a square, else [w, h]."""
    if isinstance(size, (int, float)):
        return size
    w, h = size
    return w if w == h else [w, h]


def read_boxes(source: str | os.PathLike | dict, size: Size | None = None) -> dict:
    """A boxes document, ``{"file name": [x0, y0, x1, y1], ...}``, from a JSON file or a dict.

    Its ``"_size"`` is checked. With ``size`` = (width, height) the boxes come rescaled
    from the declared resolution to ``size`` (without ``"_size"``, boxes are taken as
    they are) and keys starting with ``_`` are dropped; without ``size`` the document is
    returned as it is, for a later call with the model's size.
    """
    what = "boxes"
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        what, source = f"boxes file '{p}'", _read_json(p, "boxes file")
        if not isinstance(source, dict):
            raise BoxError(f"boxes file '{p}' must hold an object "
                           '{"file name": [x0, y0, x1, y1]}')
    if not isinstance(source, dict):
        raise BoxError(f'boxes must be an object {{"file name": [x0, y0, x1, y1]}}, '
                       f"got a {type(source).__name__}")
    drawn_at = declared_size(source.get("_size"), what)
    if size is None:
        return dict(source)
    return {k: rescale_box(v, drawn_at, size) for k, v in source.items()
            if not str(k).startswith("_")}


def write_boxes(path: str | os.PathLike, boxes: dict[str, Sequence[float]],
                size: int | Size, merge: bool = True) -> dict[str, list[int]]:
    """Write ``boxes`` (at resolution ``size``) as a boxes JSON, atomically.

    With ``merge`` an existing file is updated, not replaced: the boxes of other images
    are kept, and ours are written at the resolution the file declares (its
    ``"_size"``). Coordinates are rounded to whole pixels. Returns the boxes written.
    """
    p = Path(path)
    existing = read_boxes(p) if merge and p.is_file() else {}
    drawn_at = declared_size(existing.get("_size"))
    entry = _size_entry(size)
    if drawn_at is not None:
        wh = (size, size) if isinstance(size, (int, float)) else tuple(size)
        boxes = {k: rescale_box(list(b), wh, drawn_at) for k, b in boxes.items()}
        entry = existing["_size"]
    merged = {k: v for k, v in existing.items() if not str(k).startswith("_")}
    merged.update(boxes)
    written = {k: [int(round(v)) for v in b] for k, b in merged.items()}
    _write_json(p, {"_size": entry, **written})
    return written


@dataclass(frozen=True)
class ObjectSpec:
    """One object of a multi-object run: a target region of the structure image takes its
    colours from a region of an appearance image.

    ``appearance`` is an image path, an image or a ``LoadedImage``; a box missing means
    the whole image, a mask given replaces the one made from the box. ``boxes_size`` is
    the resolution (width, height) the boxes were drawn at (None: model pixels).
    """

    appearance: Any
    target_box: Any = None
    appearance_box: Any = None
    target_mask: Any = None
    appearance_mask: Any = None
    boxes_size: Size | None = None

    @classmethod
    def from_dict(cls, obj, where: str, boxes_size: Size | None = None) -> "ObjectSpec":
        """An object of a pairs document (a spec is returned as it is)."""
        if isinstance(obj, ObjectSpec):
            return obj
        if not isinstance(obj, dict) or obj.get("appearance") is None:
            raise BoxError(f'{where} must be an object with "appearance": PATH, got {obj!r}')
        return cls(obj["appearance"], obj.get("target_box"), obj.get("appearance_box"),
                   obj.get("target_mask"), obj.get("appearance_mask"), boxes_size)

    def boxes_at(self, size: Size) -> tuple[Any, Any]:
        """(target box, appearance box) rescaled to ``size`` (not yet validated)."""
        return (rescale_box(self.target_box, self.boxes_size, size),
                rescale_box(self.appearance_box, self.boxes_size, size))


def read_pairs(source: str | os.PathLike | dict | list, folder: str | os.PathLike | None = None
               ) -> list[ObjectSpec]:
    """The objects of a pairs document: a ``--pairs`` JSON file, a dict, or a list of
    objects (dicts or :class:`ObjectSpec`).

    Appearance paths are made relative to the file's folder (to ``folder`` for a dict or
    a list); every spec carries the document's ``"_size"`` as its ``boxes_size``.
    """
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        where, folder, data = f"pairs file '{p}'", p.parent, _read_json(p, "pairs file")
    else:
        where, data = "the given pairs", {"objects": source} if isinstance(source, list) \
            else source
    objects = data.get("objects") if isinstance(data, dict) else None
    if not isinstance(objects, list) or not objects:
        raise BoxError(f'{where} must be an object {{"_size": 512, "objects": '
                       '[{"target_box": [...], "appearance": PATH, "appearance_box": '
                       "[...]}, ...]} with at least one object")
    drawn_at = declared_size(data.get("_size"), where)
    specs = []
    for n, obj in enumerate(objects):
        spec = ObjectSpec.from_dict(obj, f"{where}: objects[{n}]", drawn_at)
        if isinstance(source, (str, os.PathLike)) and not isinstance(spec.appearance, str):
            raise BoxError(f"{where}: objects[{n}].appearance must be a path, "
                           f"got {spec.appearance!r}")
        if folder is not None and isinstance(spec.appearance, str):
            spec = dataclasses.replace(spec, appearance=str(Path(folder) / spec.appearance))
        specs.append(spec)
    return specs


def pairs_document(objects: Sequence[ObjectSpec], size: int | Size,
                   folder: str | os.PathLike = ".") -> dict:
    """The pairs JSON document of ``objects`` (boxes at resolution ``size``, recorded as
    ``"_size"``); appearance images that are files are named relative to ``folder``,
    the others by name. Masks are not part of the format."""
    out = []
    for spec in objects:
        ref = spec.appearance
        src = getattr(ref, "source", ref)  # a LoadedImage knows its file
        src = Path(src) if isinstance(src, (str, os.PathLike)) else None
        where = (Path(os.path.relpath(src.resolve(), Path(folder).resolve())).as_posix()
                 if src is not None and src.is_file() else getattr(ref, "name", str(ref)))
        obj: dict = {"appearance": where}
        for key, box in (("target_box", spec.target_box), ("appearance_box", spec.appearance_box)):
            if box is not None:
                obj[key] = list(box)
        out.append(obj)
    return {"_size": _size_entry(size), "objects": out}


def write_pairs(path: str | os.PathLike, objects: Sequence[ObjectSpec], size: int | Size
                ) -> Path:
    """Write the ``--pairs`` JSON of ``objects`` atomically (:func:`pairs_document`, paths
    relative to the file's folder)."""
    p = Path(path)
    _write_json(p, pairs_document(objects, size, p.parent))
    return p


# ------------------------------------------------------------ pairs folder --

@dataclass
class PairSpec:
    """One pair of a pairs folder (``e4e-lab evaluate --pairs-dir``)."""

    name: str
    appearance: Path
    structure: Path
    domain: str = "object"


def read_pairs_folder(folder: str | os.PathLike) -> tuple[list[PairSpec], dict | None]:
    """The pairs of a folder's ``pairs.json`` (paths relative to the folder) and its
    ``boxes.json`` as :func:`read_boxes` returns it (None without one)."""
    folder = Path(folder)
    spec = folder / "pairs.json"
    if not spec.exists():  # a folder or a FIFO named pairs.json: read_json says which
        raise BoxError(f"pairs folder '{folder}' has no pairs.json file "
                       '([{"name", "appearance", "structure", "domain"}], see example/)')
    data = _read_json(spec, "pairs file")
    if not isinstance(data, list) or not data:
        raise BoxError(f"pairs file '{spec}' must hold a non-empty JSON list of pairs")
    pairs = []
    for n, p in enumerate(data):
        if not (isinstance(p, dict) and isinstance(p.get("appearance"), str)
                and isinstance(p.get("structure"), str)):
            raise BoxError(f"pairs file '{spec}': pairs.json[{n}] must be an object with "
                           f'"appearance" and "structure" paths, got {p!r}')
        pairs.append(PairSpec(str(p.get("name", f"pair{n}")), folder / p["appearance"],
                              folder / p["structure"], str(p.get("domain", "object"))))
    boxes = read_boxes(folder / "boxes.json") if (folder / "boxes.json").exists() else None
    return pairs, boxes
