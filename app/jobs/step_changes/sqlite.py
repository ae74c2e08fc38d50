"""The step changes statement by statement, in the caller's transaction: the engine
for SQLite, whose writers the database serialises (BEGIN IMMEDIATE, app/db.py), so a
change's statements see no one else's in between. Implements `StepChanges`
(app/jobs/step_changes/interface.py) with the one-table statements of
app/jobs/step_changes/per_table.py; each function does what its namesake in
app/jobs/step_changes/__init__.py says.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from app.events.log import EventDraft, append_event, numbered, record_events
from app.events.types import EventType
from app.jobs.states import JobStatus, StepStatus
from app.jobs.step_changes.drafts import about, completed_events
from app.jobs.step_changes.interface import (
    Continued,
    EventSlot,
    Finished,
    JobRows,
    NamedStep,
)
from app.jobs.step_changes.per_table import (
    advance_job,
    claim_step,
    complete,
    complete_step,
    mark_waiting,
    next_step_fence,
    start_next_step,
)
from app.jobs.step_repository import StepRun, load_step_run, queue_step
from app.models import Job, job_step_table, job_table

_INSERT_JOB = insert(job_table)
_INSERT_STEP = insert(job_step_table)


def insert_job(
    session: Session, job: Job, steps: list[dict[str, Any]], created: EventDraft
) -> None:
    """The job row, its step rows, then its first event (seq 1)."""
    connection = session.connection()
    connection.execute(_INSERT_JOB, {c.key: getattr(job, c.key) for c in job_table.columns})
    connection.execute(_INSERT_STEP, steps)
    record_events(
        session,
        job.id,
        numbered([created], 1),
        feature_name=job.feature_name,
        progress=job.progress,
    )


def insert_jobs(session: Session, jobs: Sequence[JobRows]) -> None:
    """Each job as insert_job does, in the caller's transaction."""
    for job, steps, created in jobs:
        insert_job(session, job, steps, created)


def start_step(
    session: Session, run: StepRun, fence: int, *, claim_token: str | None = None
) -> EventSlot | None:
    slot = claim_step(session, run.job_id, run.step_index, fence, claim_token=claim_token)
    if slot is not None:
        _record(session, run.job_id, slot, [about(run, EventType.STEP_STARTED)])
    return slot


def start_named_step(
    session: Session, named: NamedStep, *, claim_token: str | None = None
) -> StepRun | None:
    run = _named_run(session, named)
    if run is None or start_step(session, run, named.fence, claim_token=claim_token) is None:
        return None
    return dataclasses.replace(run, status=StepStatus.RUNNING, job_status=JobStatus.RUNNING)


def park_step(session: Session, run: StepRun, data: dict[str, Any]) -> bool:
    if not mark_waiting(session, run.job_id, run.step_index, run.fence):
        return False
    append_event(
        session,
        run.job_id,
        EventType.WAITING_FOR_SLOT,
        step_index=run.step_index,
        step_name=run.step_name,
        attempt=run.attempt,
        data=data,
    )
    return True


def park_named_step(session: Session, named: NamedStep, data: dict[str, Any]) -> int | None:
    run = _named_run(session, named)
    return run.attempt if run is not None and park_step(session, run, data) else None


def finish_step(
    session: Session, run: StepRun, fence: int, output: dict[str, Any]
) -> Finished | None:
    advance = complete_step(session, run, fence, output)
    if advance is None:
        return None
    _record(session, run.job_id, advance.events, completed_events(run, output))
    if run.is_last:
        return Finished(job_finished=True)
    queue, next_fence = queue_step(session, run.job_id, run.step_index + 1)
    return Finished(job_finished=False, next_queue=queue, next_fence=next_fence)


def complete_and_start_next(
    session: Session, run: StepRun, fence: int, output: dict[str, Any]
) -> Continued | None:
    """Raises NextStepMoved having changed this step already: the caller rolls back."""
    next_fence = next_step_fence(run)
    drafts = completed_events(run, output, next_started=True)
    if not complete(session, run, fence, output):
        return None
    following_fence = start_next_step(session, run, next_fence)
    advance = advance_job(session, run, output, current_step=run.step_index + 1, events=len(drafts))
    _record(session, run.job_id, advance.events, drafts)
    return Continued(advance.events, run.successor(output, next_fence, following_fence))


def _named_run(session: Session, named: NamedStep) -> StepRun | None:
    """The step a named delivery may act on (read first), or None."""
    run = load_step_run(session, named.job_id, named.step_index)
    names = (named.service, named.queue)
    if run is None or (run.step_name, run.queue) != names or not run.accepts(named.fence):
        return None
    return run


def _record(session: Session, job_id: uuid.UUID, slot: EventSlot, drafts: list[EventDraft]) -> None:
    record_events(
        session,
        job_id,
        numbered(drafts, slot.first_seq),
        feature_name=slot.feature_name,
        progress=slot.progress,
    )
