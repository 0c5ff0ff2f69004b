"""What a loaded pipeline computes with, as one short digest (the inversion cache's key).

The fingerprint covers every component that enters a computation: the UNet, the VAE
and the text encoder (each its config and its weights), the tokenizer's files and the
scheduler's config. It does NOT cover where the model lives: moving a model folder keeps
its cached results, and changing its weights (same config) invalidates them.

Weights loaded from a folder are digested from their files (SHA-256). That is done once
per folder: the digest is kept in ``<cache root>/weight-digests/`` with each file's size
and modification time, and reused while they match. Weights that exist only in memory
(no folder, e.g. a model built in place) are digested from their state dict.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

COMPONENTS = ("unet", "vae", "text_encoder")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
#: Config entries that say where or by which version a component was saved, not what it is.
_NOT_CONFIG = {"transformers_version", "dtype", "torch_dtype"}


def _config(config) -> dict:
    items = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {k: v for k, v in items.items() if not k.startswith("_") and k not in _NOT_CONFIG}


def _source_folder(obj) -> Path | None:
    """The folder a component or tokenizer was loaded from, if it still exists."""
    config = getattr(obj, "config", None)
    name = getattr(obj, "name_or_path", None)
    if name is None and config is not None:
        name = config.get("_name_or_path") if isinstance(config, dict) else \
            getattr(config, "_name_or_path", None)
    path = Path(str(name)) if name else None
    return path if path is not None and path.is_dir() else None


def _memo_path(folder: Path) -> Path:
    from ..io.paths import cache_root

    where = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:32]
    return cache_root() / "weight-digests" / f"{where}.json"


def _read_memo(path: Path, stats: list) -> str | None:
    try:
        if not path.is_file():  # missing, or something that must not be opened (a FIFO)
            return None
        memo = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, AttributeError):
        return None
    return memo.get("digest") if isinstance(memo, dict) and memo.get("files") == stats else None


def files_digest(folder: Path, suffixes: tuple[str, ...] | None = WEIGHT_SUFFIXES) -> str | None:
    """SHA-256 of the files in ``folder`` (those ending in ``suffixes``; all with None),
    names and contents; None when there are none. Reused from the memo while every
    file's size and modification time are unchanged."""
    from ..io.cache import atomic_write_text, sweep_stale

    files = sorted(p for p in folder.iterdir() if p.is_file()
                   and (suffixes is None or p.name.endswith(suffixes)))
    if suffixes is not None and any(p.suffix == ".safetensors" for p in files):
        files = [p for p in files if p.suffix == ".safetensors"]  # what diffusers loads
    if not files:
        return None
    stats = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    memo = _memo_path(folder)
    digest = _read_memo(memo, stats)
    if digest is not None:
        return digest
    h = hashlib.sha256()
    for path in files:
        h.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    digest = h.hexdigest()
    try:
        sweep_stale(memo.parent, ".*.tmp")
        atomic_write_text(memo, json.dumps({"folder": str(folder), "files": stats,
                                            "digest": digest}))
    except OSError as exc:  # an unusable cache only costs the hashing next time
        log.debug("weight digest of %s not kept (%s)", folder, exc)
    return digest


def state_dict_digest(module) -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes, bytes)."""
    from ..io.cache import tensors_digest

    state = {k.removeprefix("_orig_mod."): v for k, v in module.state_dict().items()}
    return tensors_digest(state)


def weights_digest(module) -> str:
    """Digest of a component's weights: its files when it was loaded from a folder that
    has weight files, else its state dict."""
    folder = _source_folder(module)
    digest = files_digest(folder) if folder is not None else None
    return digest or state_dict_digest(module)


def _tokenizer_digest(tokenizer) -> str:
    folder = _source_folder(tokenizer)
    digest = files_digest(folder, None) if folder is not None else None
    if digest is None:  # built in memory: its vocabulary says what it does
        vocab = json.dumps(sorted(tokenizer.get_vocab().items()))
        digest = hashlib.sha256(vocab.encode()).hexdigest()
    return digest


def model_fingerprint(pipe, weights: str | None = None) -> str:
    """16 hex digits naming what ``pipe`` computes. ``weights`` stands for the digest of
    all three components' weights when the caller knows them otherwise (a model built
    from a seed), saving the hashing."""
    h = hashlib.sha256(b"e4e-lab-model-v2")
    for name in COMPONENTS:
        module = getattr(pipe, name)
        h.update(f"\0{name}\0".encode())
        h.update(json.dumps(_config(module.config), sort_keys=True, default=str).encode())
        if weights is None:
            h.update(weights_digest(module).encode())
    if weights is not None:
        h.update(weights.encode())
    h.update(json.dumps(_config(pipe.scheduler.config), sort_keys=True, default=str).encode())
    h.update(type(pipe.scheduler).__name__.encode())
    h.update(_tokenizer_digest(pipe.tokenizer).encode())
    return h.hexdigest()[:16]
