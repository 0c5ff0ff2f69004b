"""The CLI end to end on the tiny model, and its error contract."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from e4e_lab.models import BANNERS

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--model", "tiny", "--size", "64", "--steps", "12", "--skip-steps", "4",
        "--feat-range", "1", "8", "--adain-range", "6", "12", "--quiet"]


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


@pytest.mark.parametrize("args, needle", [
    (["--appearance", "nope.png"], "does not exist"),
    (["--guidance", "-1"], "guidance"),
    (["--injection", "sideways"], "invalid choice"),
    (["--appearance-box", "10", "10", "5", "5"], "inverted"),
])
def test_bad_input_exits_2_with_one_error_line(tmp_path, args, needle):
    base = {"--appearance": "example/chelsea_cat.png", "--structure": "example/coffee_cup.png",
            "--out": str(tmp_path / "o")}
    argv = ["transfer"]
    for k, v in base.items():
        if k not in args:
            argv += [k, v]
    r = cli(*argv, *args, *FAST)
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert lines[-1].startswith("error:") and needle in lines[-1]
    assert "Traceback" not in r.stderr


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
