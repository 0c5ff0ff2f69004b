"""The one-call GPU check (``benchmarks/gpu_check.sh``), checked on a CPU.

Nothing here needs a GPU: the dry run validates every command and the wheel folder,
the driver's timeouts and results file are exercised with stand-in steps, and the
bench_transfer options the check uses run at a tiny size.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402
from gpu_check import Step, StepResult  # noqa: E402


def _fake_wheels(folder: Path) -> Path:
    folder.mkdir()
    for name, version in gpu_check.read_wheel_list():
        (folder / f"{name}-{version}-py3-none-any.whl").write_bytes(b"")
    return folder


def test_dry_run_checks_every_command_and_the_wheels(_offline_env, tmp_path):
    wheels = _fake_wheels(tmp_path / "whl")
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run", "--out",
                           str(tmp_path / "out"), f"--wheels={wheels}"], cwd=ROOT,
                          env=dict(os.environ, PYTHON=sys.executable), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"would run: {sys.executable} -m pip install" in proc.stdout
    assert "--no-deps" in proc.stdout and "--target /tmp/site" in proc.stdout
    report = (tmp_path / "out" / "gpu_dry_run.md").read_text()
    for name in ("environment", "tests", "matching", "transfer", "compile"):
        assert f"- ok: step {name}: " in report, report
    assert "- ok: wheels in" in report and "FAILED" not in report


def test_dry_run_refuses_a_bad_flag(monkeypatch, tmp_path):
    bad = Step("transfer", "t", (sys.executable, "benchmarks/bench_transfer.py",
                                 "--reference-steps", "2", "--reference-style"), 10)
    (what, problems), _ = gpu_check.dry_run_checks([bad], _fake_wheels(tmp_path / "whl"))
    assert problems and "--reference-steps" in problems[0], problems


def test_wheel_list_matches_constraints_and_the_folder_check(tmp_path):
    pins = dict(gpu_check.read_wheel_list())
    constraints = (ROOT / "constraints.txt").read_text()
    assert f"diffusers=={pins['diffusers']}" in constraints
    assert {"diffusers", "clip_anytorch", "importlib_metadata"} <= set(pins)
    folder = _fake_wheels(tmp_path / "whl")
    assert gpu_check.check_wheels(folder, list(pins.items())) == []
    (folder / "diffusers-0.1.0-py3-none-any.whl").write_bytes(b"")
    (folder / "torch-2.0-cp312-cp312-linux_x86_64.whl").write_bytes(b"")
    problems = gpu_check.check_wheels(folder, list(pins.items()))
    assert any(p.startswith("diffusers==") for p in problems)
    assert any(p.startswith("torch-2.0") for p in problems)
    assert sorted(gpu_check.prune_wheels(folder, list(pins.items()))) == [
        "diffusers-0.1.0-py3-none-any.whl", "torch-2.0-cp312-cp312-linux_x86_64.whl"]
    assert gpu_check.check_wheels(folder, list(pins.items())) == []


def test_make_gpu_wheels_downloads_the_list():
    proc = subprocess.run(["make", "-n", "gpu-wheels"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.replace("\\\n", " ")
    assert re.search(r"-m pip download .*--no-deps .*--only-binary=:all: .*--python-version 3\.12"
                     r".*-d \.whl -r benchmarks/gpu_wheels\.txt", text), text
    assert "--platform manylinux_2_17_x86_64" in text


def test_a_hung_step_times_out_and_the_next_still_runs(tmp_path, monkeypatch):
    py = sys.executable
    steps = [Step("hang", "Hang", (py, "-c", "import time; time.sleep(60)"), timeout_s=1),
             Step("crash", "Crash", (py, "-c", "raise SystemExit(3)"), timeout_s=30),
             Step("fine", "Fine", (py, "-c", "print('speedup: 1.0x')"), timeout_s=30),
             Step("late", "Late", (py, "-c", "print(1)"), timeout_s=600, optional=True)]
    for s in steps:
        monkeypatch.setitem(gpu_check.KEY_LINES, s.name, r".")
    results = gpu_check.run_all(steps, budget_s=40, out_dir=tmp_path)
    status = {r.name: r.status for r in results}
    assert status["hang"] == "timed out after 1 s"
    assert status["crash"] == "failed (rc 3)"
    assert status["fine"] == "ok" and results[2].lines == ["speedup: 1.0x"]
    assert status["late"].startswith("skipped (")  # < MIN_OPTIONAL_S left of the 40 s
    assert (tmp_path / "step-fine.log").read_text().strip() == "speedup: 1.0x"


def test_results_file_formats_figures_and_verdicts():
    def res(name, status, output, seconds=1.0):
        return StepResult(name, name.title(), f"python3 {name}", status, seconds, output,
                          gpu_check.key_lines(name, output))

    results = [
        res("environment", "ok", "python: 3.12.3\ntorch: 2.11.0 (CUDA 13.0)\ndiffusers: 0.42.1\n"
            "transformers: 5.17.0\ndriver: 580.1\ngpu: NVIDIA H100 80GB HBM3 (x1)\n"),
        res("tests", "ok", "........\n9 passed in 12.3s\n"),
        res("matching", "ok", "matching benchmark: device cuda\n64x64 C=320 masks=no : ratio "
            "1500.0x | matches identical\nspeedup: 1234.5x\n"),
        res("transfer", "ok", "transfer benchmark 2026\nnoise\nours: whole transfer 3.1 s\n"
            "GPU targets: transfer_s 3.10 <= 4.0 ok, rerun_s 2.50 <= 2.0 MISSED, "
            "peak_gb 5.00 <= 8.0 ok\n"),
        res("compile", "timed out after 90 s", "compile: warm-up run (compiling) 80.0 s\n"
            + "x" * 3000 + "\nlast words\n"),
    ]
    text = gpu_check.format_results(results, budget_s=270, elapsed_s=250, date="2026-11-28")
    assert text.startswith("# GPU check results\n")
    for line in ("- Date: 2026-11-28", "- Device: NVIDIA H100 80GB HBM3 (x1)", "- Driver: 580.1",
                 "- Versions: python 3.12.3, torch 2.11.0 (CUDA 13.0), diffusers 0.42.1, "
                 "transformers 5.17.0", "- Budget: 270 s, used 250 s",
                 "- GPU tests: met (9 passed in 12.3s)",
                 "- matching >= 1000x: met (1234.5x at worst)",
                 "- whole transfer incl. both inversions <= 4.0 s: met (3.10 s)",
                 "- cached re-run <= 2.0 s: MISSED (2.50 s)",
                 "- peak GPU memory <= 8.0 GB: met (5.00 GB)",
                 "- torch.compile: step timed out after 90 s",
                 "### Transfer: ok (1.0 s)", "ours: whole transfer 3.1 s",
                 "### Compile: timed out after 90 s (1.0 s)", "last words"):
        assert line in text.splitlines(), (line, text)
    assert "noise" not in text  # ok steps show their figure lines only
    assert len(text) < 12_000  # the last 12,000 characters of output come back


def test_results_say_not_measured_when_steps_fail():
    results = [StepResult("transfer", "Transfer", "python3 t", "failed (rc 1)", 2.0,
                          "Traceback\nRuntimeError: CUDA error\n", [])]
    text = gpu_check.format_results(results, budget_s=270, elapsed_s=3, date="d")
    assert "- whole transfer incl. both inversions: not measured (step failed (rc 1))" in text
    assert "- matching >= 1000x: not measured (step not run)" in text
    assert "RuntimeError: CUDA error" in text


@pytest.mark.slow
def test_bench_transfer_sampled_reference_is_labelled_extrapolated(_offline_env):
    proc = subprocess.run([sys.executable, "benchmarks/bench_transfer.py", "--model", "tiny",
                           "--size", "64", "--steps", "10", "--skip-steps", "3",
                           "--reference-style", "--reference-steps", "5", "--threads", "1",
                           "--device", "cpu"], cwd=ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ref = next(ln for ln in proc.stdout.splitlines() if ln.startswith("reference: "))
    assert re.search(r"denoising [\d.]+ s EXTRAPOLATED from 5 sampled steps \(match [\d.]+ ms, "
                     r"plain [\d.]+ ms, refresh [\d.]+ ms per step\) \(7 steps", ref), ref
    assert "whole transfer" in ref and "EXTRAPOLATED |" in ref
    assert "(reference denoising EXTRAPOLATED)" in proc.stdout
