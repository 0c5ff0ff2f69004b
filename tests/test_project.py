"""Scans of the whole project: nothing unpickled or evaluated from data, and no device
hard-coded (docs/method.md, published-code defect 7)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "e4e_lab"


def _scan_python(tree: ast.AST, where: str) -> list[str]:
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if any(n.split(".")[0] in ("pickle", "cPickle", "dill", "marshal", "shelve")
                   for n in names):
                bad.append(f"{where}:{node.lineno} imports a pickle-like module")
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
        owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
        kw = {k.arg: k.value for k in node.keywords}
        if (isinstance(f, ast.Name) and name in ("eval", "exec", "__import__")) or (
                owner == "builtins" and name in ("eval", "exec")):
            bad.append(f"{where}:{node.lineno} calls {name}()")
        if owner == "torch" and name == "load":
            wo = kw.get("weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                bad.append(f"{where}:{node.lineno} torch.load without weights_only=True")
        if owner in ("pickle", "dill", "joblib") and name in ("load", "loads"):
            bad.append(f"{where}:{node.lineno} {owner}.{name}")
        if owner in ("yaml",) and name in ("load", "unsafe_load", "full_load"):
            bad.append(f"{where}:{node.lineno} yaml.{name}")
        if owner == "np" and name == "load":
            ap = kw.get("allow_pickle")
            if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                bad.append(f"{where}:{node.lineno} np.load with allow_pickle")
    return bad


def test_no_unsafe_loading_anywhere_in_the_project():
    """No pickles (torch.load only with weights_only=True), no eval/exec of data."""
    bad, scanned = [], 0
    for folder in ("e4e_lab", "widgets", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            scanned += 1
            bad += _scan_python(ast.parse(path.read_text(encoding="utf-8")),
                                str(path.relative_to(ROOT)))
    for nb in sorted((ROOT / "notebooks").rglob("*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8")).get("cells", [])
        for k, cell in enumerate(cells):
            if cell.get("cell_type") != "code":
                continue
            src = "".join(cell.get("source", []))
            src = "\n".join("" if ln.lstrip().startswith(("%", "!")) else ln
                            for ln in src.splitlines())
            try:
                tree = ast.parse(src)
            except SyntaxError:
                continue
            bad += _scan_python(tree, f"{nb.relative_to(ROOT)}[cell {k}]")
    assert scanned > 10
    assert not bad, "\n".join(bad)


def test_no_hard_coded_cuda():
    """Tensors go to the device the caller passed; only the default choice names CUDA."""
    placing = re.compile(r"""(\.to|device)\(\s*["']cuda|device\s*=\s*["']cuda""")
    for path in LIB.rglob("*.py"):
        text = path.read_text()
        assert ".cuda()" not in text, path
        for line in text.splitlines():
            if placing.search(line):
                assert path.name == "loading.py", (path, line)


# ---------------------------------------------------------------- the shape --

UI_MODULES = ("ipywidgets", "IPython", "ipycanvas", "widgets")
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 360  # "about 350"


def _sources(*folders):
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path, ast.parse(path.read_text(), str(path))


def _imported(tree) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_the_library_imports_no_ui():
    """e4e_lab is the method; the UI (widgets, figures) is built on it, never inside it."""
    bad = [f"{p.relative_to(ROOT)} imports {m}" for p, tree in _sources("e4e_lab")
           for m in sorted(_imported(tree) & set(UI_MODULES))]
    assert not bad, bad


def test_functions_and_modules_stay_short():
    long = []
    for path, tree in _sources("e4e_lab", "widgets"):
        where = path.relative_to(ROOT)
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            long.append(f"{where}: {lines} lines")
        long += [f"{where}:{n.lineno} {n.name}() {n.end_lineno - n.lineno + 1} lines"
                 for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                 and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long


def test_no_test_module_imports_another():
    """Shared fixtures and helpers live in conftest.py and the tests' helper modules."""
    bad = [f"{p.name} imports {m}" for p, tree in _sources("tests")
           for m in sorted(_imported(tree)) if m.startswith("test_")]
    assert not bad, bad
