"""Slot hand-off inside one worker process: a freed slot is used at once.

When a step's call ends, releasing its lease hands the slot to the oldest step
waiting for that service (app/leases.py). The process that released it is the best
place to use it: it is free and needs no broker round trip and no idle worker. So it
runs the handed-over step next (the chain), and records its own result in the
background once that step has been claimed: recording is a database commit, and the
slot should not wait for it.

A chain is bounded in time so that its Celery task returns regularly (shutdown and
redelivery stay prompt). A slot still held at the end, or handed to a step of
another queue, goes on its queue ahead of fresh deliveries, like any hand-off. If
this process dies mid-chain, the handed-over step's lease expires and Beat puts the
step back (app/jobs/recovery.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import structlog

from app.jobs.dispatch import enqueue_step
from app.leases import LeaseId

log = structlog.get_logger(__name__)

# How long one Celery task keeps taking over the slots it frees.
CHAIN_MAX_S = 10.0

_R = TypeVar("_R")


class Recording(Generic[_R]):
    """Recording one step's result: run inline, or deferred to a background thread."""

    def __init__(self, record: Callable[[], _R]) -> None:
        self._record = record
        self._thread: threading.Thread | None = None
        self._result: _R | None = None

    def run_inline(self) -> None:
        self._result = self._record()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cao-record", daemon=False)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result = self._record()
        except Exception:
            # The step stays RUNNING without a heartbeat; Beat restarts it.
            log.exception("recording a step result failed")

    def result(self) -> _R | None:
        if self._thread is not None:
            self._thread.join()
        return self._result


class HandoffChain:
    """The steps one Celery task runs: its own delivery, then the slots it hands over."""

    def __init__(self, max_s: float = CHAIN_MAX_S) -> None:
        self._deadline = time.monotonic() + max_s
        self._next: LeaseId | None = None
        # Deferred by the current step / by the one before it, awaiting the next claim.
        self._deferred: list[Recording[Any]] = []
        self._awaiting_claim: list[Recording[Any]] = []
        self._started: list[Recording[Any]] = []

    def keep(self, queue: str, woken: list[LeaseId]) -> list[LeaseId]:
        """Keep one woken step of `queue` to run here next; returns the others."""
        if self._next is not None or time.monotonic() >= self._deadline:
            return woken
        for index, lease in enumerate(woken):
            if lease.queue == queue:
                self._next = lease
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

    def take(self) -> LeaseId | None:
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
        lease = self.take()
        self.step_claimed()
        if lease is not None:
            try:
                enqueue_step(
                    lease.job_id, lease.step_index, lease.fence, lease.queue, holds_slot=True
                )
            except Exception:
                log.exception("hand-off enqueue failed; Beat reaps the lease", lease=str(lease))
        for recording in self._started:
            recording.result()
