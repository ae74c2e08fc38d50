"""Interrupting a call from another thread (app/services/interrupt.py): in the main
thread a SIGALRM stops it at once, before it starts it never runs, and where no signal
can reach it (another thread) it runs to its end and says so."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from app.services.interrupt import Interruptible, Stopped, interruptible

# pytest-timeout's own alarm is off: with another alarm set, a call is not interruptible.
pytestmark = pytest.mark.timeout(0)


def _interrupt_after(handle: Interruptible, seconds: float, answers: list[bool]) -> None:
    def later() -> None:
        time.sleep(seconds)
        answers.append(handle.interrupt())

    threading.Thread(target=later, daemon=True).start()


def test_another_thread_stops_a_call_in_the_main_thread_at_once():
    handle, answers = Interruptible(), []
    before = signal.getsignal(signal.SIGALRM)
    _interrupt_after(handle, 0.2, answers)
    started = time.monotonic()
    with pytest.raises(Stopped), interruptible(handle):
        time.sleep(10)
    assert time.monotonic() - started < 2
    assert answers == [True]
    assert handle.requested
    assert signal.getsignal(signal.SIGALRM) is before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_a_call_interrupted_before_it_starts_never_runs():
    handle = Interruptible()
    assert handle.interrupt() is True
    ran = []
    with pytest.raises(Stopped), interruptible(handle):
        ran.append(True)
    assert ran == []


def test_a_call_that_ended_is_not_disturbed_by_a_late_interrupt():
    handle = Interruptible()
    with interruptible(handle, timeout_s=5):
        pass
    assert handle.interrupt() is True  # nothing left to stop
    time.sleep(0.1)  # a stray signal would surface here


def test_a_call_no_signal_can_reach_runs_to_its_end():
    handle, answers, outcome = Interruptible(), [], []

    def call() -> None:
        with interruptible(handle):
            time.sleep(0.4)
        outcome.append("finished")

    worker = threading.Thread(target=call)
    worker.start()
    _interrupt_after(handle, 0.1, answers)
    worker.join(5)
    assert answers == [False]
    assert outcome == ["finished"]
