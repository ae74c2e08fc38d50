"""Helpers for the lease and recovery tests: `cao beat`, a private Redis server that a
test may stop and restart, and a look at the step deliveries waiting in a queue."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.harness import CAO, Proc, free_port, port_open, wait_until

REDIS_SERVER = "/usr/bin/redis-server"


@contextlib.contextmanager
def beat_running(env: dict[str, str], log_dir: Path, **settings: str) -> Iterator[Proc]:
    """`cao beat` with the run's environment plus `settings` (e.g. JOB_STUCK_SECONDS)."""
    proc = Proc("beat", [*CAO, "beat"], {**env, **settings}, log_dir)
    try:
        proc.wait_for_log("beat: Starting", timeout=60)
        yield proc
    finally:
        proc.stop()


class RedisServer:
    """A throw-away `redis-server` on its own port, without persistence."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.log_dir = log_dir
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server, or start it again on the same port after `stop()`."""
        if self.proc is None:
            argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
            argv += ["--save", "", "--appendonly", "no"]
            self.proc = Proc(f"redis-{self.port}", argv, {}, self.log_dir)
        else:
            self.proc.restart()
        self.proc.wait_for_port(self.port, 10)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
        wait_until(lambda: not port_open(self.port), 10, message="redis-server to stop")


def queued_deliveries(queue: str) -> list[tuple[str, int, int]]:
    """Drain `queue` and return the (job_id, step_index, fence) of each run_step message."""
    deliveries = []
    for message in queued_messages(queue):
        args = message.payload[0]
        deliveries.append((str(args[0]), int(args[1]), int(args[2])))
    return deliveries


def queued_messages(queue: str) -> list[Any]:
    """Drain `queue` and return its messages as a worker receives them."""
    from worker.celery_app import celery_app

    messages: list[Any] = []
    with celery_app.connection_for_read() as connection:
        simple = connection.SimpleQueue(queue, no_ack=True)
        try:
            while True:
                try:
                    messages.append(simple.get(block=False))
                except simple.Empty:
                    return messages
        finally:
            simple.close()
