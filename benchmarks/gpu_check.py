"""Every GPU figure of the suite in one call, within a time budget (issue 14).

Run through ``benchmarks/gpu_check.sh`` on a bare GPU machine (it installs the wheels of
``benchmarks/gpu_wheels.txt`` first). The steps run one after the other, each as its own
subprocess with its own timeout, so that a hang or a crash in one cannot eat the others:

1. ``environment``: GPU, driver, versions, CUDA capability, free memory;
2. ``tests``: the suite's ``gpu``-marked tests (``tests/test_gpu.py``);
3. ``matching``: ``bench_matching.py --device cuda`` (target >= 1000x);
4. ``transfer``: ``bench_transfer.py`` on sd15-random at 512 px, fp16, with the
   reference's way (its denoising sampled and extrapolated, ``--reference-steps``);
5. ``compile``: the same transfer with ``--compile``, only if enough time is left.

Every step's timeout is its own cap, cut so that the steps after it keep their reserved
time, all inside ``--budget-s``. Each step's output goes to ``<out>/step-<name>.log``;
``<out>/gpu_results.md`` (date, device, versions, each step's status and figures, one
verdict line per target) is written at the end and printed last.

``--dry-run`` executes nothing heavy: it checks that every command is well-formed
(interpreter and scripts exist, the benchmarks' parsers accept the exact flags, pytest
collects the gpu tests) and that the wheel folder holds exactly the listed wheels.
``--environment`` is step 1 itself (it prints ``key: value`` lines).
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEEL_LIST = ROOT / "benchmarks" / "gpu_wheels.txt"
RESULTS_NAME = "gpu_results.md"
DEFAULT_BUDGET_S = 270.0
#: Sampled reference denoising steps in the transfer step (each kind of step included).
DEFAULT_REFERENCE_STEPS = 6
#: An optional step (compile) starts only with at least this much of the budget left.
MIN_OPTIONAL_S = 60.0
#: Largest total size of the wheel folder (it travels with the working tree).
MAX_WHEELS_MB = 40.0
#: Output kept per failed step in the results file.
TAIL_CHARS = 1500

MATCHING_TARGET = 1000.0
TRANSFER_TARGETS = {"transfer_s": "whole transfer incl. both inversions",
                    "rerun_s": "cached re-run", "peak_gb": "peak GPU memory"}
TRANSFER_UNITS = {"transfer_s": "s", "rerun_s": "s", "peak_gb": "GB"}


# ------------------------------------------------------------------- steps --

@dataclass(frozen=True)
class Step:
    """One subprocess of the check.

    ``timeout_s`` caps the step; ``reserve_s`` is the time earlier steps must leave
    for it; an ``optional`` step runs only when ``MIN_OPTIONAL_S`` are left, and
    reserves nothing.
    """

    name: str
    title: str
    argv: tuple[str, ...]
    timeout_s: float
    reserve_s: float = 0.0
    optional: bool = False


@dataclass
class StepResult:
    """What one step did: ``status`` is ``ok``, ``failed (rc N)``, ``timed out after N s``
    or ``skipped (...)``; ``output`` is its whole stdout + stderr."""

    name: str
    title: str
    command: str
    status: str
    seconds: float = 0.0
    output: str = ""
    lines: list[str] = field(default_factory=list)


def transfer_argv(python: str, reference_steps: int) -> tuple[str, ...]:
    """The sd15-random 512 px fp16 transfer of the GPU targets (without ``--compile``)."""
    return (python, "benchmarks/bench_transfer.py", "--model", "sd15-random", "--size", "512",
            "--device", "cuda", "--dtype", "float16", "--reference-style",
            "--reference-steps", str(reference_steps))


def plan(python: str, reference_steps: int = DEFAULT_REFERENCE_STEPS) -> list[Step]:
    """The steps, in order."""
    compile_argv = transfer_argv(python, reference_steps)[:-3] + ("--compile",)
    return [
        Step("environment", "Environment", (python, "benchmarks/gpu_check.py", "--environment"),
             timeout_s=60, reserve_s=10),
        Step("tests", "GPU tests (pytest -m gpu)",
             (python, "-m", "pytest", "-m", "gpu", "-q", "tests/test_gpu.py",
              "-p", "no:cacheprovider"), timeout_s=120, reserve_s=40),
        Step("matching", "Matching: per-pixel loop vs nearest_neighbors",
             (python, "benchmarks/bench_matching.py", "--device", "cuda"),
             timeout_s=90, reserve_s=30),
        Step("transfer", "Whole transfer, sd15-random 512 px fp16, and the reference's way",
             transfer_argv(python, reference_steps), timeout_s=200, reserve_s=100),
        Step("compile", "Whole transfer with torch.compile (UNet)", compile_argv,
             timeout_s=600, optional=True),
    ]


def step_env(cache_dir: Path) -> dict[str, str]:
    """Subprocess environment: the repository importable, unbuffered, offline, own caches."""
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths + [str(ROOT)])
    env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", E4E_LAB_CACHE=str(cache_dir))
    return env


def run_step(step: Step, timeout_s: float, env: dict[str, str], log: Path) -> StepResult:
    """Run one step in its own process group; kill the group when it times out."""
    command = " ".join(step.argv)
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(step.argv, cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
            status = "ok" if rc == 0 else f"failed (rc {rc})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = f"timed out after {timeout_s:.0f} s"
    output = log.read_text(errors="replace")
    return StepResult(step.name, step.title, command, status, time.perf_counter() - t0, output,
                      key_lines(step.name, output))


def run_all(steps: list[Step], budget_s: float, out_dir: Path) -> list[StepResult]:
    """Run the steps in order inside ``budget_s`` seconds."""
    deadline = time.monotonic() + budget_s
    results = []
    with tempfile.TemporaryDirectory(prefix="e4e-gpu-check-") as cache:
        env = step_env(Path(cache))
        for n, step in enumerate(steps):
            left = deadline - time.monotonic()
            later = sum(s.reserve_s for s in steps[n + 1:] if not s.optional)
            allowed = min(step.timeout_s, left - later)
            command = " ".join(step.argv)
            if step.optional and allowed < MIN_OPTIONAL_S:
                results.append(StepResult(step.name, step.title, command,
                                          f"skipped ({max(left, 0):.0f} s of the budget left, "
                                          f"{MIN_OPTIONAL_S:.0f} s needed)"))
                continue
            if allowed < min(step.timeout_s, 5):
                results.append(StepResult(step.name, step.title, command,
                                          "skipped (budget spent)"))
                continue
            print(f"[gpu_check] {step.name}: {command} (timeout {allowed:.0f} s)", flush=True)
            result = run_step(step, allowed, env, out_dir / f"step-{step.name}.log")
            print(f"[gpu_check] {step.name}: {result.status} in {result.seconds:.1f} s",
                  flush=True)
            results.append(result)
    return results


# ----------------------------------------------------------------- figures --

#: Lines of each step's output that are its figures (by prefix or pattern).
KEY_LINES = {
    "environment": r"^[a-z][a-z0-9 _/-]*: ",
    "tests": r"(passed|failed|skipped|error|no tests ran)",
    "matching": r"^(matching benchmark|\d+x\d+ C=|speedup:)",
    "transfer": r"^(transfer benchmark|ours|reference|ratio|GPU targets|compile)",
    "compile": r"^(transfer benchmark|ours|GPU targets|compile)",
}


def key_lines(name: str, output: str) -> list[str]:
    """The figure lines of a step's output (for pytest, its summary lines)."""
    pattern = re.compile(KEY_LINES[name])
    lines = [ln.rstrip() for ln in output.splitlines() if pattern.search(ln)]
    if name == "tests":
        lines = [ln for ln in lines if re.search(r"\d+ (passed|failed|skipped|error)", ln)
                 or ln.startswith(("FAILED", "ERROR", "SKIPPED"))]
    return lines


def environment_info(results: list[StepResult]) -> dict[str, str]:
    """``key: value`` lines of the environment step."""
    env = next((r for r in results if r.name == "environment"), None)
    pairs = (ln.split(": ", 1) for ln in (env.lines if env else []))
    return {k.strip(): v.strip() for k, v in pairs}


def verdicts(results: list[StepResult]) -> list[str]:
    """One line per target: met, MISSED or not measured (with the step's status)."""
    by_name = {r.name: r for r in results}
    lines = []
    tests = by_name.get("tests")
    summary = tests.lines[-1] if tests and tests.lines else ""
    if tests and tests.status == "ok" and "passed" in summary and "skipped" not in summary:
        word = "met"
    elif re.search(r"\d+ (failed|error)", summary):
        word = "MISSED"
    else:
        word = "not measured"
    lines.append(f"- GPU tests: {word} ({summary.strip('= ') or _status(tests)})")
    match = by_name.get("matching")
    m = re.search(r"^speedup: ([\d.]+)x", match.output if match else "", re.M)
    if m:
        got = float(m.group(1))
        lines.append(f"- matching >= {MATCHING_TARGET:.0f}x: "
                     f"{'met' if got >= MATCHING_TARGET else 'MISSED'} ({got:.1f}x at worst)")
    else:
        lines.append(f"- matching >= {MATCHING_TARGET:.0f}x: not measured ({_status(match)})")
    transfer = by_name.get("transfer")
    text = transfer.output if transfer else ""
    for key, label in TRANSFER_TARGETS.items():
        m = re.search(rf"{key} ([\d.]+) <= ([\d.]+) (ok|MISSED)", text)
        unit = TRANSFER_UNITS[key]
        if m:
            lines.append(f"- {label} <= {m.group(2)} {unit}: "
                         f"{'met' if m.group(3) == 'ok' else 'MISSED'} ({m.group(1)} {unit})")
        else:
            lines.append(f"- {label}: not measured ({_status(transfer)})")
    compiled = by_name.get("compile")
    verdict = next((ln for ln in (compiled.lines if compiled else []) if ln.startswith("compile: ")
                    and "warm-up" not in ln), None)
    lines.append(f"- torch.compile: {verdict[len('compile: '):] if verdict else _status(compiled)}")
    return lines


def _status(result: StepResult | None) -> str:
    return "step not run" if result is None else f"step {result.status}"


def format_results(results: list[StepResult], budget_s: float, elapsed_s: float,
                   date: str | None = None) -> str:
    """The Markdown results file: header, environment, verdicts, then each step."""
    env = environment_info(results)
    date = date or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = ["# GPU check results", "",
           f"- Date: {date}",
           f"- Device: {env.get('gpu', 'unknown')}",
           f"- Driver: {env.get('driver', 'unknown')}",
           "- Versions: " + ", ".join(f"{k} {env.get(k, '?')}" for k in
                                      ("python", "torch", "diffusers", "transformers")),
           f"- Budget: {budget_s:.0f} s, used {elapsed_s:.0f} s", "",
           "## Verdicts", "", *verdicts(results), "", "## Steps"]
    for r in results:
        out += ["", f"### {r.title}: {r.status} ({r.seconds:.1f} s)", "", f"`{r.command}`"]
        shown = r.lines if r.status == "ok" else r.output[-TAIL_CHARS:].splitlines()
        if shown:
            out += ["", "```", *shown, "```"]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------- environment --

def print_environment() -> int:
    """Step 1: ``key: value`` lines about the machine and the libraries."""
    import importlib
    import platform

    import torch

    print(f"python: {platform.python_version()}")
    print(f"torch: {torch.__version__} (CUDA {torch.version.cuda})")
    for name in ("diffusers", "transformers", "accelerate", "huggingface_hub"):
        try:
            print(f"{name}: {importlib.import_module(name).__version__}")
        except ImportError as exc:
            print(f"{name}: MISSING ({exc})")
    smi = shutil.which("nvidia-smi")
    if smi:
        query = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,memory.free",
                                "--format=csv,noheader"], capture_output=True, text=True,
                               timeout=30)
        print(f"nvidia-smi: {query.stdout.strip() or query.stderr.strip()}")
        fields = [f.strip() for f in query.stdout.splitlines()[0].split(",")] if query.stdout else []
        if len(fields) >= 2:
            print(f"driver: {fields[1]}")
    if not torch.cuda.is_available():
        print("gpu: none (torch.cuda.is_available() is False)")
        return 1
    free, total = torch.cuda.mem_get_info()
    major, minor = torch.cuda.get_device_capability()
    print(f"gpu: {torch.cuda.get_device_name()} (x{torch.cuda.device_count()})")
    print(f"capability: {major}.{minor}")
    print(f"memory: {free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB")
    return 0


# ------------------------------------------------------------------ wheels --

def read_wheel_list(path: Path = WHEEL_LIST) -> list[tuple[str, str]]:
    """``[(normalised name, version)]`` of the ``name==version`` lines of the list."""
    reqs = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            if not sep or not version:
                raise ValueError(f"{path.name}: '{line}' is not an exact pin name==version")
            reqs.append((normalise(name), version.strip()))
    return reqs


def normalise(name: str) -> str:
    """A distribution name as wheel file names spell it (``clip-anytorch`` -> ``clip_anytorch``)."""
    return re.sub(r"[-_.]+", "_", name.strip()).lower()


def wheel_pin(filename: str) -> tuple[str, str]:
    """``(normalised name, version)`` of a wheel file name."""
    name, version = filename.split("-")[:2]
    return normalise(name), version


def check_wheels(wheel_dir: Path, reqs: list[tuple[str, str]]) -> list[str]:
    """Problems with the wheel folder: a listed wheel missing or twice, an unlisted one,
    too large in all. Empty when it holds exactly one wheel per listed pin."""
    if not wheel_dir.is_dir():
        return [f"{wheel_dir} does not exist: run `make gpu-wheels`"]
    wheels = sorted(wheel_dir.glob("*.whl"))
    problems = []
    for name, version in reqs:
        found = [w.name for w in wheels if wheel_pin(w.name)[0] == name]
        if [wheel_pin(f) for f in found] != [(name, version)]:
            problems.append(f"{name}=={version}: found {found or 'no wheel'} in {wheel_dir}")
    listed = {name for name, _ in reqs}
    problems += [f"{w.name}: not in {WHEEL_LIST.name}" for w in wheels
                 if wheel_pin(w.name)[0] not in listed]
    size_mb = sum(w.stat().st_size for w in wheels) / 2**20
    if size_mb > MAX_WHEELS_MB:
        problems.append(f"the wheels weigh {size_mb:.1f} MB (more than {MAX_WHEELS_MB:.0f} MB)")
    return problems


def prune_wheels(wheel_dir: Path, reqs: list[tuple[str, str]]) -> list[str]:
    """Delete the wheels of ``wheel_dir`` that match no listed pin (``make gpu-wheels``
    keeps one version of each); returns the names deleted."""
    gone = [w for w in sorted(wheel_dir.glob("*.whl")) if wheel_pin(w.name) not in set(reqs)]
    for w in gone:
        w.unlink()
    return [w.name for w in gone]


# ----------------------------------------------------------------- dry run --

def parser_check(script: str, args: list[str]) -> list[str]:
    """argv that makes ``script``'s own ``parse_args`` validate ``args`` and exit."""
    code = ("import sys; sys.path.insert(0, 'benchmarks'); "
            f"import {Path(script).stem} as m; m.parse_args(sys.argv[1:]); print('flags ok')")
    return [sys.executable, "-c", code, *args]


def dry_run_checks(steps: list[Step], wheel_dir: Path) -> list[tuple[str, list[str]]]:
    """(description, problems) for every check; runs only parsers and pytest's collection."""
    checks = []
    env = step_env(Path(tempfile.gettempdir()) / "e4e-gpu-check-dry")
    for step in steps:
        problems = []
        if not shutil.which(step.argv[0]):
            problems.append(f"interpreter {step.argv[0]} not found")
        scripts = [a for a in step.argv[1:] if a.endswith(".py")]
        problems += [f"{s} does not exist" for s in scripts if not (ROOT / s).is_file()]
        if not problems and step.argv[1].startswith("benchmarks/bench_"):
            probe = parser_check(step.argv[1], list(step.argv[2:]))
        elif not problems and step.argv[1:3] == ("-m", "pytest"):
            probe = [*step.argv, "--collect-only"]
        else:
            probe = None
        if probe:
            proc = subprocess.run(probe, cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=300)
            if proc.returncode != 0 or (step.name == "tests" and " collected" not in proc.stdout
                                        and "selected" not in proc.stdout):
                problems.append(f"`{' '.join(step.argv)}` refused: "
                                f"{(proc.stdout + proc.stderr).strip()[-600:]}")
        checks.append((f"step {step.name}: {' '.join(step.argv)}", problems))
    checks.append((f"wheels in {wheel_dir} = {WHEEL_LIST.relative_to(ROOT)}",
                   check_wheels(wheel_dir, read_wheel_list())))
    return checks


def format_dry_run(checks: list[tuple[str, list[str]]]) -> str:
    lines = ["# GPU check: dry run", ""]
    for what, problems in checks:
        lines.append(f"- {'ok' if not problems else 'FAILED'}: {what}")
        lines += [f"  - {p}" for p in problems]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------- main --

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-results"),
                   help="folder for gpu_results.md and the step logs (default $OUT, else "
                   "./gpu-results)")
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                   help=f"seconds for all the steps together (default {DEFAULT_BUDGET_S:.0f})")
    p.add_argument("--reference-steps", type=int, default=DEFAULT_REFERENCE_STEPS,
                   help="sampled reference denoising steps in the transfer step "
                   f"(default {DEFAULT_REFERENCE_STEPS})")
    p.add_argument("--only", type=lambda v: [n.strip() for n in v.split(",") if n.strip()],
                   metavar="NAMES", help="run only these steps (comma-separated: environment, "
                   "tests, matching, transfer, compile)")
    p.add_argument("--wheels", type=Path, default=ROOT / ".whl",
                   help="wheel folder checked by --dry-run (default .whl)")
    p.add_argument("--dry-run", action="store_true",
                   help="check the commands and the wheels; run nothing heavy")
    p.add_argument("--prune-wheels", type=Path, metavar="DIR",
                   help="delete the wheels of DIR that the list does not pin, check the rest "
                   "and exit (used by `make gpu-wheels`)")
    p.add_argument("--environment", action="store_true",
                   help="print the environment step's key: value lines and exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.environment:
        return print_environment()
    if args.prune_wheels:
        reqs = read_wheel_list()
        for name in prune_wheels(args.prune_wheels, reqs):
            print(f"removed {name}: not pinned in {WHEEL_LIST.name}")
        problems = check_wheels(args.prune_wheels, reqs)
        print("\n".join(problems) or f"{args.prune_wheels}: one wheel per pin of {WHEEL_LIST.name}")
        return 1 if problems else 0
    args.out.mkdir(parents=True, exist_ok=True)
    steps = plan(sys.executable, args.reference_steps)
    if args.only:
        unknown = sorted(set(args.only) - {s.name for s in steps})
        if unknown:
            raise SystemExit(f"error: --only: unknown step(s) {', '.join(unknown)}")
        steps = [s for s in steps if s.name in args.only]
    if args.dry_run:
        checks = dry_run_checks(steps, args.wheels)
        text = format_dry_run(checks)
        (args.out / "gpu_dry_run.md").write_text(text)
        print(text, end="")
        return 0 if all(not problems for _, problems in checks) else 1
    t0 = time.monotonic()
    results = run_all(steps, args.budget_s, args.out)
    text = format_results(results, args.budget_s, time.monotonic() - t0)
    (args.out / RESULTS_NAME).write_text(text)
    print(text, end="")
    return 0 if all(r.status == "ok" for r in results if r.name != "compile") else 1


if __name__ == "__main__":
    sys.exit(main())
