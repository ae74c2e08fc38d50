"""What a worker writes as a step runs.

Claiming a step, parking it until a slot frees and committing its result (queueing
the next step, or starting it in the same commit for this worker to run) each write
the step row(s), the job row (whose `last_seq` reserves the seqs of the change's
events) and the events, as one change. On PostgreSQL each is a single
statement of data-modifying WITH clauses; elsewhere (SQLite) the same statements run
one by one in the caller's transaction. Both are fenced alike (see
app/jobs/repository.py for the fence). The statements themselves are in
app/jobs/step_statements.py; this module runs them and records their events.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy.orm import Session

from app.db import single_statements
from app.events.log import (
    EventDraft,
    append_event,
    inserted_params,
    numbered,
    record_events,
    wake_on_commit,
)
from app.events.types import EventType
from app.jobs import step_statements as sql
from app.jobs.repository import (
    StepRun,
    get_step,
    load_step_run,
    queue_step,
    requeue_unstarted,
    rows_changed,
    step_run_of,
)
from app.jobs.states import JobStatus, StepStatus, progress_for
from app.models import utcnow


def mark_waiting(session: Session, job_id: uuid.UUID, step_index: int, fence: int) -> bool:
    params = {"p_job": job_id, "index": step_index, "p_fence": fence}
    return rows_changed(session, sql.MARK_WAITING, params) == 1


@dataclass(frozen=True)
class EventSlot:
    """Event numbers reserved on the job row by the update that changed it."""

    first_seq: int
    feature_name: str
    progress: int


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
    if rows_changed(session, sql.CLAIM_STEP, params) != 1:
        return None
    seq, feature_name, progress = session.connection().execute(sql.START_JOB, params).one()
    return EventSlot(seq, feature_name, progress)


@dataclass(frozen=True)
class Advance:
    """A committed step result: the job's new state and the event numbers reserved."""

    job_finished: bool
    events: EventSlot


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
    already leased. None when this result is stale; raises NextStepMoved when the next
    step is not where this run found it, having changed nothing on PostgreSQL (one
    statement: a statement_scope may run it) and leaving the caller to roll back on
    SQLite."""
    if run.is_last or run.next_step_fence is None:
        raise NextStepMoved(f"step {run.step_index} of job {run.job_id} has no next step")
    next_fence = run.next_step_fence + 1
    drafts = completed_events(run, output, next_started=True)
    params = {
        "p_job": run.job_id,
        "index": run.step_index,
        "p_fence": fence,
        "p_output": output,
        "p_next_index": run.step_index + 1,
        "p_next_fence": next_fence,
    }
    if single_statements(session):
        current_step = run.step_index + 1
        params.update(_advance_params(run, output, current_step, len(drafts), utcnow()))
        # One statement that changes nothing unless it changes all (autocommit is safe).
        row = _at_once(session, sql.CONTINUE_AT_ONCE, params, drafts)
        if not row.next_free:
            raise NextStepMoved(f"step {run.step_index + 1} of job {run.job_id} moved")
        if row.last_seq is None:
            return None
        slot = EventSlot(row.last_seq - 1, row.feature_name, row.progress)
        return Continued(slot, run.successor(output, next_fence, row.following_fence))
    if not _complete(session, run, fence, output):
        return None
    started = session.connection().execute(sql.START_NEXT_STEP, {**params, "now": utcnow()})
    following = started.one_or_none()
    if following is None:
        raise NextStepMoved(f"step {run.step_index + 1} of job {run.job_id} moved")
    advance = _advance(session, run, output, current_step=run.step_index + 1, events=len(drafts))
    _record(session, run.job_id, advance.events, drafts)
    return Continued(advance.events, run.successor(output, next_fence, following[0]))


def _complete(session: Session, run: StepRun, fence: int, output: dict[str, Any]) -> bool:
    params = {
        "p_job": run.job_id,
        "index": run.step_index,
        "p_fence": fence,
        "now": utcnow(),
        "p_output": output,
    }
    return rows_changed(session, sql.COMPLETE_STEP, params) == 1


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
    row = session.connection().execute(sql.ADVANCE_JOB, params).one_or_none()
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


def _at_once(
    session: Session, statement: Any, params: dict[str, Any], drafts: list[EventDraft]
) -> Any:
    """Run a one-statement change (at `params["now"]` if given); subscribers are woken
    for its events once the session commits. A row without `last_seq` changed nothing."""
    now = params.get("now") or utcnow()
    row = (
        session.connection()
        .execute(statement, {**params, "now": now, **inserted_params(drafts)})
        .one_or_none()
    )
    if row is not None and row.last_seq is not None:
        wake_on_commit(session)
    return row


def _record(session: Session, job_id: uuid.UUID, slot: EventSlot, drafts: list[EventDraft]) -> None:
    record_events(
        session,
        job_id,
        numbered(drafts, slot.first_seq),
        feature_name=slot.feature_name,
        progress=slot.progress,
    )


def _about(run: StepRun, event_type: EventType, data: dict[str, Any] | None = None) -> EventDraft:
    """An event about `run`'s step and attempt."""
    return EventDraft(
        type=event_type,
        step_index=run.step_index,
        step_name=run.step_name,
        attempt=run.attempt,
        data=data or {},
    )


def start_step(
    session: Session, run: StepRun, fence: int, *, claim_token: str | None = None
) -> EventSlot | None:
    """Start the step for the delivery holding `fence` (and `claim_token`: see
    claimed_by) and record STEP_STARTED; None when the delivery is stale or a
    duplicate."""
    drafts = [_about(run, EventType.STEP_STARTED)]
    if not single_statements(session):
        slot = claim_step(session, run.job_id, run.step_index, fence, claim_token=claim_token)
        if slot is not None:
            _record(session, run.job_id, slot, drafts)
        return slot
    params = {
        "p_job": run.job_id,
        "index": run.step_index,
        "p_fence": fence,
        "p_claim_token": claim_token,
    }
    row = _at_once(session, sql.START_STEP_AT_ONCE, params, drafts)
    return None if row is None else EventSlot(row.last_seq, row.feature_name, row.progress)


class NamedStep(NamedTuple):
    """The step a delivery that names its service and queue acts on (app/jobs/dispatch.py)."""

    job_id: uuid.UUID
    step_index: int
    fence: int
    service: str
    queue: str


def start_named_step(
    session: Session, named: NamedStep, *, claim_token: str | None = None
) -> StepRun | None:
    """Start the step for a delivery that names the step's service and queue (whose
    lease the caller took before knowing anything else of the step) and record
    STEP_STARTED; returns the step as claimed. None when the delivery is stale, a
    duplicate, or names another service or queue than the step's.

    On PostgreSQL the claim also reads what the run needs, in one statement: a
    delivery makes one round trip to the database before its call, not two."""
    job_id, step_index, fence, service, _ = named
    if not single_statements(session):
        run = _named_run(session, named)
        if run is None or start_step(session, run, fence, claim_token=claim_token) is None:
            return None
        return dataclasses.replace(run, status=StepStatus.RUNNING, job_status=JobStatus.RUNNING)
    started = EventDraft(type=EventType.STEP_STARTED, step_index=step_index, step_name=service)
    row = _named_change(
        session, sql.START_NAMED_STEP_AT_ONCE, named, started, {"p_claim_token": claim_token}
    )
    if row is None:
        return None
    return step_run_of(
        row, job_id, step_index, job_status=JobStatus.RUNNING, status=StepStatus.RUNNING
    )


def _named_change(
    session: Session,
    statement: Any,
    named: NamedStep,
    draft: EventDraft,
    extra: dict[str, Any] | None = None,
) -> Any:
    """Run the one-statement change of a delivery naming its step's service and queue:
    its row, or None when the step did not match. The change's one event is `draft`,
    with the attempt the statement read from the step row (`extra`: the statement's
    other parameters); subscribers are woken once the session commits."""
    job_id, step_index, fence, service, queue = named
    now = utcnow()
    params = {
        "p_job": job_id,
        "index": step_index,
        "p_fence": fence,
        "p_service": service,
        "p_queue": queue,
        "now": now,
        **inserted_params([draft]),
        **(extra or {}),
    }
    row = session.connection().execute(statement, params).one_or_none()
    if row is not None and row.last_seq is not None:
        wake_on_commit(session)
    return row


def claimed_by(
    session: Session, job_id: uuid.UUID, step_index: int, fence: int, claim_token: str
) -> bool:
    """Whether the step runs under the claim that carried `claim_token`: a claim is one
    autocommitted statement, and a delivery that lost its answer asks this to learn
    whether it landed. A duplicate delivery of the same message has a token of its own."""
    params = {"p_job": job_id, "index": step_index, "p_fence": fence, "p_claim_token": claim_token}
    return session.connection().execute(sql.CLAIMED_BY, params).first() is not None


def park_step(session: Session, run: StepRun, data: dict[str, Any]) -> bool:
    """Put a claimable step in WAITING_FOR_SLOT and record the event (with `data`);
    False when it was not claimable under its fence (already waiting, or moved on)."""
    draft = _about(run, EventType.WAITING_FOR_SLOT, data)
    if not single_statements(session):
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
    params = {"p_job": run.job_id, "index": run.step_index, "p_fence": run.fence}
    return _at_once(session, sql.PARK_STEP_AT_ONCE, params, [draft]) is not None


def _named_run(session: Session, named: NamedStep) -> StepRun | None:
    """The step a named delivery may act on (read first, as SQLite does), or None."""
    run = load_step_run(session, named.job_id, named.step_index)
    names = (named.service, named.queue)
    if run is None or (run.step_name, run.queue) != names or not run.accepts(named.fence):
        return None
    return run


def park_named_step(session: Session, named: NamedStep, data: dict[str, Any]) -> int | None:
    """Put the step in WAITING_FOR_SLOT for a delivery that names its service and queue
    and found that service full, and record the event (with `data`); returns the
    step's attempt. None when the delivery is stale, a duplicate (the step waits
    already, or moved on) or names another service or queue than the step's.

    On PostgreSQL one statement, which does not read the step first."""
    if not single_statements(session):
        run = _named_run(session, named)
        return run.attempt if run is not None and park_step(session, run, data) else None
    parked = EventDraft(
        type=EventType.WAITING_FOR_SLOT,
        step_index=named.step_index,
        step_name=named.service,
        data=data,
    )
    row = _named_change(session, sql.PARK_NAMED_STEP_AT_ONCE, named, parked)
    return None if row is None else int(row.attempt)


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
            )
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
        "index": run.step_index,
        "p_fence": fence,
        "p_output": output,
        "p_next_index": run.step_index + 1,
    }
    statement = sql.FINISH_LAST_STEP_AT_ONCE if run.is_last else sql.FINISH_STEP_AT_ONCE
    row = _at_once(session, statement, params, drafts)
    if row is None:
        return None
    if run.is_last:
        return Finished(job_finished=True)
    return Finished(job_finished=False, next_queue=row.queue, next_fence=row.fence)


def recorded_earlier(
    session: Session, run: StepRun, started_next: int | None = None
) -> Finished | None:
    """What an earlier try to record this very attempt's result left, when that try's
    commit landed but its answer was lost (the connection cut meanwhile): the step is
    COMPLETED under `run.fence`, which only this attempt holds. None when it is not.

    The next step's delivery is given if that step still waits, QUEUED, for the
    enqueue the lost answer kept from being sent (a duplicate delivery changes
    nothing); or if it is RUNNING under `started_next`, the fence this worker's own
    continuation gave it and then abandoned: it is put back on its queue under a new
    fence, still its first attempt (it never called its service)."""
    if not _left_by_this_attempt(session, run, StepStatus.COMPLETED, run.fence):
        return None
    if run.is_last:
        return Finished(job_finished=True)
    index = run.step_index + 1
    following = get_step(session, run.job_id, index)
    fence = None
    if following is not None and following.status == StepStatus.QUEUED:
        fence = following.fence
    elif following is not None and following.status == StepStatus.RUNNING:
        if following.fence == started_next:
            fence = requeue_unstarted(session, run.job_id, index, following.fence)
    if following is None or fence is None:
        return Finished(job_finished=False)
    return Finished(job_finished=False, next_queue=following.queue, next_fence=fence)


def retried_earlier(session: Session, run: StepRun) -> int | None:
    """The next attempt's fence when an earlier try to schedule this attempt's retry
    committed and its answer was lost: the step is RETRYING under the fence that
    `retry_step` gives after `run.fence`. None otherwise."""
    next_fence = run.fence + 1
    return (
        next_fence if _left_by_this_attempt(session, run, StepStatus.RETRYING, next_fence) else None
    )


def failed_earlier(session: Session, run: StepRun) -> bool:
    """Whether an earlier try to fail the job with this attempt's error committed and
    its answer was lost: the step is FAILED under `run.fence`."""
    return _left_by_this_attempt(session, run, StepStatus.FAILED, run.fence)


def _left_by_this_attempt(session: Session, run: StepRun, status: str, fence: int) -> bool:
    """The step is in `status` under `fence`, where only `run`'s attempt could put it."""
    step = get_step(session, run.job_id, run.step_index)
    return step is not None and step.status == status and step.fence == fence
