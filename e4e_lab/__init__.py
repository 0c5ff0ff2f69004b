"""e4e-lab: Eye-for-an-eye appearance transfer (arXiv 2406.07008) as step-by-step stages.

The package, by folder:

- :mod:`e4e_lab.method`: the method's stages, one file each (see its docstring);
- :mod:`e4e_lab.models`: loading the pipelines (SD 1.5, toy, tiny), FreeU, SAM-HQ, DIFT;
- :mod:`e4e_lab.io`: input formats, the on-disk cache, run outputs, the cache folder;
- :mod:`e4e_lab.analysis`: what the viewers show (grids, lookups, recordings, warps,
  attention maps, parts) and the weights-free metrics;
- :mod:`e4e_lab.evaluation`: several methods over a folder of pairs, and their report;
- :mod:`e4e_lab.toy`: the toy world, its model and its quality benchmark;
- :mod:`e4e_lab.session` (:class:`Lab`), :mod:`e4e_lab.cli`, :mod:`e4e_lab.errors`.

The short names below are imported on first use (PEP 562), so that ``import e4e_lab``
and the command line's argument checks never load torch::

    from e4e_lab import Lab, TransferConfig, load_pipeline
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "Lab": "e4e_lab.session",
    "Pair": "e4e_lab.session",
    "MultiPair": "e4e_lab.session",
    "TransferConfig": "e4e_lab.method.config",
    "load_pipeline": "e4e_lab.models.loading",
    "MaskMode": "e4e_lab.io.formats",
    "ObjectSpec": "e4e_lab.io.formats",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'e4e_lab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
