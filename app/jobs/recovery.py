"""Recovery: lost work goes back on its queue; a job that makes no progress fails.

Owns the decisions behind Beat's maintenance tasks (worker/maintenance.py only calls
these). Each sweep finds candidates in one batched query, then acts on each one in
its own transaction with a conditional update, enqueueing after commit. Two sweeps
at once, or a sweep racing a worker, therefore change nothing twice:

- A step whose worker is gone (its lease expired, or its heartbeat went silent and
  no live lease remains) becomes the next attempt under a new fence, so a late
  result of the old attempt is fenced out. With no attempt left the job fails,
  retryable ("worker lost").
- A queued step whose message may be lost (failed enqueue, Redis restart) is
  re-enqueued under the same fence: if the old message turns up too, the second
  delivery is a no-op. A step on its service's wait list is left alone (a release
  or the periodic wake-up hands it a slot), and so is a retry whose delay has not
  passed.
- A job with no state change and no heartbeat for `JOB_STUCK_SECONDS` fails,
  retryable, with an error that says where it stalled.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any, TypeVar

import structlog
from sqlalchemy.orm import Session

from app.catalog import current_catalog
from app.db import session_scope
from app.events.log import append_event
from app.events.metrics_fold import fold_events
from app.events.types import EventType
from app.jobs import recovery_repository as recovery_repo
from app.jobs import repository as repo
from app.jobs.dispatch import Delivery
from app.jobs.outbox import send_after_commit
from app.jobs.recovery_repository import LiveStep
from app.jobs.slots import wake
from app.jobs.states import StepStatus
from app.leases import LeaseId, LeaseState, get_semaphore
from app.models import utcnow

log = structlog.get_logger(__name__)

WORKER_LOST = "worker_lost"
JOB_STUCK = "job_stuck"
# How many candidates one sweep takes on; the next run picks up the rest.
BATCH = 500

_T = TypeVar("_T")


class Action(StrEnum):
    NONE = "none"
    REQUEUED = "requeued"
    RESTARTED = "restarted"
    FAILED = "failed"


@dataclass
class SweepReport:
    requeued: int = 0
    restarted: int = 0
    failed: int = 0

    def count(self, action: Action) -> None:
        if action is Action.REQUEUED:
            self.requeued += 1
        elif action is Action.RESTARTED:
            self.restarted += 1
        elif action is Action.FAILED:
            self.failed += 1


def lease_ttl_s(step: LiveStep) -> float:
    live = current_catalog().services.get(step.service)
    return live.lease_ttl_s if live is not None else step.lease_ttl_s


def _fields(step: LiveStep) -> dict[str, Any]:
    """The step fields of a line about `step` (app/logs.py STEP_FIELDS)."""
    return {
        "job_id": str(step.job_id),
        "step_index": step.step_index,
        "attempt": step.attempt,
        "service": step.service,
        "queue": step.queue,
    }


def lease_of(step: LiveStep) -> LeaseId:
    return LeaseId(str(step.job_id), step.step_index, step.fence, step.queue)


def _each(
    items: Iterable[_T], act: Callable[[_T], Action], report: SweepReport | None = None
) -> SweepReport:
    """Act on every item, counting outcomes into `report` (a new one by default)."""
    report = report if report is not None else SweepReport()
    # One bad row must not stop the sweep; it is logged and retried next run.
    for item in items:
        try:
            report.count(act(item))
        except Exception:
            log.exception("recovery action failed", item=repr(item))
    return report


# --- per-step and per-job actions (idempotent) ------------------------------------------


def _send_after_commit(session: Session, step: LiveStep, fence: int) -> None:
    """Put the step back on its queue under `fence` once the session commits."""
    delivery = Delivery.of(step.job_id, step.step_index, fence, step.queue, step.service)
    send_after_commit(session, delivery)


def recover_step(job_id: uuid.UUID, step_index: int, fence: int, reason: str) -> Action:
    """The holder of this step's lease under `fence` is gone; put the step back."""
    with session_scope() as session:
        step = recovery_repo.find_live_step(session, job_id, step_index)
        if step is None or step.fence != fence:
            return Action.NONE
        if step.status == StepStatus.RUNNING:
            return _restart_lost_attempt(session, step, reason)
        # It took a lease but never started: not requeued if someone just did.
        return _requeue(session, step, idle_for_s=lease_ttl_s(step))


def _restart_lost_attempt(session: Session, step: LiveStep, reason: str) -> Action:
    error = f"worker lost during attempt {step.attempt} of {step.max_attempts}: {reason}"
    new_fence = recovery_repo.restart_lost_attempt(
        session, step.job_id, step.step_index, step.fence, error=error, code=WORKER_LOST
    )
    if new_fence is not None:
        append_event(
            session,
            step.job_id,
            EventType.STEP_RETRYING,
            step_index=step.step_index,
            step_name=step.service,
            attempt=step.attempt,
            data={
                "error": error,
                "code": WORKER_LOST,
                "delay_s": 0,
                "next_attempt": step.attempt + 1,
            },
        )
        _send_after_commit(session, step, new_fence)
        log.warning(
            "lost attempt restarted", **_fields(step), reason=reason, next_attempt=step.attempt + 1
        )
        return Action.RESTARTED
    if not repo.fail_step(
        session,
        step.job_id,
        step.step_index,
        step.fence,
        error=error,
        code=WORKER_LOST,
        retryable=True,
    ):
        return Action.NONE
    append_event(
        session,
        step.job_id,
        EventType.JOB_ERROR,
        step_index=step.step_index,
        step_name=step.service,
        attempt=step.attempt,
        data={"error": error, "code": WORKER_LOST, "retryable": True},
    )
    log.warning("worker lost on the last attempt; job failed", **_fields(step))
    return Action.FAILED


def _requeue(session: Session, step: LiveStep, idle_for_s: float) -> Action:
    """Re-enqueue under the same fence, unless queued (by anyone) in the last `idle_for_s`."""
    idle_before = utcnow() - timedelta(seconds=idle_for_s)
    if not recovery_repo.touch_idle_step(
        session, step.job_id, step.step_index, step.fence, idle_before
    ):
        return Action.NONE
    _send_after_commit(session, step, step.fence)
    log.info("step re-enqueued", **_fields(step), fence=step.fence)
    return Action.REQUEUED


def requeue_idle_step(step: LiveStep, requeue_after_s: float) -> Action:
    """Re-enqueue a step idle for `requeue_after_s` whose message may be lost."""
    if get_semaphore().state(step.service, lease_of(step)) is not LeaseState.NONE:
        # On the wait list (a release or the wake-up hands it a slot), or just leased.
        return Action.NONE
    with session_scope() as session:
        if step.status == StepStatus.RETRYING:
            # Its message is delayed (ETA): only overdue once that delay has passed too.
            delay_s = recovery_repo.last_retry_delay_s(session, step.job_id, step.step_index)
            requeue_after_s += delay_s
        return _requeue(session, step, idle_for_s=requeue_after_s)


def fail_if_stuck(job_id: uuid.UUID, stuck_s: float) -> Action:
    idle_since = utcnow() - timedelta(seconds=stuck_s)
    with session_scope() as session:
        job = repo.get_job(session, job_id)
        if job is None:
            return Action.NONE
        step = repo.get_step(session, job_id, job.current_step)
        where = f"step {job.current_step}" + (
            f" ({step.step_name}) stayed {step.status}" if step is not None else ""
        )
        error = (
            f"no progress for {stuck_s:g}s ({where}); failed by the stuck-job check "
            "(JOB_STUCK_SECONDS), resume it to try again"
        )
        if not recovery_repo.fail_stuck_job(
            session, job_id, idle_since, error=error, code=JOB_STUCK
        ):
            return Action.NONE
        append_event(
            session,
            job_id,
            EventType.JOB_ERROR,
            step_index=job.current_step,
            step_name=step.step_name if step is not None else None,
            attempt=step.attempt if step is not None else None,
            data={"error": error, "code": JOB_STUCK, "retryable": True},
        )
    log.warning("stuck job failed", job_id=str(job_id), error=error)
    return Action.FAILED


# --- sweeps: find candidates in one query, act on each --------------------------------


def sweep_silent_steps() -> SweepReport:
    """Restart RUNNING steps whose heartbeat went silent and whose lease is gone."""
    services = current_catalog().services.values()
    now = utcnow()
    shortest_ttl = min((s.lease_ttl_s for s in services), default=1.0)
    with session_scope() as session:
        candidates = recovery_repo.find_silent_running_steps(
            session, now - timedelta(seconds=shortest_ttl), BATCH
        )
    semaphore = get_semaphore()

    def act(step: LiveStep) -> Action:
        silent_since = now - timedelta(seconds=lease_ttl_s(step))
        if step.heartbeat_at is not None and step.heartbeat_at >= silent_since:
            return Action.NONE
        if semaphore.state(step.service, lease_of(step)) is LeaseState.HELD:
            return Action.NONE  # the worker still renews its lease; only its DB writes lag
        return recover_step(step.job_id, step.step_index, step.fence, "heartbeat went silent")

    return _each(candidates, act)


def sweep_idle_steps(requeue_after_s: float) -> SweepReport:
    with session_scope() as session:
        candidates = recovery_repo.find_idle_queued_steps(
            session, utcnow() - timedelta(seconds=requeue_after_s), BATCH
        )
    return _each(candidates, lambda step: requeue_idle_step(step, requeue_after_s))


def sweep_stuck_jobs(stuck_s: float) -> SweepReport:
    with session_scope() as session:
        job_ids = recovery_repo.find_stuck_job_ids(
            session, utcnow() - timedelta(seconds=stuck_s), BATCH
        )
    return _each(job_ids, lambda job_id: fail_if_stuck(job_id, stuck_s))


def reap_expired_leases() -> SweepReport:
    """Free expired leases and recover the step each belonged to; then wake waiters."""
    semaphore = get_semaphore()
    report = SweepReport()
    # Services removed from the catalog too: jobs in flight keep calling them.
    for service in sorted(current_catalog().services.keys() | semaphore.services_with_leases()):
        expired = semaphore.reap_expired(service)
        if expired:
            log.warning("expired leases reaped", service=service, count=len(expired))
        _each(expired, _recover_reaped, report)
    wake_all_waiters()
    return report


def _recover_reaped(lease: LeaseId) -> Action:
    return recover_step(uuid.UUID(lease.job_id), lease.step_index, lease.fence, "lease expired")


def wake_all_waiters() -> int:
    """The bounded safety re-check: hand every free slot to a waiting step.

    Covers a wake-up lost with a dead worker and a limit raised in the catalog."""
    semaphore = get_semaphore()
    woken = 0
    for service in current_catalog().services.values():
        leases = semaphore.wake_waiters(service.name, service.lease_ttl_s, service.concurrency)
        wake(leases, service.name)
        woken += len(leases)
    return woken


def delete_old_jobs(retention_days: float, max_batches: int = 20) -> int:
    """Delete finished jobs (with their steps and events) past retention, in batches,
    once the metrics have folded every event there is: a deleted event is never lost
    to the counters, however long no one scraped them."""
    fold_events()
    finished_before = utcnow() - timedelta(days=retention_days)
    deleted = 0
    for _ in range(max_batches):
        with session_scope() as session:
            count = recovery_repo.delete_finished_jobs(session, finished_before, BATCH)
        deleted += count
        if count < BATCH:
            break
    return deleted
