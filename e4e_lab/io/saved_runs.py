"""Reading back the runs :func:`~e4e_lab.io.outputs.save_run` wrote.

A run folder holds ``result.png``, ``strip.png`` and ``config.json`` (and the two
reconstructions). :func:`read_run` gives them back as a :class:`SavedRun`, which reads
like a transfer result where a gallery needs one (``config``, ``image``, ``timings``);
:func:`find_runs` lists the run folders in a folder of runs.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import E4ELabError
from ..method.config import TransferConfig
from ..method.images import check_image_file, load_image
from .files import read_json, require_regular_file
from .outputs import RUN_FILES, OutputError, check_output


class SavedRunError(E4ELabError, ValueError):
    """A folder does not hold a readable saved run."""


@dataclass
class SavedRun:
    """A run read back from its folder: the images as (3, H, W) tensors in [0, 1]."""

    folder: Path
    config: TransferConfig
    image: torch.Tensor
    strip: torch.Tensor
    meta: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.meta.get("run_name") or self.folder.name)

    @property
    def timings(self) -> dict:
        timings = self.meta.get("timings")
        return timings if isinstance(timings, dict) else {}

    @property
    def masked(self) -> bool:
        return self.meta.get("masked", self.meta.get("mask") != "none") is not False


def _image(path: Path):
    try:
        size = check_image_file(path)
        return load_image(path, size).pixels  # at its own size: not resampled
    except E4ELabError as exc:
        raise SavedRunError(f"saved run '{path.parent}': {exc}") from None


def read_run(folder: str | Path) -> SavedRun:
    """The run saved in ``folder``; a :class:`SavedRunError` names what is missing or
    unreadable."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise SavedRunError(f"saved run '{folder}' is not a folder: give a folder that "
                            "save_run wrote (with result.png, strip.png, config.json)")
    for name in ("config.json", "result.png", "strip.png"):
        require_regular_file(folder / name, "saved run file", SavedRunError)
    try:
        meta = read_json(folder / "config.json", "run config")
    except E4ELabError as exc:
        raise SavedRunError(str(exc)) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise SavedRunError(f"'{folder / 'config.json'}' has no \"config\" object: it was "
                            "not written by save_run")
    try:
        config = TransferConfig.from_dict(meta["config"])
    except E4ELabError as exc:
        raise SavedRunError(f"'{folder / 'config.json'}': {exc}") from None
    return SavedRun(folder, config, _image(folder / "result.png"),
                    _image(folder / "strip.png"), meta)


def find_runs(folder: str | Path) -> list[Path]:
    """``folder`` itself if it holds a run, else its sub-folders that do, by name."""
    folder = Path(folder).expanduser()
    if (folder / "config.json").is_file():
        return [folder]
    if not folder.is_dir():
        raise SavedRunError(f"'{folder}' is not a folder of saved runs: check the path")
    return sorted(p for p in folder.iterdir() if (p / "config.json").is_file())


def copy_run(run: SavedRun, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Copy a saved run's files into ``out_dir`` (refused like save_run's output)."""
    if Path(out_dir).expanduser().resolve() == run.folder.resolve():
        return run.folder  # already there
    out = check_output(out_dir, overwrite)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            if (run.folder / name).is_file():
                shutil.copyfile(run.folder / name, out / name)
    except OSError as exc:
        raise OutputError(f"cannot copy the run into '{out}': {exc}") from None
    return out
