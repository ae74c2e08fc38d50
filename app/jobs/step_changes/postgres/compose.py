"""How the PostgreSQL step changes are composed and run.

A change's one-table statements (app/jobs/step_changes/per_table.py) become the clauses
of one data-modifying WITH, each clause acting only on the rows the one before it
returned, so a stale fence changes nothing at all. In autocommit (db.statement_scope)
that is one round trip, where the same changes statement by statement take five or six
with BEGIN and COMMIT. The events are inserted by the same statement
(events.log.inserted_after), with their seqs reserved by its job update.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVarTuple

from sqlalchemy import (
    CTE,
    ColumnElement,
    Row,
    ScalarSelect,
    Select,
    Update,
    select,
    true,
    update,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import KeyedColumnElement

from app.events.log import EventDraft, inserted_after, inserted_params, wake_on_commit
from app.jobs.step_changes.interface import NamedStep
from app.models import job_step_table, job_table, utcnow

_JOB = job_table
_STEP = job_step_table
_Columns = TypeVarTuple("_Columns")


def step_and_job(
    step_change: Update,
    job_condition: ColumnElement[bool],
    job_values: Mapping[str, ColumnElement[Any] | str],
) -> tuple[CTE, CTE]:
    """CTEs: the step change (returning the job id), then the job update it allows,
    returning the job's id, last_seq, feature_name and progress."""
    changed_step = step_change.returning(_STEP.c.job_id).cte("changed_step")
    changed_job = (
        update(_JOB)
        .where(_JOB.c.id == changed_step.c.job_id, job_condition)
        .values(**job_values)
        .returning(_JOB.c.id, _JOB.c.last_seq, _JOB.c.feature_name, _JOB.c.progress)
        .cte("changed_job")
    )
    return changed_step, changed_job


def with_events(
    changed_job: CTE,
    events: int,
    *also: KeyedColumnElement[Any],
    attempt: ScalarSelect[Any] | None = None,
) -> Select[*tuple[Any, ...]]:
    """The statement's result: the job's new last_seq, feature_name and progress (plus
    the columns `also` names), once `events` events are inserted after the job update
    (with `attempt`, when given, as their attempt: see events.log.inserted_after)."""
    statement = select(
        changed_job.c.last_seq, changed_job.c.feature_name, changed_job.c.progress, *also
    )
    for other in {column.table for column in also}:
        # One row each, or none.
        statement = statement.join_from(changed_job, other, true())
    return statement.add_cte(inserted_after(changed_job, events, attempt=attempt))


def run_change(
    session: Session,
    statement: Select[*_Columns],
    params: Mapping[str, object],
    drafts: Sequence[EventDraft],
) -> Row[*_Columns] | None:
    """Run a one-statement change whose events are `drafts` (at `params["now"]` if
    given); subscribers are woken for its events once the session commits. A row whose
    `last_seq` is NULL (a statement that always answers) changed nothing."""
    now = params.get("now") or utcnow()
    row = (
        session.connection()
        .execute(statement, {**params, "now": now, **inserted_params(drafts)})
        .one_or_none()
    )
    if row is not None and row.last_seq is not None:
        wake_on_commit(session)
    return row


def named_params(named: NamedStep) -> dict[str, object]:
    """The parameters of a change a delivery naming its step's service and queue makes."""
    job_id, step_index, fence, service, queue = named
    return {
        "p_job": job_id,
        "index": step_index,
        "p_fence": fence,
        "p_service": service,
        "p_queue": queue,
    }
