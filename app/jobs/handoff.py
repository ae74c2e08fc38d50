"""What one worker process runs next without a broker round trip (the chain).

Two kinds of work are taken over in-process:

- a slot hand-off: when a step's call ends, releasing its lease hands the slot to
  the oldest step waiting for that service (app/leases.py). The process that released
  it is free and needs no broker round trip, so it runs the handed-over step next,
  and records its own result in the background once that step has been claimed
  (recording is a database commit, and the slot should not wait for it);
- a continuation: when the job's next step belongs to a queue this worker consumes,
  the runner starts it in the transaction that commits the current step's result and
  runs it here (app/jobs/execute.py). The next step is still started only after the
  previous result is committed, by a worker of its queue.

A chain is bounded in time so that its Celery task returns regularly (shutdown and
redelivery stay prompt). A slot still held at the end, or handed to a step of
another queue, goes on its queue ahead of fresh deliveries, like any hand-off. If
this process dies mid-chain, the step it was running keeps its lease until it
expires, and Beat puts the step back (app/jobs/recovery.py).
"""

from __future__ import annotations

import contextvars
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

import structlog

from app.jobs.dispatch import enqueue_step
from app.leases import LeaseId

log = structlog.get_logger(__name__)

# How long one Celery task keeps taking over the slots it frees.
CHAIN_MAX_S = 10.0

_R = TypeVar("_R")
_Claimed = TypeVar("_Claimed")


class _Recorder:
    """The one thread per process that records deferred results, started on first use.
    A thread per recording would cost the slot's turn its start-up: the new thread
    must be scheduled, and take the GIL, before the step's call may go out."""

    def __init__(self) -> None:
        self._reset()
        # Threads do not survive fork: a child starts its own on first use.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, record: Callable[[], _R]) -> Future[_R]:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="cao-record")
            return self._executor.submit(record)


_recorder = _Recorder()


class Recording(Generic[_R]):
    """Recording one step's result: run inline, or deferred to the recorder thread."""

    def __init__(self, record: Callable[[], _R]) -> None:
        self._record = record
        # Run in the recorder thread, its lines still carry the step's log fields.
        self._context = contextvars.copy_context()
        self._future: Future[_R] | None = None
        self._result: _R | None = None

    def run_inline(self) -> None:
        self._result = self._record()

    def start(self) -> None:
        self._future = _recorder.submit(partial(self._context.run, self._record))

    def result(self) -> _R | None:
        if self._future is None:
            return self._result
        try:
            return self._future.result()
        except Exception:
            # The step stays RUNNING without a heartbeat; Beat restarts it.
            log.exception("recording a step result failed")
            return None


@dataclass(frozen=True)
class HandedOver:
    """A step a released slot of `service` was handed to (its lease is held for it)."""

    lease: LeaseId
    service: str


class HandoffChain(Generic[_Claimed]):
    """The steps one Celery task runs: its own delivery, then the slots it hands over
    and the continuations it starts (already claimed steps, as the runner holds them)."""

    def __init__(self, local_queues: frozenset[str] = frozenset(), max_s: float = CHAIN_MAX_S):
        self._deadline = time.monotonic() + max_s
        self._local_queues = local_queues
        self._next: HandedOver | _Claimed | None = None
        # Deferred by the current step / by the one before it, awaiting the next claim.
        self._deferred: list[Recording[Any]] = []
        self._awaiting_claim: list[Recording[Any]] = []
        self._started: list[Recording[Any]] = []

    def _has_room(self) -> bool:
        return self._next is None and time.monotonic() < self._deadline

    def may_continue(self, queue: str) -> bool:
        """Whether a next step of `queue` may be started here and run next."""
        return queue in self._local_queues and self._has_room()

    def continue_with(self, claimed: _Claimed) -> None:
        """Run this already claimed step next."""
        self._next = claimed

    def keep(self, queue: str, woken: list[LeaseId], service: str) -> list[LeaseId]:
        """Keep one step of `queue` woken with a slot of `service` to run here next;
        returns the others."""
        if not self._has_room():
            return woken
        for index, lease in enumerate(woken):
            if lease.queue == queue:
                self._next = HandedOver(lease, service)
                return woken[:index] + woken[index + 1 :]
        return woken

    def record(self, record: Callable[[], _R]) -> Recording[_R]:
        """Record now, or in the background once the kept step has been claimed."""
        recording = Recording(record)
        if self._next is None:
            recording.run_inline()
        else:
            self._deferred.append(recording)
        return recording

    def take(self) -> HandedOver | _Claimed | None:
        """The step to run next; recordings deferred so far wait for its claim."""
        lease, self._next = self._next, None
        self._awaiting_claim.extend(self._deferred)
        self._deferred.clear()
        return lease

    def step_claimed(self) -> None:
        """The taken step holds its claim (or gave up): start the recordings it deferred."""
        for recording in self._awaiting_claim:
            recording.start()
        self._started.extend(self._awaiting_claim)
        self._awaiting_claim.clear()

    def close(self) -> None:
        """Enqueue a slot still held, finish every recording."""
        taken = self.take()
        self.step_claimed()
        if taken is not None and not isinstance(taken, HandedOver):
            # A started continuation left behind by a failure: its lease expires and
            # Beat puts the step back.
            log.warning("a started step was not run; Beat will restart it")
        elif taken is not None:
            lease = taken.lease
            try:
                enqueue_step(
                    lease.job_id,
                    lease.step_index,
                    lease.fence,
                    lease.queue,
                    holds_slot=True,
                    service=taken.service,
                )
            except Exception:
                log.exception("hand-off enqueue failed; Beat reaps the lease", lease=str(lease))
        for recording in self._started:
            recording.result()
