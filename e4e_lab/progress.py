"""Progress bars for long library calls: inversions, DIFT features, denoising.

The library reports progress through plain ``progress(done, total)`` callbacks. This
module turns a session's setting into bars over those callbacks:
``Lab(progress=True)`` gives ``tqdm.auto`` bars (a widget bar with a time estimate in
JupyterLab, a text bar elsewhere), ``Lab(progress=factory)`` bars from any tqdm-like
factory, and ``Lab(progress=False)`` (the library's default) none.

A bar is made when its work starts, moved by the callback and closed when the work
ends, fails or is cancelled. Code that shows its own progress (a widget's worker thread)
turns the session bars off for its thread with :func:`quiet`.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Union

from .errors import ConfigError

#: ``progress(done, total)``: how the library reports the progress of one piece of work
Callback = Callable[[int, int], None]
#: makes a tqdm-like bar: called with ``total=``, ``desc=``, ``unit=``, ``leave=``; the
#: bar has ``n``, ``update(k)`` and ``close()``
BarFactory = Callable[..., Any]

_thread = threading.local()


def tqdm_bar(**kwargs):
    """A ``tqdm.auto`` bar (imported on first use)."""
    from tqdm.auto import tqdm

    return tqdm(**kwargs)


@contextmanager
def quiet() -> Iterator[None]:
    """No session bars in this thread while the block runs (other threads keep theirs)."""
    before = getattr(_thread, "quiet", False)
    _thread.quiet = True
    try:
        yield
    finally:
        _thread.quiet = before


def is_quiet() -> bool:
    """Whether :func:`quiet` is in force in this thread."""
    return getattr(_thread, "quiet", False)


class SessionBars:
    """A session's progress setting: ``False`` (no bars), ``True`` (``tqdm.auto``) or a
    tqdm-like factory (tests pass a recorder)."""

    def __init__(self, setting: "bool | BarFactory | SessionBars" = False):
        if isinstance(setting, SessionBars):
            setting = setting.factory or False
        if setting is True:
            setting = tqdm_bar
        if setting is not False and setting is not None and not callable(setting):
            raise ConfigError("progress", setting, "True (tqdm.auto bars), False (no bars) "
                              "or a factory of tqdm-like bars")
        self.factory: BarFactory | None = setting or None

    @property
    def active(self) -> bool:
        """Whether bars are shown now, in this thread."""
        return self.factory is not None and not is_quiet()

    @contextmanager
    def track(self, desc: "str | Callable[[int], str]", unit: str = "step",
              callback: Callback | None = None) -> Iterator[Callback | None]:
        """A ``progress(done, total)`` callback for one piece of work: it moves a bar
        (made on its first call, when the total is known; ``desc`` may be a function of
        the total) and calls ``callback``. The bar is closed when the block ends,
        whatever the way. Yields ``callback`` itself when no bar is shown."""
        if not self.active:
            yield callback
            return
        bar = []

        def report(done: int, total: int) -> None:
            if not bar:
                text = desc(total) if callable(desc) else desc
                bar.append(self.factory(total=total, desc=text, unit=unit, leave=True))
            bar[0].update(done - bar[0].n)
            if callback is not None:
                callback(done, total)

        try:
            yield report
        finally:
            if bar:
                bar[0].close()


Progress = Union[None, bool, Callback, SessionBars]


def on_steps(report: Callback | None, callback: Callable[[Any], None] | None,
             total: int | None = None) -> Callable[[Any], None] | None:
    """A step-event callback (events with ``step`` from 0 and ``total``, such as
    :class:`~e4e_lab.method.transfer.StepEvent`) that moves ``report`` and passes each
    event on to ``callback``. With ``total``, ``report`` starts at 0 now (the bar shows
    before the first step ends)."""
    if report is None:
        return callback
    if total is not None:
        report(0, total)

    def step(event) -> None:
        report(event.step + 1, event.total)
        if callback is not None:
            callback(event)

    return step


@contextmanager
def reporting(progress: Progress, desc: "str | Callable[[int], str]",
              unit: str = "step") -> Iterator[Callback | None]:
    """The ``progress=`` argument of a library function, as a callback or None:
    ``None`` / ``False`` (nothing), ``True`` (a ``tqdm.auto`` bar), a session's
    :class:`SessionBars` (its bar, if it shows any) or a ``progress(done, total)``
    callback (called as it is)."""
    if progress is None or progress is False:
        yield None
    elif progress is True or isinstance(progress, SessionBars):
        bars = progress if isinstance(progress, SessionBars) else SessionBars(True)
        with bars.track(desc, unit) as report:
            yield report
    else:
        yield progress
