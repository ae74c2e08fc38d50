"""The statements a worker runs as a step runs (app/jobs/step_changes.py runs them).

Each change first as one statement per table, as SQLite runs them in the caller's
transaction; then, for PostgreSQL, the same changes composed into one statement of
data-modifying WITH clauses each (see the section below).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Integer, String, bindparam, case, exists, func, select, true, update

from app.events.log import inserted_after
from app.jobs.repository import (
    JOB_IS_ACTIVE,
    NOW,
    QUEUE_STEP_VALUES,
    RUN_COLUMNS_CLEARED,
    THIS_STEP,
    fence_after,
)
from app.jobs.states import ACTIVE_JOB, CLAIMABLE_STEP, JobStatus, StepStatus
from app.models import UTCDateTime, job_step_table, job_table

_JOB = job_table
_STEP = job_step_table

MARK_WAITING = (
    update(_STEP)
    .where(
        THIS_STEP,
        _STEP.c.fence == bindparam("p_fence"),
        _STEP.c.status.in_((StepStatus.QUEUED, StepStatus.RETRYING)),
        JOB_IS_ACTIVE,
    )
    .values(status=StepStatus.WAITING_FOR_SLOT)
)


CLAIM_STEP = (
    update(_STEP)
    .where(
        THIS_STEP,
        _STEP.c.fence == bindparam("p_fence"),
        _STEP.c.status.in_(CLAIMABLE_STEP),
        JOB_IS_ACTIVE,
    )
    .values(
        status=StepStatus.RUNNING,
        started_at=NOW,
        heartbeat_at=NOW,
        finished_at=None,
        claim_token=bindparam("p_claim_token", type_=String()),
    )
)
_JOB_STARTED: dict[str, Any] = {
    "status": JobStatus.RUNNING,
    "current_step": bindparam("index"),
    "started_at": func.coalesce(_JOB.c.started_at, NOW),
    "updated_at": NOW,
    "last_seq": _JOB.c.last_seq + 1,
}
START_JOB = (
    update(_JOB)
    .where(_JOB.c.id == bindparam("p_job"), _JOB.c.status.in_(ACTIVE_JOB))
    .values(**_JOB_STARTED)
    .returning(_JOB.c.last_seq, _JOB.c.feature_name, _JOB.c.progress)
)

# Whether the step runs under the claim of the delivery holding `p_claim_token`.
CLAIMED_BY = select(_STEP.c.job_id).where(
    THIS_STEP,
    _STEP.c.fence == bindparam("p_fence"),
    _STEP.c.status == StepStatus.RUNNING,
    _STEP.c.claim_token == bindparam("p_claim_token", type_=String()),
)


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
ADVANCE_JOB = (
    update(_JOB)
    .where(_JOB.c.id == bindparam("p_job"), _JOB.c.status == JobStatus.RUNNING)
    .values(**_JOB_ADVANCED)
    .returning(_JOB.c.last_seq, _JOB.c.feature_name, _JOB.c.progress)
)


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


def _with_events(changed_job: Any, events: int, *also: Any, attempt: Any = None) -> Any:
    """The statement's result: the job's new last_seq, feature and progress (plus the
    columns `also` names), once `events` events are inserted after the job update (with
    `attempt`, when given, as their attempt: see events.log.inserted_after)."""
    statement = select(
        changed_job.c.last_seq, changed_job.c.feature_name, changed_job.c.progress, *also
    )
    for other in {column.table for column in also}:
        # One row each, or none.
        statement = statement.join_from(changed_job, other, true())
    return statement.add_cte(inserted_after(changed_job, events, attempt=attempt))


_CLAIMED_STEP, _CLAIMED_JOB = _step_and_job(CLAIM_STEP, _JOB.c.status.in_(ACTIVE_JOB), _JOB_STARTED)
START_STEP_AT_ONCE = _with_events(_CLAIMED_JOB, 1)

# A claim by a delivery that names its service and queue, returning what the run needs.
_NAMED_STEP = (
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
    )
    .cte("named_job")
)
START_NAMED_STEP_AT_ONCE = (
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
    )
    .join_from(_NAMED_JOB, _NAMED_STEP, true())
    .add_cte(inserted_after(_NAMED_JOB, 1, attempt=select(_NAMED_STEP.c.attempt).scalar_subquery()))
)

# (onupdate defaults are not applied inside a WITH clause: updated_at is set here.)
_PARKED_STEP, _PARKED_JOB = _step_and_job(
    MARK_WAITING, true(), {"last_seq": _JOB.c.last_seq + 1, "updated_at": NOW}
)
PARK_STEP_AT_ONCE = _with_events(_PARKED_JOB, 1)

# A park by a delivery that names its service and queue (the service was full): the
# step is not read first, and its event takes the attempt from the row.
_NAMED_PARKED_STEP, _NAMED_PARKED_JOB = _step_and_job(
    MARK_WAITING.where(
        _STEP.c.step_name == bindparam("p_service"), _STEP.c.queue == bindparam("p_queue")
    ).returning(_STEP.c.attempt),
    true(),
    {"last_seq": _JOB.c.last_seq + 1, "updated_at": NOW},
)
PARK_NAMED_STEP_AT_ONCE = _with_events(
    _NAMED_PARKED_JOB,
    1,
    _NAMED_PARKED_STEP.c.attempt,
    attempt=select(_NAMED_PARKED_STEP.c.attempt).scalar_subquery(),
)

_DONE_STEP, _DONE_JOB = _step_and_job(
    COMPLETE_STEP, _JOB.c.status == JobStatus.RUNNING, _JOB_ADVANCED
)
FINISH_LAST_STEP_AT_ONCE = _with_events(_DONE_JOB, 2)
_QUEUED_NEXT = (
    update(_STEP)
    .where(_STEP.c.job_id == _DONE_STEP.c.job_id, _STEP.c.step_index == bindparam("p_next_index"))
    .values(QUEUE_STEP_VALUES)
    .returning(_STEP.c.queue, _STEP.c.fence)
    .cte("queued_next")
)
FINISH_STEP_AT_ONCE = _with_events(_DONE_JOB, 1, _QUEUED_NEXT.c.queue, _QUEUED_NEXT.c.fence)
# The next step started with the result, in one autocommitted statement. Nothing
# changes unless the next step is still the PENDING row this run found: `locked_steps`
# locks this step's row and the next one's first, in step order as a cancel does (the
# other order could deadlock with it), so that no cancel slips in between the check
# and the start and leaves the result committed with no next step. Rows locked after
# a wait are read as the other transaction left them.
_LOCKED_STEPS = (
    select(_STEP.c.step_index, _STEP.c.status, _STEP.c.fence)
    .where(
        _STEP.c.job_id == bindparam("p_job"),
        _STEP.c.step_index.in_([bindparam("index"), bindparam("p_next_index")]),
    )
    .order_by(_STEP.c.step_index)
    .with_for_update()
    .cte("locked_steps")
)
_NEXT_FREE = exists().where(
    _LOCKED_STEPS.c.step_index == bindparam("p_next_index"),
    _LOCKED_STEPS.c.fence == bindparam("p_next_fence", type_=Integer()) - 1,
    _LOCKED_STEPS.c.status == StepStatus.PENDING,
)
_CONTINUED_STEP, _CONTINUED_JOB = _step_and_job(
    COMPLETE_STEP.where(_NEXT_FREE),
    _JOB.c.status == JobStatus.RUNNING,
    _JOB_ADVANCED,
)
_STARTED_NEXT = (
    START_NEXT_STEP.where(_STEP.c.job_id == _CONTINUED_STEP.c.job_id)
    .returning(_STEP.c.fence.label("next_fence"))
    .cte("started_next")
)
# Always one row: `next_free` false when the next step moved (nothing changed), else
# last_seq NULL when this result is stale.
_ONE_ROW = select(_NEXT_FREE.label("next_free")).subquery("one_row")
CONTINUE_AT_ONCE = (
    select(
        _ONE_ROW.c.next_free,
        _CONTINUED_JOB.c.last_seq,
        _CONTINUED_JOB.c.feature_name,
        _CONTINUED_JOB.c.progress,
        _STARTED_NEXT.c.next_fence,
        _STARTED_NEXT.c.following_fence,
    )
    .select_from(_ONE_ROW)
    .join(_CONTINUED_JOB, true(), isouter=True)
    .join(_STARTED_NEXT, true(), isouter=True)
    .add_cte(inserted_after(_CONTINUED_JOB, 2))
)
