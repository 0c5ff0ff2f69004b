"""Ctrl-C in the command line: status 130 after one or many, one line, no traceback.

The first SIGINT raises KeyboardInterrupt, so that the run unwinds and removes its
staging folder (:mod:`e4e_lab.io.outputs`); later ones are ignored, so that they cannot
cut that clean-up short or escape as a traceback and an exit by the signal (-2). A
command-line process stays deaf to Ctrl-C from then on, and after the run, until it exits.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading


def catch_first():
    """Install the handler; returns the previous one (None off the main thread, where
    Python cannot handle signals)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    seen = []

    def first_interrupt(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if not seen:  # not a second one that came before SIG_IGN was set
            seen.append(signum)
            raise KeyboardInterrupt

    return signal.signal(signal.SIGINT, first_interrupt)


def release(previous, ending: bool) -> bool:
    """After the run: whether an interrupt came. ``ending`` (the process is the command
    line, about to exit): stay deaf to Ctrl-C, so that one in the interpreter's shutdown
    cannot end the process by the signal; else put ``previous`` back."""
    if previous is None:
        return False
    interrupted = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    signal.signal(signal.SIGINT, signal.SIG_IGN if ending else previous)
    return interrupted


def exit_now(code: int) -> None:
    """End the process with ``code`` now, without the interpreter's finalization. After a
    handled Ctrl-C, CPython 3.11 sometimes still ends the process by SIGINT (status -2)
    at exit: seen when the interrupt lands in an import (its flag of an unhandled
    KeyboardInterrupt was set, read at exit). The run's own clean-up is done by then."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
