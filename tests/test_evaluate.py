"""Several methods on the same pairs (``e4e_lab/evaluation/evaluate.py``): the best
method per score, and ``e4e-lab evaluate`` under Hugging Face Accelerate, where two CPU
processes split the pairs and match one process.

Why ``--multi_gpu`` on a CPU: accelerate's ``--cpu`` launcher starts a single process
unless MPI is used (``--mpirun_hostfile``); ``--multi_gpu`` starts the processes with
torchrun, and with no GPU visible ``run_distributed`` joins them in one gloo group.
"""

import json
import math
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from e4e_lab import TransferConfig
from e4e_lab.evaluation import evaluate
from e4e_lab.evaluation.report import COLUMNS, read_csv
from e4e_lab.models import BANNERS

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("feature", "v")
EVALUATE = ["-m", "e4e_lab", "evaluate", "--pairs-dir", "example", "--methods", *METHODS,
            "--model", "tiny", "--device", "cpu", "--size", "64", "--steps", "10",
            "--skip-steps", "3", "--feat-range", "1", "7", "--adain-range", "5", "10",
            "--seed", "0", "--debug"]  # --debug: INFO logs say which process took which pairs
LAUNCH = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
          "--main_process_port", "0"]
SCORES = COLUMNS[3:-1]  # the metrics (not pair, method, seconds, tiny_model)


def _env(tmp_path: Path) -> dict[str, str]:
    """Offline, with a throw-away HOME / HF_HOME (no user accelerate config is read), no GPU
    (the run stays on the CPU) and an empty e4e-lab cache: the two processes meet the
    tiny model's first build (only the main process may build it: transformers writes no
    weights from a rank other than 0)."""
    env = dict(os.environ)
    env.update(HOME=str(tmp_path / "home"), HF_HOME=str(tmp_path / "hf-home"),
               E4E_LAB_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1",
               CUDA_VISIBLE_DEVICES="")
    return env


def _run(args: list[str], out: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, *args, "--out", str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, _quiet(r.stderr)
    return r


def _quiet(stderr: str) -> str:
    """stderr without --debug's DEBUG lines, short enough for an assertion message."""
    return "\n".join(ln for ln in stderr.splitlines() if not ln.startswith("DEBUG"))[-8000:]


def _scores(path: Path) -> dict[tuple[str, str], dict]:
    return {(r["pair"], r["method"]): r for r in read_csv(path)}


@pytest.mark.slow
def test_accelerate_launch_splits_pairs_and_matches_one_process(tmp_path):
    env = _env(tmp_path)
    names = [p["name"] for p in json.loads((ROOT / "example" / "pairs.json").read_text())]
    expected = {(n, m) for n in names for m in METHODS}

    dist = _run([*LAUNCH, *EVALUATE], tmp_path / "dist", env)

    # one row per (pair, method): none twice, none missing; shards merged and removed
    rows = read_csv(tmp_path / "dist" / "results.csv")
    keys = Counter((r["pair"], r["method"]) for r in rows)
    assert set(keys) == expected and set(keys.values()) == {1}, keys
    assert not list((tmp_path / "dist").glob("results.part*.csv"))
    assert {r["tiny_model"] for r in rows} == {"True"}

    # the pairs were split: each process names its share, and each (pair, method) was
    # evaluated once over both processes (not once per process)
    for index in range(2):
        share = ", ".join(names[index::2])
        assert f"process {index} of 2 evaluates pairs: {share}" in dist.stderr, _quiet(dist.stderr)
    for pair, method in expected:
        assert dist.stderr.count(f"evaluated {pair} / {method}\n") == 1

    report = (tmp_path / "dist" / "report.html").read_text(encoding="utf-8")
    assert BANNERS["tiny"] in report
    assert all(n in report for n in names)
    # every pair's thumbnails, whichever process made them (structure, appearance, methods)
    assert report.count("<img src='data:image/png;base64,") == len(names) * (2 + len(METHODS))
    assert not re.search(r"<script[^>]*src=.https?://", report)  # opens offline

    # the same scores as one process with the same seed
    _run(EVALUATE, tmp_path / "single", env)
    single = _scores(tmp_path / "single" / "results.csv")
    split = _scores(tmp_path / "dist" / "results.csv")
    assert single.keys() == split.keys()
    for key in expected:
        for col in SCORES:
            a, b = split[key][col], single[key][col]
            same = (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-3,
                                                                     abs_tol=1e-4)
            assert same, (key, col, a, b)


def test_best_methods_follow_score_directions():
    def res(method, **scores):
        full = dict.fromkeys(evaluate.HIGHER_IS_BETTER, 0.5) | scores
        return evaluate.MethodResult(method, torch.zeros(3, 2, 2), 1.0, full, TransferConfig())

    best = evaluate.best_methods([res("feature", ssim=0.9, histogram_distance=0.4),
                                  res("v", ssim=0.2, histogram_distance=0.1)])
    assert best["ssim"] == "feature" and best["histogram_distance"] == "v"
    assert "part_agreement" not in best  # pair-level: the same for every method
