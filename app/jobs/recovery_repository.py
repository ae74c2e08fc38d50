"""Recovery SQL: what Beat looks for and the conditional updates it applies.

Split from app/jobs/repository.py, whose fenced step transitions these build on.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, delete, exists, or_, select, update
from sqlalchemy.orm import Session

from app.events.types import EventType
from app.jobs.outbox_repository import MARK_ON_WAITING_STEP
from app.jobs.repository import (
    job_failure,
    job_is_active,
    rows_changed,
    step_where,
    update_fenced_step,
)
from app.jobs.states import ACTIVE_JOB, CLAIMABLE_STEP, FINISHED_JOB, LIVE_STEP, StepStatus
from app.models import Job, JobEvent, JobStep, utcnow

# --- recovery: what Beat looks for and the conditional updates it applies -------------
# Timestamps written by workers are compared with the caller's clock (hosts keep NTP
# time); lease deadlines themselves come from Redis TIME (app/leases.py).


@dataclass(frozen=True)
class LiveStep:
    """A step of an active job, as Beat sees it: enough to check its lease and act."""

    job_id: uuid.UUID
    step_index: int
    service: str
    queue: str
    status: str
    fence: int
    attempt: int
    max_attempts: int
    queued_at: datetime | None
    heartbeat_at: datetime | None
    # From the job's recipe snapshot; the live catalog's value wins when it has one.
    lease_ttl_s: float


def _live_steps(session: Session, *conditions: Any, limit: int) -> list[LiveStep]:
    rows = session.execute(
        select(JobStep, Job.recipe)
        .join(Job, Job.id == JobStep.job_id)
        .where(Job.status.in_(ACTIVE_JOB), *conditions)
        .order_by(JobStep.queued_at)
        .limit(limit)
    ).all()
    return [
        LiveStep(
            job_id=step.job_id,
            step_index=step.step_index,
            service=step.step_name,
            queue=step.queue,
            status=step.status,
            fence=step.fence,
            attempt=step.attempt,
            max_attempts=step.max_attempts,
            queued_at=step.queued_at,
            heartbeat_at=step.heartbeat_at,
            lease_ttl_s=float(recipe["steps"][step.step_index]["service"]["lease_ttl_s"]),
        )
        for step, recipe in rows
    ]


def find_live_step(session: Session, job_id: uuid.UUID, step_index: int) -> LiveStep | None:
    steps = _live_steps(session, step_where(job_id, step_index), limit=1)
    return steps[0] if steps else None


def _status_in(statuses: Sequence[StepStatus]) -> ColumnElement[bool]:
    """`status IN (...)` with the values written into the SQL, for Beat's finders: the
    index they need is partial (app/models.py), and PostgreSQL matches its predicate
    only against values it sees, which a generic plan of bound values hides."""
    values = [str(status) for status in statuses]
    return JobStep.status.in_(bindparam("p_statuses", values, expanding=True, literal_execute=True))


def find_silent_running_steps(
    session: Session, heartbeat_before: datetime, limit: int
) -> list[LiveStep]:
    """RUNNING steps whose last heartbeat is older than `heartbeat_before`."""
    return _live_steps(
        session,
        _status_in([StepStatus.RUNNING]),
        or_(JobStep.heartbeat_at < heartbeat_before, JobStep.heartbeat_at.is_(None)),
        limit=limit,
    )


def find_idle_queued_steps(session: Session, queued_before: datetime, limit: int) -> list[LiveStep]:
    """Steps queued, waiting for a slot or between retries since before `queued_before`,
    but for those marked unsent: the outbox sends them (app/jobs/outbox.py)."""
    return _live_steps(
        session,
        _status_in(CLAIMABLE_STEP),
        or_(JobStep.queued_at < queued_before, JobStep.queued_at.is_(None)),
        JobStep.unsent_fence.is_distinct_from(JobStep.fence),
        limit=limit,
    )


def restart_lost_attempt(
    session: Session, job_id: uuid.UUID, step_index: int, fence: int, *, error: str, code: str
) -> int | None:
    """RUNNING under `fence` → QUEUED as the next attempt under a new fence.

    None when the step moved on, or when its attempts are spent."""
    new_fence = fence + 1
    restarted = update_fenced_step(
        session,
        job_id,
        step_index,
        fence,
        JobStep.status == StepStatus.RUNNING,
        JobStep.attempt < JobStep.max_attempts,
        job_is_active(job_id),
        status=StepStatus.QUEUED,
        attempt=JobStep.attempt + 1,
        fence=new_fence,
        queued_at=utcnow(),
        started_at=None,
        heartbeat_at=None,
        error=error,
        error_code=code,
        retryable=True,
    )
    return new_fence if restarted else None


def touch_idle_step(
    session: Session, job_id: uuid.UUID, step_index: int, fence: int, queued_before: datetime
) -> bool:
    """Mark a still-idle step as queued now; True for exactly one of concurrent callers."""
    return update_fenced_step(
        session,
        job_id,
        step_index,
        fence,
        JobStep.status.in_(CLAIMABLE_STEP),
        or_(JobStep.queued_at < queued_before, JobStep.queued_at.is_(None)),
        job_is_active(job_id),
        queued_at=utcnow(),
    )


def last_retry_delay_s(session: Session, job_id: uuid.UUID, step_index: int) -> float:
    """The delay the last STEP_RETRYING event of this step announced (0 when none)."""
    data = session.scalars(
        select(JobEvent.data)
        .where(
            JobEvent.job_id == job_id,
            JobEvent.step_index == step_index,
            JobEvent.type == EventType.STEP_RETRYING,
        )
        .order_by(JobEvent.seq.desc())
        .limit(1)
    ).first()
    return float((data or {}).get("delay_s") or 0.0)


def _no_progress_since(idle_since: datetime) -> Any:
    """No state change and no heartbeat since `idle_since`, and no step waiting for a
    delivery the broker refused: that wait is the gateway's, and the job's clock
    starts again when the step is sent (app/jobs/outbox_repository.py take_unsent)."""
    recent_heartbeat = exists().where(JobStep.job_id == Job.id, JobStep.heartbeat_at >= idle_since)
    unsent = exists().where(JobStep.job_id == Job.id, MARK_ON_WAITING_STEP)
    return and_(Job.status.in_(ACTIVE_JOB), Job.updated_at < idle_since, ~recent_heartbeat, ~unsent)


def find_stuck_job_ids(session: Session, idle_since: datetime, limit: int) -> Sequence[uuid.UUID]:
    """Active jobs with no state change and no step heartbeat since `idle_since`."""
    return session.scalars(
        select(Job.id).where(_no_progress_since(idle_since)).order_by(Job.updated_at).limit(limit)
    ).all()


def fail_stuck_job(
    session: Session, job_id: uuid.UUID, idle_since: datetime, *, error: str, code: str
) -> bool:
    """FAILED (retryable) if the job still made no progress since `idle_since`.

    Its live steps fail under a new fence, so a delivery or a result still on its
    way finds nothing to act on."""
    now = utcnow()
    result = rows_changed(
        session,
        update(Job)
        .where(Job.id == job_id, _no_progress_since(idle_since))
        .values(updated_at=now, **job_failure(error, code, True, now)),
    )
    if result != 1:
        return False
    session.execute(
        update(JobStep)
        .where(
            JobStep.job_id == job_id,
            JobStep.status.in_(LIVE_STEP),
        )
        .values(
            status=StepStatus.FAILED,
            fence=JobStep.fence + 1,
            error=error,
            error_code=code,
            retryable=True,
            heartbeat_at=None,
            finished_at=now,
        )
    )
    return True


def delete_finished_jobs(session: Session, finished_before: datetime, limit: int) -> int:
    """Delete up to `limit` jobs that finished before `finished_before` (steps and
    events go with them by ON DELETE CASCADE).

    The job holding the newest numbered event stays whatever its age: global event
    ids continue from the largest one in the log (app/events/sequencer.py), and an
    emptied log would start them again at 1, below the cursors readers resume from."""
    newest_event_job = (
        select(JobEvent.job_id).where(JobEvent.id.is_not(None)).order_by(JobEvent.id.desc())
    ).limit(1)
    batch = (
        select(Job.id)
        .where(
            Job.status.in_(FINISHED_JOB),
            Job.finished_at < finished_before,
            Job.id.not_in(newest_event_job),
        )
        .limit(limit)
    )
    return rows_changed(session, delete(Job).where(Job.id.in_(batch)))
