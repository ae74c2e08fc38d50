"""Child processes under supervision: the one implementation behind the embedded stack
(`cao dev`, `cao demo`) and the test suite's harness.

A `Process` is a command started with an environment of its own and its output in a
log file, as the leader of a new process group: Ctrl-C at a terminal reaches the
supervisor only, and signalling the group also reaches the pool children a Celery
worker forks. A process can be waited on until a probe passes (a port that accepts
connections, a line in its log), stopped (SIGTERM to the group, SIGKILL after a grace
period), restarted, and asked for its exit status; `stop_all` stops several within one
grace period. `sigterm_as_interrupt` and `signals_deferred` govern the supervising
process's own signals while it starts and stops its children.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, TypeVar

T = TypeVar("T")
# A readiness check of one process, polled until it answers True.
Probe = Callable[["Process"], bool]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at this moment."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float = 30.0,
    interval: float = 0.05,
    message: str = "condition",
) -> T:
    """Poll `predicate` until it returns a true value, and return that value; raise
    `TimeoutError` naming `message` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def signal_group(pgid: int, sig: int) -> None:
    """Send `sig` to a process group; a group that is already gone is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def listening(port: int, host: str = "127.0.0.1") -> Probe:
    return lambda _process: port_open(port, host)


def logged(needle: str) -> Probe:
    return lambda process: process.logged(needle)


class ProcessExited(RuntimeError):
    """A process exited while it was meant to run (or to become ready)."""

    def __init__(self, process: Process) -> None:
        self.name = process.name
        self.returncode = process.returncode
        super().__init__(
            f"{process.name} exited unexpectedly (exit code {self.returncode}); "
            f"last lines of {process.log_path}:\n{process.log_tail()}"
        )


class Process:
    """One child process, leader of its own process group, logging to `log_path`.

    It starts when constructed; `stop()` or `kill()` ends the whole group, and
    `restart()` starts the same command again, appending to the same log.
    """

    def __init__(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.popen, self._log = self._spawn("wb")

    def _spawn(self, mode: str) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
        log = self.log_path.open(mode)
        try:
            popen = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except BaseException:
            log.close()
            raise
        return popen, log

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status, or None while the process runs."""
        return self.popen.poll()

    def alive(self) -> bool:
        return self.returncode is None

    @property
    def stopped(self) -> bool:
        """`stop()` or `kill()` has ended the group (and no `restart()` came since)."""
        return self._log.closed

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def log_tail(self, lines: int = 25) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:]) or "(empty log)"

    def logged(self, needle: str) -> bool:
        return needle in self.log_text()

    def signal_group(self, sig: int) -> None:
        signal_group(self.pid, sig)

    def wait_for(self, probe: Probe, timeout: float, what: str = "to be ready") -> None:
        """Poll `probe` until it passes; raise `ProcessExited` if the process exits first,
        `TimeoutError` after `timeout` seconds."""

        def passed() -> bool:
            if not self.alive():
                raise ProcessExited(self)
            return probe(self)

        wait_until(passed, timeout, 0.1, f"{self.name} {what}")

    def wait_for_log(self, needle: str, timeout: float = 60.0) -> None:
        self.wait_for(logged(needle), timeout, f"to log {needle!r}")

    def wait_for_port(self, port: int, timeout: float = 30.0) -> None:
        self.wait_for(listening(port), timeout, f"to listen on {port}")

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM the group, SIGKILL what is left after `grace_s`; the exit status."""
        stop_all([self], grace_s)
        return self.returncode

    def kill(self) -> int | None:
        """SIGKILL the group at once (a crash, as far as the process can tell)."""
        self.signal_group(signal.SIGKILL)
        self.popen.wait(10)
        self._log.close()
        return self.returncode

    def restart(self, grace_s: float = 10.0) -> None:
        """Stop the process if it runs and start the same command again."""
        if not self.stopped:
            self.stop(grace_s)
        self.popen, self._log = self._spawn("ab")

    def _finish(self, deadline: float) -> None:
        """Wait for the group leader until `deadline`, then kill what is left of the group."""
        try:
            self.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.popen.wait(5)
        # Pool processes a leader left behind still carry its group id.
        self.signal_group(signal.SIGKILL)
        self._log.close()


def stop_all(processes: Iterable[Process], grace_s: float) -> None:
    """SIGTERM every group at once, give them `grace_s` in total, then SIGKILL."""
    # One already stopped has been reaped: its pid may belong to someone else by now.
    processes = [process for process in processes if not process.stopped]
    for process in processes:
        process.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in processes:
        process._finish(deadline)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C in the main thread, so `finally` blocks stop the children."""

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM meanwhile: a second Ctrl-C must not abandon a
    half-finished shutdown (that is how orphans are made); the grace period bounds how
    long the shutdown takes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
