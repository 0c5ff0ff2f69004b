"""Every notebook executes headless (papermill) on the tiny model with small parameters.

The kernel is this interpreter (``sys.executable``), through a kernelspec written into a
temporary ``JUPYTER_PATH``: whatever kernels the machine has installed, the notebooks
run in the environment under test, with the test session's offline cache.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

papermill = pytest.importorskip("papermill")
pytest.importorskip("ipykernel")

from notebook_cases import BANNER, EXPECTED, SMALL, extra_parameters  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
KERNEL = "e4e-lab-test"


@pytest.fixture(scope="session")
def kernel_name(tmp_path_factory):
    """A kernelspec for this interpreter, found first on a temporary JUPYTER_PATH.

    The repository root goes first on the kernel's PYTHONPATH, so that ``e4e_lab`` and
    ``widgets`` are the checked-out ones even in an environment installed before
    ``widgets/__init__.py`` existed (an old editable install maps it as a namespace).
    """
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "e4e-lab (tests)", "language": "python",
        "env": {"PYTHONPATH": os.pathsep.join(
                    p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
                # 64 px tensors gain nothing from threads, and on a shared CPU OpenMP's
                # spinning threads make a kernel several times slower
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}}))
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(root) + (os.pathsep + old if old else "")
    yield KERNEL
    if old is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = old


def outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            data = out.get("data", {})
            for mime in ("text/plain", "text/html"):
                value = data.get(mime, "")
                parts.append("".join(value) if isinstance(value, list) else value)
    return "\n".join(parts)


def test_the_notebooks_exist_with_a_parameters_cell():
    import nbformat

    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == EXPECTED
    for name in EXPECTED:
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), name
        assert 'model = "auto"' in code[0].source, name
        assert all(not c.get("outputs") for c in code), f"{name} is committed with outputs"


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_runs_headless(name, kernel_name, tmp_path, _offline_env):
    params = dict(SMALL, **extra_parameters(name, tmp_path))
    out = tmp_path / f"{name}.out.ipynb"
    nb = papermill.execute_notebook(
        str(NOTEBOOKS / f"{name}.ipynb"), str(out), parameters=params,
        kernel_name=kernel_name, cwd=str(NOTEBOOKS), progress_bar=False,
        execution_timeout=600)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    text = outputs_text(nb)
    assert BANNER in text, "the tiny-model banner is missing from the outputs"
    images = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    widgets = sum("application/vnd.jupyter.widget-view+json" in o.get("data", {})
                  for c in nb.cells for o in c.get("outputs", []))

    if name == "01_quickstart":
        assert (tmp_path / "quickstart" / "result.png").exists()
        assert json.loads((tmp_path / "quickstart" / "config.json").read_text())["tiny_model"]
        assert images >= 2
    elif name == "02_boxes_and_masks":
        boxes = json.loads((tmp_path / "boxes.json").read_text())
        # example/toy/boxes.json, drawn at 128 px, saved back at the model size
        assert boxes["_size"] == 128 and boxes["bird_structure.png"] == [37, 31, 89, 89]
        assert widgets >= 2 and images >= 2
    elif name == "03_correspondence_explorer":
        assert "best match" in text and widgets >= 2 and images >= 4
    elif name == "04_attention_and_injection":
        assert "recorded up_blocks" in text and widgets >= 1 and images >= 2
    elif name == "05_interactive_tuning":
        assert "done - 2 run(s) in the gallery" in text
        assert (tmp_path / "gallery" / "run-2" / "strip.png").exists()
        assert images >= 1 and widgets >= 2
    elif name == "06_method_walkthrough":
        # every sanity check ends in a verdict, and all of them pass: the inversion's
        # round trip, the plan, the guidance split, the DDPM terms and 'none'
        verdicts = [line for line in text.splitlines() if line.startswith(("PASS:", "FAIL:"))]
        assert len(verdicts) == 5 and all(v.startswith("PASS:") for v in verdicts), verdicts
        assert "'none' (no injection" in text and "gives back its x0" in text
        # a picture per stage: models, boxes, masks, inversion, start, plan, matches,
        # refresh, guidance, DDPM step, AdaIN, film strip, result
        assert images >= 13
    elif name == "07_multi_object":
        assert "multi-object result (3, 128, 128) from 2 pairs and 2 reference images" in text
        assert "pair 2: target [55, 35, 97, 104] <- bird_appearance.png [70, 11, 102, 88]" in text
        saved = tmp_path / "pairs" / "multi_pairs.json"
        data = json.loads(saved.read_text())
        assert data["_size"] == 128 and len(data["objects"]) == 2
        # appearance paths are relative to the saved file, as the CLI reads them
        assert [(saved.parent / o["appearance"]).resolve() for o in data["objects"]] == [
            ROOT / "example" / "toy" / "dog_appearance.png",
            ROOT / "example" / "toy" / "bird_appearance.png"]
        assert widgets >= 1 and images >= 2
    elif name == "08_compare_methods":
        assert "done - 4 methods compared" in text  # KV is left to a tick (90 s budget)
        for label in ("Eye-for-an-eye (feature)", "Eye-for-an-eye (V)",
                      "Cross-Image Attention", "Paint-by-Example"):
            assert label in text
        assert "Eye-for-an-eye (KV) " not in text
        matrix = text[text.index("target\\ref"):].splitlines()
        assert matrix[0].split()[1:] == ["1", "2", "3", "4"]  # k = 4 reference parts
        assert [line.split()[0] for line in matrix[1:5]] == ["1", "2", "3", "4"]
        assert matrix[5].startswith("agreement ") and 0 <= float(matrix[5].split()[1]) <= 1
        assert "takes" in text and widgets >= 2 and images >= 1
