"""Job and step SQL: reads, the fenced updates of retries, failures and recovery,
listing, and operator actions. A step as a delivery sees it (`StepRun`, its load, its
queueing) is in app/jobs/step_repository.py and named here too; what a worker writes as
a step runs (claim, park, result, continuation) and job creation are in
app/jobs/step_changes/. State changes are conditional updates: a zero row count means
another delivery, a cancel or a newer attempt won, which is a normal outcome.

Each step row carries a `fence`: a token that rises with every new attempt, recovery
and resume, and that a delivery must present to act on the step. (`attempt` is what
people and services see; it restarts at 1 on resume, so it cannot fence.)"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Executable,
    Exists,
    and_,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session, defer

from app.jobs.states import ACTIVE_JOB, LIVE_STEP, JobStatus, StepStatus

# Named here for the callers that read and queue steps through this module.
from app.jobs.step_repository import RUN_COLUMNS_CLEARED
from app.jobs.step_repository import StepRun as StepRun
from app.jobs.step_repository import load_step_run as load_step_run
from app.jobs.step_repository import queue_step as queue_step
from app.models import Job, JobStep, utcnow


def rows_changed(
    session: Session, statement: Executable, params: Mapping[str, object] | None = None
) -> int:
    """Run an UPDATE (or DELETE) and return how many rows it changed."""
    result = session.execute(statement, params)
    return cast("CursorResult[*tuple[Any, ...]]", result).rowcount


def step_where(job_id: uuid.UUID, step_index: int) -> ColumnElement[bool]:
    return and_(JobStep.job_id == job_id, JobStep.step_index == step_index)


def fenced_step(
    job_id: uuid.UUID, step_index: int, fence: int, *conditions: ColumnElement[bool]
) -> ColumnElement[bool]:
    """This step, only while it still carries `fence` (and meets `conditions`)."""
    return and_(step_where(job_id, step_index), JobStep.fence == fence, *conditions)


def update_fenced_step(
    session: Session,
    job_id: uuid.UUID,
    step_index: int,
    fence: int,
    /,
    *conditions: ColumnElement[bool],
    **values: Any,
) -> bool:
    """Change the step only while it carries `fence` and meets `conditions`; True if
    this call did (of concurrent callers, exactly one). `values` may set a new fence."""
    statement = (
        update(JobStep).where(fenced_step(job_id, step_index, fence, *conditions)).values(**values)
    )
    return rows_changed(session, statement) == 1


def update_running_step(
    session: Session, job_id: uuid.UUID, step_index: int, fence: int, /, **values: Any
) -> bool:
    """Change the step while the attempt holding `fence` is still RUNNING."""
    return update_fenced_step(
        session, job_id, step_index, fence, JobStep.status == StepStatus.RUNNING, **values
    )


def job_is_active(job_id: uuid.UUID) -> Exists:
    return exists().where(Job.id == job_id, Job.status.in_(ACTIVE_JOB))


def get_job(session: Session, job_id: uuid.UUID) -> Job | None:
    return session.get(Job, job_id)


def get_steps(session: Session, job_id: uuid.UUID) -> Sequence[JobStep]:
    return session.scalars(
        select(JobStep).where(JobStep.job_id == job_id).order_by(JobStep.step_index)
    ).all()


def get_step(session: Session, job_id: uuid.UUID, step_index: int) -> JobStep | None:
    return session.get(JobStep, (job_id, step_index))


def find_by_idempotency_key(session: Session, tenant: str, key: str) -> Job | None:
    return session.scalars(
        select(Job).where(Job.tenant == tenant, Job.idempotency_key == key)
    ).one_or_none()


def is_running(session: Session, job_id: uuid.UUID, step_index: int, fence: int) -> bool:
    step = session.get(JobStep, (job_id, step_index), populate_existing=True)
    return step is not None and step.fence == fence and step.status == StepStatus.RUNNING


def heartbeat(session: Session, job_id: uuid.UUID, step_index: int, fence: int) -> bool:
    return update_running_step(session, job_id, step_index, fence, heartbeat_at=utcnow())


def retry_step(
    session: Session,
    job_id: uuid.UUID,
    step_index: int,
    fence: int,
    *,
    error: str,
    code: str,
) -> int | None:
    """Give up on this attempt; returns the fence of the next one (None when stale)."""
    if not update_running_step(
        session,
        job_id,
        step_index,
        fence,
        status=StepStatus.RETRYING,
        attempt=JobStep.attempt + 1,
        fence=fence + 1,
        error=error,
        error_code=code,
        retryable=True,
        queued_at=utcnow(),
        heartbeat_at=None,
    ):
        return None
    return fence + 1


def requeue_unstarted(
    session: Session, job_id: uuid.UUID, step_index: int, fence: int
) -> int | None:
    """RUNNING under `fence`, but its service never called → QUEUED under a new fence,
    the same attempt; returns that fence (None when the step moved on)."""
    if not update_running_step(
        session,
        job_id,
        step_index,
        fence,
        status=StepStatus.QUEUED,
        fence=fence + 1,
        queued_at=utcnow(),
        started_at=None,
        heartbeat_at=None,
    ):
        return None
    return fence + 1


def fail_step(
    session: Session,
    job_id: uuid.UUID,
    step_index: int,
    fence: int,
    *,
    error: str,
    code: str,
    retryable: bool,
) -> bool:
    now = utcnow()
    if not update_running_step(
        session,
        job_id,
        step_index,
        fence,
        status=StepStatus.FAILED,
        error=error,
        error_code=code,
        retryable=retryable,
        finished_at=now,
    ):
        return False
    fail_job(session, job_id, error=error, code=code, retryable=retryable)
    return True


def fail_job(
    session: Session, job_id: uuid.UUID, *, error: str, code: str, retryable: bool
) -> bool:
    return _move_job(session, job_id, ACTIVE_JOB, **job_failure(error, code, retryable, utcnow()))


def job_failure(error: str, code: str, retryable: bool, now: datetime) -> dict[str, Any]:
    """The job columns a failure sets."""
    return {
        "status": JobStatus.FAILED,
        "error": error,
        "error_code": code,
        "retryable": retryable,
        "finished_at": now,
    }


@dataclass(frozen=True)
class JobFilter:
    status: str | None = None
    feature_name: str | None = None
    tenant: str | None = None


def list_jobs(
    session: Session,
    filters: JobFilter,
    limit: int,
    before: tuple[datetime, uuid.UUID] | None = None,
) -> Sequence[Job]:
    """Newest first; `before` is the (created_at, id) of the last row of the previous page.
    Without input_data and context (each up to MAX_BODY_BYTES and more): a page of 500
    must not load them all; reading one raises."""
    query = select(Job).options(
        defer(Job.input_data, raiseload=True), defer(Job.context, raiseload=True)
    )
    if filters.status:
        query = query.where(Job.status == filters.status)
    if filters.feature_name:
        query = query.where(Job.feature_name == filters.feature_name)
    if filters.tenant:
        query = query.where(Job.tenant == filters.tenant)
    if before is not None:
        created_at, job_id = before
        query = query.where(
            or_(Job.created_at < created_at, and_(Job.created_at == created_at, Job.id < job_id))
        )
    return session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)).all()


# --- operator actions: resume, cancel, bulk selection, idempotency-key expiry ----------
# Resume and cancel lock the job's step rows (in step order) before the job row: the
# runner takes a step row before its job row, so a worker and an operator action
# taking them in the same order cannot deadlock each other.


def lock_steps(session: Session, job_id: uuid.UUID) -> Sequence[JobStep]:
    return session.scalars(
        select(JobStep)
        .where(JobStep.job_id == job_id)
        .order_by(JobStep.step_index)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all()


def _move_job(
    session: Session, job_id: uuid.UUID, from_status: Sequence[str], **values: Any
) -> bool:
    """Change the job only while its status is in `from_status`; True if this call did."""
    result = rows_changed(
        session,
        update(Job)
        .where(Job.id == job_id, Job.status.in_(from_status))
        .values(updated_at=utcnow(), **values),
    )
    return result == 1


def reopen_job(
    session: Session,
    job_id: uuid.UUID,
    from_status: str,
    *,
    step_index: int,
    progress: int,
    context: dict[str, Any],
    recipe: dict[str, Any],
    trace_context: Mapping[str, Any] | None,
) -> bool:
    """`from_status` → PENDING at `step_index`, its steps from now on in `trace_context`;
    False when the job is no longer in it."""
    return _move_job(
        session,
        job_id,
        (from_status,),
        recipe=recipe,
        status=JobStatus.PENDING,
        current_step=step_index,
        progress=progress,
        context=context,
        trace_context=trace_context,
        error=None,
        error_code=None,
        retryable=None,
        finished_at=None,
    )


def reset_steps_from(session: Session, job_id: uuid.UUID, step_index: int) -> None:
    """Forget the runs of steps ≥ `step_index` (their fences keep rising)."""
    session.execute(
        update(JobStep)
        .where(JobStep.job_id == job_id, JobStep.step_index >= step_index)
        .values(status=StepStatus.PENDING, attempt=0, output=None, **RUN_COLUMNS_CLEARED)
    )


def cancel_active_job(session: Session, job_id: uuid.UUID) -> bool:
    """PENDING/RUNNING → CANCELLED; False when the job had already finished."""
    return _move_job(session, job_id, ACTIVE_JOB, status=JobStatus.CANCELLED, finished_at=utcnow())


def cancel_live_steps(session: Session, job_id: uuid.UUID) -> None:
    """Stop the job's live steps: a queued delivery is then dropped at claim and a
    running one's result is discarded, since neither finds its step claimable/RUNNING."""
    session.execute(
        update(JobStep)
        .where(JobStep.job_id == job_id, JobStep.status.in_(LIVE_STEP))
        .values(status=StepStatus.CANCELLED, finished_at=utcnow())
    )


@dataclass(frozen=True)
class FailedJobFilter:
    feature_name: str | None = None
    failed_step: int | None = None
    error_code: str | None = None
    created_after: datetime | None = None


def _failed_job_conditions(filters: FailedJobFilter) -> list[ColumnElement[bool]]:
    """The conditions of a FAILED job matching every given filter."""
    conditions: list[ColumnElement[bool]] = [Job.status == JobStatus.FAILED]
    if filters.feature_name is not None:
        conditions.append(Job.feature_name == filters.feature_name)
    if filters.failed_step is not None:
        conditions.append(Job.current_step == filters.failed_step)
    if filters.error_code is not None:
        conditions.append(Job.error_code == filters.error_code)
    if filters.created_after is not None:
        conditions.append(Job.created_at > filters.created_after)
    return conditions


def find_failed_job_ids(
    session: Session, filters: FailedJobFilter, limit: int
) -> Sequence[uuid.UUID]:
    """Up to `limit` FAILED jobs matching every given filter, oldest first."""
    query = select(Job.id).where(*_failed_job_conditions(filters))
    return session.scalars(query.order_by(Job.created_at, Job.id).limit(limit)).all()


def count_failed_jobs(session: Session, filters: FailedJobFilter) -> int:
    """How many FAILED jobs match every given filter."""
    return (
        session.scalar(
            select(func.count()).select_from(Job).where(*_failed_job_conditions(filters))
        )
        or 0
    )


def release_idempotency_key(session: Session, job_id: uuid.UUID) -> None:
    """Free an expired Idempotency-Key so that a new job can take it."""
    session.execute(update(Job).where(Job.id == job_id).values(idempotency_key=None))
