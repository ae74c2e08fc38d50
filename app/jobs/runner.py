"""Runs one delivery of one step attempt: lease → claim → call → commit → next.

Every delivery carries (job_id, step_index, fence). Only the delivery whose fence
matches the step row and whose claim wins the conditional update calls the service;
its result is committed only if the step is still RUNNING under that fence.
Duplicate, late and zombie deliveries therefore change nothing. The slot a finished
call frees is handed to the oldest waiting step, which this same process then runs
(app/jobs/handoff.py).
"""

from __future__ import annotations

import threading
import uuid
from enum import StrEnum
from typing import Any

import structlog
from sqlalchemy.orm import Session

from app.catalog import Service, current_catalog
from app.db import on_commit, session_scope
from app.events.log import append_event, record_event
from app.events.types import EventType
from app.jobs import repository as repo
from app.jobs.backoff import retry_delay
from app.jobs.dispatch import enqueue_step
from app.jobs.handoff import HandoffChain, Recording
from app.jobs.repository import StepRun
from app.jobs.states import StepStatus
from app.leases import LeaseId, LeaseSemaphore, get_semaphore
from app.services import StepCall, StepError, call_service

log = structlog.get_logger(__name__)


class Outcome(StrEnum):
    STALE = "stale"
    WAITING = "waiting"
    COMPLETED = "completed"
    RETRYING = "retrying"
    FAILED = "failed"
    DISCARDED = "discarded"


def live_service(snapshot: dict[str, Any]) -> Service:
    """The job's snapshot of the service, with limits from the live catalog."""
    service = Service(**snapshot)
    current = current_catalog().services.get(service.name)
    if current is None:
        return service
    return service.model_copy(
        update={"concurrency": current.concurrency, "lease_ttl_s": current.lease_ttl_s}
    )


def wake(service: Service, woken: list[LeaseId]) -> None:
    for lease in woken:
        enqueue_step(lease.job_id, lease.step_index, lease.fence, lease.queue, holds_slot=True)


class Heartbeat:
    """Renews the lease and the step's heartbeat while a call is in flight."""

    def __init__(self, semaphore: LeaseSemaphore, service: Service, lease: LeaseId) -> None:
        self._semaphore = semaphore
        self._service = service
        self._lease = lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cao-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        interval = max(0.2, self._service.lease_ttl_s / 3)
        lease = self._lease
        while not self._stop.wait(interval):
            try:
                if not self._semaphore.renew(self._service.name, lease, self._service.lease_ttl_s):
                    log.warning("lease lost while the step runs; its result will be fenced")
                with session_scope() as session:
                    repo.heartbeat(session, uuid.UUID(lease.job_id), lease.step_index, lease.fence)
            except Exception:
                log.exception("heartbeat failed")


def run_step(job_id: uuid.UUID, step_index: int, fence: int) -> Outcome:
    """Run this delivery, then the steps its released slots were handed to (handoff.py)."""
    chain = HandoffChain()
    try:
        outcome = _run_delivery(job_id, step_index, fence, chain)
        while (lease := chain.take()) is not None:
            try:
                _run_delivery(uuid.UUID(lease.job_id), lease.step_index, lease.fence, chain)
            except Exception:
                # Its lease expires and Beat puts the step back; stop taking slots over.
                log.exception("handed-over step failed", lease=str(lease))
                break
    finally:
        chain.close()
    return (outcome.result() or Outcome.DISCARDED) if isinstance(outcome, Recording) else outcome


def _run_delivery(
    job_id: uuid.UUID, step_index: int, fence: int, chain: HandoffChain
) -> Outcome | Recording[Outcome]:
    try:
        return _run_attempt(job_id, step_index, fence, chain)
    finally:
        chain.step_claimed()  # however this delivery ended, deferred recordings may go


def _run_attempt(
    job_id: uuid.UUID, step_index: int, fence: int, chain: HandoffChain
) -> Outcome | Recording[Outcome]:
    semaphore = get_semaphore()
    release = False
    try:
        # One transaction: read the step, take its slot, claim it (or park it waiting).
        with session_scope() as session:
            run = repo.load_step_run(session, job_id, step_index)
            if run is None or not run.accepts(fence):
                return _drop_stale(semaphore, run, job_id, step_index, fence)
            service = live_service(run.service_spec)
            bound = log.bind(
                job_id=str(job_id), step=step_index, attempt=run.attempt, queue=run.queue
            )
            lease = LeaseId(str(job_id), step_index, fence, run.queue)
            limit, ttl = service.concurrency, service.lease_ttl_s
            if semaphore.acquire(service.name, lease, ttl, limit) == LeaseSemaphore.FULL:
                _wait_for_slot(session, run, service, bound)
                return Outcome.WAITING
            release = True
            claimed = repo.claim_step(session, job_id, step_index, fence)
            if claimed is not None:
                record_event(
                    session, job_id, EventType.STEP_STARTED,
                    seq=claimed.first_seq, feature_name=claimed.feature_name,
                    progress=claimed.progress,
                    step_index=step_index, step_name=run.step_name, attempt=run.attempt,
                )  # fmt: skip
            else:
                # The same fence already running elsewhere holds this very lease.
                release = not repo.is_running(session, job_id, step_index, fence)
        if claimed is None:
            bound.info("duplicate or stale delivery dropped after lease")
            return Outcome.STALE
        chain.step_claimed()
        bound.info("step started", service=service.name)
        call = StepCall(
            job_id=str(job_id),
            feature_name=run.feature_name,
            step_index=step_index,
            step_name=run.step_name,
            attempt=run.attempt,
            input_data=run.input_data,
            context=run.context,
        )
        result: dict[str, Any] | StepError
        with Heartbeat(semaphore, service, lease):
            try:
                result = call_service(service, call)
            except StepError as error:
                result = error
        # The call is over: free the slot before recording, so the next step starts sooner.
        release = False
        _release(semaphore, run, lease, chain)
        if isinstance(result, StepError):
            failure = result
            return chain.record(lambda: _record_failure(run, service, failure, bound))
        output = result
        return chain.record(lambda: _record_success(run, output, bound))
    finally:
        if release and run is not None:
            _release(semaphore, run, lease)


def _release(
    semaphore: LeaseSemaphore, run: StepRun, lease: LeaseId, chain: HandoffChain | None = None
) -> None:
    # The limit as it is now, not when the step started: a raised limit wakes at once.
    service = live_service(run.service_spec)
    try:
        woken = semaphore.release(service.name, lease, service.lease_ttl_s, service.concurrency)
        if chain is not None:
            woken = chain.keep(run.queue, woken)
        wake(service, woken)
    except Exception:
        # The result must still be recorded; Beat reaps the lease and re-enqueues waiters.
        log.exception("lease release or wake-up failed", lease=str(lease))


def _drop_stale(
    semaphore: LeaseSemaphore, run: StepRun | None, job_id: uuid.UUID, step_index: int, fence: int
) -> Outcome:
    log.info("stale delivery dropped", job_id=str(job_id), step=step_index, fence=fence)
    if run is not None and not (run.status == StepStatus.RUNNING and run.fence == fence):
        # A waiter woken after its job was cancelled or its step moved on holds the
        # slot it was handed; give it back now rather than after lease_ttl_s. (A
        # duplicate of the delivery running this fence must keep that one's lease.)
        _release(semaphore, run, LeaseId(str(job_id), step_index, fence, run.queue))
    return Outcome.STALE


def _wait_for_slot(session: Session, run: StepRun, service: Service, bound: Any) -> None:
    if repo.mark_waiting(session, run.job_id, run.step_index, run.fence):
        append_event(
            session, run.job_id, EventType.WAITING_FOR_SLOT,
            step_index=run.step_index, step_name=run.step_name, attempt=run.attempt,
            data={"service": service.name, "limit": service.concurrency},
        )  # fmt: skip
    bound.info("waiting for a slot", service=service.name, limit=service.concurrency)


def _record_success(run: StepRun, output: dict[str, Any], bound: Any) -> Outcome:
    with session_scope() as session:
        advance = repo.complete_step(session, run, run.fence, output)
        if advance is None:
            bound.warning("late result discarded: the step moved on without this attempt")
            return Outcome.DISCARDED
        if not advance.job_finished:
            next_index = run.step_index + 1
            queue, fence = repo.queue_step(session, run.job_id, next_index)
            on_commit(session, lambda: enqueue_step(run.job_id, next_index, fence, queue))
        # Events go last: inserting one takes the event-id lock until commit.
        slot = advance.events
        record_event(
            session, run.job_id, EventType.STEP_COMPLETED,
            seq=slot.first_seq, feature_name=slot.feature_name, progress=slot.progress,
            step_index=run.step_index, step_name=run.step_name, attempt=run.attempt,
            data={"output": output},
        )  # fmt: skip
        if advance.job_finished:
            record_event(
                session, run.job_id, EventType.JOB_COMPLETED,
                seq=slot.first_seq + 1, feature_name=slot.feature_name, progress=slot.progress,
            )  # fmt: skip
    bound.info("step completed", job_finished=advance.job_finished)
    return Outcome.COMPLETED


def _record_failure(run: StepRun, service: Service, error: StepError, bound: Any) -> Outcome:
    with session_scope() as session:
        if error.retryable and run.attempt < run.max_attempts:
            return _schedule_retry(session, run, service, error, bound)
        if not repo.fail_step(
            session, run.job_id, run.step_index, run.fence,
            error=error.message, code=error.code, retryable=error.retryable,
        ):  # fmt: skip
            return Outcome.DISCARDED
        append_event(
            session, run.job_id, EventType.JOB_ERROR,
            step_index=run.step_index, step_name=run.step_name, attempt=run.attempt,
            data={"error": error.message, "code": error.code, "retryable": error.retryable},
        )  # fmt: skip
    bound.warning("step failed; job failed", error=error.message, retryable=error.retryable)
    return Outcome.FAILED


def _schedule_retry(
    session: Session, run: StepRun, service: Service, error: StepError, bound: Any
) -> Outcome:
    delay = retry_delay(service.backoff, run.attempt, error.retry_after_s)
    next_fence = repo.retry_step(
        session, run.job_id, run.step_index, run.fence, error=error.message, code=error.code
    )
    if next_fence is None:
        return Outcome.DISCARDED
    append_event(
        session, run.job_id, EventType.STEP_RETRYING,
        step_index=run.step_index, step_name=run.step_name, attempt=run.attempt,
        data={"error": error.message, "code": error.code, "delay_s": round(delay, 3),
              "next_attempt": run.attempt + 1},
    )  # fmt: skip
    # The retry waits in the broker (an ETA message), not in a worker slot.
    on_commit(
        session, lambda: enqueue_step(run.job_id, run.step_index, next_fence, run.queue, delay)
    )
    bound.info("step will retry", error=error.message, delay_s=round(delay, 3))
    return Outcome.RETRYING
