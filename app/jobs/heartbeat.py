"""Heartbeats for steps in flight: one thread per process keeps every running step's
lease alive, and another its step row's heartbeat fresh, so starting a step costs a
dict insert, not a thread.

A step's lease is renewed every `lease_ttl_s / 3` (at least every 0.2 s) while its call
runs. A renewal that races the step's own release finds the lease gone and changes
nothing: the renew script only extends a lease that is still held (app/leases.py).
The step rows are written by their own thread, after each renewal: a database that
stalls (a lock wait, a partition) delays those writes, never the renewals, so a
healthy call does not lose its lease to it. A write that finds the step no longer
RUNNING under its attempt (cancelled, or sent again by Beat) interrupts the call:
its result would be discarded, and its slot is better given back now. That is how
a cancel whose notice was missed (app/jobs/cancel_notices.py) still stops the call.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import OperationalError

from app.catalog import Service
from app.db import session_scope
from app.jobs import repository as repo
from app.leases import LeaseId, LeaseSemaphore
from app.logs import first_line, in_context
from app.services import Interruptible

MIN_INTERVAL_S = 0.2
IDLE_WAKE_S = 5.0


@dataclass(eq=False)
class _Beat:
    semaphore: LeaseSemaphore
    service: Service
    lease: LeaseId
    interval: float
    log: Any  # the step's logger: its lines carry the step fields (app/logs.py)
    call: Interruptible
    due: float = field(init=False)

    def __post_init__(self) -> None:
        self.due = time.monotonic() + self.interval


class Heartbeats:
    """The steps in flight in this process, the thread that renews their leases and the
    thread that writes their step rows' heartbeats."""

    def __init__(self) -> None:
        self._reset()
        # Threads, and locks a parent's thread may hold, do not survive fork: a child
        # starts from nothing and its threads on first use.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._beats: set[_Beat] = set()
        self._next_wake = float("inf")
        self._started = False
        # Renewed beats whose step row is still to be written, by the rows thread.
        self._to_record: dict[LeaseId, _Beat] = {}
        self._record_wakeup = threading.Event()

    @contextmanager
    def beating(
        self,
        semaphore: LeaseSemaphore,
        service: Service,
        lease: LeaseId,
        step_log: Any,
        call: Interruptible,
    ) -> Iterator[None]:
        """Keep `lease` and its step's heartbeat alive for the duration of the block."""
        interval = max(MIN_INTERVAL_S, service.lease_ttl_s / 3)
        # The beat threads log for the step: with its fields, which they cannot see.
        beat = _Beat(semaphore, service, lease, interval, in_context(step_log), call)
        with self._lock:
            self._ensure_thread()
            self._beats.add(beat)
            if beat.due < self._next_wake:
                self._wakeup.set()
        try:
            yield
        finally:
            with self._lock:
                self._beats.discard(beat)

    def _ensure_thread(self) -> None:
        if not self._started:
            self._started = True
            threading.Thread(target=self._run, name="cao-heartbeat", daemon=True).start()
            threading.Thread(
                target=self._record_loop, name="cao-heartbeat-rows", daemon=True
            ).start()

    def _run(self) -> None:
        while True:
            now = time.monotonic()
            with self._lock:
                due = [beat for beat in self._beats if beat.due <= now]
            for beat in due:
                self._beat(beat)
                beat.due = time.monotonic() + beat.interval
            with self._lock:
                self._next_wake = min((b.due for b in self._beats), default=now + IDLE_WAKE_S)
                self._wakeup.clear()
            self._wakeup.wait(max(0.0, self._next_wake - time.monotonic()))

    def _beat(self, beat: _Beat) -> None:
        lease = beat.lease
        try:
            renewed = beat.semaphore.renew(beat.service.name, lease, beat.service.lease_ttl_s)
        except Exception:
            beat.log.exception("lease renewal failed", lease=str(lease))
            return
        with self._lock:
            if beat not in self._beats:
                return  # the step ended meanwhile and released its lease itself
            self._to_record[lease] = beat
        self._record_wakeup.set()
        if not renewed:
            beat.log.warning(
                "lease lost while the step runs; its result will be fenced", lease=str(lease)
            )

    def _record_loop(self) -> None:
        """Write the heartbeat of each renewed step, the latest renewal once."""
        while True:
            self._record_wakeup.wait()
            self._record_wakeup.clear()
            with self._lock:
                pending, self._to_record = self._to_record, {}
            for beat in pending.values():
                with self._lock:
                    running = beat in self._beats
                if running and not self._record(beat):
                    self._stop(beat)

    def _stop(self, beat: _Beat) -> None:
        with self._lock:
            if beat not in self._beats or beat.call.requested:
                return  # the call ended meanwhile, or was asked to stop already
        beat.log.warning(
            "the step no longer runs under this attempt (cancelled or sent again); "
            "interrupting its call",
            lease=str(beat.lease),
        )
        beat.call.interrupt()

    @staticmethod
    def _record(beat: _Beat) -> bool:
        """Write the step's heartbeat; False when the step is no longer RUNNING under the
        beat's attempt (True when that is not known: the database is away)."""
        lease = beat.lease
        try:
            with session_scope() as session:
                return repo.heartbeat(
                    session, uuid.UUID(lease.job_id), lease.step_index, lease.fence
                )
        except OperationalError as exc:
            # Expected while the database is away; the next beat tries again.
            beat.log.warning("heartbeat not recorded: database unreachable", error=first_line(exc))
        except Exception:
            beat.log.exception("heartbeat failed", lease=str(lease))
        return True


_heartbeats = Heartbeats()


def beating(
    semaphore: LeaseSemaphore, service: Service, lease: LeaseId, step_log: Any, call: Interruptible
) -> AbstractContextManager[None]:
    """Keep `lease` and its step's heartbeat alive while the block runs `call`, and
    interrupt it if its step stops running under it; `step_log` is the step's bound
    logger."""
    return _heartbeats.beating(semaphore, service, lease, step_log, call)
