"""The command line (``e4e_lab/cli.py``): end to end on the tiny model, and its error
contract.

Bad input or an unavailable model exits with status 2 and one ``error:`` line, without
a traceback (one with ``--debug``). The error cases run ``python -m e4e_lab transfer
...`` in subprocesses with the tiny model at 64 px on a 10-step schedule, offline; they
are independent, so they are started together (a few at a time) in one module fixture
and each test checks one of them. Other stderr lines are allowed (the tiny-model
warning every UI must show), but exactly one line starts with ``error:``, it is the last
one, and it names what is wrong.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from e4e_lab.io.outputs import RUN_FILES, OutputTransaction
from e4e_lab.models import BANNERS

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--model", "tiny", "--size", "64", "--steps", "10", "--skip-steps", "3",
        "--feat-range", "2", "8", "--adain-range", "5", "10", "--quiet"]


def _offline(cache: Path) -> dict[str, str]:
    """The environment of a CLI subprocess: offline, on the test session's cache."""
    return dict(os.environ, E4E_LAB_CACHE=str(cache), HF_HUB_OFFLINE="1",
                HF_HOME=str(cache / "hf-home"), E4E_SAM_CHECKPOINT="", PYTHONWARNINGS="ignore")


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "e4e_lab", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_transfer_writes_the_five_files(tmp_path):
    out = tmp_path / "run"
    r = cli("transfer", "--appearance", "example/chelsea_cat.png",
            "--structure", "example/horse_silhouette.png", "--boxes", "example/boxes.json",
            "--domain", "animal", "--out", str(out), "--injection", "v", *FAST)
    assert r.returncode == 0, r.stderr
    names = {"result.png", "appearance_recon.png", "structure_recon.png", "strip.png",
             "config.json"}
    assert names <= {p.name for p in out.iterdir()}
    assert Image.open(out / "result.png").size == (64, 64)
    assert Image.open(out / "strip.png").width == 3 * 64
    meta = json.loads((out / "config.json").read_text())
    assert meta["tiny_model"] is True and meta["config"]["injection"] == "v"
    # the choices that depart from (or follow) the published computation are recorded
    assert {k: meta["config"][k] for k in ("freeu", "schedule", "mask_resize")} == {
        "freeu": "reference", "schedule": "published", "mask_resize": "reference"}
    assert meta["resample"] == "bicubic"
    assert meta["structure_box"] == [2, 1, 63, 62]  # boxes.json drawn at 512, rescaled
    assert BANNERS["tiny"] in r.stderr  # the tiny model is announced
    assert meta["model_kind"] == "tiny" and meta["note"] == BANNERS["tiny"]
    # a second run into the same folder is refused, not silently overwritten
    r2 = cli("transfer", "--appearance", "example/chelsea_cat.png",
             "--structure", "example/horse_silhouette.png", "--out", str(out), *FAST)
    assert r2.returncode == 2 and r2.stderr.strip().splitlines()[-1].startswith("error:")


@pytest.mark.slow
def test_multi_object_pairs_file(tmp_path):
    out = tmp_path / "multi"
    r = cli("transfer", "--structure", "example/horse_silhouette.png",
            "--pairs", "example/multi_pairs.json", "--out", str(out), "--mask", "box", *FAST)
    assert r.returncode == 0, r.stderr
    assert (out / "result.png").exists() and (out / "strip.png").exists()


@pytest.mark.slow
def test_evaluate_writes_csv_and_report(tmp_path):
    out = tmp_path / "eval"
    r = cli("evaluate", "--pairs-dir", "example", "--out", str(out), "--methods", "feature", "v",
            "--model", "tiny", "--size", "64", "--steps", "10", "--skip-steps", "3",
            "--feat-range", "1", "7", "--adain-range", "5", "10", "--quiet")
    assert r.returncode == 0, r.stderr
    lines = (out / "results.csv").read_text().splitlines()
    assert lines[0].startswith("pair,method,seconds,ssim")
    assert len(lines) == 1 + 2 * 2  # two pairs x two methods
    html = (out / "report.html").read_text()
    assert BANNERS["tiny"] in html and "data:image/png;base64" in html


@pytest.mark.parametrize("args, needle", [
    (["--injection", "sideways"], "invalid choice"),
    (["--mask", "full"], "invalid choice"),
    (["--guidance", "-1"], "'guidance'"),
])
def test_bad_input_fails_before_torch_is_imported(tmp_path, args, needle):
    """Argument and config checks need neither torch nor diffusers: a typo costs no
    model import (``python -X importtime`` lists every module imported)."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "e4e_lab", "transfer",
                        "--structure", "s.png", "--appearance", "a.png",
                        "--out", str(tmp_path / "o"), *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0]
    imported = {ln.split("|")[-1].strip() for ln in r.stderr.splitlines()
                if ln.startswith("import time:")}
    assert "e4e_lab.cli" in imported
    assert not {"torch", "diffusers", "transformers"} & imported


def _cases(tmp: Path) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (arguments after the common ones, fragments the error line must hold)."""
    rng = np.random.default_rng(0)
    for name in ("app.png", "struct.png"):
        Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(tmp / name)
    (tmp / "notes.png").write_text("not an image\n")
    (tmp / "bad_boxes.json").write_text("{not json")
    (tmp / "boxes.json").write_text('{"app.png": [8, 8, 56, 56], "struct.png": [4, 4, 60, 60]}')
    (tmp / "no_objects.json").write_text('{"_size": 64, "objects": []}')
    run = tmp / "previous-run"
    run.mkdir()
    (run / "result.png").write_bytes(b"an earlier result")
    app, struct = str(tmp / "app.png"), str(tmp / "struct.png")

    outs = iter(range(100))

    def io(out=None, appearance=app):  # each case writes (if ever) into its own folder
        out = out or f"out{next(outs)}"
        return ["--appearance", appearance, "--structure", struct, "--out", str(tmp / out)]

    return {
        "missing image": (io(appearance=str(tmp / "nowhere.png")),
                          ["nowhere.png", "does not exist"]),
        "not an image": (io(appearance=str(tmp / "notes.png")),
                         ["notes.png", "cannot be read as an image"]),
        "inverted box": (io() + ["--appearance-box", "40", "40", "10", "10"],
                         ["appearance box", "inverted"]),
        "non-numeric box": (io() + ["--appearance-box", "a", "b", "c", "d"],
                            ["--appearance-box", "invalid float value"]),
        "bad boxes json": (io() + ["--boxes", str(tmp / "bad_boxes.json")],
                           ["bad_boxes.json", "not valid JSON"]),
        "pairs without objects": (io() + ["--pairs", str(tmp / "no_objects.json")],
                                  ["no_objects.json", "at least one object"]),
        "negative guidance": (io() + ["--guidance", "-1"],
                              ["'guidance'", "-1.0", "[0.0, 100.0]"]),
        "skip past the end": (io() + ["--skip-steps", "200"], ["'skip_steps'", "200", "[0, 9]"]),
        "unknown injection": (io() + ["--injection", "q"], ["--injection", "invalid choice"]),
        "size not a multiple": (io() + ["--size", "100"], ["'size'", "100", "multiple of 64"]),
        "missing sam checkpoint": (io() + ["--mask", "sam", "--boxes", str(tmp / "boxes.json"),
                                           "--sam-checkpoint", str(tmp / "sam_hq_vit_l.pth")],
                                   ["sam_hq_vit_l.pth", "--mask box"]),
        "unavailable model": (io() + ["--model", "./nowhere"],
                              ["nowhere", "does not exist", "--model tiny"]),
        "existing run": (io(out="previous-run"), ["previous-run", "--overwrite"]),
        "debug": (io() + ["--guidance", "-1", "--debug"], ["'guidance'"]),
    }


@pytest.fixture(scope="module")
def cli_runs(models, _offline_env, tmp_path_factory):
    """Run every case (3 at a time); the tiny model is already built in the cache."""
    tmp = tmp_path_factory.mktemp("cli")
    cases = _cases(tmp)
    env = _offline(_offline_env)

    def run(name):
        args, _ = cases[name]
        # the case's own options come last: argparse keeps the last value of an option
        cmd = [sys.executable, "-m", "e4e_lab", "transfer"] + FAST + args
        return name, subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                                    timeout=400)

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(pool.map(run, cases))
    return cases, results, tmp


CASES = ["missing image", "not an image", "inverted box", "non-numeric box",
         "bad boxes json", "pairs without objects", "negative guidance", "skip past the end",
         "unknown injection",
         "size not a multiple", "missing sam checkpoint", "unavailable model", "existing run"]


@pytest.mark.parametrize("name", CASES)
def test_bad_input_exits_2_with_one_error_line(cli_runs, name):
    cases, results, _ = cli_runs
    proc = results[name]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    for part in cases[name][1]:
        assert part in errors[0], f"{part!r} not in {errors[0]!r}"
    assert "internal error" not in errors[0]


def test_existing_run_is_left_untouched(cli_runs):
    _, results, tmp = cli_runs
    assert results["existing run"].returncode == 2
    assert (tmp / "previous-run" / "result.png").read_bytes() == b"an earlier result"
    assert sorted(p.name for p in (tmp / "previous-run").iterdir()) == ["result.png"]


def test_debug_shows_the_traceback(cli_runs):
    _, results, _ = cli_runs
    proc = results["debug"]
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr
    assert "ConfigError" in proc.stderr and "'guidance'" in proc.stderr


# -------------------------------------------- hostile inputs (issue 15) --
# Each case runs in a subprocess with a timeout, so one that hangs (a FIFO read) fails
# instead of blocking the suite.

def _hostile_cases(tmp: Path) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (arguments after the common ones, fragments the error line must hold)."""
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(tmp / "img.png")
    os.mkfifo(tmp / "fifo.json")
    os.mkfifo(tmp / "fifo.png")
    (tmp / "a_file").write_text("not a folder")
    depth = 200_000
    (tmp / "deep.json").write_text('{"objects": [{"appearance": "img.png", "target_box": '
                                   + "[" * depth + "]" * depth + "}]}")
    (tmp / "tiny_size.json").write_text('{"_size": 1e-300, "objects": [{"appearance": '
                                        '"img.png", "target_box": [1, 1, 5, 5]}]}')
    img = str(tmp / "img.png")
    outs = iter(range(100))

    def io(appearance=img):
        return ["--appearance", appearance, "--structure", img,
                "--out", str(tmp / f"hostile{next(outs)}")]

    cases = {
        "fifo boxes": (io() + ["--boxes", str(tmp / "fifo.json")], ["fifo.json", "FIFO"]),
        "fifo pairs": (io() + ["--pairs", str(tmp / "fifo.json")], ["fifo.json", "FIFO"]),
        "fifo image": (io(appearance=str(tmp / "fifo.png")), ["fifo.png", "FIFO"]),
        "boxes from /dev/zero": (io() + ["--boxes", "/dev/zero"], ["/dev/zero", "device"]),
        "huge size": (io() + ["--size", "99968"], ["--size", "99968", "4096"]),
        "unknown device": (io() + ["--device", "nonsense"], ["'device'", "nonsense", "'cpu'"]),
        "cache dir is a file": (io() + ["--cache-dir", str(tmp / "a_file")],
                                ["'cache_dir'", "a_file", "not a file"]),
        "deeply nested pairs": (io() + ["--pairs", str(tmp / "deep.json")],
                                ["deep.json", "nested too deeply"]),
        "absurd _size": (io() + ["--pairs", str(tmp / "tiny_size.json")],
                         ["tiny_size.json", '"_size"', "[8, 65536]"]),
    }
    if not _has_cuda():
        cases["cuda without a gpu"] = (io() + ["--device", "cuda"],
                                       ["'device'", "no CUDA GPU", "'cpu'"])
    return cases


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _run_all(cases: dict, env: dict, timeout: float = 200) -> dict:
    def run(name):
        cmd = [sys.executable, "-m", "e4e_lab", "transfer"] + FAST + cases[name][0]
        try:
            return name, subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True,
                                        text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return name, None  # a hang: the test says so

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(run, cases))


@pytest.fixture(scope="module")
def hostile_runs(models, _offline_env, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    cases = _hostile_cases(tmp)
    env = _offline(_offline_env)
    return cases, _run_all(cases, env)


HOSTILE = ["fifo boxes", "fifo pairs", "fifo image", "boxes from /dev/zero", "huge size",
           "unknown device", "cache dir is a file", "deeply nested pairs", "absurd _size",
           "cuda without a gpu"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_input_exits_2_with_one_error_line(hostile_runs, name):
    cases, results = hostile_runs
    if name not in cases:
        pytest.skip("this machine has a GPU")
    proc = results[name]
    assert proc is not None, f"{name}: the command hung"
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    for part in cases[name][1]:
        assert part in errors[0], f"{part!r} not in {errors[0]!r}"


@pytest.mark.slow
def test_no_op_inputs_run_with_one_warning_line_each(models, _offline_env, tmp_path):
    """A feature range that no denoising step reaches (3 steps, counters 0, 0, 1 on the
    published schedule) and a boxes file that names neither image: exit 0, one
    ``warning:`` line each."""
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "boxes.json").write_text('{"other.png": [1, 1, 30, 30]}')
    env = dict(os.environ, E4E_LAB_CACHE=str(_offline_env), HF_HUB_OFFLINE="1",
               HF_HOME=str(_offline_env / "hf-home"), E4E_SAM_CHECKPOINT="")
    io = ["--appearance", str(tmp_path / "a.png"), "--structure", str(tmp_path / "a.png")]
    cases = {"range": (io + ["--out", str(tmp_path / "r"), "--steps", "10", "--skip-steps",
                             "7", "--feat-range", "3", "4", "--adain-range", "0", "10"], []),
             "boxes": (io + ["--out", str(tmp_path / "b"), "--boxes",
                             str(tmp_path / "boxes.json"), "--mask", "box"], [])}
    results = _run_all(cases, env)
    for name, needle in (("range", "feat_range (3, 4) reaches no denoising step"),
                         ("boxes", "names none of the images")):
        proc = results[name]
        assert proc is not None and proc.returncode == 0, proc and proc.stderr
        warned = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
        assert len(warned) == 1 and needle in warned[0], proc.stderr


def test_a_size_the_memory_cannot_hold_is_refused_before_loading(tmp_path, monkeypatch, capsys):
    from e4e_lab.cli import main
    from e4e_lab.models import device

    monkeypatch.setattr(device, "available_bytes", lambda _device: 2**30)
    code = main(["transfer", "--appearance", "example/chelsea_cat.png", "--structure",
                 "example/horse_silhouette.png", "--out", str(tmp_path / "o"), "--size", "2048",
                 "--model", "./never-loaded"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error:") and "'size'" in err[-1]
    assert "GiB" in err[-1] and "smaller size" in err[-1]


def test_help_states_the_accepted_ranges_and_the_warnings():
    from e4e_lab.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices["transfer"]
    text = " ".join(sub.format_help().split())
    for part in ("[8, 4096]", "regular file", "up to 4 MiB", "prints a warning",
                 "cuda:N", "naming neither image"):
        assert part in text, part


def test_the_flags_default_to_the_default_config():
    """Each transfer flag's default is its config setting's default (guidance and
    injection are read from their groups, ``config.guidance.scale`` / ``.injection.mode``)."""
    from e4e_lab.cli import _config, build_parser
    from e4e_lab.method.config import TransferConfig

    args = build_parser().parse_args(["transfer", "--structure", "s.png", "--out", "o"])
    assert (args.guidance, args.injection) == (2.5, "feature")
    assert _config(args) == TransferConfig()


# ---------------------------------------------------------------------------------------
# Output folders as transactions, and Ctrl-C (issue 15): a run owns its --out from start
# to end, writes into a staging folder and moves it in only when complete.



EXAMPLE = ROOT / "example"
IMAGES = ["--appearance", str(EXAMPLE / "chelsea_cat.png"),
          "--structure", str(EXAMPLE / "horse_silhouette.png")]


def _one_error(proc) -> str:
    """The run exited 2 with exactly one error line, the last one, and no traceback."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    return errors[0]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_bad_output_folders_are_refused_before_any_work(tmp_path):
    """Before: --out '' wrote a run into the working directory; evaluate replaced an
    earlier evaluation silently (exit 0) and took a file as --out with an internal error."""
    previous = tmp_path / "previous-eval"
    (previous / "images").mkdir(parents=True)
    (previous / "results.csv").write_text("pair,method\nan earlier evaluation\n")
    (tmp_path / "afile").write_text("x")
    evaluate = ["evaluate", "--pairs-dir", str(EXAMPLE), "--model", "tiny", "--quiet"]
    cases = {
        "transfer into ''": (["transfer", *IMAGES, *FAST, "--out", ""], ["--out"]),
        "evaluate into ''": ([*evaluate, "--out", ""], ["--out"]),
        "evaluate into a file": ([*evaluate, "--out", str(tmp_path / "afile")],
                                 ["afile", "not a folder"]),
        "evaluate over an evaluation": ([*evaluate, "--out", str(previous)],
                                        ["previous-eval", "results.csv", "--overwrite"]),
    }
    before = _tree(tmp_path)
    for name, (args, parts) in cases.items():
        error = _one_error(cli(*args, cwd=tmp_path))
        assert all(part in error for part in parts), (name, error)
    assert _tree(tmp_path) == before  # nothing written anywhere, the cwd included
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "previous-eval"]


def test_a_folder_another_run_owns_is_refused(tmp_path, models, _offline_env):
    """Before: two transfers into one --out at once both succeeded. While one run holds
    the folder (here: this test), a second one exits 2 without touching it."""
    out = tmp_path / "run"
    with OutputTransaction(out) as tx:
        (tx.staging / "result.png").write_bytes(b"the first run's")
        r = subprocess.run([sys.executable, "-m", "e4e_lab", "transfer", *FAST, *IMAGES,
                            "--out", str(out)], cwd=ROOT, env=_offline(_offline_env),
                           capture_output=True, text=True, timeout=300)
        error = _one_error(r)
        assert "another run is writing into" in error and str(out) in error
    assert _tree(out) == {"result.png": b"the first run's"}


@pytest.mark.parametrize("interrupts, after", [(1, 0.2), (2, 0.2), (2, 1.0), (5, 0.5)])
def test_ctrl_c_exits_130_and_leaves_the_previous_run(tmp_path, models, _offline_env,
                                                      interrupts, after):
    """Before: two SIGINTs 50 ms apart ended the process by the signal (-2), at times with
    a traceback. Now: 130, one 'error: interrupted' line, and the run being replaced
    (--overwrite) as it was, with no staging folder beside it. ``after``: seconds from the
    claim of --out (the model is loading, importing, or running) to the first SIGINT."""
    out = tmp_path / "run"
    out.mkdir()
    previous = {name: f"an earlier {name}".encode() for name in RUN_FILES}
    for name, data in previous.items():
        (out / name).write_bytes(data)
    proc = subprocess.Popen([sys.executable, "-m", "e4e_lab", "transfer", *FAST, *IMAGES,
                             "--steps", "50", "--size", "128", "--device", "cpu",
                             "--out", str(out), "--overwrite"],
                            cwd=ROOT, env=_offline(_offline_env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lock, deadline = tmp_path / ".run.e4e-lock", time.monotonic() + 200
    while not lock.exists():  # the run has claimed --out: it is under way
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    time.sleep(after)  # seconds before the run would be written
    for n in range(interrupts):
        time.sleep(0.05 * (n > 0))
        proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=200)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert [ln for ln in lines if ln.startswith("error:")] == ["error: interrupted"] == lines[-1:]
    assert _tree(out) == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
