"""Command line: ``e4e-lab transfer ...`` (also ``python -m e4e_lab``).

Bad input or an unavailable model exits with status 2 and one ``error:`` line on
stderr (a traceback only with ``--debug``). Input that is valid but does nothing (a step
range no denoising step reaches, a boxes file naming neither image) prints one
``warning:`` line each and the run goes on. Progress goes to stderr.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings

from . import interrupts
from .errors import ConfigError, E4ELabError, E4ELabWarning, TransferCancelled
from .cli_args import build_parser
from .method.config import TransferConfig

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
        return lab.pair(args.structure, objects=objects, mask=args.mask, size=args.size,
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
        bars = _Bars(args.quiet, config.injection.mode)
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
