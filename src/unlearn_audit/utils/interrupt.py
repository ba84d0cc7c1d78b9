"""Ctrl-C that is not lost. Python turns SIGINT into a KeyboardInterrupt raised wherever the main thread
happens to be; raised inside a finalizer (`__del__`, a weakref callback) it is printed as "Exception
ignored" and dropped, and library code that catches BaseException swallows it too, so a run could go on
after Ctrl-C (a guard: the Ctrl-C tests' full-suite failures of 2026-12-05 were not reproduced). Within
`ctrl_c_handled()` the signal is also recorded, and `check_interrupt()`, called at every training step
and before every grid cell, raises it again where it cannot be swallowed."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_requested = False


def _on_sigint(signum, frame) -> None:
    global _requested
    _requested = True
    raise KeyboardInterrupt


@contextlib.contextmanager
def ctrl_c_handled() -> Iterator[None]:
    """Record Ctrl-C for `check_interrupt` while the block runs (main thread, default handler only: a
    process started with SIGINT ignored, e.g. a grid worker, keeps ignoring it)."""
    global _requested
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    previous = signal.signal(signal.SIGINT, _on_sigint)
    _requested = False
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested = False


def check_interrupt() -> None:
    """Raise KeyboardInterrupt if Ctrl-C came and its first KeyboardInterrupt was swallowed."""
    if _requested:
        raise KeyboardInterrupt
