"""`make lab`: JupyterLab starts with the widget manager saving widget state, through a
settings override installed in the project's venv (not the user's settings)."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = ROOT / "lab-settings" / "overrides.json"
PLUGIN = "@jupyter-widgets/jupyterlab-manager:plugin"


def test_overrides_turn_widget_state_saving_on():
    data = json.loads(OVERRIDES.read_text())
    assert data == {PLUGIN: {"saveState": True}}
    # the setting exists under that name in the installed widget manager, if any
    package, plugin = PLUGIN.split(":")
    schema = (Path(sys.prefix) / "share" / "jupyter" / "labextensions" / package / "schemas"
              / package / f"{plugin}.json")
    if schema.is_file():
        assert json.loads(schema.read_text())["properties"]["saveState"]["type"] == "boolean"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_lab_installs_the_overrides_into_the_venv_and_points_jupyterlab_at_them():
    out = subprocess.run(["make", "-n", "lab", "STAMP="], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    commands = [shlex.split(line) for line in out.splitlines() if line.strip()]
    settings = ROOT / ".venv" / "share" / "jupyter" / "lab" / "settings"
    copy = next(c for c in commands if c[0] == "cp")
    assert Path(copy[1]) == Path("lab-settings/overrides.json")
    assert Path(copy[2]).parent == settings / "overrides.d" and copy[2].endswith(".json")
    lab = next(c for c in commands if c[:2] == [".venv/bin/jupyter", "lab"])
    assert f"--LabApp.app_settings_dir={settings}" in lab
    assert commands.index(copy) < commands.index(lab)
    assert "JUPYTERLAB_SETTINGS_DIR" not in out and "~/.jupyter" not in out
