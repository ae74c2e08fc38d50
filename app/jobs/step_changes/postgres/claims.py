"""PostgreSQL: a delivery starting its step, or parking it until a slot frees, each in
one statement (composed as app/jobs/step_changes/postgres/compose.py says), with the
code that reads its row beside it."""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import Integer, Select, bindparam, select, true, update
from sqlalchemy.orm import Session

from app.events.log import EventDraft, inserted_after
from app.events.types import EventType
from app.jobs.states import ACTIVE_JOB, JobStatus, StepStatus
from app.jobs.step_changes.drafts import about
from app.jobs.step_changes.interface import EventSlot, NamedStep
from app.jobs.step_changes.per_table import CLAIM_STEP, JOB_STARTED, MARK_WAITING
from app.jobs.step_changes.postgres.compose import (
    named_params,
    run_change,
    step_and_job,
    with_events,
)
from app.jobs.step_repository import NOW, StepRun, fence_after, step_run_of
from app.models import job_step_table, job_table

_JOB = job_table
_STEP = job_step_table


@cache
def start_step_at_once() -> Select[int, str, int]:
    """Claim a step for a delivery and record its STEP_STARTED.

    Takes: p_job, index (the step), p_fence (the delivery's), p_claim_token, now, and
    the event's e0_type, e0_step_index, e0_step_name, e0_attempt, e0_data.
    Changes: the step, when claimable (QUEUED, WAITING_FOR_SLOT or RETRYING) under
    p_fence in an active job, to RUNNING with p_claim_token; then its job to RUNNING at
    step `index`, reserving one seq (last_seq + 1); then inserts STEP_STARTED with it.
    Returns: one row (last_seq, feature_name, progress) when the claim took; none when
    the delivery is stale or a duplicate, and then nothing changed."""
    _, claimed_job = step_and_job(CLAIM_STEP, _JOB.c.status.in_(ACTIVE_JOB), JOB_STARTED)
    return with_events(claimed_job, 1)


def start_step(
    session: Session, run: StepRun, fence: int, *, claim_token: str | None = None
) -> EventSlot | None:
    params = {
        "p_job": run.job_id,
        "index": run.step_index,
        "p_fence": fence,
        "p_claim_token": claim_token,
    }
    drafts = [about(run, EventType.STEP_STARTED)]
    row = run_change(session, start_step_at_once(), params, drafts)
    if row is None:
        return None
    last_seq, feature_name, progress = row
    return EventSlot(last_seq, feature_name, progress)


@cache
def start_named_step_at_once() -> Select[
    int,
    str,
    int,
    dict[str, Any],
    dict[str, Any],
    dict[str, Any],
    dict[str, Any] | None,
    str,
    str,
    int,
    int,
    int,
    int,
]:
    """Claim a step for a delivery that names its service and queue, and record its
    STEP_STARTED, reading what the run needs: one round trip before the call, not two.

    Takes: what start_step_at_once takes (the event's e0_attempt aside: it is the
    step's attempt), and p_service and p_queue, the names the delivery carries.
    Changes: as start_step_at_once, and only a step of that service and queue.
    Returns: one row when the claim took: the job's last_seq (the event's seq),
    feature_name, progress, input_data, context, recipe and trace_context, the step's
    step_name, queue, attempt, fence and max_attempts, and next_step_fence (the fence of
    the step after it, NULL after the last); none when the delivery is stale, a duplicate or
    names another service or queue, and then nothing changed."""
    named_step = (
        CLAIM_STEP.where(
            _STEP.c.step_name == bindparam("p_service"), _STEP.c.queue == bindparam("p_queue")
        )
        .returning(
            _STEP.c.job_id,
            _STEP.c.step_name,
            _STEP.c.queue,
            _STEP.c.attempt,
            _STEP.c.fence,
            _STEP.c.max_attempts,
        )
        .cte("named_step")
    )
    named_job = (
        update(_JOB)
        .where(_JOB.c.id == named_step.c.job_id, _JOB.c.status.in_(ACTIVE_JOB))
        .values(**JOB_STARTED)
        .returning(
            _JOB.c.id,
            _JOB.c.last_seq,
            _JOB.c.feature_name,
            _JOB.c.progress,
            _JOB.c.input_data,
            _JOB.c.context,
            _JOB.c.recipe,
            _JOB.c.trace_context,
        )
        .cte("named_job")
    )
    return (
        select(
            named_job.c.last_seq,
            named_job.c.feature_name,
            named_job.c.progress,
            named_job.c.input_data,
            named_job.c.context,
            named_job.c.recipe,
            named_job.c.trace_context,
            named_step.c.step_name,
            named_step.c.queue,
            named_step.c.attempt,
            named_step.c.fence,
            named_step.c.max_attempts,
            fence_after(bindparam("index", type_=Integer())).label("next_step_fence"),
        )
        .join_from(named_job, named_step, true())
        .add_cte(
            inserted_after(named_job, 1, attempt=select(named_step.c.attempt).scalar_subquery())
        )
    )


def start_named_step(
    session: Session, named: NamedStep, *, claim_token: str | None = None
) -> StepRun | None:
    started = EventDraft(
        type=EventType.STEP_STARTED, step_index=named.step_index, step_name=named.service
    )
    params = {**named_params(named), "p_claim_token": claim_token}
    row = run_change(session, start_named_step_at_once(), params, [started])
    if row is None:
        return None
    return step_run_of(
        row,
        named.job_id,
        named.step_index,
        job_status=JobStatus.RUNNING,
        status=StepStatus.RUNNING,
    )


# (onupdate defaults are not applied inside a WITH clause: updated_at is set here.)
_JOB_PARKED = {"last_seq": _JOB.c.last_seq + 1, "updated_at": NOW}


@cache
def park_step_at_once() -> Select[int, str, int]:
    """Put a step in WAITING_FOR_SLOT (its service is full) and record the event.

    Takes: p_job, index (the step), p_fence (the delivery's), now, and the event's
    e0_type, e0_step_index, e0_step_name, e0_attempt, e0_data.
    Changes: the step, when QUEUED or RETRYING under p_fence in an active job, to
    WAITING_FOR_SLOT; then its job's last_seq, reserving one seq; then inserts
    WAITING_FOR_SLOT with it.
    Returns: one row (last_seq, feature_name, progress) when the step was parked; none
    when it was not claimable under its fence (already waiting, or moved on), and then
    nothing changed."""
    _, parked_job = step_and_job(MARK_WAITING, true(), _JOB_PARKED)
    return with_events(parked_job, 1)


def park_step(session: Session, run: StepRun, data: dict[str, Any]) -> bool:
    params = {"p_job": run.job_id, "index": run.step_index, "p_fence": run.fence}
    drafts = [about(run, EventType.WAITING_FOR_SLOT, data)]
    return run_change(session, park_step_at_once(), params, drafts) is not None


@cache
def park_named_step_at_once() -> Select[int, str, int, int]:
    """Park the step of a delivery that names its service and queue and found that
    service full, and record the event, without reading the step first.

    Takes: what park_step_at_once takes (the event's e0_attempt aside: it is the step's
    attempt), and p_service and p_queue, the names the delivery carries.
    Changes: as park_step_at_once, and only a step of that service and queue.
    Returns: one row (last_seq, feature_name, progress, attempt) when the step was
    parked; none when the delivery is stale, a duplicate (the step waits already, or
    moved on) or names another service or queue, and then nothing changed."""
    parked_step, parked_job = step_and_job(
        MARK_WAITING.where(
            _STEP.c.step_name == bindparam("p_service"), _STEP.c.queue == bindparam("p_queue")
        ).returning(_STEP.c.attempt),
        true(),
        _JOB_PARKED,
    )
    return with_events(
        parked_job,
        1,
        parked_step.c.attempt,
        attempt=select(parked_step.c.attempt).scalar_subquery(),
    )


def park_named_step(session: Session, named: NamedStep, data: dict[str, Any]) -> int | None:
    parked = EventDraft(
        type=EventType.WAITING_FOR_SLOT,
        step_index=named.step_index,
        step_name=named.service,
        data=data,
    )
    row = run_change(session, park_named_step_at_once(), named_params(named), [parked])
    return None if row is None else int(row.attempt)
