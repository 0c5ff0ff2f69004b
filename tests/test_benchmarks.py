"""The benchmarks run (once, at a tiny size) so that they cannot rot.

No timing is asserted: machines are noisy. What is checked: the scripts exit cleanly,
the matching loop and ``nearest_neighbors`` agree, every expected line is printed,
and the SD 1.5-sized random model has Stable Diffusion 1.5's parameter counts.
The subprocesses inherit ``E4E_LAB_CACHE`` and ``HF_HUB_OFFLINE`` from conftest.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _run(script: str, *args: str, timeout: int = 240) -> list[str]:
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=ROOT,
                          env=dict(os.environ), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout.strip().splitlines()


def test_bench_matching_runs_and_matches_agree(_offline_env):
    lines = _run("bench_matching.py", "--sizes", "8x8:16,6x10:8", "--repeats", "1",
                 "--threads", "1")
    cases = [ln for ln in lines if re.match(r"^\d+x\d+ C=\d+ masks=", ln)]
    assert len(cases) == 4, lines  # two shapes, with and without masks
    assert all("matches identical" in ln and " ratio " in ln for ln in cases), lines
    assert re.fullmatch(r"speedup: \d+(\.\d+)?x", lines[-1]), lines[-1]


def test_bench_transfer_runs_ours_and_reference_style(_offline_env):
    lines = _run("bench_transfer.py", "--model", "tiny", "--size", "64", "--steps", "10",
                 "--skip-steps", "3", "--reference-style", "--threads", "1", "--device", "cpu")
    text = "\n".join(lines)
    assert "RANDOM WEIGHTS" in lines[0]
    assert "7 denoising" in lines[0]
    ours = next(ln for ln in lines if ln.startswith("ours: "))
    ref = next(ln for ln in lines if ln.startswith("reference: "))
    for line in (ours, ref):
        for part in ("inversion", "ms/step", "decode", "whole transfer", "peak RSS"):
            assert part in line, line
    assert "cached re-run" in ours
    assert re.search(r"^ratio ours/reference: whole transfer [\d.]+ .*per denoising step [\d.]+",
                     text, re.M), text


def test_reference_style_modes_run(models, images, fast_config):
    """The reference-style processor handles the v / kv modes and restores the UNet."""
    sys.path.insert(0, str(BENCH))
    try:
        from reference_style import reference_transfer
    finally:
        sys.path.remove(str(BENCH))
    from e4e_lab.method.images import load_image
    from e4e_lab.method.masks import box_mask

    app, struct = (load_image(im, 64, name=f"im{i}") for i, im in enumerate(images))
    mask = box_mask((8, 8, 56, 56), (64, 64))
    before = dict(models.unet.attn_processors)
    cfg = fast_config.replace(num_steps=4, skip_steps=1, feat_range=(0, 3), adain_range=(2, 4),
                              refresh_until=2, refresh_every=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine is far slower with 2 threads
    try:
        for mode in ("v", "kv"):
            t = reference_transfer(models, app, struct, mask, mask, cfg.replace(injection=mode))
            assert t["transfer_s"] > 0 and t["ms_per_step"] > 0
    finally:
        torch.set_num_threads(threads)
    assert {k: type(v) for k, v in models.unet.attn_processors.items()} == \
        {k: type(v) for k, v in before.items()}


def test_sd15_random_has_sd15_sizes():
    """Built on the meta device (no memory, no time): SD 1.5's exact parameter counts."""
    from e4e_lab.models.random_sd import RANDOM_WARNING, build_sd15_pipeline

    pipe = build_sd15_pipeline(seed=0, device="meta")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(pipe.unet) == 859_520_964
    assert count(pipe.vae) == 83_653_863
    assert count(pipe.text_encoder) == 123_060_480
    assert pipe.vae.config.scaling_factor == 0.18215
    assert pipe.scheduler.config.timestep_spacing == "leading"
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert "random weights" in RANDOM_WARNING
    assert next(pipe.unet.parameters()).device == torch.device("meta")


def test_click_benchmark_runs_small(_offline_env, capsys):
    """The explorer click benchmark (in-process: it drives the widget)."""
    import importlib.util

    pytest.importorskip("ipywidgets")
    pytest.importorskip("ipycanvas")
    path = BENCH / "bench_explorer_click.py"
    spec = importlib.util.spec_from_file_location("bench_explorer_click", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--clicks", "5", "--grid", "16", "--channels", "32", "--size", "128"]) == 0
    out = capsys.readouterr().out
    assert "whole explorer.select" in out and "click update:" in out

