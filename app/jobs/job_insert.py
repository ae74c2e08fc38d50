"""How a job is created: its row, its step rows and its first event, as one change
(one statement on PostgreSQL; elsewhere one per table in the caller's transaction)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from sqlalchemy import bindparam, func, insert, literal, select, true
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from app.db import single_statements
from app.events.log import (
    EventDraft,
    inserted_after,
    inserted_params,
    numbered,
    record_events,
    wake_on_commit,
)
from app.models import Job, job_step_table, job_table

_JOB = job_table
_STEP = job_step_table


def insert_job(
    session: Session, job: Job, steps: list[dict[str, Any]], created: EventDraft
) -> None:
    """Insert a new job (a transient `Job`, left out of the session), its step rows and
    its first event (seq 1), published once the session commits. On PostgreSQL one
    statement; elsewhere one per table."""
    values = {column.key: getattr(job, column.key) for column in job_table.columns}
    connection = session.connection()
    if single_statements(session):
        params = {f"j_{key}": value for key, value in values.items()}
        # One array per step column (the job id comes from the inserted job row).
        keys = tuple(key for key in steps[0] if key != "job_id")
        params.update({f"s_{key}": [step[key] for step in steps] for key in keys})
        params.update(inserted_params([created]))
        statement = _insert_job_at_once(keys)
        connection.execute(statement, {**params, "now": job.created_at})
        wake_on_commit(session)
        return
    connection.execute(_INSERT_JOB, values)
    connection.execute(_INSERT_STEP, steps)
    record_events(
        session,
        job.id,
        numbered([created], 1),
        feature_name=job.feature_name,
        progress=job.progress,
    )


_INSERT_JOB = insert(job_table)
_INSERT_STEP = insert(job_step_table)


@lru_cache(maxsize=8)
def _insert_job_at_once(step_keys: tuple[str, ...]) -> Any:
    """WITH new_job AS (INSERT job), new_steps AS (INSERT its steps) INSERT its first
    event: one statement (foreign keys are checked when it ends). Step columns are
    bound as arrays and unnested, so the statement is the same for any number of steps
    and keeps under psycopg's 50 parameters, past which it parses the query anew on
    every execution."""
    new_job = (
        insert(_JOB)
        .values({c.key: bindparam(f"j_{c.key}", type_=c.type) for c in _JOB.columns})
        .returning(_JOB.c.id, _JOB.c.feature_name, _JOB.c.progress)
        .cte("new_job")
    )
    arrays = [bindparam(f"s_{key}", type_=ARRAY(_STEP.c[key].type)) for key in step_keys]
    rows = func.unnest(*arrays).table_valued(*step_keys).render_derived("new_step_rows")
    step_rows = select(new_job.c.id, *(rows.c[key] for key in step_keys)).join_from(
        new_job, rows, true()
    )
    new_steps = insert(_STEP).from_select(["job_id", *step_keys], step_rows).cte("new_steps")
    first_event = select(
        new_job.c.id, literal(1).label("last_seq"), new_job.c.feature_name, new_job.c.progress
    ).cte("first_event")
    return select(first_event.c.last_seq).add_cte(new_steps, inserted_after(first_event, 1))
