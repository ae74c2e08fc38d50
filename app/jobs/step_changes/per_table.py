"""The step changes one table at a time: each statement with the function that runs it
and reads what it returns.

SQLite runs these in turn, in the caller's transaction (app/jobs/step_changes/sqlite.py);
PostgreSQL composes the same statements into one statement per change
(app/jobs/step_changes/postgres/). Every statement is fenced: it changes the step only
while the step carries the fence the delivery holds (app/jobs/repository.py).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    Integer,
    String,
    bindparam,
    case,
    exists,
    func,
    select,
    update,
)
from sqlalchemy.orm import Session

from app.jobs.repository import rows_changed
from app.jobs.states import ACTIVE_JOB, CLAIMABLE_STEP, JobStatus, StepStatus, progress_for
from app.jobs.step_changes.drafts import completed_events
from app.jobs.step_changes.interface import Advance, EventSlot, NextStepMoved
from app.jobs.step_repository import NOW, RUN_COLUMNS_CLEARED, THIS_STEP, StepRun, fence_after
from app.models import UTCDateTime, job_step_table, job_table, utcnow

_JOB = job_table
_STEP = job_step_table

# The statements below take `p_job` (the job), most of them `index` (the step),
# `p_fence` (the fence the delivery holds) and `now`.
_JOB_IS_ACTIVE = (
    exists().where(_JOB.c.id == bindparam("p_job"), _JOB.c.status.in_(ACTIVE_JOB)).correlate(None)
)

# Changes the step, when QUEUED or RETRYING under p_fence in an active job, to
# WAITING_FOR_SLOT.
MARK_WAITING = (
    update(_STEP)
    .where(
        THIS_STEP,
        _STEP.c.fence == bindparam("p_fence"),
        _STEP.c.status.in_((StepStatus.QUEUED, StepStatus.RETRYING)),
        _JOB_IS_ACTIVE,
    )
    .values(status=StepStatus.WAITING_FOR_SLOT)
)


def mark_waiting(session: Session, job_id: uuid.UUID, step_index: int, fence: int) -> bool:
    """Put the step in WAITING_FOR_SLOT; False when it was not claimable under `fence`."""
    params = {"p_job": job_id, "index": step_index, "p_fence": fence}
    return rows_changed(session, MARK_WAITING, params) == 1


# Changes the claimable step under p_fence of an active job to RUNNING, with the
# delivery's p_claim_token (see claimed_by).
CLAIM_STEP = (
    update(_STEP)
    .where(
        THIS_STEP,
        _STEP.c.fence == bindparam("p_fence"),
        _STEP.c.status.in_(CLAIMABLE_STEP),
        _JOB_IS_ACTIVE,
    )
    .values(
        status=StepStatus.RUNNING,
        started_at=NOW,
        heartbeat_at=NOW,
        finished_at=None,
        claim_token=bindparam("p_claim_token", type_=String()),
    )
)
# The job columns a claim sets: RUNNING at step `index`, one seq reserved.
JOB_STARTED: dict[str, ColumnElement[Any] | str] = {
    "status": JobStatus.RUNNING,
    "current_step": bindparam("index"),
    "started_at": func.coalesce(_JOB.c.started_at, NOW),
    "updated_at": NOW,
    "last_seq": _JOB.c.last_seq + 1,
}
# Changes the active job p_job as JOB_STARTED says; returns (last_seq, feature_name,
# progress), the seq reserved for STEP_STARTED and what its event carries.
START_JOB = (
    update(_JOB)
    .where(_JOB.c.id == bindparam("p_job"), _JOB.c.status.in_(ACTIVE_JOB))
    .values(**JOB_STARTED)
    .returning(_JOB.c.last_seq, _JOB.c.feature_name, _JOB.c.progress)
)


def claim_step(
    session: Session,
    job_id: uuid.UUID,
    step_index: int,
    fence: int,
    *,
    claim_token: str | None = None,
) -> EventSlot | None:
    """Start the step for the delivery holding `fence` (and `claim_token`: see
    claimed_by), reserving the seq of its STEP_STARTED event; None when the delivery is
    stale or a duplicate."""
    params = {
        "p_job": job_id,
        "index": step_index,
        "p_fence": fence,
        "now": utcnow(),
        "p_claim_token": claim_token,
    }
    if rows_changed(session, CLAIM_STEP, params) != 1:
        return None
    seq, feature_name, progress = session.connection().execute(START_JOB, params).one()
    return EventSlot(seq, feature_name, progress)


# Returns a row when the step runs (RUNNING under p_fence) under the claim that carried
# p_claim_token; changes nothing.
CLAIMED_BY = select(_STEP.c.job_id).where(
    THIS_STEP,
    _STEP.c.fence == bindparam("p_fence"),
    _STEP.c.status == StepStatus.RUNNING,
    _STEP.c.claim_token == bindparam("p_claim_token", type_=String()),
)


def claimed_by(
    session: Session, job_id: uuid.UUID, step_index: int, fence: int, claim_token: str
) -> bool:
    """Whether the step runs under the claim that carried `claim_token`: a claim is one
    autocommitted statement, and a delivery that lost its answer asks this to learn
    whether it landed. A duplicate delivery of the same message has a token of its own."""
    params = {"p_job": job_id, "index": step_index, "p_fence": fence, "p_claim_token": claim_token}
    return session.connection().execute(CLAIMED_BY, params).first() is not None


# Changes the step RUNNING under p_fence to COMPLETED with p_output.
COMPLETE_STEP = (
    update(_STEP)
    .where(THIS_STEP, _STEP.c.fence == bindparam("p_fence"), _STEP.c.status == StepStatus.RUNNING)
    .values(
        status=StepStatus.COMPLETED,
        output=bindparam("p_output", type_=JSON()),
        finished_at=NOW,
        error=None,
        error_code=None,
        retryable=None,
    )
)
# The job columns a committed result sets (the parameters of `advance_params`); the
# progress never goes down.
JOB_ADVANCED: dict[str, ColumnElement[Any]] = {
    "context": bindparam("p_context", type_=JSON()),
    "progress": case(
        (_JOB.c.progress > bindparam("p_progress"), _JOB.c.progress),
        else_=bindparam("p_progress"),
    ),
    "current_step": bindparam("p_current_step"),
    "status": bindparam("p_status"),
    "finished_at": bindparam("p_finished_at", type_=UTCDateTime()),
    "updated_at": NOW,
    "last_seq": _JOB.c.last_seq + bindparam("events"),
}
# Changes the RUNNING job p_job as JOB_ADVANCED says; returns (last_seq, feature_name,
# progress): the last of the `events` seqs it reserved, and what the events carry.
ADVANCE_JOB = (
    update(_JOB)
    .where(_JOB.c.id == bindparam("p_job"), _JOB.c.status == JobStatus.RUNNING)
    .values(**JOB_ADVANCED)
    .returning(_JOB.c.last_seq, _JOB.c.feature_name, _JOB.c.progress)
)


def advance_params(
    run: StepRun, output: dict[str, Any], current_step: int, events: int, now: datetime
) -> dict[str, Any]:
    """The parameters of JOB_ADVANCED: the job past `run`'s step with `output`, at step
    `current_step`, reserving `events` seqs."""
    last = run.is_last
    return {
        "p_job": run.job_id,
        "now": now,
        # Steps run one at a time, so the context read at load time is still the job's.
        "p_context": {**run.context, run.step_name: output},
        "p_progress": 100 if last else progress_for(run.recipe_steps, run.step_index + 1),
        "p_current_step": current_step,
        "p_status": JobStatus.COMPLETED if last else JobStatus.RUNNING,
        "p_finished_at": now if last else None,
        "events": events,
    }


def complete(session: Session, run: StepRun, fence: int, output: dict[str, Any]) -> bool:
    """Commit `output` as the result of `run`'s step; False when this result is stale."""
    params = {
        "p_job": run.job_id,
        "index": run.step_index,
        "p_fence": fence,
        "now": utcnow(),
        "p_output": output,
    }
    return rows_changed(session, COMPLETE_STEP, params) == 1


def advance_job(
    session: Session, run: StepRun, output: dict[str, Any], *, current_step: int, events: int
) -> Advance:
    """Move the job past `run`'s step, reserving the seqs of the `events` that say so."""
    params = advance_params(run, output, current_step, events, utcnow())
    row = session.connection().execute(ADVANCE_JOB, params).one_or_none()
    if row is None:
        # Cancel and resume change the step and the job together; this cannot happen.
        raise RuntimeError(f"job {run.job_id} is not RUNNING while its step is")
    last_seq, feature_name, progress = row
    first_seq = last_seq - events + 1
    return Advance(job_finished=run.is_last, events=EventSlot(first_seq, feature_name, progress))


def complete_step(
    session: Session, run: StepRun, fence: int, output: dict[str, Any]
) -> Advance | None:
    """Commit a step's output and advance the job, reserving the seq of STEP_COMPLETED
    (and of JOB_COMPLETED after the last step); None when this result is stale."""
    if not complete(session, run, fence, output):
        return None
    current_step = run.step_index if run.is_last else run.step_index + 1
    events = len(completed_events(run, output))
    return advance_job(session, run, output, current_step=current_step, events=events)


def next_step_fence(run: StepRun) -> int:
    """The fence the step after `run`'s takes when this run starts it: the one after
    the fence it carries. Raises NextStepMoved when there is no next step."""
    if run.is_last or run.next_step_fence is None:
        raise NextStepMoved(f"step {run.step_index} of job {run.job_id} has no next step")
    return run.next_step_fence + 1


# Changes the next step (p_next_index), PENDING under the fence before p_next_fence,
# to RUNNING as its first attempt under p_next_fence; returns (following_fence): the
# fence of the step after it, for the run that starts here.
START_NEXT_STEP = (
    update(_STEP)
    .where(
        _STEP.c.job_id == bindparam("p_job"),
        _STEP.c.step_index == bindparam("p_next_index"),
        _STEP.c.fence == bindparam("p_next_fence", type_=Integer()) - 1,
        _STEP.c.status == StepStatus.PENDING,
    )
    .values(
        status=StepStatus.RUNNING,
        attempt=1,
        fence=bindparam("p_next_fence"),
        **{**RUN_COLUMNS_CLEARED, "queued_at": NOW, "started_at": NOW, "heartbeat_at": NOW},
    )
    .returning(fence_after(bindparam("p_next_index", type_=Integer())).label("following_fence"))
)


def start_next_step(session: Session, run: StepRun, next_fence: int) -> int | None:
    """Start the step after `run`'s as its first attempt under `next_fence`, for the
    worker that runs it itself; returns the fence of the step after that (None after
    the last). Raises NextStepMoved when the step is not the PENDING row `run` found."""
    params = {
        "p_job": run.job_id,
        "p_next_index": run.step_index + 1,
        "p_next_fence": next_fence,
        "now": utcnow(),
    }
    row = session.connection().execute(START_NEXT_STEP, params).one_or_none()
    if row is None:
        raise NextStepMoved(f"step {run.step_index + 1} of job {run.job_id} moved")
    (following_fence,) = row
    return following_fence
