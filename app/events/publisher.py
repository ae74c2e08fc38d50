"""Pub/sub wake-ups for live streams. The log is the truth; a lost publish is
recovered by subscribers reading the log, so failures here are only logged.

On SQLite an event has its global id once committed, and is published whole: the
API's hub delivers it as it is. On PostgreSQL the sequencer numbers committed events
afterwards, so the hubs only need waking to read them from the log: a transaction
publishes no events there, only a wake-up, and one wake-up stands for every
transaction a send covers."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, cast

import structlog
from redis.connection import parse_url

from app.config import get_settings
from app.events.types import PublishedEvent
from app.redis_client import get_redis

log = structlog.get_logger(__name__)
# redis-py leaves parse_url unannotated: it maps a URL to the connection's keyword arguments.
_connection_kwargs = cast(Callable[[str], dict[str, Any]], parse_url)


def events_channel(redis_url: str | None = None) -> str:
    """The one channel for every job's events (subscribers route by job_id in process).

    Pub/sub ignores the Redis database number, so it is part of the name: two
    deployments (or test runs) on one Redis server never hear each other's events.
    """
    return _channel_for(redis_url or get_settings().redis_url)


@lru_cache(maxsize=8)
def _channel_for(redis_url: str) -> str:
    return f"cao:events:{_connection_kwargs(redis_url).get('db', 0)}"


# A payload with no id, as the hubs read it (app/events/wire.py): read the log.
WAKE_UP = json.dumps({"id": None, "type": "WAKE_UP"})


def publish_after_commit(events: Sequence[PublishedEvent]) -> None:
    """Queue one transaction's events for this process's publisher thread: a step's
    commit never waits on the wake-up's round trip (nor on Redis being down)."""
    _publisher.submit(events)


def wake_after_commit() -> None:
    """Queue a wake-up for a transaction whose events the sequencer numbers."""
    _publisher.submit(())


def drain_publishes(timeout_s: float = 2.0) -> None:
    """Wait (bounded) until every queued event has been sent: call before closing the
    Redis client at shutdown. What is still queued after that is read from the log."""
    _publisher.drain(timeout_s)


# Transactions whose wake-ups may wait for a Redis that does not answer; beyond
# that they are dropped (subscribers still read them from the log within a second).
MAX_QUEUED_TRANSACTIONS = 10_000


class Publisher:
    """One daemon thread per process sends the queued events, everything queued
    since its last send in one pipeline. Order across processes was never promised:
    subscribers number and order events from the log (app/events/hub.py)."""

    def __init__(self, max_queued: int = MAX_QUEUED_TRANSACTIONS) -> None:
        self._max_queued = max_queued
        self._queue: queue.Queue[Sequence[PublishedEvent]] | None = None
        self._lock = threading.Lock()
        self.dropped = 0

    def submit(self, events: Sequence[PublishedEvent]) -> None:
        try:
            self._started().put_nowait(events)
        except queue.Full:
            with self._lock:  # submitters are many threads (the API's pool)
                self.dropped += 1
                dropped = self.dropped
            if dropped % 1000 == 1:
                log.warning("event wake-ups dropped: Redis is not answering", dropped=dropped)

    @property
    def queued(self) -> int:
        """Transactions waiting for the thread (not those it is sending)."""
        return 0 if self._queue is None else self._queue.qsize()

    def drain(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self._queue is not None and self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                log.warning("events left unpublished at shutdown", batches=self.queued)
                return
            time.sleep(0.005)

    def forget(self) -> None:
        """In a forked child: the parent's thread did not come along."""
        self._queue, self._lock = None, threading.Lock()

    def _started(self) -> queue.Queue[Sequence[PublishedEvent]]:
        with self._lock:
            if self._queue is None:
                self._queue = queue.Queue(self._max_queued)
                threading.Thread(
                    target=self._run, args=(self._queue,), name="cao-publisher", daemon=True
                ).start()
            return self._queue

    @staticmethod
    def _run(pending: queue.Queue[Sequence[PublishedEvent]]) -> None:
        while True:
            batches = [pending.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    batches.append(pending.get_nowait())
            try:
                wake = any(not batch for batch in batches)
                _send([event for batch in batches for event in batch], wake)
            finally:
                for _ in batches:
                    pending.task_done()


def _send(events: Sequence[PublishedEvent], wake: bool) -> None:
    """Publish events (and a wake-up) in one round trip; a failure is only logged."""
    channel = events_channel()
    payloads = [event.model_dump_json() for event in events] + ([WAKE_UP] if wake else [])
    try:
        if len(payloads) == 1:
            get_redis().publish(channel, payloads[0])
            return
        with get_redis().pipeline(transaction=False) as pipe:
            for payload in payloads:
                pipe.publish(channel, payload)
            pipe.execute()
    except Exception as exc:
        log.warning(
            "event publish failed", events=[f"{e.job_id}/{e.seq}" for e in events], error=str(exc)
        )


_publisher = Publisher()
os.register_at_fork(after_in_child=_publisher.forget)
# A short-lived process (a script, a CLI command) sends what it committed before it
# exits; pool processes drain at their own shutdown (worker/celery_app.py).
atexit.register(_publisher.drain, 1.0)
