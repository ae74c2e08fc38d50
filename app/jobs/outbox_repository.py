"""Outbox SQL: marking a step whose delivery the broker refused, taking marked steps to
send them, and forgetting marks that no longer stand.

A mark is (unsent_fence, unsent_due_at) on the step row (app/models.py). It stands
while the step still carries that fence and waits for a delivery (claimable) in an
active job; any other mark is stale: the step moved on, and whatever moved it sent or
marked its own delivery.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import and_, exists, not_, select, tuple_, update
from sqlalchemy.orm import Session

from app.jobs.dispatch import Delivery
from app.jobs.repository import fenced_step, job_is_active, rows_changed
from app.jobs.states import ACTIVE_JOB, CLAIMABLE_STEP
from app.models import Job, JobStep

MARKED = JobStep.unsent_fence.is_not(None)
# The step still waits, under the marked fence, for the delivery the mark stands for.
MARK_ON_WAITING_STEP = and_(
    JobStep.unsent_fence == JobStep.fence, JobStep.status.in_(CLAIMABLE_STEP)
)
_STANDING = and_(
    MARK_ON_WAITING_STEP,
    exists().where(Job.id == JobStep.job_id, Job.status.in_(ACTIVE_JOB)),
)


def mark_unsent(
    session: Session, job_id: uuid.UUID, step_index: int, fence: int, due_at: datetime
) -> bool:
    """Mark the step's delivery under `fence` as owed, due at `due_at`; False when the
    step no longer waits for it (claimed by another delivery, or moved on)."""
    statement = (
        update(JobStep)
        .where(
            fenced_step(job_id, step_index, fence, JobStep.status.in_(CLAIMABLE_STEP)),
            job_is_active(job_id),
        )
        .values(unsent_fence=fence, unsent_due_at=due_at)
    )
    return rows_changed(session, statement) == 1


def take_unsent(session: Session, limit: int, now: datetime) -> list[Delivery]:
    """Take up to `limit` standing marks, soonest due first, for this caller to send:
    each is cleared, its step counted as queued `now` and its job's stuck clock
    restarted (the outage was the gateway's). A concurrent taker skips the rows this
    one holds (PostgreSQL) or waits for its commit (SQLite), so each mark is taken once."""
    rows = session.execute(
        select(
            JobStep.job_id,
            JobStep.step_index,
            JobStep.fence,
            JobStep.queue,
            JobStep.step_name,
            JobStep.unsent_due_at,
        )
        .where(MARKED, _STANDING)
        .order_by(JobStep.unsent_due_at)
        .limit(limit)
        .with_for_update(of=JobStep, skip_locked=True)
    ).all()
    taken = [
        Delivery(job_id, index, fence, queue, service, due_at or now)
        for job_id, index, fence, queue, service, due_at in rows
    ]
    if not taken:
        return taken
    keys = [(step.job_id, step.step_index) for step in taken]
    session.execute(
        update(JobStep)
        .where(tuple_(JobStep.job_id, JobStep.step_index).in_(keys))
        .values(unsent_fence=None, unsent_due_at=None, queued_at=now)
    )
    session.execute(
        update(Job).where(Job.id.in_({step.job_id for step in taken})).values(updated_at=now)
    )
    return taken


def forget_stale_marks(session: Session) -> int:
    """Clear every mark that no longer stands; returns how many."""
    stale = update(JobStep).where(MARKED, not_(_STANDING))
    return rows_changed(session, stale.values(unsent_fence=None, unsent_due_at=None))
