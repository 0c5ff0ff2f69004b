"""The command line's arguments: ``build_parser()`` (one function per argument group).

What the commands do with them is in :mod:`e4e_lab.cli`.
"""

from __future__ import annotations

import argparse
import sys

from .io.formats import MaskMode
from .method.config import (FIT_MODES, FREEU_MODES, INJECTION_MODES, MASK_RESIZE_MODES,
                            MAX_SIZE, RESAMPLE_MODES, SCHEDULES, TransferConfig)

MASK_CHOICES = tuple(m.value for m in MaskMode)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would print usage first)
        sys.stderr.write(f"error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def _range(name):
    return dict(nargs=2, type=int, metavar=("START", "END"), dest=name)


def _size(text: str) -> int:
    """``--size`` in [8, MAX_SIZE]; the model checks its own multiple once loaded."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not 8 <= value <= MAX_SIZE:
        raise argparse.ArgumentTypeError(f"{value} px is outside [8, {MAX_SIZE}]")
    return value


SIZE_HELP = (f"model resolution in [8, {MAX_SIZE}], a multiple of the model's factor (64 for "
             "SD 1.5); sizes "
             "whose rough memory estimate exceeds the free RAM/GPU memory are refused before "
             "loading (default: the model's, 512 for SD 1.5)")
RANGE_HELP = ("denoising steps [START, END) %s; a range that no denoising step reaches (read "
              "through --schedule) prints a warning and the run goes on without it")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="e4e-lab", description="Eye-for-an-eye appearance transfer.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    d = TransferConfig()
    _add_transfer(sub, d)
    _add_evaluate(sub, d)
    return p


def _add_transfer(sub, d: TransferConfig) -> None:
    t = sub.add_parser("transfer", help="transfer the appearance of one image onto another",
                       description="Keep the structure image's shape, take colours from the "
                       "appearance image by semantic correspondence.")
    _add_inputs(t.add_argument_group("inputs and outputs"))
    _add_model(t.add_argument_group("model"), d)
    _add_method(t.add_argument_group("method"), d)
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("--debug", action="store_true", help="show tracebacks")


def _add_inputs(io_) -> None:
    io_.add_argument("--appearance", metavar="PATH",
                     help="appearance image, a regular file Pillow reads (not needed with "
                     "--pairs)")
    io_.add_argument("--structure", required=True, metavar="PATH",
                     help="structure image, a regular file Pillow reads")
    io_.add_argument("--out", required=True, metavar="DIR", help="output folder")
    io_.add_argument("--overwrite", action="store_true",
                     help="replace a previous run in --out (refused otherwise)")
    io_.add_argument("--appearance-box", nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"),
                     help="object box in the appearance image, model-resolution pixels")
    io_.add_argument("--structure-box", nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"),
                     help="object box in the structure image, model-resolution pixels")
    io_.add_argument("--boxes", metavar="JSON",
                     help='boxes file {"file name": [x0, y0, x1, y1]} (a regular file up to 4 '
                     "MiB); naming neither image prints a warning (whole-image masks)")
    io_.add_argument("--appearance-mask", metavar="PNG",
                     help="object mask of the appearance image (white = object); overrides --mask")
    io_.add_argument("--structure-mask", metavar="PNG",
                     help="object mask of the structure image (white = object); overrides --mask")
    io_.add_argument("--pairs", metavar="JSON",
                     help='multi-object pairs: {"_size": 512, "objects": [{"target_box": [...], '
                     '"appearance": PATH, "appearance_box": [...]}, ...]}; paths relative to '
                     'the JSON file, "_size" in [8, 65536], a regular file up to 4 MiB')
    io_.add_argument("--mask", choices=MASK_CHOICES, default=MaskMode.AUTO.value,
                     help="object masks: SAM-HQ from the boxes, the boxes, or whole images "
                     "(auto: sam when a checkpoint is found, else box)")
    io_.add_argument("--sam-checkpoint", metavar="PATH", help="SAM-HQ checkpoint (sam_hq_vit_l.pth)")
    io_.add_argument("--size", type=_size, metavar="PX", help=SIZE_HELP)
    io_.add_argument("--fit", choices=FIT_MODES, default="stretch",
                     help="how non-square images reach the model size (default stretch)")
    io_.add_argument("--resample", choices=RESAMPLE_MODES, default="bicubic",
                     help="resizing filter (default bicubic, as the published code)")


def _add_model(m, d: TransferConfig) -> None:
    m.add_argument("--model", default="auto",
                   help="auto (SD 1.5 if available, else the toy model), toy, tiny, a hub id "
                   "or a folder")
    m.add_argument("--device", help="cpu, cuda, cuda:N or mps, and it must exist here "
                   "(default: cuda if available)")
    m.add_argument("--dtype", choices=("float16", "bfloat16", "float32"),
                   help="default float16 on CUDA, float32 on CPU")
    m.add_argument("--cache-dir", metavar="DIR",
                   help="models and inversion cache folder (created if missing; not a file)")
    m.add_argument("--no-cache", action="store_true", help="do not read or write the inversion cache")
    m.add_argument("--freeu", choices=FREEU_MODES[:2], default=d.freeu,
                   help="FreeU placement: reference (every decoder-block input, as published; "
                   "default) or diffusers (its enable_freeu)")
    m.add_argument("--no-freeu", action="store_true", help="turn FreeU off")
    m.add_argument("--compile", action="store_true",
                   help="torch.compile the UNet (inductor): the first steps compile for "
                   "tens of seconds to minutes; worth it on a GPU over many runs, rarely on "
                   "a CPU")


def _add_schedule(p, d: TransferConfig) -> None:
    """The schedule and seed flags that ``transfer`` and ``evaluate`` share."""
    p.add_argument("--steps", type=int, default=d.num_steps, help="scheduler steps")
    p.add_argument("--skip-steps", type=int, default=d.skip_steps)
    p.add_argument("--guidance", type=float, default=d.guidance.scale)
    p.add_argument("--feat-range", default=d.feat_range, **_range("feat_range"),
                   help=RANGE_HELP % "that inject features")
    p.add_argument("--adain-range", default=d.adain_range, **_range("adain_range"),
                   help=RANGE_HELP % "followed by masked AdaIN")
    p.add_argument("--seed", type=int, default=d.seed)


def _add_method(meth, d: TransferConfig) -> None:
    meth.add_argument("--domain", default=d.domain, metavar="WORD",
                      help='object category for the prompt "A photo of a {domain}"')
    meth.add_argument("--injection", choices=INJECTION_MODES, default=d.injection.mode)
    meth.add_argument("--correspondence", choices=("match", "dift"), default=d.correspondence,
                      help="match features in each layer (default) or use a DIFT field")
    _add_schedule(meth, d)
    meth.add_argument("--inversion-cfg", type=float, default=d.inversion_cfg)
    meth.add_argument("--no-adain", action="store_true", help="turn masked AdaIN off")
    meth.add_argument("--schedule", choices=SCHEDULES, default=d.schedule,
                      help="published: the published code's effective steps (its counter lags "
                      "one UNet call; default); exact: the ranges read literally")
    meth.add_argument("--mask-resize", choices=MASK_RESIZE_MODES, default=d.mask_resize,
                      help="masks on layer grids: reference (bilinear, as published; default) "
                      "or area (area average >= 0.5)")


def _add_evaluate(sub, d: TransferConfig) -> None:
    e = sub.add_parser("evaluate", help="run every method over a folder of pairs and score them",
                       description="Writes results.csv and report.html into --out. Under "
                       "`accelerate launch --multi_gpu --num_processes N -m e4e_lab evaluate ...` "
                       "pairs are split across N processes (one GPU each, or CPU processes "
                       "when no GPU is visible) and the CSVs merged.")
    e.add_argument("--pairs-dir", required=True, metavar="DIR",
                   help="folder with pairs.json (and optionally boxes.json), e.g. example/")
    e.add_argument("--out", required=True, metavar="DIR")
    e.add_argument("--overwrite", action="store_true",
                   help="replace a previous evaluation in --out (refused otherwise)")
    e.add_argument("--methods", nargs="+", default=["feature", "v", "kv", "cross-image"],
                   choices=INJECTION_MODES + ("paint-by-example",),
                   help="methods to compare (paint-by-example loads Fantasy-Studio/"
                   "Paint-by-Example, or a tiny random instance with the tiny model)")
    e.add_argument("--model", default="auto")
    e.add_argument("--device", help="cpu, cuda, cuda:N or mps (it must exist here)")
    e.add_argument("--cache-dir", metavar="DIR", help="cache folder (created if missing)")
    e.add_argument("--dtype", choices=("float16", "bfloat16", "float32"))
    e.add_argument("--compile", action="store_true", help="torch.compile the UNet (see transfer)")
    e.add_argument("--mask", choices=MASK_CHOICES, default=MaskMode.AUTO.value)
    e.add_argument("--sam-checkpoint", metavar="PATH")
    e.add_argument("--size", type=_size, metavar="PX", help=SIZE_HELP)
    _add_schedule(e, d)
    e.add_argument("--quiet", action="store_true", help="no progress output")
    e.add_argument("--debug", action="store_true", help="show tracebacks")
