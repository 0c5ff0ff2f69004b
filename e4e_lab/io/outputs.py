"""Stage 5 on disk: writing a run's images, strip and config without losing old runs."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Protocol

from PIL import Image

from .. import __version__
from ..errors import E4ELabError
from ..method.images import to_uint8
from ..models.loading import BANNERS
from .cache import atomic_write_bytes, atomic_write_text

RUN_FILES = ("result.png", "appearance_recon.png", "structure_recon.png", "strip.png",
             "config.json")


class OutputError(E4ELabError, OSError):
    """A run cannot be written where it was asked to go."""


class OutputExistsError(OutputError, FileExistsError):
    """The output folder already holds a run."""


class RunInputs(Protocol):
    """What :func:`save_run` reads of a run's inputs (``session.Pair``, ``session.MultiPair``)."""

    def describe(self) -> dict:
        """JSON-able description of the inputs, merged into config.json."""

    def strip_inputs(self) -> list:
        """(label, LoadedImage) of the strip's panels before the result, left to right."""


def safe_name(text: str, default: str = "run") -> str:
    """``text`` as one safe file or folder name (never empty, never '.' or '..')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or default


#: Band colour of a strip's banner: red for random weights, dark blue for the toy model.
STAMP_COLOURS = {"toy": (30, 60, 140)}
_RANDOM_STAMP = (200, 0, 0)


def png_bytes(pixels, stamp: str | None = None, colour=_RANDOM_STAMP) -> bytes:
    """PNG of a (3, H, W) image; ``stamp`` adds a band of ``colour`` with that text on top."""
    img = Image.fromarray(to_uint8(pixels))
    if stamp:
        from PIL import ImageDraw

        band = max(12, img.height // 12)
        canvas = Image.new("RGB", (img.width, img.height + band), tuple(colour))
        canvas.paste(img, (0, band))
        ImageDraw.Draw(canvas).text((4, max(0, band // 2 - 6)), stamp, fill=(255, 255, 255))
        img = canvas
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def check_output(out_dir: str | Path, overwrite: bool = False) -> Path:
    """Raise :class:`OutputExistsError` if ``out_dir`` cannot take a new run.

    Call it before a long run, so that a refusal costs nothing; :func:`save_run`
    checks again before writing.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output '{out}' exists and is not a folder: choose another --out")
    existing = [f for f in RUN_FILES if (out / f).exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"output folder '{out}' already holds a run ({existing[0]}): "
                                "choose another --out, or pass --overwrite to replace it")
    return out


def save_run(out_dir: str | Path, result, pair: RunInputs, extra: dict | None = None,
             overwrite: bool = False) -> dict[str, Path]:
    """Write the five run files into ``out_dir``; refuse to replace another run's files
    unless ``overwrite``. Returns the written paths by name."""
    out = check_output(out_dir, overwrite)
    try:
        out.mkdir(parents=True, exist_ok=True)
        return _write_run(out, result, pair, extra)
    except OutputError:
        raise
    except OSError as exc:  # permissions, a full disk, a file where a folder should be...
        raise OutputError(f"cannot write the run into '{out}': {exc}") from None


def _write_run(out: Path, result, pair: RunInputs, extra: dict | None) -> dict[str, Path]:
    panels = pair.strip_inputs()
    images = {
        "result.png": result.image,
        "appearance_recon.png": result.appearance_recon,
        "structure_recon.png": result.structure_recon,
        "strip.png": result.strip(*(image.pixels for _, image in panels)),
    }
    paths = {}
    for name, px in images.items():
        paths[name] = out / name
        stamp = BANNERS.get(result.model_kind) if name == "strip.png" else None
        atomic_write_bytes(paths[name], png_bytes(
            px, stamp, STAMP_COLOURS.get(result.model_kind, _RANDOM_STAMP)))
    meta = {
        "e4e_lab_version": __version__,
        "model": result.model_id,
        "model_kind": result.model_kind,
        "tiny_model": result.is_tiny,
        "note": BANNERS.get(result.model_kind),
        **pair.describe(),
        "strip": [label for label, _ in panels] + ["result"],
        "injected_layers": result.layers,
        "timings": {k: round(v, 4) for k, v in result.timings.items()},
        "config": result.config.to_dict(),
        **(extra or {}),
    }
    paths["config.json"] = out / "config.json"
    atomic_write_text(paths["config.json"], json.dumps(meta, indent=2))
    return paths
