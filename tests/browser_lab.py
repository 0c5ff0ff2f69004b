"""JupyterLab in headless Chromium, for the browser tests (``tests/test_browser.py``).

- :func:`find_chromium`: Debian's ``chromium`` binary (never a downloaded browser).
- :class:`LabServer`: JupyterLab on 127.0.0.1, a free port, no token, a throw-away HOME,
  settings and root dir; news and update checks off; the project's settings overrides
  (``lab-settings/overrides.json``) installed as ``make lab`` installs them; stopped by its
  process id.
- :class:`LabPage`: one browser page on that server: open a notebook, run all cells,
  read the notebook model, run code in the notebook's kernel, collect console errors,
  take screenshots, each checked for widget labels cut off by their box.

The JupyterLab application is exposed to the page (``expose_app_in_browser``) so the
tests use JupyterLab's own commands and models instead of guessing from pixels; mouse
input on the widgets is real (Playwright's mouse, dispatched by Chromium).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]
CHROMIUM_NAMES = ("chromium", "chromium-browser")

# JupyterLab user settings written into the throw-away settings dir
LAB_SETTINGS = {
    # no news feed, no update check, no "would you like news?" toast
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false",
                                                    "checkForUpdates": False},
    # every cell stays in the DOM (no virtual scrolling), so every output can be checked
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
}

KERNEL_CALL_TIMEOUT_S = 120

# ``make lab``'s settings: lab-settings/overrides.json goes into overrides.d/ of the app
# settings dir JupyterLab is pointed at (Makefile, target ``lab``)
PROJECT_OVERRIDES = Path(__file__).resolve().parents[1] / "lab-settings" / "overrides.json"
OVERRIDES_NAME = "e4e-lab.json"

# text that means a widget view did not render
WIDGET_FAILURES = ("Error displaying widget", "model not found", "Loading widget...",
                   "Failed to load model class", "Error creating view")


def find_chromium() -> str | None:
    """Path of Debian's Chromium (``$E4E_CHROMIUM`` overrides), or None."""
    explicit = os.environ.get("E4E_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """A JupyterLab server process serving ``root`` (started by :meth:`start`)."""

    def __init__(self, root: Path, home: Path, env: dict[str, str],
                 overrides: Path | None = PROJECT_OVERRIDES):
        self.root, self.home = root, home
        self.overrides = overrides
        self.app_settings_dir = home / "app-settings"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / "jupyterlab.log"
        self.env = dict(env, HOME=str(home),
                        JUPYTER_CONFIG_DIR=str(home / ".jupyter"),
                        JUPYTER_DATA_DIR=str(home / ".local/share/jupyter"),
                        JUPYTER_RUNTIME_DIR=str(home / ".local/share/jupyter/runtime"),
                        JUPYTERLAB_SETTINGS_DIR=str(home / "lab-settings"),
                        JUPYTERLAB_WORKSPACES_DIR=str(home / "lab-workspaces"),
                        IPYTHONDIR=str(home / ".ipython"))
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser",
               "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
               "--ServerApp.port_retries=0", "--IdentityProvider.token=",
               "--ServerApp.password=", f"--ServerApp.root_dir={self.root}",
               "--LabApp.news_url=None",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.expose_app_in_browser=True",
               f"--LabApp.app_settings_dir={self.app_settings_dir}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")
        return cmd

    def write_settings(self) -> None:
        base = Path(self.env["JUPYTERLAB_SETTINGS_DIR"])
        for plugin, values in LAB_SETTINGS.items():
            package, name = plugin.rsplit("/", 1)
            path = base / package / f"{name}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values), encoding="utf-8")

    def install_overrides(self) -> None:
        """What ``make lab`` does: the project's overrides file into ``overrides.d/`` of
        the app settings dir (the command line points JupyterLab at it)."""
        target = self.app_settings_dir / "overrides.d"
        target.mkdir(parents=True, exist_ok=True)
        if self.overrides is not None:
            shutil.copyfile(self.overrides, target / OVERRIDES_NAME)

    def start(self, timeout: float = 120) -> "LabServer":
        self.write_settings()
        self.install_overrides()
        with open(self.log_path, "w", encoding="utf-8") as log:
            # its own process group: stopping it also stops the kernels it started
            self.process = subprocess.Popen(self.command(), env=self.env, cwd=self.root,
                                            stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.process.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"JupyterLab did not answer in {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM to the server's process group by its id, SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        pgid = os.getpgid(self.process.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.process.wait(timeout=10)
        try:  # kernels that outlived the server
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


# JavaScript run in the page; ``window.jupyterapp`` is JupyterLab's application
_JS_NOTEBOOK = "window.jupyterapp.shell.currentWidget"
_JS_KERNEL_READY = f"""() => {{
  const nb = window.jupyterapp && {_JS_NOTEBOOK};
  const ctx = nb && nb.sessionContext;
  const kernel = ctx && ctx.session && ctx.session.kernel;
  return !!(nb && nb.content && nb.content.model && kernel && kernel.status === 'idle'
            && kernel.connectionStatus === 'connected');
}}"""
_JS_RUN_ALL = f"""async () => {{
  const app = window.jupyterapp;
  const nb = {_JS_NOTEBOOK};
  app.shell.activateById(nb.id);
  await app.commands.execute('notebook:run-all-cells');
}}"""
_JS_STATE = f"""() => {{
  const nb = {_JS_NOTEBOOK};
  const cells = nb.content.model.cells;
  const out = {{kernel: nb.sessionContext.session.kernel.status, counts: [], errors: 0}};
  for (let i = 0; i < cells.length; i++) {{
    const cell = cells.get(i);
    if (cell.type !== 'code') continue;
    out.counts.push(cell.executionCount);
    const outputs = cell.toJSON().outputs || [];
    out.errors += outputs.filter(o => o.output_type === 'error').length;
  }}
  return out;
}}"""
_JS_OUTPUTS = f"""() => {{
  const cells = {_JS_NOTEBOOK}.content.model.cells;
  const out = [];
  for (let i = 0; i < cells.length; i++) {{
    const cell = cells.get(i);
    if (cell.type === 'code') out.push(cell.toJSON().outputs || []);
  }}
  return out;
}}"""
_JS_EXECUTE = f"""async (code) => {{
  const kernel = {_JS_NOTEBOOK}.sessionContext.session.kernel;
  const future = kernel.requestExecute({{code, store_history: false}});
  let text = '';
  let error = null;
  future.onIOPub = msg => {{
    const type = msg.header.msg_type;
    if (type === 'stream') text += msg.content.text;
    if (type === 'error') error = msg.content.ename + ': ' + msg.content.evalue;
  }};
  await future.done;
  return {{text, error}};
}}"""


_JS_FILE_BROWSER = """async () => {
  const app = window.jupyterapp;
  app.shell.activateById('filebrowser');
  const panel = document.getElementById('filebrowser');
  return !!(panel && panel.getBoundingClientRect().width > 100);
}"""
_JS_SAVE = f"""async () => {{
  const app = window.jupyterapp;
  const nb = {_JS_NOTEBOOK};
  app.shell.activateById(nb.id);
  await nb.context.save();
  return !nb.context.model.dirty;
}}"""
_JS_SHUTDOWN = f"""async () => {{
  const nb = window.jupyterapp && {_JS_NOTEBOOK};
  if (nb && nb.sessionContext) await nb.sessionContext.shutdown();
}}"""

# Widget text cut off by its own box: every element of a widget view with text of its
# own that hides what overflows (the labels, buttons and toggle buttons of ipywidgets
# do, with an ellipsis), whose text is wider than the box; and drop-downs whose chosen
# option is wider than the box minus its arrow. Returns 'text' (class) per offender.
_JS_TRUNCATED = """(root) => {
  const scope = root || document;
  const found = [];
  const name = el => `'${el.textContent.trim().slice(0, 60)}' (${el.tagName.toLowerCase()}`
                     + `.${[...el.classList].join('.')})`;
  const shown = el => el.getClientRects().length > 0;
  const canvas = document.createElement('canvas').getContext('2d');
  const inViews = '.jp-OutputArea-output .jupyter-widgets';
  const els = [...scope.querySelectorAll(`${inViews}, ${inViews} *`)];
  if (root && root.matches && root.matches('.jupyter-widgets')) els.push(root);
  for (const el of els) {
    if (!shown(el)) continue;
    if (el.tagName === 'SELECT') {
      const opt = el.options[el.selectedIndex];
      if (!opt) continue;
      const cs = getComputedStyle(el);
      canvas.font = cs.font;
      const room = el.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
      if (canvas.measureText(opt.text).width > room + 1)
        found.push(`'${opt.text}' (select: ${el.clientWidth}px)`);
      continue;
    }
    const ownText = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    if (!ownText) continue;
    const cs = getComputedStyle(el);
    const clips = cs.overflowX !== 'visible' || cs.textOverflow === 'ellipsis';
    if (clips && el.scrollWidth > el.clientWidth + 1)
      found.push(`${name(el)}: ${el.scrollWidth}px of text in ${el.clientWidth}px)`);
  }
  return [...new Set(found)];
}"""


class KernelCodeError(AssertionError):
    pass


class TruncatedLabels(AssertionError):
    pass


class LabPage:
    """A Chromium page on a :class:`LabServer`, recording console and page errors."""

    def __init__(self, page, server: LabServer, artifacts: Path):
        self.page, self.server, self.artifacts = page, server, artifacts
        # the longest a single page call may take: kernel code below computes features
        page.set_default_timeout(KERNEL_CALL_TIMEOUT_S * 1000)
        self.console_errors: list[str] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.console_errors.append(f"uncaught: {exc}"))

    def _on_console(self, msg) -> None:
        if msg.type == "error":
            self.console_errors.append(f"console.error: {msg.text}")
        elif msg.type == "warning" and "widget" in msg.text.lower() and "error" in msg.text.lower():
            self.console_errors.append(f"widget warning: {msg.text}")

    # ------------------------------------------------------------- notebooks --
    def open(self, path: str, timeout: float = 120) -> None:
        """Open ``path`` (relative to the server root) in a fresh workspace (``?reset``:
        no layout restored from an earlier page) with the file browser open, as a user
        has it, and wait for an idle kernel."""
        self.page.goto(f"{self.server.url}/lab/tree/{path}?reset")
        self.wait_notebook(timeout)

    def wait_notebook(self, timeout: float = 120) -> None:
        """Wait for the notebook and an idle kernel; open the file browser beside it."""
        self.page.wait_for_function(_JS_KERNEL_READY, timeout=timeout * 1000, polling=250)
        assert self.page.evaluate(_JS_FILE_BROWSER), "the file browser did not open"

    def save(self) -> None:
        """Save the notebook (File > Save: the widget manager adds its state if set to)."""
        assert self.page.evaluate(_JS_SAVE), "the notebook is still unsaved"

    def shutdown_kernel(self) -> None:
        self.page.evaluate(_JS_SHUTDOWN)

    def reopen(self, path: str, timeout: float = 120) -> None:
        """Shut the kernel down and load the page again: the notebook opens from its
        file, with a new kernel that holds none of the widgets the file shows."""
        self.shutdown_kernel()
        self.open(path, timeout)

    def run_all(self, timeout: float = 300) -> dict:
        """Run all cells; return when every code cell ran or one failed (kernel idle)."""
        deadline = time.monotonic() + timeout
        self._send_run_all()
        started = False  # until a cell has run or the kernel was seen busy
        settled = 0
        state: dict = {}
        while time.monotonic() < deadline:
            state = self.page.evaluate(_JS_STATE)
            if state["kernel"] != "idle" or any(state["counts"]):
                started = True
            elif not started and time.monotonic() > self._run_all_sent + 20:
                # the command went to a notebook JupyterLab did not yet count as current
                # (seen once in CI: nothing ran in 300 s): activate it and ask again
                self._send_run_all()
            finished = all(state["counts"]) or state["errors"] > 0
            # the kernel is idle for a moment between cells: ask for two idle polls
            settled = settled + 1 if finished and state["kernel"] == "idle" else 0
            if settled >= 2:
                return state
            time.sleep(0.5)
        raise TimeoutError(f"the notebook did not finish in {timeout} s: {state}")

    def _send_run_all(self) -> None:
        """Activate the open notebook and send run-all."""
        self.page.evaluate(_JS_RUN_ALL)
        self._run_all_sent = time.monotonic()
        return False

    def outputs(self) -> list[list[dict]]:
        """The outputs of every code cell, as saved in the .ipynb."""
        return self.page.evaluate(_JS_OUTPUTS)

    def kernel(self, code: str) -> str:
        """Run ``code`` in the notebook's kernel; returns what it printed."""
        reply = self.page.evaluate(_JS_EXECUTE, code)
        if reply["error"]:
            raise KernelCodeError(f"{reply['error']}\nin:\n{code}")
        return reply["text"]

    def kernel_json(self, expression: str):
        """The value of a JSON-able Python expression in the kernel."""
        text = self.kernel(f"import json as _j; print(_j.dumps({expression}))")
        return json.loads(text.strip().splitlines()[-1])

    def wait_kernel(self, expression: str, timeout: float = 120, every: float = 0.25):
        """Poll until the kernel-side ``expression`` is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.kernel_json(expression)
            if value:
                return value
            time.sleep(every)
        raise TimeoutError(f"`{expression}` stayed falsy for {timeout} s")

    # --------------------------------------------------------------- widgets --
    def widget_views(self):
        """Locators of every widget-view output, in notebook order (the widget renderer
        is the one output panel without a ``data-mime-type``)."""
        return self.page.locator(".jp-OutputArea-output:not([data-mime-type])")

    def widget_problems(self) -> list[str]:
        """Widget views that failed, are blank, or are missing from the page."""
        problems = []
        expected = sum("application/vnd.jupyter.widget-view+json" in o.get("data", {})
                       for cell in self.outputs() for o in cell)
        views = self.widget_views()
        if views.count() != expected:
            problems.append(f"{expected} widget outputs in the notebook, "
                            f"{views.count()} rendered in the page")
        for n in range(views.count()):
            view = views.nth(n)
            text = view.inner_text()
            for bad in WIDGET_FAILURES:
                if bad in text:
                    problems.append(f"widget view {n}: {bad!r} ({text[:120]!r})")
            box = view.bounding_box()
            if box is None or box["width"] < 20 or box["height"] < 20:
                problems.append(f"widget view {n} is blank (bounding box {box})")
            elif view.locator(".jupyter-widgets").count() == 0:
                problems.append(f"widget view {n} has no widget element inside")
        return problems

    def drag(self, start: tuple[float, float], end: tuple[float, float], steps: int = 12) -> None:
        """A real mouse drag between two page points (button held, moves in between)."""
        self.page.mouse.move(*start)
        self.page.mouse.down()
        self.page.mouse.move(*end, steps=steps)
        self.page.mouse.up()

    # ------------------------------------------------------------- evidence --
    def truncated(self, locator=None) -> list[str]:
        """Widget labels, buttons and drop-downs whose text is cut off (within
        ``locator``, or in every widget view of the page)."""
        root = locator.element_handle() if locator is not None else None
        return self.page.evaluate(_JS_TRUNCATED, root)

    def screenshot(self, name: str, locator=None) -> Path:
        """Save a screenshot to the artifacts; fail (after saving it) naming every
        widget label it shows cut off."""
        path = self.artifacts / f"{name}.png"
        if locator is not None:
            locator.scroll_into_view_if_needed()
            locator.screenshot(path=str(path))
        else:
            self.page.screenshot(path=str(path))
        cut = self.truncated(locator)
        if cut:
            raise TruncatedLabels(f"{path.name} shows cut-off widget text:\n  "
                                  + "\n  ".join(cut))
        return path
