"""Operator actions on jobs: resume (from the failed step or an earlier one), bulk
resume by filter, and cancel. The routes are in app/api/operator_routes.py.

Each action claims the job with one conditional update, so concurrent callers
cannot both act: the loser gets a 409 and changes nothing. Everything an action
changes (job, steps, the event) commits together when the caller's transaction
does; the step is enqueued after that commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from sqlalchemy.orm import Session

from app.db import on_commit
from app.errors import Conflict, GatewayError, JobNotFound
from app.events.log import append_event
from app.events.types import EventType
from app.jobs import repository as repo
from app.jobs.dispatch import enqueue_step
from app.jobs.repository import FailedJobFilter
from app.jobs.schemas import JobDetail
from app.jobs.service import job_detail
from app.jobs.states import JobStatus, StepStatus, progress_for
from app.leases import LeaseId, get_semaphore
from app.models import Job, JobStep
from app.tracing import job_action_span


class InvalidFromStep(GatewayError):
    status_code = 422
    code = "invalid_from_step"


@dataclass(frozen=True)
class BulkResumeResult:
    job_ids: list[uuid.UUID]
    dry_run: bool
    matched: int  # FAILED jobs matching the filters, the limit aside


def _job(session: Session, job_id: uuid.UUID) -> Job:
    job = repo.get_job(session, job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job


def _not_resumable(job: Job) -> Conflict:
    return Conflict(
        f"job {job.id} is {job.status}; only a FAILED job can be resumed",
        code="job_not_resumable",
        details={"status": job.status},
    )


def _restart_point(job: Job, from_step: int | None) -> int:
    failed_step = job.current_step
    if from_step is None:
        return failed_step
    if not 0 <= from_step <= failed_step:
        raise InvalidFromStep(
            f"from_step must be between 0 and the failed step {failed_step}, got {from_step}",
            details={"failed_step": failed_step, "total_steps": job.total_steps},
        )
    return from_step


def _forget_waiter(service: str, lease: LeaseId) -> None:
    get_semaphore().forget_waiter(service, lease)


def _forget_waiters(session: Session, job: Job, steps: Sequence[JobStep]) -> None:
    """Drop wait-list entries of steps that wait for a slot, so no slot is handed to them."""
    for step in steps:
        if step.status != StepStatus.WAITING_FOR_SLOT:
            continue
        service = job.recipe["steps"][step.step_index]["service"]["name"]
        lease = LeaseId(str(job.id), step.step_index, step.fence, step.queue)
        on_commit(session, partial(_forget_waiter, service, lease))


def _answer(session: Session, job: Job) -> JobDetail:
    """The job as the action left it, read in the action's transaction, before it
    commits: the commit enqueues a step that a worker may claim at once, and the
    answer must show what this action did, not what the worker did next."""
    # The action changed rows with bulk UPDATEs; read them back from the transaction.
    session.expire_all()
    return job_detail(session, job)


def resume_job(session: Session, job_id: uuid.UUID, from_step: int | None = None) -> JobDetail:
    """FAILED → PENDING at the failed step (or at `from_step` ≤ it), its step enqueued
    once the caller commits; answers with the job as the resume left it.

    Outputs of the steps before the restart point stay and are never called again;
    the restarted step gets a fresh attempt budget under a new fence.
    """
    return _answer(session, _resume(session, job_id, from_step))


def _resume(session: Session, job_id: uuid.UUID, from_step: int | None) -> Job:
    job = _job(session, job_id)
    if job.status != JobStatus.FAILED:
        raise _not_resumable(job)
    restart = _restart_point(job, from_step)
    steps = repo.lock_steps(session, job_id)
    kept = {s.step_name: s.output for s in steps if s.step_index < restart and s.output is not None}
    progress = min(job.progress, progress_for(restart, job.total_steps))
    failed_step, error, error_code = job.current_step, job.error, job.error_code
    # The resume is part of the job's story: a span in its trace, which the steps from
    # here on join below it.
    attributes = {"cao.job_id": str(job_id), "cao.step_index": restart}
    with job_action_span("resume job", job.trace_context, attributes) as trace_context:
        if not repo.reopen_failed_job(
            session,
            job_id,
            step_index=restart,
            progress=progress,
            context=kept,
            trace_context=trace_context,
        ):
            # A concurrent resume won between our read and our update.
            session.refresh(job)
            raise _not_resumable(job)
    _forget_waiters(session, job, steps)
    repo.reset_steps_from(session, job_id, restart)
    queue, fence = repo.queue_step(session, job_id, restart)
    append_event(
        session,
        job_id,
        EventType.JOB_RESUMED,
        step_index=restart,
        step_name=steps[restart].step_name,
        attempt=1,
        data={
            "from_step": restart,
            "failed_step": failed_step,
            "previous_error": error,
            "previous_error_code": error_code,
        },
    )
    service = steps[restart].step_name
    on_commit(session, lambda: enqueue_step(job_id, restart, fence, queue, service=service))
    return job


def bulk_resume(
    session: Session,
    *,
    feature_name: str | None = None,
    failed_step: int | None = None,
    error_code: str | None = None,
    created_after: datetime | None = None,
    dry_run: bool,
    limit: int,
) -> BulkResumeResult:
    """Resume every FAILED job matching all given filters, oldest first, at most `limit`
    of them (or, with `dry_run`, only list them)."""
    filters = FailedJobFilter(
        feature_name=feature_name,
        failed_step=failed_step,
        error_code=error_code,
        created_after=created_after,
    )
    candidates = list(repo.find_failed_job_ids(session, filters, limit))
    matched = len(candidates)
    if matched == limit:  # more may match than the limit let this call take
        matched = max(matched, repo.count_failed_jobs(session, filters))
    if dry_run:
        return BulkResumeResult(job_ids=candidates, dry_run=True, matched=matched)
    resumed = []
    for job_id in candidates:
        try:
            _resume(session, job_id, None)
        except Conflict:
            continue  # resumed by someone else meanwhile: it is running again either way
        resumed.append(job_id)
    return BulkResumeResult(job_ids=resumed, dry_run=False, matched=matched)


def _not_cancellable(job: Job) -> Conflict:
    return Conflict(
        f"job {job.id} is {job.status}; only a PENDING or RUNNING job can be cancelled",
        code="job_not_cancellable",
        details={"status": job.status},
    )


def cancel_job(session: Session, job_id: uuid.UUID) -> JobDetail:
    """PENDING/RUNNING → CANCELLED at once, with its live step, when the caller commits;
    answers with the job as the cancel left it.

    A queued delivery of that step is dropped when picked up, a running one's result
    is discarded when it returns (its lease is released by its worker either way).
    """
    job = _job(session, job_id)
    steps = repo.lock_steps(session, job_id)
    # Read the job again under the step locks: the runner cannot move it on now.
    session.refresh(job)
    current = steps[min(job.current_step, len(steps) - 1)]
    previous = {"previous_status": job.status, "step_status": current.status}
    if not repo.cancel_active_job(session, job_id):
        session.refresh(job)
        raise _not_cancellable(job)
    _forget_waiters(session, job, steps)
    repo.cancel_live_steps(session, job_id)
    append_event(
        session,
        job_id,
        EventType.JOB_CANCELLED,
        step_index=current.step_index,
        step_name=current.step_name,
        attempt=current.attempt,
        data=previous,
    )
    return _answer(session, job)
