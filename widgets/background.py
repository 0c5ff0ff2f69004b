"""Run / Stop for widgets whose work runs in a background thread.

The kernel stays free to handle widget events while the work runs (the Stop button, the
other viewers). Stop sets a ``threading.Event`` that the library checks between steps
(``cancel=`` of ``Lab.transfer``, ``compare_methods`` and the DIFT features). The widget
shows its own bar, so the session's tqdm bars are off in the worker thread
(:func:`e4e_lab.progress.quiet`): nothing stray is printed under the cell.
"""

from __future__ import annotations

import functools
import logging
import threading
import time

import ipywidgets as W

from e4e_lab.errors import E4ELabError, TransferCancelled
from e4e_lab.progress import quiet

from .common import fit_content, status_html

log = logging.getLogger(__name__)


class BackgroundRun:
    """Mixin: ``status`` and ``progress`` widgets and a ``state`` attribute are the
    subclass's; this makes the Run / Stop buttons (:meth:`_run_buttons`) and keeps the
    thread, the cancel event, and whether the last run had to invert (``inverted``)."""

    _thread: threading.Thread | None = None
    inverted = False
    stop_message = "stopping after the current step..."
    busy_message = "a run is in progress: Stop it first"
    what = "run"  # names the work in logs

    def _run_buttons(self, description: str = "Run", icon: str = "play",
                     style: str = "success") -> None:
        """``run_button`` (calls ``self.run()``) and ``stop_button`` (``self.stop()``)."""
        self.run_button = W.Button(description=description, icon=icon, button_style=style)
        self.stop_button = W.Button(description="Stop", icon="stop", button_style="danger",
                                    disabled=True)
        self.run_button.on_click(lambda _: self.run())
        self.stop_button.on_click(lambda _: self.stop())

    def _compute_controls(self, description: str) -> None:
        """The explorers' controls for DIFT features: ``compute_button`` (the run button,
        labelled ``description`` and sized to it), ``stop_button`` and a ``progress`` bar
        over the noise draws."""
        self._run_buttons(description, "cogs", "")
        self.compute_button = fit_content(self.run_button)
        self.progress = W.IntProgress(value=0, min=0, max=1, description="draws")

    def _waiting_for_model(self, what: str) -> None:
        """Say that ``what`` starts, after a transfer holding the model if one runs."""
        self.status.value = status_html(f"{what}: starting (after the transfer using the "
                                        "model, if one is running)...")

    @property
    def cancel_event(self) -> threading.Event:
        if "_cancel" not in self.__dict__:
            self._cancel = threading.Event()
        return self._cancel

    @property
    def draw_lock(self) -> threading.RLock:
        """Held while the views are redrawn (see :func:`drawing`)."""
        if "_draw_lock" not in self.__dict__:
            self._draw_lock = threading.RLock()
        return self._draw_lock

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _refuse_if_running(self) -> bool:
        """True (and says so in the status) when a run is going."""
        if self.running:
            self.status.value = status_html(self.busy_message, "warn")
        return self.running

    def _start(self, target, args: tuple, name: str, block: bool) -> bool:
        """Start ``target(*args)`` in a daemon thread with the buttons set for a run.

        An exception ``target`` lets through is shown (:meth:`_failed`); the buttons are
        reset whatever happens."""
        self.cancel_event.clear()
        self.inverted = False
        self.run_button.disabled, self.stop_button.disabled = True, False
        self.progress.bar_style = ""
        self.status.value = status_html("starting...")
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._guarded, args=(target, args), name=name,
                                        daemon=True)
        self._thread.start()
        if block:
            self.wait()
        return True

    def stop(self) -> None:
        """Ask the running work to stop at its next check."""
        if self.running:
            self.cancel_event.set()
            self.status.value = status_html(self.stop_message, "warn")

    def wait(self, timeout: float | None = None) -> str:
        """Wait for the running work; returns the final state."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.state

    def _guarded(self, target, args: tuple) -> None:
        try:
            with quiet():  # the widget's bar, not the session's tqdm bars
                target(*args)
        except Exception as exc:  # shown in the widget; the thread must not die silently
            self._failed(exc)
        finally:
            self._idle()

    def _dift_or_none(self, compute, restart: str):
        """``compute()`` (DIFT features, in the worker), or None when it was stopped or
        asked for an up-block the UNet does not have (a ValueError): the status says
        which, and that nothing was kept (``restart`` names the button that starts over)."""
        try:
            return compute()
        except TransferCancelled as exc:
            self.state = "cancelled"
            self.progress.bar_style = "warning"
            self.status.value = status_html(
                f"stopped after {exc.step} of {exc.total} noise draws; nothing was kept: "
                f"press '{restart}' to start again", "warn")
        except ValueError as exc:  # an up-block this UNet does not have
            self.state, self.error = "failed", exc
            self.progress.bar_style = "danger"
            self.status.value = status_html(str(exc), "error")
        return None

    @property
    def cache_note(self) -> str:
        return "inverted the pair" if self.inverted else "inversion reused from the cache"

    def _report(self, done: int, total: int, what: str) -> None:
        """Move the bar to ``done`` of ``total`` and say so in the status, with the time
        taken and, once something is done, an estimate of the time left."""
        self.progress.max, self.progress.value = max(1, total), done
        elapsed = time.perf_counter() - getattr(self, "_started", time.perf_counter())
        text = f"{what}: {done}/{total}, {duration(elapsed)}"
        if 0 < done < total:
            text += f", about {duration(elapsed / done * (total - done))} left"
        self.status.value = status_html(text)

    def _failed(self, exc: BaseException) -> None:
        """Show an error of the worker."""
        self.state, self.error = "failed", exc
        if not isinstance(exc, E4ELabError):
            log.exception("%s failed", self.what)
        self.status.value = status_html(f"failed: {exc}", "error")
        self.progress.bar_style = "danger"

    def _idle(self) -> None:
        self.run_button.disabled, self.stop_button.disabled = False, True


def duration(seconds: float) -> str:
    """``12 s`` or ``2.5 min``."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def drawing(method):
    """Run a method that redraws the views under the widget's :attr:`draw_lock`: the
    worker thread shows its result while the user may be clicking, and two redraws must
    not interleave their canvas commands."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self.draw_lock:
            return method(self, *args, **kwargs)

    return locked
