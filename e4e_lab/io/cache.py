"""A content-keyed tensor cache on disk: safetensors + JSON only, atomic and locked.

Every entry is one ``.safetensors`` file whose header metadata records the entry's
key, the JSON spec the key was derived from, and a SHA-256 of the tensor bytes. An
entry is verified on read; a corrupt or mismatched one is logged, removed and
reported as a miss so that the caller recomputes it. Writes go to a temporary file
that is renamed into place, under a file lock, so several notebooks or processes can
share one cache folder. Nothing is ever unpickled.

Faults never stop a run: a cache folder that cannot be created, read or written (a
file in its place, read-only, full) is reported in ONE warning and the run goes on
without it; an entry that is not a regular file (a directory, a FIFO) is never opened
nor overwritten. Temporary files carry their writer's host and pid in their names, so
the ones a killed process left are removed on the next start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import time
from pathlib import Path

import torch
from filelock import FileLock

log = logging.getLogger(__name__)

FORMAT = "e4e-lab-cache-v1"
#: A temporary file or staging folder older than this is stale whoever made it.
STALE_AFTER_S = 3600
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_TAG = re.compile(r"e4etmp-([0-9a-f]{8})-(\d+)-")
_warned: set[str] = set()


def key_of(spec: dict) -> str:
    """A stable SHA-256 key of a JSON-able spec."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def warn_once(token: str, message: str, *args) -> None:
    """``log.warning(message, *args)`` the first time ``token`` is seen in this process."""
    if token not in _warned:
        _warned.add(token)
        log.warning(message, *args)


def warn_unusable(root: str | os.PathLike, exc: BaseException) -> None:
    """The one warning about a cache folder that cannot be used."""
    warn_once(f"unusable:{os.path.abspath(root)}",
              "cache folder %s cannot be used (%s: %s): going on without a disk cache "
              "there; point --cache-dir or E4E_LAB_CACHE at a writable folder",
              root, type(exc).__name__, exc)


def temp_name(stem: str) -> str:
    """A temporary name for ``stem`` that records this host and process."""
    return f"{stem}.e4etmp-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def is_stale(path: Path, now: float | None = None) -> bool:
    """Whether a temporary file or folder is left over: made on this host by a process
    that is gone, or older than :data:`STALE_AFTER_S` whoever made it."""
    try:
        mtime = path.lstat().st_mtime
    except OSError:
        return False
    if (now or time.time()) - mtime > STALE_AFTER_S:
        return True
    tag = _TAG.search(path.name)
    return bool(tag and tag.group(1) == _HOST and not _alive(int(tag.group(2))))


def sweep_stale(folder: Path, pattern: str, everything: bool = False) -> int:
    """Remove the stale files and folders in ``folder`` matching ``pattern`` (all of
    them with ``everything``, for a caller that holds the lock their writers held)."""
    removed = 0
    try:
        found = list(folder.glob(pattern))
    except OSError:
        return 0
    for path in found:
        if not (everything or is_stale(path)):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue
        removed += 1
        log.info("removed %s, left over by an interrupted write", path)
    return removed


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename. The file gets
    the permissions the umask gives a new file (as ``open`` would), not 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = path.parent / (temp_name(f".{path.name}") + ".tmp")
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _refused(path: Path) -> None:
    warn_once(f"refused:{os.path.abspath(path)}",
              "cache entry %s is not a regular file (a folder, a FIFO or a device): it is "
              "neither read nor overwritten, so this entry is computed each time; remove it",
              path)


class TensorCache:
    """Entries of named tensors under ``root/namespace/<key>.safetensors``."""

    def __init__(self, root: str | os.PathLike, namespace: str):
        self.root = Path(root)
        self.folder = self.root / namespace
        self.readable = self.writable = True
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file in the way, no permission, a full disk...
            self._unusable(exc, reads=True)
            return
        sweep_stale(self.folder, ".*.tmp")

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def _unusable(self, exc: BaseException, reads: bool = False) -> None:
        """Stop writing (and reading, with ``reads``) this cache; warn once."""
        self.writable = False
        self.readable = self.readable and not reads
        warn_unusable(self.root, exc)

    @contextlib.contextmanager
    def _lock(self, key: str, required: bool):
        """The entry's file lock; a reader goes on without it when it cannot be taken
        (a read-only folder): entries are replaced atomically, so reads stay whole."""
        lock = FileLock(str(self.folder / f"{key}.lock"), timeout=600)
        try:
            lock.acquire()
        except OSError:
            if required:
                raise
            yield
            return
        try:
            yield
        finally:
            lock.release()

    def _kind(self, path: Path) -> str | None:
        """"file", "other" (not a regular file) or None (missing or not stat-able)."""
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._unusable(exc, reads=True)
            return None
        return "file" if stat.S_ISREG(mode) else "other"

    def get(self, key: str, spec: dict) -> dict[str, torch.Tensor] | None:
        """The tensors stored under ``key``, or None (missing, corrupt or mismatched)."""
        path = self.path(key)
        kind = self._kind(path) if self.readable else None
        if kind != "file":
            if kind == "other":
                _refused(path)
            return None
        with self._lock(key, required=False):
            data = self._read(path)
            return None if data is None else self._decode(path, key, spec, data)

    def _read(self, path: Path) -> bytes | None:
        """The bytes of a regular file, opened without blocking (never a FIFO's wait)."""
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._unusable(exc, reads=True)
            return None
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                _refused(path)
                return None
            try:
                return fh.read()
            except OSError as exc:
                return self._discard(path, f"unreadable: {exc}")

    def _decode(self, path: Path, key: str, spec: dict, data: bytes):
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            size = int.from_bytes(data[:8], "little")
            if len(data) < 8 + size:
                raise ValueError("shorter than its header says (truncated)")
            meta = json.loads(data[8:8 + size]).get("__metadata__") or {}
            tensors = load(data)
        except (SafetensorError, ValueError, RuntimeError, AttributeError) as exc:
            return self._discard(path, f"unreadable: {exc}")
        if meta.get("format") != FORMAT or meta.get("key") != key:
            return self._discard(path, "its recorded key does not match its file name")
        if meta.get("spec") != json.dumps(spec, sort_keys=True):
            return self._discard(path, "its recorded inputs differ from the request")
        if meta.get("sha256") != tensors_digest(tensors):
            return self._discard(path, "its content hash does not match (corrupt)")
        return tensors

    def put(self, key: str, spec: dict, tensors: dict[str, torch.Tensor]) -> Path | None:
        """Store ``tensors`` under ``key``; returns the entry's path, or None when the
        cache cannot take it (see the module's docstring: the run goes on uncached)."""
        from safetensors.torch import save

        if not self.writable:
            return None
        path = self.path(key)
        if self._kind(path) == "other":
            _refused(path)
            return None
        if not self.writable:  # the folder turned out unusable just now
            return None
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        meta = {"format": FORMAT, "key": key, "spec": json.dumps(spec, sort_keys=True),
                "sha256": tensors_digest(tensors)}
        try:
            with self._lock(key, required=True):
                atomic_write_bytes(path, save(tensors, metadata=meta))
        except OSError as exc:  # read-only, full, or the entry turned into a folder
            self._unusable(exc)
            return None
        return path

    def _discard(self, path: Path, why: str):
        log.warning("cache entry %s discarded (%s); it will be recomputed", path, why)
        try:
            path.unlink()
        except OSError:
            pass
        return None
