"""Run / Stop for widgets whose work runs in a background thread.

The kernel stays free to handle widget events while the work runs (the Stop button, the
other viewers). Stop sets a ``threading.Event`` that the library checks between steps
(``cancel=`` of ``Lab.transfer`` and ``compare_methods``).
"""

from __future__ import annotations

import logging
import threading

from e4e_lab.errors import E4ELabError

from .common import status_html

log = logging.getLogger(__name__)


class BackgroundRun:
    """Mixin: ``run_button``, ``stop_button``, ``status`` and ``progress`` widgets and a
    ``state`` attribute are the subclass's; this keeps the thread and the cancel event."""

    _thread: threading.Thread | None = None
    stop_message = "stopping after the current step..."

    @property
    def cancel_event(self) -> threading.Event:
        if "_cancel" not in self.__dict__:
            self._cancel = threading.Event()
        return self._cancel

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _start(self, target, args: tuple, name: str, block: bool) -> bool:
        """Start ``target(*args)`` in a daemon thread with the buttons set for a run."""
        self.cancel_event.clear()
        self.run_button.disabled, self.stop_button.disabled = True, False
        self.progress.bar_style = ""
        self.status.value = status_html("starting...")
        self._thread = threading.Thread(target=target, args=args, name=name, daemon=True)
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

    def _failed(self, exc: BaseException, what: str) -> None:
        """Show an error of the worker (the thread must not die silently)."""
        self.state, self.error = "failed", exc
        if not isinstance(exc, E4ELabError):
            log.exception("%s failed", what)
        self.status.value = status_html(f"failed: {exc}", "error")
        self.progress.bar_style = "danger"

    def _idle(self) -> None:
        self.run_button.disabled, self.stop_button.disabled = False, True
