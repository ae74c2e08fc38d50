"""All job and step SQL. State changes are conditional updates: a zero row count
means another delivery, a cancel or a newer attempt won, which is a normal outcome.

Each step row carries a `fence`: a token that rises with every new attempt, recovery
and resume, and that a delivery must present to act on the step. (`attempt` is what
people and services see; it restarts at 1 on resume, so it cannot fence.)"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from app.jobs.states import ACTIVE_JOB, CLAIMABLE_STEP, JobStatus, StepStatus, progress_for
from app.models import Job, JobStep, utcnow


@dataclass(frozen=True)
class StepRun:
    """What a delivery needs to know about its step before it runs."""

    job_id: uuid.UUID
    feature_name: str
    job_status: str
    input_data: dict[str, Any]
    context: dict[str, Any]
    service_spec: dict[str, Any]
    step_index: int
    step_name: str
    queue: str
    status: str
    attempt: int
    fence: int
    max_attempts: int

    def accepts(self, fence: int) -> bool:
        return (
            self.job_status in ACTIVE_JOB and self.fence == fence and self.status in CLAIMABLE_STEP
        )


def _execute(session: Session, statement: Any) -> int:
    """Run an UPDATE and return how many rows it changed."""
    result = session.execute(statement)
    return cast(CursorResult[Any], result).rowcount


def _step(job_id: uuid.UUID, step_index: int) -> Any:
    return and_(JobStep.job_id == job_id, JobStep.step_index == step_index)


def _job_active(job_id: uuid.UUID) -> Any:
    return exists().where(Job.id == job_id, Job.status.in_(ACTIVE_JOB))


def get_job(session: Session, job_id: uuid.UUID) -> Job | None:
    return session.get(Job, job_id)


def get_steps(session: Session, job_id: uuid.UUID) -> Sequence[JobStep]:
    return session.scalars(
        select(JobStep).where(JobStep.job_id == job_id).order_by(JobStep.step_index)
    ).all()


def get_step(session: Session, job_id: uuid.UUID, step_index: int) -> JobStep | None:
    return session.get(JobStep, (job_id, step_index))


def add_job(session: Session, job: Job, steps: list[JobStep]) -> None:
    session.add(job)
    session.flush()
    session.add_all(steps)
    session.flush()


def find_by_idempotency_key(session: Session, tenant: str, key: str) -> Job | None:
    return session.scalars(
        select(Job).where(Job.tenant == tenant, Job.idempotency_key == key)
    ).one_or_none()


def load_step_run(session: Session, job_id: uuid.UUID, step_index: int) -> StepRun | None:
    row = session.execute(
        select(Job, JobStep)
        .join(JobStep, JobStep.job_id == Job.id)
        .where(_step(job_id, step_index))
    ).one_or_none()
    if row is None:
        return None
    job, step = row
    return StepRun(
        job_id=job.id,
        feature_name=job.feature_name,
        job_status=job.status,
        input_data=job.input_data,
        context=job.context or {},
        service_spec=job.recipe["steps"][step_index]["service"],
        step_index=step_index,
        step_name=step.step_name,
        queue=step.queue,
        status=step.status,
        attempt=step.attempt,
        fence=step.fence,
        max_attempts=step.max_attempts,
    )


def queue_step(session: Session, job_id: uuid.UUID, step_index: int) -> tuple[str, int]:
    """Put a step on its queue as a fresh attempt 1; returns (queue, fence)."""
    now = utcnow()
    queue, fence = session.execute(
        update(JobStep)
        .where(_step(job_id, step_index))
        .values(
            status=StepStatus.QUEUED,
            attempt=1,
            fence=JobStep.fence + 1,
            queued_at=now,
            started_at=None,
            heartbeat_at=None,
            finished_at=None,
            error=None,
            error_code=None,
            retryable=None,
        )
        .returning(JobStep.queue, JobStep.fence)
    ).one()
    return queue, fence


def mark_waiting(session: Session, job_id: uuid.UUID, step_index: int, fence: int) -> bool:
    result = _execute(
        session,
        update(JobStep)
        .where(
            _step(job_id, step_index),
            JobStep.fence == fence,
            JobStep.status.in_((StepStatus.QUEUED, StepStatus.RETRYING)),
            _job_active(job_id),
        )
        .values(status=StepStatus.WAITING_FOR_SLOT),
    )
    return result == 1


def claim_step(session: Session, job_id: uuid.UUID, step_index: int, fence: int) -> bool:
    """Start the step for the delivery holding `fence`; False when stale or a duplicate."""
    now = utcnow()
    result = _execute(
        session,
        update(JobStep)
        .where(
            _step(job_id, step_index),
            JobStep.fence == fence,
            JobStep.status.in_(CLAIMABLE_STEP),
            _job_active(job_id),
        )
        .values(status=StepStatus.RUNNING, started_at=now, heartbeat_at=now, finished_at=None),
    )
    if result != 1:
        return False
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(ACTIVE_JOB))
        .values(
            status=JobStatus.RUNNING,
            current_step=step_index,
            started_at=func.coalesce(Job.started_at, now),
            updated_at=now,
        )
    )
    return True


def is_running(session: Session, job_id: uuid.UUID, step_index: int, fence: int) -> bool:
    step = session.get(JobStep, (job_id, step_index), populate_existing=True)
    return step is not None and step.fence == fence and step.status == StepStatus.RUNNING


def heartbeat(session: Session, job_id: uuid.UUID, step_index: int, fence: int) -> bool:
    result = _execute(
        session,
        update(JobStep)
        .where(
            _step(job_id, step_index),
            JobStep.fence == fence,
            JobStep.status == StepStatus.RUNNING,
        )
        .values(heartbeat_at=utcnow()),
    )
    return result == 1


def _finish_running_step(
    session: Session, job_id: uuid.UUID, step_index: int, held_fence: int, **values: Any
) -> bool:
    result = _execute(
        session,
        update(JobStep)
        .where(
            _step(job_id, step_index),
            JobStep.fence == held_fence,
            JobStep.status == StepStatus.RUNNING,
        )
        .values(**values),
    )
    return result == 1


def complete_step(
    session: Session, job_id: uuid.UUID, step_index: int, fence: int, output: dict[str, Any]
) -> Job | None:
    """Commit a step's output and advance the job; None when this result is stale."""
    now = utcnow()
    if not _finish_running_step(
        session, job_id, step_index, fence,
        status=StepStatus.COMPLETED, output=output, finished_at=now,
        error=None, error_code=None, retryable=None,
    ):  # fmt: skip
        return None
    job = session.get(Job, job_id, with_for_update=True, populate_existing=True)
    if job is None or job.status != JobStatus.RUNNING:
        # Cancel and resume change the step and the job together; this cannot happen.
        raise RuntimeError(f"job {job_id} is not RUNNING while its step {step_index} is")
    step_name = session.get_one(JobStep, (job_id, step_index)).step_name
    job.context = {**(job.context or {}), step_name: output}
    job.progress = max(job.progress, progress_for(step_index + 1, job.total_steps))
    job.updated_at = now
    if step_index + 1 >= job.total_steps:
        job.status = JobStatus.COMPLETED
        job.progress = 100
        job.finished_at = now
    else:
        job.current_step = step_index + 1
    session.flush()
    return job


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
    if not _finish_running_step(
        session, job_id, step_index, fence,
        status=StepStatus.RETRYING, attempt=JobStep.attempt + 1, fence=fence + 1,
        error=error, error_code=code,
        retryable=True, queued_at=utcnow(), heartbeat_at=None,
    ):  # fmt: skip
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
    if not _finish_running_step(
        session, job_id, step_index, fence,
        status=StepStatus.FAILED, error=error, error_code=code, retryable=retryable,
        finished_at=now,
    ):  # fmt: skip
        return False
    fail_job(session, job_id, error=error, code=code, retryable=retryable)
    return True


def fail_job(
    session: Session, job_id: uuid.UUID, *, error: str, code: str, retryable: bool
) -> bool:
    now = utcnow()
    result = _execute(
        session,
        update(Job)
        .where(Job.id == job_id, Job.status.in_(ACTIVE_JOB))
        .values(
            status=JobStatus.FAILED,
            error=error,
            error_code=code,
            retryable=retryable,
            finished_at=now,
            updated_at=now,
        ),
    )
    return result == 1


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
    """Newest first; `before` is the (created_at, id) of the last row of the previous page."""
    query = select(Job)
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
