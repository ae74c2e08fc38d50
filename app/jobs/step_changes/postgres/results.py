"""PostgreSQL: committing a step's result, with the next step queued (or the job
finished), or started in the same statement for this worker to run; each change one
statement (composed as app/jobs/step_changes/postgres/compose.py says), with the code
that reads its row beside it."""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import Integer, Select, bindparam, exists, select, true, update
from sqlalchemy.orm import Session

from app.events.log import inserted_after
from app.jobs.states import JobStatus, StepStatus
from app.jobs.step_changes.drafts import completed_events
from app.jobs.step_changes.interface import Continued, EventSlot, Finished, NextStepMoved
from app.jobs.step_changes.per_table import (
    COMPLETE_STEP,
    JOB_ADVANCED,
    START_NEXT_STEP,
    advance_params,
    next_step_fence,
)
from app.jobs.step_changes.postgres.compose import run_change, step_and_job, with_events
from app.jobs.step_repository import QUEUE_STEP_VALUES, StepRun
from app.models import job_step_table, job_table, utcnow

_JOB = job_table
_STEP = job_step_table


@cache
def finish_last_step_at_once() -> Select[int, str, int]:
    """Commit the last step's result and finish the job.

    Takes: p_job, index (the step), p_fence (the attempt's), p_output, now; the job
    columns of per_table.advance_params (p_context, p_progress, p_current_step,
    p_status COMPLETED, p_finished_at, and events: 2); and the events' e0_*
    (STEP_COMPLETED) and e1_* (JOB_COMPLETED).
    Changes: the step, when RUNNING under p_fence, to COMPLETED with p_output; then its
    RUNNING job as advance_params says, reserving two seqs; then inserts both events.
    Returns: one row (last_seq, feature_name, progress) when the result was committed;
    none when it is stale, and then nothing changed."""
    _, done_job = step_and_job(COMPLETE_STEP, _JOB.c.status == JobStatus.RUNNING, JOB_ADVANCED)
    return with_events(done_job, 2)


@cache
def finish_step_at_once() -> Select[int, str, int, str, int]:
    """Commit a step's result, advance the job and queue its next step, which the
    caller enqueues after commit.

    Takes: what finish_last_step_at_once takes (p_status RUNNING, events: 1, and only
    STEP_COMPLETED's e0_*), and p_next_index, the next step.
    Changes: the step and its job as finish_last_step_at_once does, reserving one seq;
    the next step to QUEUED, a fresh attempt 1 under a new fence; inserts the event.
    Returns: one row (last_seq, feature_name, progress, and the next step's delivery:
    queue, fence) when the result was committed; none when it is stale, and then
    nothing changed."""
    done_step, done_job = step_and_job(
        COMPLETE_STEP, _JOB.c.status == JobStatus.RUNNING, JOB_ADVANCED
    )
    queued_next = (
        update(_STEP)
        .where(
            _STEP.c.job_id == done_step.c.job_id, _STEP.c.step_index == bindparam("p_next_index")
        )
        .values(QUEUE_STEP_VALUES)
        .returning(_STEP.c.queue, _STEP.c.fence)
        .cte("queued_next")
    )
    return with_events(done_job, 1, queued_next.c.queue, queued_next.c.fence)


def finish_step(
    session: Session, run: StepRun, fence: int, output: dict[str, Any]
) -> Finished | None:
    drafts = completed_events(run, output)
    current_step = run.step_index if run.is_last else run.step_index + 1
    params = {
        **advance_params(run, output, current_step, len(drafts), utcnow()),
        "index": run.step_index,
        "p_fence": fence,
        "p_output": output,
        "p_next_index": run.step_index + 1,
    }
    if run.is_last:
        if run_change(session, finish_last_step_at_once(), params, drafts) is None:
            return None
        return Finished(job_finished=True)
    row = run_change(session, finish_step_at_once(), params, drafts)
    if row is None:
        return None
    *_, queue, next_fence = row
    return Finished(job_finished=False, next_queue=queue, next_fence=next_fence)


@cache
def continue_at_once() -> Select[bool, int | None, str | None, int | None, int | None, int | None]:
    """Commit a step's result and start the next step's first attempt, for the worker
    that runs it itself (no broker round trip).

    Takes: p_job, index (the step), p_fence (the attempt's), p_output, now; the job
    columns of per_table.advance_params (p_status RUNNING, events: 2); p_next_index and
    p_next_fence, the fence the next step takes (one after the fence this run found it
    with); and the events' e0_* (STEP_COMPLETED) and e1_* (the next step's STEP_STARTED).
    Changes: nothing unless the next step is still the PENDING row this run found:
    `locked_steps` locks this step's row and the next one's first, in step order as a
    cancel does (the other order could deadlock with it), so that no cancel slips in
    between the check and the start and leaves the result committed with no next
    step. Rows locked after a wait are read as the other transaction left them. Then
    the step, when RUNNING under p_fence, to COMPLETED with p_output; its RUNNING job
    as advance_params says, reserving two seqs; the next step to RUNNING, attempt 1
    under p_next_fence; and inserts both events.
    Returns: always one row (next_free, last_seq, feature_name, progress, next_fence,
    following_fence): next_free false when the next step moved (nothing changed); else
    last_seq NULL when this result is stale (nothing changed); else the change made,
    following_fence being the fence of the step after the next (NULL after the last)."""
    locked_steps = (
        select(_STEP.c.step_index, _STEP.c.status, _STEP.c.fence)
        .where(
            _STEP.c.job_id == bindparam("p_job"),
            _STEP.c.step_index.in_([bindparam("index"), bindparam("p_next_index")]),
        )
        .order_by(_STEP.c.step_index)
        .with_for_update()
        .cte("locked_steps")
    )
    next_free = exists().where(
        locked_steps.c.step_index == bindparam("p_next_index"),
        locked_steps.c.fence == bindparam("p_next_fence", type_=Integer()) - 1,
        locked_steps.c.status == StepStatus.PENDING,
    )
    continued_step, continued_job = step_and_job(
        COMPLETE_STEP.where(next_free), _JOB.c.status == JobStatus.RUNNING, JOB_ADVANCED
    )
    started_next = (
        START_NEXT_STEP.where(_STEP.c.job_id == continued_step.c.job_id)
        .returning(_STEP.c.fence.label("next_fence"))
        .cte("started_next")
    )
    one_row = select(next_free.label("next_free")).subquery("one_row")
    return (
        select(
            one_row.c.next_free,
            continued_job.c.last_seq,
            continued_job.c.feature_name,
            continued_job.c.progress,
            started_next.c.next_fence,
            started_next.c.following_fence,
        )
        .select_from(one_row)
        .join(continued_job, true(), isouter=True)
        .join(started_next, true(), isouter=True)
        .add_cte(inserted_after(continued_job, 2))
    )


def complete_and_start_next(
    session: Session, run: StepRun, fence: int, output: dict[str, Any]
) -> Continued | None:
    """Raises NextStepMoved having changed nothing: one statement, which a
    statement_scope may run."""
    next_fence = next_step_fence(run)
    drafts = completed_events(run, output, next_started=True)
    params = {
        **advance_params(run, output, run.step_index + 1, len(drafts), utcnow()),
        "index": run.step_index,
        "p_fence": fence,
        "p_output": output,
        "p_next_index": run.step_index + 1,
        "p_next_fence": next_fence,
    }
    row = run_change(session, continue_at_once(), params, drafts)
    if row is None:
        raise RuntimeError("continue_at_once answers one row, always")
    next_free, last_seq, feature_name, progress, _, following_fence = row
    if not next_free:
        raise NextStepMoved(f"step {run.step_index + 1} of job {run.job_id} moved")
    if last_seq is None or feature_name is None or progress is None:
        return None
    slot = EventSlot(last_seq - 1, feature_name, progress)
    return Continued(slot, run.successor(output, next_fence, following_fence))
