"""Benchmark: one full appearance transfer, ours and (optionally) the reference's way.

What is measured, on the example pair (``example/chelsea_cat.png`` onto
``example/horse_silhouette.png`` with their boxes as masks):

- ``ours``: e4e-lab's stages: both images inverted together in large UNet batches
  (``e4e_lab.method.inversion.invert``, writing the on-disk cache), then
  ``e4e_lab.method.transfer.run_transfer`` (SDPA attention, vectorised matching, 4 latents
  per step with guidance) including the VAE decode. Also a *cached re-run*: the
  inversion read back from the disk cache plus the same denoising and decoding
  (the sum of the two measured times).
- ``reference`` (``--reference-style``): the same stages the published code's way
  (``reference_style.py``): fp32, explicit attention weights in every layer, the
  per-pixel matching loop, 6 latents per step, inversion one image and one timestep
  at a time with no cache.

Printed per run: seconds per stage (inversion, denoising, decoding, whole transfer),
milliseconds per denoising step, a real cached re-run (inversions read back from disk,
transfer run again) and peak memory (process RSS sampled during the run on a CPU,
``torch.cuda.max_memory_allocated`` on a GPU), then the ratios ours/reference. Memory
is compared only on a GPU: on a CPU the RSS is the whole process's (weights included)
and the reference runs after ours in memory the allocator has already mapped.
Each measured run follows an untimed 4-step warm-up transfer (``--no-warmup`` skips
it); the reference runs after ours, on a float32 copy of the model when ours is not
float32.

``--reference-steps N`` bounds the reference's denoising (its per-pixel loop is slow on
a GPU too: one host sync per query, about 13,000 queries per matched step at 512 px):
the reference then denoises N sampled steps that include each kind of step of the
schedule (plain, structure refresh, matched injection), times each step, and
extrapolates its denoising time as the sum over the whole schedule of the mean time of
each step's kind. Such figures are printed with ``EXTRAPOLATED``. Its inversion and
decoding are always measured whole.

``--compile`` compiles the UNet in place (``Models.compile_unet``, the library's
``--compile``) before a whole-schedule warm-up, then reports how many graphs dynamo
compiled during the measured run and re-run. The processors decide per step outside
the UNet, so the warm-up compiles one graph per batch shape and kind of step (plain,
match, refresh), not one per step. Should the measured runs compile anything, their times include
compilation (or dynamo's eager fallback): they are then flagged ``NOT A COMPILED
FIGURE`` and no target line is printed.
The model is ``tiny`` (the offline test model) or ``sd15-random`` (Stable Diffusion
1.5's layer sizes with random weights): in both cases the images are not meaningful.

    python benchmarks/bench_transfer.py --model tiny --reference-style
    python benchmarks/bench_transfer.py --model sd15-random --size 512 --device cuda --reference-style
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import platform
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(ROOT))

from reference_style import (ReferenceState, reference_attention, reference_denoise,  # noqa: E402
                             reference_inversion, reference_transfer)

from e4e_lab.io.cache import TensorCache  # noqa: E402
from e4e_lab.method.config import INJECTION_MODES, TransferConfig  # noqa: E402
from e4e_lab.method.inversion import invert  # noqa: E402
from e4e_lab.method.latents import decode  # noqa: E402
from e4e_lab.method.transfer import run_transfer  # noqa: E402
from e4e_lab.models.loading import default_device, default_dtype, load_pipeline  # noqa: E402
from e4e_lab.session import Lab  # noqa: E402

EXAMPLE = ROOT / "example"
APPEARANCE, STRUCTURE = "chelsea_cat.png", "horse_silhouette.png"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
#: GPU targets of issue 14 on one H100 (sd15-random, 512 px, 100 steps / 32 skipped,
#: guidance, fp16): whole transfer incl. both inversions, cached re-run, peak memory.
GPU_TARGETS = {"transfer_s": 4.0, "rerun_s": 2.0, "peak_gb": 8.0}
#: Smallest --reference-steps sample that holds every kind of step (see sample_config).
MIN_REFERENCE_STEPS = 4


# ------------------------------------------------------------------ memory --

class PeakMemory:
    """Peak memory of the block: CUDA allocator peak, or process RSS sampled every 5 ms."""

    def __init__(self, device: torch.device):
        self.device, self.peak_bytes = device, 0
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        import psutil

        proc = psutil.Process()
        while True:
            self.peak_bytes = max(self.peak_bytes, proc.memory_info().rss)
            if self._stop.wait(0.005):
                return

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
        return False

    @property
    def label(self) -> str:
        kind = "peak GPU memory" if self.device.type == "cuda" else "peak RSS"
        return f"{kind} {self.peak_bytes / 2**30:.2f} GB"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def timed(device: torch.device, out: dict, key: str):
    """Store the block's wall time (seconds, synchronised on CUDA) in ``out[key]``."""
    sync(device)
    t0 = time.perf_counter()
    yield
    sync(device)
    out[key] = time.perf_counter() - t0


# ------------------------------------------------------------------- setup --

def bench_config(steps: int, skip: int | None, injection: str, guidance: float,
                 freeu: bool) -> TransferConfig:
    """The default config, with its step ranges scaled when ``steps`` is not 100."""
    if skip is None:
        skip = round(0.32 * steps)
    base = dict(num_steps=steps, skip_steps=skip, injection=injection, guidance=guidance,
                freeu=freeu, domain="animal")
    if steps == 100:
        return TransferConfig(**base)
    s = steps / 100
    return TransferConfig(**base, feat_range=(round(10 * s), round(70 * s)),
                          adain_range=(round(50 * s), steps), refresh_until=round(40 * s),
                          refresh_every=max(2, round(5 * s)))


def load_models(name: str, device: torch.device, dtype: torch.dtype, seed: int = 0):
    if name == "tiny":
        return load_pipeline("tiny", device=device, dtype=dtype)
    from e4e_lab.models.random_sd import build_sd15_random

    return build_sd15_random(device, dtype, seed=seed)


def load_pair(models, size: int):
    """The example pair at ``size`` with box masks (no SAM)."""
    lab = Lab(models=models, use_disk_cache=False, cache_dir=tempfile.gettempdir())
    return lab.pair(EXAMPLE / APPEARANCE, EXAMPLE / STRUCTURE,
                    boxes=EXAMPLE / "boxes.json", mask="box", size=size)


# -------------------------------------------------------------------- runs --

def run_ours(models, pair, config: TransferConfig, cache_dir: Path) -> tuple[dict, PeakMemory]:
    """Inversion (batched, written to a fresh disk cache), transfer, then a real cached
    re-run: the inversions read back from disk and the transfer run again."""
    device, t = models.device, {}
    cache = TensorCache(cache_dir, "inversions")
    with PeakMemory(device) as mem:
        with timed(device, t, "inversion_s"):
            app_inv, struct_inv = invert(models, [pair.appearance, pair.structure],
                                         config.inversion, cache=cache)
        with timed(device, t, "run_s"):
            result = run_transfer(models, app_inv, struct_inv, pair.appearance_mask,
                                  pair.structure_mask, config)
    with timed(device, t, "rerun_s"):
        with timed(device, t, "cache_read_s"):
            again = invert(models, [pair.appearance, pair.structure], config.inversion,
                           cache=cache)
        run_transfer(models, again[0], again[1], pair.appearance_mask, pair.structure_mask,
                     config)
    if not all(r.from_cache for r in again):
        raise SystemExit("error: the inversion cache was not hit on the re-run")
    t.update(denoise_s=result.timings["denoise_s"], ms_per_step=result.timings["ms_per_step"],
             decode_s=result.timings["decode_s"], setup_s=result.timings["setup_s"])
    t["transfer_s"] = t["inversion_s"] + t["run_s"]
    return t, mem


def run_reference(models, pair, config: TransferConfig) -> tuple[dict, PeakMemory]:
    with PeakMemory(models.device) as mem:
        t = reference_transfer(models, pair.appearance, pair.structure, pair.appearance_mask,
                               pair.structure_mask, config)
    return t, mem


# ------------------------------------------------- sampled reference steps --

def step_kind(config: TransferConfig, i: int) -> str:
    """What denoising step ``i`` costs the reference: ``match`` (the per-pixel loop in
    every injected layer), ``refresh`` (structure features, no matching) or ``plain``."""
    if not config.injects_at(i):
        return "plain"
    return "refresh" if config.refreshes_at(i) else "match"


def sample_config(config: TransferConfig, steps: int) -> TransferConfig:
    """``steps`` denoising steps (the schedule's last ones) that hold every kind of step.

    Injection from step 1 on (counted by the config's own step counter), one structure
    refresh (counter 2), matching on the other injected steps, AdaIN on the second half.
    The inversion config is unchanged, so the same inversions serve.
    """
    sample = config.replace(skip_steps=config.num_steps - steps, feat_range=(1, steps),
                            refresh_every=2, refresh_until=3, adain_range=(steps // 2, steps))
    needed = {step_kind(config, i) for i in range(config.denoising_steps)}
    missing = needed - {step_kind(sample, i) for i in range(steps)}
    if missing:
        raise SystemExit(f"error: --reference-steps {steps} samples no {', '.join(sorted(missing))} "
                         "step: sample more steps")
    return sample


class StepClock:
    """Synchronised time stamps at the start of every UNet call (a forward pre-hook)."""

    def __init__(self, unet, device: torch.device):
        self.unet, self.device = unet, device
        self.stamps: list[float] = []
        self._handle = None

    def __enter__(self) -> "StepClock":
        self._handle = self.unet.register_forward_pre_hook(self._stamp)
        return self

    def _stamp(self, *_) -> None:
        sync(self.device)
        self.stamps.append(time.perf_counter())

    def __exit__(self, *exc) -> bool:
        self._handle.remove()
        return False

    def durations(self, end: float) -> list[float]:
        """Seconds of each step: from its UNet call to the next one (the last to ``end``)."""
        return [b - a for a, b in zip(self.stamps, self.stamps[1:] + [end])]


def run_reference_sampled(models, pair, config: TransferConfig,
                          steps: int) -> tuple[dict, PeakMemory]:
    """The reference's transfer with its denoising sampled and extrapolated.

    Inversion and decoding are measured whole; the denoising runs the ``steps`` steps of
    :func:`sample_config`, and its time over the whole schedule is the sum, over the
    schedule's steps, of the mean sampled time of each step's kind.
    """
    device = models.device
    sample = sample_config(config, steps)
    latent_hw = tuple(s // models.vae_scale_factor for s in pair.structure.pixels.shape[-2:])
    state = ReferenceState(sample, latent_hw, pair.structure_mask.float(),
                           pair.appearance_mask.float())
    t: dict = {}
    with PeakMemory(device) as mem:
        with reference_attention(models.unet, state):
            with timed(device, t, "inversion_s"):
                app_inv, struct_inv = reference_inversion(
                    models, [pair.appearance, pair.structure], config.inversion)
            with StepClock(models.unet, device) as clock:
                finals = reference_denoise(models, app_inv, struct_inv, state)
                sync(device)
                durations = clock.durations(time.perf_counter())
        with timed(device, t, "decode_s"):
            decode(models, finals).cpu()
    by_kind: dict[str, list[float]] = {}
    for i, seconds in enumerate(durations):
        by_kind.setdefault(step_kind(sample, i), []).append(seconds)
    mean = {kind: sum(v) / len(v) for kind, v in by_kind.items()}
    t["denoise_s"] = sum(mean[step_kind(config, i)] for i in range(config.denoising_steps))
    t["ms_per_step"] = 1000 * t["denoise_s"] / config.denoising_steps
    t["transfer_s"] = t["inversion_s"] + t["denoise_s"] + t["decode_s"]
    t["sampled"] = (steps, {kind: 1000 * m for kind, m in sorted(mean.items())})
    return t, mem


# ----------------------------------------------------------------- compile --

def compiled_graphs() -> int:
    """Graphs dynamo has compiled so far in this process."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def compile_verdict(new_graphs: int) -> str:
    """The line that says whether the measured ``--compile`` figures are compiled ones."""
    if new_graphs == 0:
        return ("compile: no recompilation during the measured run and re-run: the figures "
                "above are compiled ones")
    return (f"compile: NOT A COMPILED FIGURE: dynamo compiled {new_graphs} new graph(s) during "
            "the measured run and re-run (its guards on the per-run injection processors or "
            "their step state failed): the times above include compilation or dynamo's "
            "eager fallback")


def report(label: str, t: dict, mem: PeakMemory, steps: int) -> None:
    extra = (f" | cached re-run {t['rerun_s']:.3f} s (cache read {t['cache_read_s']:.3f} s)"
             if "rerun_s" in t else "")
    approx = ""
    if "sampled" in t:
        n, per_kind = t["sampled"]
        approx = (" EXTRAPOLATED from " + str(n) + " sampled steps (" + ", ".join(
            f"{kind} {ms:.1f} ms" for kind, ms in per_kind.items()) + " per step)")
    print(f"{label}: inversion {t['inversion_s']:.3f} s | denoising {t['denoise_s']:.3f} s"
          f"{approx} ({steps} steps, {t['ms_per_step']:.1f} ms/step) | decode "
          f"{t['decode_s']:.3f} s | whole transfer {t['transfer_s']:.3f} s"
          f"{' EXTRAPOLATED' if approx else ''}{extra} | {mem.label}", flush=True)


def ratio_line(name: str, ours: float, ref: float) -> str:
    """``name ours/ref (Nx faster|slower)``."""
    speed = f"{ref / ours:.1f}x faster" if ours <= ref else f"{ours / ref:.1f}x slower"
    return f"{name} {ours / ref:.3f} ({speed})"


def check_targets(args, ours: dict, mem: PeakMemory) -> None:
    """Print the issue's GPU targets next to the measured figures (CUDA, sd15-random, 512)."""
    if not (args.device.type == "cuda" and args.model == "sd15-random" and args.size == 512
            and args.steps == 100 and args.dtype == torch.float16):
        return
    got = {"transfer_s": ours["transfer_s"], "rerun_s": ours["rerun_s"],
           "peak_gb": mem.peak_bytes / 2**30}
    parts = [f"{k} {got[k]:.2f} <= {v} {'ok' if got[k] <= v else 'MISSED'}"
             for k, v in GPU_TARGETS.items()]
    print("GPU targets: " + ", ".join(parts))


# -------------------------------------------------------------------- main --

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("tiny", "sd15-random"), default="tiny")
    p.add_argument("--size", type=int, help="model pixels (default: the model's, 128 tiny / 512 SD)")
    p.add_argument("--dtype", choices=tuple(DTYPES), help="default float16 on CUDA, else float32")
    p.add_argument("--injection", choices=INJECTION_MODES, default="feature")
    p.add_argument("--steps", type=int, default=100, help="scheduler steps (default 100)")
    p.add_argument("--skip-steps", type=int, help="skipped steps (default 32 of 100, scaled)")
    p.add_argument("--guidance", type=float, default=2.5)
    p.add_argument("--no-freeu", action="store_true")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default cuda if available)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="weights seed of sd15-random")
    p.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="skip the untimed 4-step warm-up transfer before each measured one")
    p.add_argument("--reference-style", action="store_true",
                   help="also run the stages the published code's way and print the ratios")
    p.add_argument("--reference-steps", type=int, metavar="N",
                   help="time only N sampled reference denoising steps (each kind of step "
                   f"included; at least {MIN_REFERENCE_STEPS}) and extrapolate its denoising "
                   "time (printed as EXTRAPOLATED)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the UNet in place before a whole-schedule warm-up and "
                   "say whether the measured runs recompiled")
    args = p.parse_args(argv)
    args.device = torch.device(args.device) if args.device else default_device()
    args.dtype = DTYPES[args.dtype] if args.dtype else default_dtype(args.device)
    if args.reference_style and args.injection == "cross-image":
        p.error("--reference-style: the published code has no cross-image mode")
    if args.reference_steps is not None and not args.reference_style:
        p.error("--reference-steps needs --reference-style")
    if args.reference_steps is not None and args.reference_steps < MIN_REFERENCE_STEPS:
        p.error(f"--reference-steps: at least {MIN_REFERENCE_STEPS} (one step of each kind)")
    if args.compile and args.reference_style:
        p.error("--compile measures ours only: leave out --reference-style")
    if args.compile and not args.warmup:
        p.error("--compile needs the warm-up (it compiles the graphs)")
    return args


def freeu_label(value) -> str:
    """FreeU as printed: ``on`` / ``off`` for a bool, else the mode's name."""
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def measure_ours(args, models, pair, config: TransferConfig) -> tuple[dict, PeakMemory]:
    """Warm-up, then the measured run and re-run of ours (compiled with ``--compile``)."""
    steps = config.denoising_steps
    if args.compile:  # the warm-up is the whole schedule: it compiles every graph
        models.compile_unet()
        warm = config
    else:
        warm = bench_config(4, 1, args.injection, args.guidance, not args.no_freeu)
    with tempfile.TemporaryDirectory(prefix="e4e-bench-") as tmp:
        if args.warmup:
            t0 = time.perf_counter()
            run_ours(models, pair, warm, Path(tmp) / "warm-up")
            if args.compile:
                print(f"compile: warm-up run (compiling) {time.perf_counter() - t0:.1f} s, "
                      f"{compiled_graphs()} graph(s) compiled", flush=True)
        before = compiled_graphs() if args.compile else 0
        ours, mem = run_ours(models, pair, config, Path(tmp) / "measured")
    report("ours (compiled)" if args.compile else "ours", ours, mem, steps)
    new_graphs = compiled_graphs() - before if args.compile else 0
    if args.compile:
        print(compile_verdict(new_graphs), flush=True)
    if new_graphs == 0:
        check_targets(args, ours, mem)
    return ours, mem


def measure_reference(args, models, pair, config: TransferConfig, ours: dict,
                      ours_mem: PeakMemory) -> None:
    """The reference's way on ``models`` (float32), then the ratios ours/reference."""
    device = models.device
    if args.warmup:
        run_reference(models, pair, bench_config(4, 1, args.injection, args.guidance,
                                                 not args.no_freeu))
    if args.reference_steps is not None and args.reference_steps < config.denoising_steps:
        ref, ref_mem = run_reference_sampled(models, pair, config, args.reference_steps)
    else:
        ref, ref_mem = run_reference(models, pair, config)
    report("reference", ref, ref_mem, config.denoising_steps)
    print("ratio ours/reference: " + ", ".join([
        ratio_line("whole transfer", ours["transfer_s"], ref["transfer_s"]),
        ratio_line("per denoising step", ours["ms_per_step"], ref["ms_per_step"]),
        ratio_line("inversion", ours["inversion_s"], ref["inversion_s"]),
    ]) + (f", peak memory {ours_mem.peak_bytes / max(ref_mem.peak_bytes, 1):.3f}"
          if device.type == "cuda" else
          " (memory not compared on a CPU: the RSS is the whole process's)")
        + (" (reference denoising EXTRAPOLATED)" if "sampled" in ref else ""), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    config = bench_config(args.steps, args.skip_steps, args.injection, args.guidance,
                          not args.no_freeu)
    t_load = time.perf_counter()
    models = load_models(args.model, device, args.dtype, args.seed)
    t_load = time.perf_counter() - t_load
    args.size = args.size or models.default_size
    pair = load_pair(models, args.size)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads")
    lh = args.size // models.vae_scale_factor
    print(f"transfer benchmark {datetime.date.today()} | model {args.model} (RANDOM WEIGHTS: "
          f"images not meaningful), loaded in {t_load:.1f} s | device {device} ({where}) | "
          f"dtype {str(args.dtype).replace('torch.', '')} | size {args.size} (latent {lh}x{lh}) | "
          f"{config.num_steps} steps, {config.skip_steps} skipped, {config.denoising_steps} "
          f"denoising | injection {config.injection.mode} | guidance {config.guidance.scale} | "
          f"FreeU {freeu_label(config.freeu)}{' | torch.compile' if args.compile else ''}",
          flush=True)
    ours, ours_mem = measure_ours(args, models, pair, config)
    if args.reference_style:
        if args.dtype != torch.float32:  # the reference runs in fp32: a float32 copy
            del models, pair
            if device.type == "cuda":
                torch.cuda.empty_cache()
            models = load_models(args.model, device, torch.float32, args.seed)
            pair = load_pair(models, args.size)
        measure_reference(args, models, pair, config, ours, ours_mem)
    print(f"max RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
