"""Stopping a call in flight: when its timeout passes, or at once when another thread
asks (its job was cancelled).

A call runs inside `interruptible(handle, timeout_s)`. A prefork worker runs steps in
its pool processes' main thread, where signals arrive: SIGALRM ends the call when
`timeout_s` passes, or when `handle.interrupt()` sends it from another thread. The
signal raises `Stopped` in the call, a BaseException, so that a step's own
`except Exception` cannot swallow it; an http request it unwinds closes its
connection, so the service sees its caller go. The caller catches `Stopped` around
the block and asks the handle which it was (`handle.requested`).

Where signals cannot reach the call (a threads pool), or where something else in the
process already has an alarm set, the block runs unbounded rather than disturb it,
and `interrupt()` answers False.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Stopped(BaseException):
    """Raised into a call that ran past its timeout or was interrupted."""


class CallInterrupted(Exception):
    """A call given up because its step no longer needs it (its job was cancelled)."""


class Interruptible:
    """One call, which another thread may ask to stop (`interrupt`)."""

    def __init__(self) -> None:
        # Taken by `interrupt` and by the end of the block, never by the signal handler
        # (it runs in the thread that may hold it): no signal is sent once the block
        # has ended and its handler may be gone.
        self._lock = threading.Lock()
        self._thread: int | None = None
        self._running = False
        self.armed = False  # read by the signal handler
        self.requested = False

    def interrupt(self) -> bool:
        """Stop the call now, or as it starts if it has not yet. False when it runs where
        no signal can reach it: it then runs to its end."""
        with self._lock:
            self.requested = True
            if self.armed and self._thread is not None:
                signal.pthread_kill(self._thread, signal.SIGALRM)
                return True
            return not self._running

    def _begin(self, armed: bool) -> None:
        with self._lock:
            if self.requested:
                raise Stopped
            self._running, self.armed = True, armed
            self._thread = threading.get_ident()

    def _end(self) -> None:
        self.armed = False  # first: from here the handler raises nothing
        with self._lock:
            self._running = False


@contextmanager
def interruptible(handle: Interruptible, timeout_s: float | None = None) -> Iterator[None]:
    """Run the block so that `handle.interrupt()`, or `timeout_s` passing, raises
    `Stopped` in it (see the module docstring for where that cannot be)."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    if not in_main_thread or signal.getitimer(signal.ITIMER_REAL)[0] > 0:
        handle._begin(armed=False)
        try:
            yield
        finally:
            handle._end()
        return

    def stop(_signum: int, _frame: object) -> None:
        if handle.armed:  # not once the block has ended and the alarm is being taken down
            raise Stopped

    previous = signal.signal(signal.SIGALRM, stop)
    try:
        handle._begin(armed=True)
        if timeout_s is not None:
            signal.setitimer(signal.ITIMER_REAL, timeout_s)
        yield
    finally:
        handle._end()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
