"""Command line: ``e4e-lab transfer ...`` (also ``python -m e4e_lab``).

Bad input or an unavailable model exits with status 2 and one ``error:`` line on
stderr (a traceback only with ``--debug``). Input that is valid but does nothing (a step
range no denoising step reaches, a boxes file naming neither image) prints one
``warning:`` line each and the run goes on. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
import warnings

from . import interrupts
from .errors import ConfigError, E4ELabError, E4ELabWarning, TransferCancelled
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


def _add_method(meth, d: TransferConfig) -> None:
    meth.add_argument("--domain", default=d.domain, metavar="WORD",
                      help='object category for the prompt "A photo of a {domain}"')
    meth.add_argument("--injection", choices=INJECTION_MODES, default=d.injection)
    meth.add_argument("--correspondence", choices=("match", "dift"), default=d.correspondence,
                      help="match features in each layer (default) or use a DIFT field")
    meth.add_argument("--steps", type=int, default=d.num_steps, help="scheduler steps")
    meth.add_argument("--skip-steps", type=int, default=d.skip_steps)
    meth.add_argument("--guidance", type=float, default=d.guidance)
    meth.add_argument("--inversion-cfg", type=float, default=d.inversion_cfg)
    meth.add_argument("--feat-range", default=d.feat_range, **_range("feat_range"),
                      help=RANGE_HELP % "that inject features")
    meth.add_argument("--adain-range", default=d.adain_range, **_range("adain_range"),
                      help=RANGE_HELP % "followed by masked AdaIN")
    meth.add_argument("--no-adain", action="store_true", help="turn masked AdaIN off")
    meth.add_argument("--schedule", choices=SCHEDULES, default=d.schedule,
                      help="published: the published code's effective steps (its counter lags "
                      "one UNet call; default); exact: the ranges read literally")
    meth.add_argument("--mask-resize", choices=MASK_RESIZE_MODES, default=d.mask_resize,
                      help="masks on layer grids: reference (bilinear, as published; default) "
                      "or area (area average >= 0.5)")
    meth.add_argument("--seed", type=int, default=d.seed)


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
    e.add_argument("--steps", type=int, default=d.num_steps)
    e.add_argument("--skip-steps", type=int, default=d.skip_steps)
    e.add_argument("--guidance", type=float, default=d.guidance)
    e.add_argument("--feat-range", default=d.feat_range, **_range("feat_range"),
                   help=RANGE_HELP % "that inject features")
    e.add_argument("--adain-range", default=d.adain_range, **_range("adain_range"),
                   help=RANGE_HELP % "followed by masked AdaIN")
    e.add_argument("--seed", type=int, default=d.seed)
    e.add_argument("--quiet", action="store_true", help="no progress output")
    e.add_argument("--debug", action="store_true", help="show tracebacks")


@contextlib.contextmanager
def _warning_lines():
    """The library's :class:`E4ELabWarning` s as one ``warning:`` line each on stderr
    (the run goes on); other warnings pass through as usual."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        if issubclass(w.category, E4ELabWarning):
            print(f"warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _config(args) -> TransferConfig:
    with _warning_lines():  # ranges that no denoising step reaches
        return TransferConfig(
            num_steps=args.steps, skip_steps=args.skip_steps, guidance=args.guidance,
            inversion_cfg=args.inversion_cfg, domain=args.domain, seed=args.seed,
            injection=args.injection, correspondence=args.correspondence,
            feat_range=tuple(args.feat_range), adain_range=tuple(args.adain_range),
            adain=not args.no_adain, freeu="off" if args.no_freeu else args.freeu,
            schedule=args.schedule, mask_resize=args.mask_resize,
        )


def _check_inputs(args):
    """Read the boxes and pairs files and refuse bad images and an existing run now, not
    after loading the model and running. Returns (boxes, objects or None)."""
    from .io.formats import read_boxes, read_pairs
    from .io.outputs import check_output
    from .method.images import check_image_file
    from .models.device import check_cache_dir, check_fits, resolve_device

    device = resolve_device(args.device)  # an unknown or absent device, before loading
    check_cache_dir(args.cache_dir)
    if args.size is not None:
        check_fits(args.size, device)
    boxes = read_boxes(args.boxes) if args.boxes else None
    objects = read_pairs(args.pairs) if args.pairs else None
    if objects is None and not args.appearance:
        raise ConfigError("appearance", None, "give --appearance PATH (or --pairs JSON)")
    for path in ([args.appearance] if objects is None else [o.appearance for o in objects]
                 ) + [args.structure] + [m for m in (args.appearance_mask, args.structure_mask) if m]:
        check_image_file(path)
    check_output(args.out, args.overwrite)
    return boxes, objects


def _load_pair(lab, args, boxes, objects):
    """The run's inputs: a multi-object pair from --pairs, else the two images."""
    if objects is not None:
        return lab.multi_pair(args.structure, objects, mask=args.mask, size=args.size,
                              fit=args.fit, resample=args.resample)
    from .method.masks import load_mask

    with _warning_lines():  # a boxes file that names neither image
        return lab.pair(args.appearance, args.structure, appearance_box=args.appearance_box,
                        structure_box=args.structure_box, boxes=boxes, mask=args.mask,
                        size=args.size, fit=args.fit, resample=args.resample,
                        appearance_mask=load_mask(args.appearance_mask, args.fit),
                        structure_mask=load_mask(args.structure_mask, args.fit))


class _Bars:
    """Progress bars on stderr: the inversion (UNet passes), then the denoising steps."""

    def __init__(self, quiet: bool, injection: str):
        self.quiet, self.injection, self.bars = quiet, injection, {}

    def _bar(self, name, total, **kw):
        from tqdm.auto import tqdm

        if name not in self.bars:
            self.bars[name] = tqdm(total=total, disable=self.quiet, file=sys.stderr, **kw)
        return self.bars[name]

    def inversion(self, done, total):
        b = self._bar("inv", total, desc="inversion", unit="unet")
        b.update(done - b.n)

    def step(self, ev):
        self._bar("den", ev.total, desc=f"transfer ({self.injection})", unit="step").update(1)

    def close(self):
        for b in self.bars.values():
            b.close()


def _transfer(args) -> int:
    config = _config(args)  # validate before importing or loading anything heavy
    boxes, objects = _check_inputs(args)

    import torch

    from .io.outputs import OutputTransaction, write_run
    from .session import Lab

    dtype = getattr(torch, args.dtype) if args.dtype else None
    t0 = time.perf_counter()
    # the run owns --out from here on (a concurrent run into it is refused) and writes into
    # a staging folder moved into place when complete (nothing half-written on a failure)
    with OutputTransaction(args.out, args.overwrite) as tx:
        lab = Lab(model=args.model, device=args.device, dtype=dtype, cache_dir=args.cache_dir,
                  use_disk_cache=not args.no_cache, sam_checkpoint=args.sam_checkpoint)
        if args.compile:
            lab.models.compile_unet()
        pair = _load_pair(lab, args, boxes, objects)
        bars = _Bars(args.quiet, config.injection)
        try:
            result = lab.transfer(pair, config, callback=bars.step,
                                  inversion_progress=bars.inversion)
        finally:
            bars.close()
        extra = {"wall_s": round(time.perf_counter() - t0, 2)}
        names = write_run(tx, result, pair, extra=extra)
    print(f"wrote {', '.join(str(tx.out / n) for n in names)}", file=sys.stderr)
    return 0


def _evaluate(args) -> int:
    from .io.outputs import EVAL_FILES, check_output

    check_output(args.out, args.overwrite, EVAL_FILES)  # before loading anything heavy
    import torch

    from .evaluation.evaluate import run_distributed
    from .session import Lab

    with _warning_lines():  # ranges that no denoising step reaches
        base = TransferConfig(num_steps=args.steps, skip_steps=args.skip_steps,
                              guidance=args.guidance, feat_range=tuple(args.feat_range),
                              adain_range=tuple(args.adain_range), seed=args.seed)
    dtype = getattr(torch, args.dtype) if args.dtype else None

    def make_lab(_index: int):  # the same session on every process
        device = args.device
        if device is None:
            try:
                from accelerate import PartialState
                device = PartialState().device
            except ImportError:
                device = None
        lab = Lab(model=args.model, device=device, dtype=dtype, cache_dir=args.cache_dir,
                  sam_checkpoint=args.sam_checkpoint)
        if args.compile:
            lab.models.compile_unet()
        return lab

    def progress(pair, method):
        if not args.quiet:
            print(f"evaluated {pair} / {method}", file=sys.stderr)

    path = run_distributed(make_lab, args.pairs_dir, args.out, tuple(args.methods), base,
                           args.mask, args.size, progress, overwrite=args.overwrite)
    if path is not None:  # the main process (the others return None)
        print(f"wrote {path} and {path.parent / 'report.html'}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    previous = interrupts.catch_first()  # Ctrl-C: 130 after one or many, no traceback
    try:
        code = _main(argv)
    except KeyboardInterrupt:  # before or after _main's own handler (parsing arguments...)
        print("error: interrupted", file=sys.stderr)
        code = 130
    finally:  # argv None: the command line (e4e-lab, python -m e4e_lab), about to exit
        interrupted = interrupts.release(previous, ending=argv is None)
    if interrupted and argv is None:
        interrupts.exit_now(code)
    return code


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return _evaluate(args) if args.command == "evaluate" else _transfer(args)
    except TransferCancelled as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 130
    except E4ELabError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input: say so and how to see more
        if args.debug:
            raise
        print(f"error: internal error ({type(exc).__name__}: {exc}); re-run with --debug "
              "and report the traceback", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
