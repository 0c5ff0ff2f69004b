"""A content-keyed tensor cache on disk: safetensors + JSON only, atomic and locked.

Every entry is one ``.safetensors`` file whose header metadata records the entry's
key, the JSON spec the key was derived from, and a SHA-256 of the tensor bytes. An
entry is verified on read; a corrupt or mismatched one is logged, removed and
reported as a miss so that the caller recomputes it. Writes go to a temporary file
that is renamed into place, under a file lock, so several notebooks or processes can
share one cache folder. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import torch
from filelock import FileLock

log = logging.getLogger(__name__)

FORMAT = "e4e-lab-cache-v1"


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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class TensorCache:
    """Entries of named tensors under ``root/namespace/<key>.safetensors``."""

    def __init__(self, root: str | os.PathLike, namespace: str):
        self.folder = Path(root) / namespace
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def _lock(self, key: str) -> FileLock:
        return FileLock(str(self.folder / f"{key}.lock"), timeout=600)

    def get(self, key: str, spec: dict) -> dict[str, torch.Tensor] | None:
        """The tensors stored under ``key``, or None (missing, corrupt or mismatched)."""
        from safetensors import SafetensorError, safe_open

        path = self.path(key)
        if not path.exists():
            return None
        with self._lock(key):
            try:
                with safe_open(str(path), framework="pt") as fh:
                    meta = fh.metadata() or {}
                    tensors = {name: fh.get_tensor(name) for name in fh.keys()}
            except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
                return self._discard(path, f"unreadable: {exc}")
            if meta.get("format") != FORMAT or meta.get("key") != key:
                return self._discard(path, "its recorded key does not match its file name")
            if meta.get("spec") != json.dumps(spec, sort_keys=True):
                return self._discard(path, "its recorded inputs differ from the request")
            if meta.get("sha256") != tensors_digest(tensors):
                return self._discard(path, "its content hash does not match (corrupt)")
        return tensors

    def put(self, key: str, spec: dict, tensors: dict[str, torch.Tensor]) -> Path:
        from safetensors.torch import save

        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        meta = {"format": FORMAT, "key": key, "spec": json.dumps(spec, sort_keys=True),
                "sha256": tensors_digest(tensors)}
        path = self.path(key)
        with self._lock(key):
            atomic_write_bytes(path, save(tensors, metadata=meta))
        return path

    def _discard(self, path: Path, why: str):
        log.warning("cache entry %s discarded (%s); it will be recomputed", path, why)
        try:
            path.unlink()
        except OSError:
            pass
        return None
