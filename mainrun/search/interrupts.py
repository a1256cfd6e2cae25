"""How a worker stops on Ctrl-C or SIGTERM: the signal becomes a KeyboardInterrupt wherever the
worker is, the running trial is recorded as failed ("interrupted", so a resume runs it again), and
the worker exits 130 or 143.

The handler raises wherever the main thread is; when that is inside a garbage-collector callback
(gc runs them between trials and at any allocation), or in a finalizer, Python drops it (and would
print an "Exception ignored" traceback, which is kept quiet). So the objective also checks at every
evaluation, and the worker between trials (`check_interrupted`).
"""
from __future__ import annotations

import contextlib
import signal
import sys


class Interrupt:
    """This worker's interrupt, once a signal has come."""
    signal_name: str | None = None
    trial: int | None = None             # the trial it stopped, recorded as FAIL "interrupted"


def _raise_interrupt(signum, _frame):
    # Record the first signal only: a second one (Ctrl-C reaches the parent and the workers)
    # must not interrupt the worker while it records the running trial as failed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Interrupt.signal_name = signal.Signals(signum).name
    raise KeyboardInterrupt(Interrupt.signal_name)


def check_interrupted() -> None:
    """Raise the worker's interrupt again if a signal came and its KeyboardInterrupt was dropped."""
    if Interrupt.signal_name:
        raise KeyboardInterrupt(Interrupt.signal_name)


@contextlib.contextmanager
def interrupts_caught():
    """SIGINT and SIGTERM interrupt the worker (and are recorded) while it runs; the handlers
    before it are put back afterwards. An interrupt that Python drops is not printed: the worker
    acts on it at its next check, so its "Exception ignored" traceback would only alarm."""
    Interrupt.signal_name = Interrupt.trial = None
    handlers = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    unraisable_hook = sys.unraisablehook

    def quiet_about_dropped_interrupts(unraisable) -> None:
        if not (isinstance(unraisable.exc_value, KeyboardInterrupt) and Interrupt.signal_name):
            unraisable_hook(unraisable)
    sys.unraisablehook = quiet_about_dropped_interrupts
    try:
        yield
    finally:
        sys.unraisablehook = unraisable_hook
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        Interrupt.signal_name = Interrupt.trial = None
