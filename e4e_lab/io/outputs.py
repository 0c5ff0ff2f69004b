"""Stage 5 on disk: writing a run's images, strip and config without losing old runs.

Every run (transfer, multi-object transfer, evaluation) is a transaction
(:class:`OutputTransaction`): it claims its folder with a lock beside it (an ``flock``,
gone with a dead process), writes into a staging folder beside it and moves that into
place when complete. ``overwrite`` moves each old entry aside, the new one in, then
deletes the old; a failure, a full disk or Ctrl-C leaves the previous run as it was and
nothing half-written; a killed run's leftovers are cleaned (or its cut-off commit rolled
back) by the next run into the folder. ``open`` and ``os.mkdir`` make every file and
folder, so they follow the umask.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import secrets
import shutil
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Protocol

from PIL import Image

from .. import __version__
from ..errors import E4ELabError
from ..method.images import to_uint8
from ..models.loading import BANNERS

RUN_FILES = ("result.png", "appearance_recon.png", "structure_recon.png", "strip.png",
             "config.json")
#: What an evaluation writes (e4e_lab.evaluation.report): a folder holding one of these
#: holds an evaluation.
EVAL_FILES = ("results.csv", "report.html", "images")
_JOURNAL = ".e4e-commit.json"  # in the aside folder while a commit is under way
_LEFTOVER = re.compile(r"e4e-(staging|old)-(\d+)-([0-9a-f]+)$")


class OutputError(E4ELabError, OSError):
    """A run cannot be written where it was asked to go."""


class OutputExistsError(OutputError, FileExistsError):
    """The output folder already holds a run, or another run is writing into it."""


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


def _resolve(out_dir: str | os.PathLike) -> Path:
    if not str(os.fspath(out_dir)).strip():
        raise OutputError("the output folder is empty (--out ''): give a folder path, "
                          "e.g. --out runs/first")
    return Path(os.path.abspath(os.fspath(out_dir)))


def check_output(out_dir: str | Path, overwrite: bool = False,
                 names: tuple[str, ...] = RUN_FILES) -> Path:
    """Raise :class:`OutputExistsError` if ``out_dir`` cannot take a new run (it is a file,
    or it holds one of ``names`` and not ``overwrite``); returns it as an absolute path.

    Call it before a long run, so that a refusal costs nothing; :class:`OutputTransaction`
    checks again once it owns the folder.
    """
    out = _resolve(out_dir)
    if os.path.lexists(out) and not out.is_dir():
        raise OutputExistsError(f"output '{out}' exists and is not a folder: choose another --out")
    existing = [f for f in names if os.path.lexists(out / f)]
    if existing and not overwrite:
        raise OutputExistsError(f"output folder '{out}' already holds a run ({existing[0]}): "
                                "choose another --out, or pass --overwrite to replace it")
    return out


@contextmanager
def writing_into(out: str | Path, what: str = "write the run into"):
    """OSErrors (a full disk, permissions...) inside become :class:`OutputError` naming ``out``."""
    try:
        yield
    except OutputError:
        raise
    except OSError as exc:
        raise OutputError(f"cannot {what} '{out}': {exc}") from exc


class OutputTransaction:
    """One run's claim on ``out_dir`` and its staging folder (see the module's docstring).

    ``with OutputTransaction(out) as tx:`` claims and checks the folder (refusing it as
    :func:`check_output` does), yields with ``tx.staging`` to write into, and commits when
    the block ends without an exception; otherwise (or if the commit fails) the staging
    folder is removed and ``out_dir`` is left as it was. ``begin``, ``commit`` and
    ``close`` do the same by hand (an evaluation's processes share one staging folder).
    """

    def __init__(self, out_dir: str | Path, overwrite: bool = False,
                 names: tuple[str, ...] = RUN_FILES):
        self.out, self.overwrite, self.names = _resolve(out_dir), overwrite, names
        self.staging: Path | None = None
        self._lock = None

    def begin(self) -> Path:
        """Claim the folder, clean a killed run's leftovers, check it, make the staging folder."""
        with self.writing("claim"):
            self._lock = _claim(self.out)
        try:
            with self.writing("claim"):
                _clean_leftovers(self.out)
                check_output(self.out, self.overwrite, self.names)
                staging = _home(self.out) / f".{self.out.name}.e4e-staging-" \
                    f"{os.getpid()}-{secrets.token_hex(4)}"
                os.mkdir(staging)  # mode 0o777 less the umask
                self.staging = staging
        except BaseException:
            self.close()
            raise
        return self.staging

    def writing(self, what: str = "write the run into"):
        """:func:`writing_into` this transaction's output folder."""
        return writing_into(self.out, what)

    def commit(self) -> Path:
        """Move the staged run into place (all or nothing); returns the output folder."""
        if self.staging is None:
            raise OutputError(f"no staged run to move into '{self.out}'")
        with self.writing("move the finished run into"):
            _commit(self.staging, self.out)
        self.staging = None
        return self.out

    def close(self) -> None:
        """Remove an uncommitted staging folder and release the claim."""
        try:
            if self.staging is not None:
                shutil.rmtree(self.staging, ignore_errors=True)
                self.staging = None
        finally:
            if self._lock is not None:
                _release(*self._lock)
                self._lock = None

    def __enter__(self) -> "OutputTransaction":
        self.begin()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.commit()
        finally:
            self.close()


def _home(out: Path) -> Path:
    """Where the lock and staging folders go: beside ``out``, or inside it when its parent
    cannot be written to (``--out ~``, ``--out /tmp``)."""
    parent = out.parent
    if out.is_dir() and parent.is_dir() and not os.access(parent, os.W_OK):
        return out
    parent.mkdir(parents=True, exist_ok=True)
    return parent


def _claim(out: Path):
    """An exclusive lock on ``.<name>.e4e-lock`` beside ``out``: (fd, path)."""
    path = _home(out) / f".{out.name}.e4e-lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            _lock_fd(fd)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EDEADLK):
                raise
            raise OutputExistsError(
                f"another run is writing into '{out}' (it holds {path.name}): wait for it "
                "to finish, or choose another --out") from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd, path
        except FileNotFoundError:
            pass
        os.close(fd)  # its previous owner removed that file as we opened it: again


def _lock_fd(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    else:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _release(fd: int, path: Path) -> None:
    with suppress(OSError):
        os.unlink(path)  # while still locked: a waiting opener sees another inode, retries
    os.close(fd)


def _commit(staging: Path, out: Path) -> None:
    """Staging folder -> ``out``: one rename when ``out`` does not exist; else entry by
    entry, each old entry moved aside first, with a journal that lets a rollback (here,
    or by the next run if this process is killed) restore the old run."""
    if not os.path.lexists(out):
        os.rename(staging, out)
        return
    names = sorted(os.listdir(staging))
    aside = staging.with_name(staging.name.replace("e4e-staging-", "e4e-old-"))
    os.mkdir(aside)
    try:
        _write_file(aside / _JOURNAL, json.dumps(names).encode())
    except BaseException:  # nothing moved yet
        shutil.rmtree(aside, ignore_errors=True)
        raise
    try:
        for name in names:
            if os.path.lexists(out / name):
                os.rename(out / name, aside / name)
            os.rename(staging / name, out / name)
    except BaseException:
        _roll_back(out, staging, aside, names)
        raise
    os.unlink(aside / _JOURNAL)  # committed: from here on both folders are garbage
    shutil.rmtree(aside, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)


def _roll_back(out: Path, staging: Path, aside: Path, names: list[str]) -> None:
    """Undo a partial :func:`_commit`: new entries back to staging, old ones back in."""
    for name in names:
        moved_in = not os.path.lexists(staging / name) and os.path.lexists(out / name)
        if os.path.lexists(aside / name):
            if os.path.lexists(out / name):
                os.rename(out / name, staging / name)
            os.rename(aside / name, out / name)
        elif moved_in:
            os.rename(out / name, staging / name)
    shutil.rmtree(aside, ignore_errors=True)


def _clean_leftovers(out: Path) -> None:
    """Remove (rolling back a cut-off commit first) the staging and aside folders of runs
    into ``out`` that were killed. Called with the claim held, so no live run owns them."""
    home, prefix = _home(out), f".{out.name}."
    for entry in sorted(os.listdir(home)):
        m = _LEFTOVER.match(entry[len(prefix):]) if entry.startswith(prefix) else None
        if m is None or m.group(1) != "old":
            continue
        aside = home / entry
        staging = home / f"{prefix}e4e-staging-{m.group(2)}-{m.group(3)}"
        try:
            names = json.loads((aside / _JOURNAL).read_text())
        except (OSError, ValueError):  # none (committed) or cut short (nothing moved yet)
            names = None
        if names is not None:
            staging.mkdir(exist_ok=True)
            _roll_back(out, staging, aside, names)
        shutil.rmtree(aside, ignore_errors=True)
    for entry in os.listdir(home):
        if entry.startswith(prefix) and _LEFTOVER.match(entry[len(prefix):]):
            shutil.rmtree(home / entry, ignore_errors=True)


def _write_file(path: Path, data: bytes) -> None:
    """Write and flush ``data`` (mode 0o666 less the umask, as ``open`` makes it)."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def save_run(out_dir: str | Path, result, pair: RunInputs, extra: dict | None = None,
             overwrite: bool = False) -> dict[str, Path]:
    """Write the five run files into ``out_dir`` as one transaction (see the module's
    docstring); refuse to replace another run's files unless ``overwrite``. Returns the
    written paths by name."""
    with OutputTransaction(out_dir, overwrite) as tx:
        names = write_run(tx, result, pair, extra)
    return {name: tx.out / name for name in names}


def write_run(tx: OutputTransaction, result, pair: RunInputs, extra: dict | None = None
              ) -> list[str]:
    """Write the five run files into ``tx``'s staging folder; returns their names."""
    panels = pair.strip_inputs()
    images = {
        "result.png": result.image,
        "appearance_recon.png": result.appearance_recon,
        "structure_recon.png": result.structure_recon,
        "strip.png": result.strip(*(image.pixels for _, image in panels)),
    }
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
    with tx.writing():
        for name, px in images.items():
            stamp = BANNERS.get(result.model_kind) if name == "strip.png" else None
            _write_file(tx.staging / name, png_bytes(
                px, stamp, STAMP_COLOURS.get(result.model_kind, _RANDOM_STAMP)))
        _write_file(tx.staging / "config.json", json.dumps(meta, indent=2).encode("utf-8"))
    return list(images) + ["config.json"]
