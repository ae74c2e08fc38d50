"""Cancel notices: how a cancel reaches its job's call in flight, in whichever worker.

Owns the Redis pub/sub channel they go on. A cancel publishes the attempt it stopped
(`job_id:step_index:fence`) once it has committed (`announce_cancel`). Each process
that runs steps listens on one thread, started with its first call, and interrupts
that attempt's call if it is in flight there
(app/services/interrupt.py); the call's end releases its lease as any end does
(app/jobs/execute.py), so the service never has more calls in flight than its limit,
and the slot is free within milliseconds of the notice.

A notice can be missed (Redis away, a process still subscribing): nothing depends on
it. The heartbeat then finds the step no longer RUNNING under its attempt and
interrupts the call (app/jobs/heartbeat.py), a result that still arrives is discarded
by the fence, and a lease whose worker died is reaped after its `lease_ttl_s`. A
process remembers the attempts cancelled in the last RECENT_S, so a call that starts
just after its notice is stopped as it starts; a rerun of the job is a new attempt
(a new fence), which the notice does not touch.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import structlog
from redis.exceptions import RedisError
from structlog.typing import FilteringBoundLogger

from app.logs import first_line
from app.redis_client import get_redis
from app.services import Interruptible

log: FilteringBoundLogger = structlog.get_logger(__name__)

CHANNEL = "cao:cancel"
RECENT_S = 60.0
MAX_RECENT = 10_000
# A wait for a message, not a poll (it returns on one at once); below the client's
# socket timeout.
LISTEN_TIMEOUT_S = 1.0
RETRY_S = 1.0


def _attempt(job_id: uuid.UUID | str, step_index: int, fence: int) -> str:
    return f"{job_id}:{step_index}:{fence}"


def announce_cancel(job_id: uuid.UUID, step_index: int, fence: int) -> None:
    """Tell every worker that this attempt of the step was cancelled (after the cancel
    commits). A failure is logged, not raised: the cancel stands, and the heartbeat
    stops the call."""
    attempt = _attempt(job_id, step_index, fence)
    try:
        get_redis().publish(CHANNEL, attempt)
    except RedisError as exc:
        log.warning("cancel notice not sent", attempt=attempt, error=first_line(exc))


class CancelWatch:
    """The calls in flight in this process by attempt, and the thread that interrupts
    them when their attempt's cancel notice arrives."""

    def __init__(self) -> None:
        self._reset()
        # Threads do not survive fork: a child starts from nothing, its thread on first use.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, set[Interruptible]] = {}
        self._recent: OrderedDict[str, float] = OrderedDict()
        self._started = False

    @contextmanager
    def watching(self, key: str, handle: Interruptible) -> Iterator[None]:
        """Interrupt `handle` if attempt `key` is cancelled while the block runs."""
        with self._lock:
            self._ensure_thread()
            self._calls.setdefault(key, set()).add(handle)
            cancelled = key in self._recent
        if cancelled:
            handle.interrupt()
        try:
            yield
        finally:
            with self._lock:
                handles = self._calls.get(key)
                if handles is not None:
                    handles.discard(handle)
                    if not handles:
                        del self._calls[key]

    def _ensure_thread(self) -> None:
        if not self._started:
            self._started = True
            threading.Thread(target=self._run, name="cao-cancel-notices", daemon=True).start()

    def notice(self, attempt: str) -> None:
        """Interrupt the call of `attempt` if it is in flight here; remember it a while."""
        now = time.monotonic()
        with self._lock:
            self._recent[attempt] = now
            self._recent.move_to_end(attempt)
            while self._recent and (
                len(self._recent) > MAX_RECENT or next(iter(self._recent.values())) < now - RECENT_S
            ):
                self._recent.popitem(last=False)
            handles = list(self._calls.get(attempt, ()))
        for handle in handles:
            if handle.interrupt():
                log.info("call interrupted: its job was cancelled", attempt=attempt)
            else:
                log.warning(
                    "the call of a cancelled job cannot be interrupted here (no signals in "
                    "this thread); it runs to its end and its result is discarded",
                    attempt=attempt,
                )

    def _run(self) -> None:
        while True:
            try:
                self._listen()
            except Exception as exc:  # Redis away: missed notices are covered, listen again
                log.warning("cancel notices: listening again", error=first_line(exc))
                time.sleep(RETRY_S)

    def _listen(self) -> None:
        pubsub = get_redis().pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(CHANNEL)
            while True:
                message = pubsub.get_message(timeout=LISTEN_TIMEOUT_S)
                if message is not None and message["type"] == "message":
                    data = message["data"]
                    self.notice(data.decode() if isinstance(data, bytes) else str(data))
        finally:
            pubsub.close()


_watch = CancelWatch()


def watching_cancel(
    job_id: uuid.UUID | str, step_index: int, fence: int, handle: Interruptible
) -> AbstractContextManager[None]:
    """Interrupt `handle` when this attempt of the step is cancelled while the block runs."""
    return _watch.watching(_attempt(job_id, step_index, fence), handle)
