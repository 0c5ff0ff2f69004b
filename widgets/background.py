"""Run / Stop for widgets whose work runs in a background thread.

The kernel stays free to handle widget events while the work runs (the Stop button, the
other viewers). Stop sets a ``threading.Event`` that the library checks between steps
(``cancel=`` of ``Lab.transfer`` and ``compare_methods``).
"""

from __future__ import annotations

import logging
import threading

import ipywidgets as W

from e4e_lab.errors import E4ELabError

from .common import status_html

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

    def _run_buttons(self) -> None:
        """``run_button`` (calls ``self.run()``) and ``stop_button`` (``self.stop()``)."""
        self.run_button = W.Button(description="Run", icon="play", button_style="success")
        self.stop_button = W.Button(description="Stop", icon="stop", button_style="danger",
                                    disabled=True)
        self.run_button.on_click(lambda _: self.run())
        self.stop_button.on_click(lambda _: self.stop())

    @property
    def cancel_event(self) -> threading.Event:
        if "_cancel" not in self.__dict__:
            self._cancel = threading.Event()
        return self._cancel

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
            target(*args)
        except Exception as exc:  # shown in the widget; the thread must not die silently
            self._failed(exc)
        finally:
            self._idle()

    @property
    def cache_note(self) -> str:
        return "inverted the pair" if self.inverted else "inversion reused from the cache"

    def _failed(self, exc: BaseException) -> None:
        """Show an error of the worker."""
        self.state, self.error = "failed", exc
        if not isinstance(exc, E4ELabError):
            log.exception("%s failed", self.what)
        self.status.value = status_html(f"failed: {exc}", "error")
        self.progress.bar_style = "danger"

    def _idle(self) -> None:
        self.run_button.disabled, self.stop_button.disabled = False, True
