"""What a worker writes as a step runs.

Claiming a step, parking it until a slot frees and committing its result (queueing
the next step, or starting it in the same commit for this worker to run) each write
the step row(s), the job row (whose `last_seq` reserves the seqs of the change's
events) and the events, as one change. On PostgreSQL each is a single
statement of data-modifying WITH clauses; elsewhere (SQLite) the same statements run
one by one in the caller's transaction. Both are fenced alike (see
app/jobs/repository.py for the fence).
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Integer,
    bindparam,
    case,
    func,
    select,
    true,
    update,
)
from sqlalchemy.orm import Session

from app.db import single_statements
from app.events.log import (
    EventDraft,
    append_event,
    inserted_after,
    inserted_params,
    numbered,
    publish_inserted,
    record_events,
)
from app.events.types import EventType
from app.jobs.repository import (
    JOB_IS_ACTIVE,
    NOW,
    QUEUE_STEP_VALUES,
    RUN_COLUMNS_CLEARED,
    THIS_STEP,
    StepRun,
    fence_after,
    load_step_run,
    queue_step,
    rows_changed,
    step_run_of,
)
from app.jobs.states import ACTIVE_JOB, CLAIMABLE_STEP, JobStatus, StepStatus, progress_for
from app.models import UTCDateTime, job_step_table, job_table, utcnow

_JOB = job_table
_STEP = job_step_table


_MARK_WAITING = (
    update(_STEP)
    .where(
        THIS_STEP,
        _STEP.c.fence == bindparam("p_fence"),
        _STEP.c.status.in_((StepStatus.QUEUED, StepStatus.RETRYING)),
        JOB_IS_ACTIVE,
    )
    .values(status=StepStatus.WAITING_FOR_SLOT)
)


def mark_waiting(session: Session, job_id: uuid.UUID, step_index: int, fence: int) -> bool:
    params = {"p_job": job_id, "index": step_index, "p_fence": fence}
    return rows_changed(session, _MARK_WAITING, params) == 1


@dataclass(frozen=True)
class EventSlot:
    """Event numbers reserved on the job row by the update that changed it."""

    first_seq: int
    feature_name: str
    progress: int


_CLAIM_STEP = (
    update(_STEP)
    .where(
        THIS_STEP,
        _STEP.c.fence == bindparam("p_fence"),
        _STEP.c.status.in_(CLAIMABLE_STEP),
        JOB_IS_ACTIVE,
    )
    .values(status=StepStatus.RUNNING, started_at=NOW, heartbeat_at=NOW, finished_at=None)
)
_JOB_STARTED: dict[str, Any] = {
    "status": JobStatus.RUNNING,
    "current_step": bindparam("index"),
    "started_at": func.coalesce(_JOB.c.started_at, NOW),
    "updated_at": NOW,
    "last_seq": _JOB.c.last_seq + 1,
}
_START_JOB = (
    update(_JOB)
    .where(_JOB.c.id == bindparam("p_job"), _JOB.c.status.in_(ACTIVE_JOB))
    .values(**_JOB_STARTED)
    .returning(_JOB.c.last_seq, _JOB.c.feature_name, _JOB.c.progress)
)


def claim_step(
    session: Session, job_id: uuid.UUID, step_index: int, fence: int
) -> EventSlot | None:
    """Start the step for the delivery holding `fence`, reserving the seq of its
    STEP_STARTED event; None when the delivery is stale or a duplicate."""
    params = {"p_job": job_id, "index": step_index, "p_fence": fence, "now": utcnow()}
    if rows_changed(session, _CLAIM_STEP, params) != 1:
        return None
    seq, feature_name, progress = session.connection().execute(_START_JOB, params).one()
    return EventSlot(seq, feature_name, progress)


@dataclass(frozen=True)
class Advance:
    """A committed step result: the job's new state and the event numbers reserved."""

    job_finished: bool
    events: EventSlot


_COMPLETE_STEP = (
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
_JOB_ADVANCED: dict[str, Any] = {
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
_ADVANCE_JOB = (
    update(_JOB)
    .where(_JOB.c.id == bindparam("p_job"), _JOB.c.status == JobStatus.RUNNING)
    .values(**_JOB_ADVANCED)
    .returning(_JOB.c.last_seq, _JOB.c.feature_name, _JOB.c.progress)
)


def complete_step(
    session: Session, run: StepRun, fence: int, output: dict[str, Any]
) -> Advance | None:
    """Commit a step's output and advance the job, reserving the seq of STEP_COMPLETED
    (and of JOB_COMPLETED after the last step); None when this result is stale."""
    if not _complete(session, run, fence, output):
        return None
    current_step = run.step_index if run.is_last else run.step_index + 1
    events = len(completed_events(run, output))
    return _advance(session, run, output, current_step=current_step, events=events)


class NextStepMoved(Exception):
    """The next step is not the PENDING row this run expected (roll back, go the usual way)."""


_START_NEXT_STEP = (
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


@dataclass(frozen=True)
class Continued:
    """A committed result whose next step started in the same transaction."""

    events: EventSlot  # STEP_COMPLETED at first_seq, the next STEP_STARTED after it
    next_run: StepRun


def complete_and_start_next(
    session: Session, run: StepRun, fence: int, output: dict[str, Any]
) -> Continued | None:
    """Commit a step's output and start the next step's first attempt in one
    transaction, for a worker that runs that step itself (no broker round trip).

    The next step takes the fence after `run.next_step_fence`, which the caller has
    already leased. None when this result is stale; raises NextStepMoved (the caller
    rolls back) when the next step is not where this run found it."""
    if run.is_last or run.next_step_fence is None:
        raise NextStepMoved(f"step {run.step_index} of job {run.job_id} has no next step")
    next_fence = run.next_step_fence + 1
    drafts = completed_events(run, output, next_started=True)
    params = {
        "p_job": run.job_id, "index": run.step_index, "p_fence": fence, "p_output": output,
        "p_next_index": run.step_index + 1, "p_next_fence": next_fence,
    }  # fmt: skip
    if single_statements(session):
        current_step = run.step_index + 1
        params.update(_advance_params(run, output, current_step, len(drafts), utcnow()))
        row = _at_once(session, _CONTINUE_AT_ONCE, params, drafts)
        if row is None:
            return None
        if row.next_fence is None:
            raise NextStepMoved(f"step {run.step_index + 1} of job {run.job_id} moved")
        slot = EventSlot(row.last_seq - 1, row.feature_name, row.progress)
        return Continued(slot, run.successor(output, next_fence, row.following_fence))
    if not _complete(session, run, fence, output):
        return None
    started = session.connection().execute(_START_NEXT_STEP, {**params, "now": utcnow()})
    following = started.one_or_none()
    if following is None:
        raise NextStepMoved(f"step {run.step_index + 1} of job {run.job_id} moved")
    advance = _advance(session, run, output, current_step=run.step_index + 1, events=len(drafts))
    _record(session, run.job_id, advance.events, drafts)
    return Continued(advance.events, run.successor(output, next_fence, following[0]))


def _complete(session: Session, run: StepRun, fence: int, output: dict[str, Any]) -> bool:
    params = {
        "p_job": run.job_id, "index": run.step_index, "p_fence": fence, "now": utcnow(),
        "p_output": output,
    }  # fmt: skip
    return rows_changed(session, _COMPLETE_STEP, params) == 1


def _advance(
    session: Session,
    run: StepRun,
    output: dict[str, Any],
    *,
    current_step: int,
    events: int,
) -> Advance:
    """Move the job past `run`'s step, reserving the seqs of the `events` that say so."""
    params = _advance_params(run, output, current_step, events, utcnow())
    row = session.connection().execute(_ADVANCE_JOB, params).one_or_none()
    if row is None:
        # Cancel and resume change the step and the job together; this cannot happen.
        raise RuntimeError(f"job {run.job_id} is not RUNNING while its step is")
    last_seq, feature_name, progress = row
    first_seq = last_seq - events + 1
    return Advance(job_finished=run.is_last, events=EventSlot(first_seq, feature_name, progress))


def _advance_params(
    run: StepRun, output: dict[str, Any], current_step: int, events: int, now: datetime
) -> dict[str, Any]:
    last = run.is_last
    return {
        "p_job": run.job_id,
        "now": now,
        # Steps run one at a time, so the context read at load time is still the job's.
        "p_context": {**run.context, run.step_name: output},
        "p_progress": 100 if last else progress_for(run.step_index + 1, len(run.recipe_steps)),
        "p_current_step": current_step,
        "p_status": JobStatus.COMPLETED if last else JobStatus.RUNNING,
        "p_finished_at": now if last else None,
        "events": events,
    }


# --- PostgreSQL: each change as one statement ----------------------------------------
#
# The statements above become clauses of one data-modifying WITH, every clause acting
# only on the rows the one before it returned, so a stale fence changes nothing at
# all. In autocommit (db.statement_scope) that is one round trip, where the same
# changes statement by statement take five or six with BEGIN and COMMIT.


def _step_and_job(step_change: Any, job_condition: Any, job_values: dict[str, Any]) -> Any:
    """CTEs: the step change (returning the job id), then the job update it allows."""
    changed_step = step_change.returning(_STEP.c.job_id).cte("changed_step")
    changed_job = (
        update(_JOB)
        .where(_JOB.c.id == changed_step.c.job_id, job_condition)
        .values(**job_values)
        .returning(_JOB.c.id, _JOB.c.last_seq, _JOB.c.feature_name, _JOB.c.progress)
        .cte("changed_job")
    )
    return changed_step, changed_job


def _with_events(changed_job: Any, events: int, *also: Any, outer: bool = False) -> Any:
    """The statement's result: the job's new last_seq, feature and progress (plus the
    columns `also` names, NULL when `outer` and their clause changed no row), once
    `events` events are inserted after the job update."""
    statement = select(
        changed_job.c.last_seq, changed_job.c.feature_name, changed_job.c.progress, *also
    )
    for other in {column.table for column in also}:
        # One row each, or none.
        statement = statement.join_from(changed_job, other, true(), isouter=outer)
    return statement.add_cte(inserted_after(changed_job, events))


_CLAIMED_STEP, _CLAIMED_JOB = _step_and_job(
    _CLAIM_STEP, _JOB.c.status.in_(ACTIVE_JOB), _JOB_STARTED
)
_START_STEP_AT_ONCE = _with_events(_CLAIMED_JOB, 1)

# A claim by a delivery that names its service and queue, returning what the run needs.
_NAMED_STEP = (
    _CLAIM_STEP.where(
        _STEP.c.step_name == bindparam("p_service"), _STEP.c.queue == bindparam("p_queue")
    )
    .returning(
        _STEP.c.job_id,
        _STEP.c.step_name,
        _STEP.c.queue,
        _STEP.c.attempt,
        _STEP.c.fence,
        _STEP.c.max_attempts,
    )  # fmt: skip
    .cte("named_step")
)
_NAMED_JOB = (
    update(_JOB)
    .where(_JOB.c.id == _NAMED_STEP.c.job_id, _JOB.c.status.in_(ACTIVE_JOB))
    .values(**_JOB_STARTED)
    .returning(
        _JOB.c.id,
        _JOB.c.last_seq,
        _JOB.c.feature_name,
        _JOB.c.progress,
        _JOB.c.input_data,
        _JOB.c.context,
        _JOB.c.recipe,
    )  # fmt: skip
    .cte("named_job")
)
_START_NAMED_STEP_AT_ONCE = (
    select(
        _NAMED_JOB.c.last_seq,
        _NAMED_JOB.c.feature_name,
        _NAMED_JOB.c.progress,
        _NAMED_JOB.c.input_data,
        _NAMED_JOB.c.context,
        _NAMED_JOB.c.recipe,
        _NAMED_STEP.c.step_name,
        _NAMED_STEP.c.queue,
        _NAMED_STEP.c.attempt,
        _NAMED_STEP.c.fence,
        _NAMED_STEP.c.max_attempts,
        fence_after(bindparam("index", type_=Integer())).label("next_step_fence"),
    )  # fmt: skip
    .join_from(_NAMED_JOB, _NAMED_STEP, true())
    .add_cte(inserted_after(_NAMED_JOB, 1, attempt=select(_NAMED_STEP.c.attempt).scalar_subquery()))
)

# (onupdate defaults are not applied inside a WITH clause: updated_at is set here.)
_PARKED_STEP, _PARKED_JOB = _step_and_job(
    _MARK_WAITING, true(), {"last_seq": _JOB.c.last_seq + 1, "updated_at": NOW}
)
_PARK_STEP_AT_ONCE = _with_events(_PARKED_JOB, 1)

_DONE_STEP, _DONE_JOB = _step_and_job(
    _COMPLETE_STEP, _JOB.c.status == JobStatus.RUNNING, _JOB_ADVANCED
)
_FINISH_LAST_STEP_AT_ONCE = _with_events(_DONE_JOB, 2)
_QUEUED_NEXT = (
    update(_STEP)
    .where(_STEP.c.job_id == _DONE_STEP.c.job_id, _STEP.c.step_index == bindparam("p_next_index"))
    .values(QUEUE_STEP_VALUES)
    .returning(_STEP.c.queue, _STEP.c.fence)
    .cte("queued_next")
)
_FINISH_STEP_AT_ONCE = _with_events(_DONE_JOB, 1, _QUEUED_NEXT.c.queue, _QUEUED_NEXT.c.fence)
# The next step started with the result: run in a transaction, which the caller rolls
# back when the next step had moved (no row from started_next: next_fence is NULL).
_STARTED_NEXT = (
    _START_NEXT_STEP.where(_STEP.c.job_id == _DONE_STEP.c.job_id)
    .returning(_STEP.c.fence.label("next_fence"))
    .cte("started_next")
)
_CONTINUE_AT_ONCE = _with_events(
    _DONE_JOB, 2, _STARTED_NEXT.c.next_fence, _STARTED_NEXT.c.following_fence, outer=True
)


def _at_once(
    session: Session, statement: Any, params: dict[str, Any], drafts: list[EventDraft]
) -> Any:
    """Run a one-statement change (at `params["now"]` if given); its events are
    published once the session commits."""
    now = params.get("now") or utcnow()
    row = (
        session.connection()
        .execute(statement, {**params, "now": now, **inserted_params(drafts)})
        .one_or_none()
    )
    if row is not None:
        publish_inserted(
            session, params["p_job"], drafts,
            last_seq=row.last_seq, feature_name=row.feature_name, progress=row.progress, ts=now,
        )  # fmt: skip
    return row


def _record(session: Session, job_id: uuid.UUID, slot: EventSlot, drafts: list[EventDraft]) -> None:
    record_events(
        session, job_id, numbered(drafts, slot.first_seq),
        feature_name=slot.feature_name, progress=slot.progress,
    )  # fmt: skip


def _about(run: StepRun, event_type: EventType, data: dict[str, Any] | None = None) -> EventDraft:
    """An event about `run`'s step and attempt."""
    return EventDraft(
        type=event_type, step_index=run.step_index, step_name=run.step_name,
        attempt=run.attempt, data=data or {},
    )  # fmt: skip


def start_step(session: Session, run: StepRun, fence: int) -> EventSlot | None:
    """Start the step for the delivery holding `fence` and record STEP_STARTED; None
    when the delivery is stale or a duplicate."""
    drafts = [_about(run, EventType.STEP_STARTED)]
    if not single_statements(session):
        slot = claim_step(session, run.job_id, run.step_index, fence)
        if slot is not None:
            _record(session, run.job_id, slot, drafts)
        return slot
    params = {"p_job": run.job_id, "index": run.step_index, "p_fence": fence}
    row = _at_once(session, _START_STEP_AT_ONCE, params, drafts)
    return None if row is None else EventSlot(row.last_seq, row.feature_name, row.progress)


def start_named_step(
    session: Session, job_id: uuid.UUID, step_index: int, fence: int, service: str, queue: str
) -> StepRun | None:
    """Start the step for a delivery that names the step's service and queue (whose
    lease the caller took before knowing anything else of the step) and record
    STEP_STARTED; returns the step as claimed. None when the delivery is stale, a
    duplicate, or names another service or queue than the step's.

    On PostgreSQL the claim also reads what the run needs, in one statement: a
    delivery makes one round trip to the database before its call, not two."""
    if not single_statements(session):
        run = load_step_run(session, job_id, step_index)
        if run is None or (run.step_name, run.queue) != (service, queue):
            return None
        if not run.accepts(fence) or start_step(session, run, fence) is None:
            return None
        return dataclasses.replace(run, status=StepStatus.RUNNING, job_status=JobStatus.RUNNING)
    now = utcnow()
    # The attempt is the row's, read by the statement itself (e0_attempt goes unused).
    started = EventDraft(type=EventType.STEP_STARTED, step_index=step_index, step_name=service)
    params = {
        "p_job": job_id, "index": step_index, "p_fence": fence, "p_service": service,
        "p_queue": queue, "now": now, **inserted_params([started]),
    }  # fmt: skip
    row = session.connection().execute(_START_NAMED_STEP_AT_ONCE, params).one_or_none()
    if row is None:
        return None
    run = step_run_of(
        row, job_id, step_index, job_status=JobStatus.RUNNING, status=StepStatus.RUNNING
    )
    publish_inserted(
        session, job_id, [_about(run, EventType.STEP_STARTED)],
        last_seq=row.last_seq, feature_name=row.feature_name, progress=row.progress, ts=now,
    )  # fmt: skip
    return run


def park_step(session: Session, run: StepRun, data: dict[str, Any]) -> bool:
    """Put a claimable step in WAITING_FOR_SLOT and record the event (with `data`);
    False when it was not claimable under its fence (already waiting, or moved on)."""
    draft = _about(run, EventType.WAITING_FOR_SLOT, data)
    if not single_statements(session):
        if not mark_waiting(session, run.job_id, run.step_index, run.fence):
            return False
        append_event(
            session, run.job_id, EventType.WAITING_FOR_SLOT,
            step_index=run.step_index, step_name=run.step_name, attempt=run.attempt, data=data,
        )  # fmt: skip
        return True
    params = {"p_job": run.job_id, "index": run.step_index, "p_fence": run.fence}
    return _at_once(session, _PARK_STEP_AT_ONCE, params, [draft]) is not None


@dataclass(frozen=True)
class Finished:
    """A committed step result: whether the job is done, else its next step's delivery."""

    job_finished: bool
    next_queue: str | None = None
    next_fence: int | None = None


def completed_events(
    run: StepRun, output: dict[str, Any], *, next_started: bool = False
) -> list[EventDraft]:
    """STEP_COMPLETED, and what follows it in the same commit: JOB_COMPLETED after the
    last step, or the next step's STEP_STARTED when it was started with this result."""
    drafts = [_about(run, EventType.STEP_COMPLETED, {"output": output})]
    if run.is_last:
        drafts.append(EventDraft(type=EventType.JOB_COMPLETED))
    elif next_started:
        spec = run.recipe_steps[run.step_index + 1]
        drafts.append(
            EventDraft(
                type=EventType.STEP_STARTED,
                step_index=run.step_index + 1,
                step_name=spec["name"],
                attempt=1,
                data={},
            )  # fmt: skip
        )
    return drafts


def finish_step(
    session: Session, run: StepRun, fence: int, output: dict[str, Any]
) -> Finished | None:
    """Commit the output of the attempt holding `fence`, advance the job, queue its next
    step (the caller enqueues it after commit) and record the events; None when this
    result is stale."""
    drafts = completed_events(run, output)
    if not single_statements(session):
        advance = complete_step(session, run, fence, output)
        if advance is None:
            return None
        _record(session, run.job_id, advance.events, drafts)
        if run.is_last:
            return Finished(job_finished=True)
        queue, next_fence = queue_step(session, run.job_id, run.step_index + 1)
        return Finished(job_finished=False, next_queue=queue, next_fence=next_fence)
    current_step = run.step_index if run.is_last else run.step_index + 1
    params = {
        **_advance_params(run, output, current_step, len(drafts), utcnow()),
        "index": run.step_index, "p_fence": fence, "p_output": output,
        "p_next_index": run.step_index + 1,
    }  # fmt: skip
    statement = _FINISH_LAST_STEP_AT_ONCE if run.is_last else _FINISH_STEP_AT_ONCE
    row = _at_once(session, statement, params, drafts)
    if row is None:
        return None
    if run.is_last:
        return Finished(job_finished=True)
    return Finished(job_finished=False, next_queue=row.queue, next_fence=row.fence)
