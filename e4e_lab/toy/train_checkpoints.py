"""Checkpoint files of a toy-model training run (``DIR/checkpoints/<phase>-<step>/``).

Naming, finding the latest and pruning the old checkpoints of a phase; saving and
loading the parts that accelerate's own state does not hold (the noise generator, the
EMA weights and their counters); the check that a checkpoint belongs to this run; and
:func:`staged_folder`, the write-then-rename that every folder a run writes (checkpoints,
``vae-done``, the pipeline) goes through. :class:`e4e_lab.toy.train_loop.Trainer` writes
and reads whole checkpoints with these.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch

from .train_config import TrainConfig

STATE_FILE = "state.json"


@contextlib.contextmanager
def staged_folder(final: Path) -> Iterator[Path]:
    """An empty ``.staging-<name>`` folder beside ``final`` to write into; when the block
    ends without an error it replaces ``final``, so a reader never sees half a folder (an
    error leaves ``final`` as it was)."""
    staging = final.parent / f".staging-{final.name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    yield staging
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)


def checkpoint_name(phase: str, step: int) -> str:
    return f"{phase}-{step:07d}"


def latest_checkpoint(root: Path, phase: str) -> Path | None:
    """The finished checkpoint of ``phase`` with the most steps (None if there is none)."""
    found = []
    for folder in root.glob(f"{phase}-[0-9]*"):
        state = folder / STATE_FILE
        if state.is_file():
            found.append((json.loads(state.read_text(encoding="utf-8"))["step"], folder))
    return max(found)[1] if found else None


def prune_checkpoints(root: Path, phase: str, keep: int) -> None:
    folders = sorted(root.glob(f"{phase}-[0-9]*"))
    for folder in folders[:-keep]:
        shutil.rmtree(folder, ignore_errors=True)


def save_generator(generator: torch.Generator, folder: Path) -> None:
    from safetensors.torch import save_file

    save_file({"state": generator.get_state()}, str(folder / "generator.safetensors"))


def load_generator(generator: torch.Generator, folder: Path) -> None:
    from safetensors.torch import load_file

    generator.set_state(load_file(str(folder / "generator.safetensors"))["state"])


def save_emas(emas: dict[str, Any], modules: dict[str, torch.nn.Module], folder: Path) -> None:
    """EMA weights in safetensors (named like the network's parameters) + their counters."""
    from safetensors.torch import save_file

    if not emas:
        return
    meta = {}
    for name, ema in emas.items():
        names = [n for n, _ in modules[name].named_parameters()]
        save_file({n: p.detach().contiguous().cpu() for n, p in zip(names, ema.shadow_params)},
                  str(folder / f"ema_{name}.safetensors"))
        meta[name] = {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}
    (folder / "ema.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


def load_emas(emas: dict[str, Any], modules: dict[str, torch.nn.Module], folder: Path) -> None:
    from safetensors.torch import load_file

    if not emas:
        return
    meta = json.loads((folder / "ema.json").read_text(encoding="utf-8"))
    for name, ema in emas.items():
        weights = load_file(str(folder / f"ema_{name}.safetensors"))
        shadow = [weights[n] for n, _ in modules[name].named_parameters()]
        ema.load_state_dict(dict(meta[name], shadow_params=shadow))
        ema.to(device=next(modules[name].parameters()).device)



def check_same_model(saved: dict[str, Any], cfg: TrainConfig) -> None:
    """Refuse to resume a checkpoint of another architecture or run seed."""
    mine = cfg.describe()
    for key in ("model", "seed"):
        if saved.get(key) != mine[key]:
            raise ValueError(f"cannot resume: the checkpoint's {key} is {saved.get(key)} but "
                             f"this run's is {mine[key]} (use another --out, or the same "
                             "options)")

