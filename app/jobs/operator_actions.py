"""Operator actions on jobs: resume (from the failed step or an earlier one), rerun (a
COMPLETED or CANCELLED job from a step), bulk resume by filter, and cancel. The routes
are in app/api/operator_routes.py.

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
from typing import Any

from sqlalchemy.orm import Session

from app.db import on_commit
from app.errors import Conflict, GatewayError, JobNotFound
from app.events.log import append_event
from app.events.types import EventType
from app.jobs import repository as repo
from app.jobs.cancel_notices import announce_cancel
from app.jobs.dispatch import Delivery
from app.jobs.outbox import send_after_commit
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


# What an operator may rerun from a step (with from_step): a job that ran to its end,
# or was stopped. The steps from there on are new work.
RERUNNABLE = (JobStatus.COMPLETED, JobStatus.CANCELLED)


def _not_resumable(job: Job) -> Conflict:
    return Conflict(
        f"job {job.id} is {job.status}; only a FAILED job can be resumed, and a "
        "COMPLETED or CANCELLED one rerun with from_step",
        code="job_not_resumable",
        details={"status": job.status},
    )


def _restart_point(job: Job, from_step: int | None) -> int:
    """The step to restart at: the failed step, or `from_step` up to it; for a rerun,
    `from_step` up to the step the job finished (or was cancelled) at."""
    last = min(job.current_step, job.total_steps - 1)
    if from_step is None:
        if job.status != JobStatus.FAILED:
            raise _not_resumable(job)
        return last
    if not 0 <= from_step <= last:
        where = "the failed step" if job.status == JobStatus.FAILED else "the last step run"
        raise InvalidFromStep(
            f"from_step must be between 0 and {where} {last}, got {from_step}",
            details={"last_step": last, "total_steps": job.total_steps},
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
    """FAILED → PENDING at the failed step (or at `from_step` ≤ it); or, with
    `from_step`, COMPLETED/CANCELLED → PENDING at that step (a rerun). The step is
    enqueued once the caller commits; answers with the job as the action left it.

    Outputs of the steps before the restart point stay and are never called again;
    the restarted step gets a fresh attempt budget under a new fence. A resumed
    failed step is the same work and keeps its Idempotency-Key; the steps of a rerun
    are new work and get new ones (the rerun count in the recipe snapshot rises).
    """
    return _answer(session, _resume(session, job_id, from_step))


def _resume(session: Session, job_id: uuid.UUID, from_step: int | None) -> Job:
    job = _job(session, job_id)
    if job.status != JobStatus.FAILED and job.status not in RERUNNABLE:
        raise _not_resumable(job)
    restart = _restart_point(job, from_step)
    rerun = job.status in RERUNNABLE
    steps = repo.lock_steps(session, job_id)
    kept = {s.step_name: s.output for s in steps if s.step_index < restart and s.output is not None}
    progress = progress_for(job.recipe["steps"], restart)
    recipe = dict(job.recipe)
    if rerun:
        recipe["rerun"] = int(recipe.get("rerun", 0)) + 1
    else:  # progress never goes down, except on an explicit rerun
        progress = min(job.progress, progress)
    previous_status, failed_step = job.status, job.current_step
    error, error_code = job.error, job.error_code
    # The resume is part of the job's story: a span in its trace, which the steps from
    # here on join below it.
    attributes = {"cao.job_id": str(job_id), "cao.step_index": restart}
    with job_action_span("resume job", job.trace_context, attributes) as trace_context:
        if not repo.reopen_job(
            session,
            job_id,
            previous_status,
            step_index=restart,
            progress=progress,
            context=kept,
            recipe=recipe,
            trace_context=trace_context,
        ):
            # A concurrent action won between our read and our update.
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
        data=_resumed_data(restart, previous_status, failed_step, error, error_code, recipe),
    )
    service = steps[restart].step_name
    send_after_commit(session, Delivery.of(job_id, restart, fence, queue, service))
    return job


def _resumed_data(
    restart: int,
    previous_status: str,
    last_step: int,
    error: str | None,
    error_code: str | None,
    recipe: dict[str, Any],
) -> dict[str, Any]:
    """What JOB_RESUMED says: where the job restarts, and whether it is a rerun."""
    if previous_status == JobStatus.FAILED:
        return {
            "from_step": restart,
            "rerun": False,
            "failed_step": last_step,
            "previous_error": error,
            "previous_error_code": error_code,
        }
    return {
        "from_step": restart,
        "rerun": True,
        "rerun_count": recipe["rerun"],
        "previous_status": previous_status,
    }


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

    A queued delivery of that step is dropped when picked up. A call in flight is
    interrupted once the cancel commits (app/jobs/cancel_notices.py), and its worker
    releases its lease as the call ends; a result that still arrives is discarded.
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
    on_commit(session, partial(announce_cancel, job_id, current.step_index, current.fence))
    return _answer(session, job)
