"""The step row as a delivery sees it: `StepRun`, the read that loads it, and putting a
step on its queue; with the pieces every statement about one step of one job builds on
(its bound parameters, the run columns a new run clears).

The hot path (load, claim, complete, queue) runs per step: its statements are built
once with bind parameters and executed at the Core level, skipping the ORM's per-call
statement building and identity-map work. The step changes themselves (claim, park,
result, continuation) are in app/jobs/step_changes/.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Integer,
    Row,
    ScalarSelect,
    and_,
    bindparam,
    select,
    update,
)
from sqlalchemy.orm import Session

from app.jobs.states import ACTIVE_JOB, CLAIMABLE_STEP, JobStatus, StepStatus
from app.models import UTCDateTime, job_step_table, job_table, utcnow

_JOB = job_table
_STEP = job_step_table

# The parameters of a statement about one step: `p_job`, `index`, and `now`, the time
# the change is made at (one clock for every column and event it writes).
NOW = bindparam("now", type_=UTCDateTime())
THIS_STEP = and_(_STEP.c.job_id == bindparam("p_job"), _STEP.c.step_index == bindparam("index"))


@dataclass(frozen=True)
class StepRun:
    """What a delivery needs to know about its step before it runs."""

    job_id: uuid.UUID
    feature_name: str
    job_status: str
    input_data: dict[str, Any]
    context: dict[str, Any]
    recipe_steps: list[dict[str, Any]]
    step_index: int
    step_name: str
    queue: str
    status: str
    attempt: int
    fence: int
    max_attempts: int
    # The fence the next step carries now (None after the last step): a run started
    # straight from this one takes the fence after it (see step_changes.complete_and_start_next).
    next_step_fence: int | None = None
    # How many times an operator has rerun the job (its recipe snapshot counts them):
    # a rerun step is new work, and its service sees a new Idempotency-Key.
    rerun: int = 0
    # The job's trace, which this attempt's span joins (app/tracing.py); None when off.
    trace_context: dict[str, Any] | None = None

    @property
    def service_spec(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.recipe_steps[self.step_index]["service"])

    @property
    def is_last(self) -> bool:
        return self.step_index + 1 >= len(self.recipe_steps)

    def next_spec(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.recipe_steps[self.step_index + 1]["service"])

    def successor(self, output: dict[str, Any], fence: int, next_step_fence: int | None) -> StepRun:
        """The next step's first attempt, as step_changes.complete_and_start_next leaves it."""
        index = self.step_index + 1
        spec = self.recipe_steps[index]
        return StepRun(
            job_id=self.job_id,
            feature_name=self.feature_name,
            job_status=JobStatus.RUNNING,
            input_data=self.input_data,
            context={**self.context, self.step_name: output},
            recipe_steps=self.recipe_steps,
            step_index=index,
            step_name=spec["name"],
            queue=spec["service"]["queue"],
            status=StepStatus.RUNNING,
            attempt=1,
            fence=fence,
            max_attempts=spec["service"]["max_attempts"],
            next_step_fence=next_step_fence,
            rerun=self.rerun,
            trace_context=self.trace_context,
        )

    def accepts(self, fence: int) -> bool:
        return (
            self.job_status in ACTIVE_JOB and self.fence == fence and self.status in CLAIMABLE_STEP
        )


def fence_after(step_index: BindParameter[int]) -> ScalarSelect[int]:
    """The fence of the step after `step_index` (a bound parameter) of job `p_job`.
    Read by parameters, not correlated to an outer step row: in an UPDATE's RETURNING
    such a correlation is rendered unqualified on SQLite, where it then compares the
    subquery's own columns and finds nothing."""
    following = job_step_table.alias("following_step")
    return (
        select(following.c.fence)
        .where(following.c.job_id == bindparam("p_job"), following.c.step_index == step_index + 1)
        .scalar_subquery()
    )


# Takes p_job and index; returns the columns `step_run_of` reads (none: no such step).
_LOAD_STEP_RUN = (
    select(
        _JOB.c.feature_name,
        _JOB.c.status.label("job_status"),
        _JOB.c.input_data,
        _JOB.c.context,
        _JOB.c.recipe,
        _JOB.c.trace_context,
        _STEP.c.step_name,
        _STEP.c.queue,
        _STEP.c.status,
        _STEP.c.attempt,
        _STEP.c.fence,
        _STEP.c.max_attempts,
        fence_after(bindparam("index", type_=Integer())).label("next_step_fence"),
    )
    .join_from(_STEP, _JOB, _STEP.c.job_id == _JOB.c.id)
    .where(THIS_STEP)
)


def load_step_run(session: Session, job_id: uuid.UUID, step_index: int) -> StepRun | None:
    row = (
        session.connection()
        .execute(_LOAD_STEP_RUN, {"p_job": job_id, "index": step_index})
        .one_or_none()
    )
    if row is None:
        return None
    return step_run_of(row, job_id, step_index, job_status=row.job_status, status=row.status)


def step_run_of(
    row: Row[*tuple[Any, ...]], job_id: uuid.UUID, step_index: int, *, job_status: str, status: str
) -> StepRun:
    """The run a row of the step joined with its job describes (the columns of
    `_LOAD_STEP_RUN`; the statuses given apart: a claim returns them changed)."""
    return StepRun(
        job_id=job_id,
        feature_name=row.feature_name,
        job_status=job_status,
        input_data=row.input_data,
        context=row.context or {},
        recipe_steps=row.recipe["steps"],
        step_index=step_index,
        step_name=row.step_name,
        queue=row.queue,
        status=status,
        attempt=row.attempt,
        fence=row.fence,
        max_attempts=row.max_attempts,
        next_step_fence=row.next_step_fence,
        rerun=int(row.recipe.get("rerun", 0)),
        trace_context=row.trace_context,
    )


# What a step's previous run leaves behind, cleared whenever a new run is set up.
RUN_COLUMNS_CLEARED: dict[str, None] = dict.fromkeys(
    (
        "error",
        "error_code",
        "retryable",
        "queued_at",
        "started_at",
        "heartbeat_at",
        "finished_at",
        "claim_token",
    )
)

# The step put on its queue as a fresh attempt 1 under a new fence.
QUEUE_STEP_VALUES: dict[str, ColumnElement[Any] | str | int | None] = {
    "status": StepStatus.QUEUED,
    "attempt": 1,
    "fence": _STEP.c.fence + 1,
    **RUN_COLUMNS_CLEARED,
    "queued_at": NOW,
}
# Takes p_job, index and now; returns the step's (queue, fence).
_QUEUE_STEP = (
    update(_STEP).where(THIS_STEP).values(QUEUE_STEP_VALUES).returning(_STEP.c.queue, _STEP.c.fence)
)


def queue_step(session: Session, job_id: uuid.UUID, step_index: int) -> tuple[str, int]:
    """Put a step on its queue as a fresh attempt 1 under a new fence; returns (queue, fence)."""
    params = {"p_job": job_id, "index": step_index, "now": utcnow()}
    queue, fence = session.connection().execute(_QUEUE_STEP, params).one()
    return queue, fence
