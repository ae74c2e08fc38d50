"""PostgreSQL: a new job, its step rows and its first event inserted by one statement,
with the code that runs it beside it."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import Select, bindparam, func, insert, literal, select, true
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from app.events.log import EventDraft, inserted_after, inserted_params, wake_on_commit
from app.jobs.step_changes.interface import JobRows
from app.models import Job, job_step_table, job_table

_JOB = job_table
_STEP = job_step_table


@lru_cache(maxsize=8)
def insert_job_at_once(step_keys: tuple[str, ...]) -> Select[int]:
    """Insert a job, its steps and its first event (seq 1): WITH new_job AS (INSERT
    job), new_steps AS (INSERT its steps) INSERT the event. Foreign keys are checked
    when the statement ends.

    Takes: j_<column> for every job column; s_<key> for each of `step_keys` (the step
    columns given, the job id aside), an array of one value per step; now; and the
    event's e0_type, e0_step_index, e0_step_name, e0_attempt, e0_data.
    Changes: inserts the job row, its step rows and the event.
    Returns: one row (last_seq), the event's seq: 1.

    Step columns are bound as arrays and unnested, so the statement is the same for any
    number of steps and keeps under psycopg's 50 parameters, past which it parses the
    query anew on every execution."""
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


def insert_job(
    session: Session, job: Job, steps: list[dict[str, Any]], created: EventDraft
) -> None:
    insert_jobs(session, [(job, steps, created)])


def insert_jobs(session: Session, jobs: Sequence[JobRows]) -> None:
    """Every job of `jobs` by the same statement, executed once per job in one pipeline
    (psycopg sends an executemany's executions without waiting for each answer): one
    round trip for the lot, in the caller's transaction."""
    # One array per step column (the job id comes from the inserted job row); every
    # job's steps have the same keys (app/jobs/service.py drafts them).
    keys = tuple(key for key in jobs[0][1][0] if key != "job_id")
    params = [_params(job, steps, created, keys) for job, steps, created in jobs]
    session.connection().execute(
        insert_job_at_once(keys), params[0] if len(params) == 1 else params
    )
    wake_on_commit(session)


def _params(
    job: Job, steps: list[dict[str, Any]], created: EventDraft, keys: tuple[str, ...]
) -> dict[str, Any]:
    params = {f"j_{column.key}": getattr(job, column.key) for column in job_table.columns}
    params.update({f"s_{key}": [step[key] for step in steps] for key in keys})
    params.update(inserted_params([created]))
    params["now"] = job.created_at
    return params
