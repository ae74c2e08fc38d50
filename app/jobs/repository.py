"""All job and step SQL. State changes are conditional updates: a zero row count
means another delivery, a cancel or a newer attempt won, which is a normal outcome.

Each step row carries a `fence`: a token that rises with every new attempt, recovery
and resume, and that a delivery must present to act on the step. (`attempt` is what
people and services see; it restarts at 1 on resume, so it cannot fence.)"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import (
    JSON,
    CursorResult,
    Integer,
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    true,
    union_all,
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
from app.jobs.states import (
    ACTIVE_JOB,
    CLAIMABLE_STEP,
    JobStatus,
    StepStatus,
    progress_for,
)
from app.models import Job, JobStep, UTCDateTime, job_step_table, job_table, utcnow


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
    # straight from this one takes the fence after it (see complete_and_start_next).
    next_step_fence: int | None = None

    @property
    def service_spec(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.recipe_steps[self.step_index]["service"])

    @property
    def is_last(self) -> bool:
        return self.step_index + 1 >= len(self.recipe_steps)

    def next_spec(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.recipe_steps[self.step_index + 1]["service"])

    def successor(self, output: dict[str, Any], fence: int, next_step_fence: int | None) -> StepRun:
        """The next step's first attempt, as complete_and_start_next leaves it."""
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
        )

    def accepts(self, fence: int) -> bool:
        return (
            self.job_status in ACTIVE_JOB and self.fence == fence and self.status in CLAIMABLE_STEP
        )


def rows_changed(session: Session, statement: Any) -> int:
    """Run an UPDATE and return how many rows it changed."""
    result = session.execute(statement)
    return cast(CursorResult[Any], result).rowcount


def step_where(job_id: uuid.UUID, step_index: int) -> Any:
    return and_(JobStep.job_id == job_id, JobStep.step_index == step_index)


def fenced_step(job_id: uuid.UUID, step_index: int, fence: int, *conditions: Any) -> Any:
    """This step, only while it still carries `fence` (and meets `conditions`)."""
    return and_(step_where(job_id, step_index), JobStep.fence == fence, *conditions)


def update_fenced_step(
    session: Session,
    job_id: uuid.UUID,
    step_index: int,
    fence: int,
    /,
    *conditions: Any,
    **values: Any,
) -> bool:
    """Change the step only while it carries `fence` and meets `conditions`; True if
    this call did (of concurrent callers, exactly one). `values` may set a new fence."""
    statement = (
        update(JobStep).where(fenced_step(job_id, step_index, fence, *conditions)).values(**values)
    )
    return rows_changed(session, statement) == 1


def update_running_step(
    session: Session, job_id: uuid.UUID, step_index: int, fence: int, /, **values: Any
) -> bool:
    """Change the step while the attempt holding `fence` is still RUNNING."""
    return update_fenced_step(
        session, job_id, step_index, fence, JobStep.status == StepStatus.RUNNING, **values
    )


def job_is_active(job_id: uuid.UUID) -> Any:
    return exists().where(Job.id == job_id, Job.status.in_(ACTIVE_JOB))


def get_job(session: Session, job_id: uuid.UUID) -> Job | None:
    return session.get(Job, job_id)


def get_steps(session: Session, job_id: uuid.UUID) -> Sequence[JobStep]:
    return session.scalars(
        select(JobStep).where(JobStep.job_id == job_id).order_by(JobStep.step_index)
    ).all()


def get_step(session: Session, job_id: uuid.UUID, step_index: int) -> JobStep | None:
    return session.get(JobStep, (job_id, step_index))


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
        for index, step in enumerate(steps):
            params.update({f"s{index}_{key}": value for key, value in step.items()})
        params.update(inserted_params([created]))
        statement = _insert_job_at_once(len(steps), tuple(steps[0]))
        connection.execute(statement, {**params, "now": job.created_at})
        publish_inserted(
            session, job.id, [created],
            last_seq=1, feature_name=job.feature_name, progress=job.progress, ts=job.created_at,
        )  # fmt: skip
        return
    connection.execute(_INSERT_JOB, values)
    connection.execute(_INSERT_STEP, steps)
    slot = EventSlot(1, job.feature_name, job.progress)
    _record(session, job.id, slot, [created])


_INSERT_JOB = insert(job_table)
_INSERT_STEP = insert(job_step_table)


@lru_cache(maxsize=64)
def _insert_job_at_once(step_count: int, step_keys: tuple[str, ...]) -> Any:
    """WITH new_job AS (INSERT job), new_steps AS (INSERT its steps) INSERT its first
    event: one statement (foreign keys are checked when it ends)."""
    new_job = (
        insert(_JOB)
        .values({c.key: bindparam(f"j_{c.key}", type_=c.type) for c in _JOB.columns})
        .returning(_JOB.c.id, _JOB.c.feature_name, _JOB.c.progress)
        .cte("new_job")
    )
    # INSERT ... SELECT of bound rows: unlike a multi-row VALUES, SQLAlchemy caches its
    # compiled form (built once per feature shape, not per job).
    rows = [
        select(*(bindparam(f"s{index}_{key}", type_=_STEP.c[key].type) for key in step_keys))
        for index in range(step_count)
    ]
    source = rows[0] if step_count == 1 else union_all(*rows)
    new_steps = insert(_STEP).from_select(list(step_keys), source).cte("new_steps")
    first_event = select(new_job.c.id, literal(1).label("last_seq"), new_job.c.feature_name,
                         new_job.c.progress).cte("first_event")  # fmt: skip
    return select(first_event.c.last_seq).add_cte(new_steps, inserted_after(first_event, 1))


def find_by_idempotency_key(session: Session, tenant: str, key: str) -> Job | None:
    return session.scalars(
        select(Job).where(Job.tenant == tenant, Job.idempotency_key == key)
    ).one_or_none()


# The hot path (load, claim, complete, queue) runs per step: its statements are built
# once with bind parameters and executed at the Core level, skipping the ORM's
# per-call statement building and identity-map work.
_JOB = job_table
_STEP = job_step_table
_NOW = bindparam("now", type_=UTCDateTime())
_THIS_STEP = and_(_STEP.c.job_id == bindparam("p_job"), _STEP.c.step_index == bindparam("index"))
_JOB_IS_ACTIVE = (
    exists().where(_JOB.c.id == bindparam("p_job"), _JOB.c.status.in_(ACTIVE_JOB)).correlate(None)
)

_NEXT_STEP = job_step_table.alias("next_step")
_NEXT_STEP_FENCE = (
    select(_NEXT_STEP.c.fence)
    .where(
        _NEXT_STEP.c.job_id == _STEP.c.job_id,
        _NEXT_STEP.c.step_index == _STEP.c.step_index + 1,
    )
    .scalar_subquery()
)

_LOAD_STEP_RUN = (
    select(
        _JOB.c.feature_name,
        _JOB.c.status.label("job_status"),
        _JOB.c.input_data,
        _JOB.c.context,
        _JOB.c.recipe,
        _STEP.c.step_name,
        _STEP.c.queue,
        _STEP.c.status,
        _STEP.c.attempt,
        _STEP.c.fence,
        _STEP.c.max_attempts,
        _NEXT_STEP_FENCE.label("next_step_fence"),
    )
    .join_from(_STEP, _JOB, _STEP.c.job_id == _JOB.c.id)
    .where(_THIS_STEP)
)


def load_step_run(session: Session, job_id: uuid.UUID, step_index: int) -> StepRun | None:
    row = (
        session.connection()
        .execute(_LOAD_STEP_RUN, {"p_job": job_id, "index": step_index})
        .one_or_none()
    )
    if row is None:
        return None
    return StepRun(
        job_id=job_id,
        feature_name=row.feature_name,
        job_status=row.job_status,
        input_data=row.input_data,
        context=row.context or {},
        recipe_steps=row.recipe["steps"],
        step_index=step_index,
        step_name=row.step_name,
        queue=row.queue,
        status=row.status,
        attempt=row.attempt,
        fence=row.fence,
        max_attempts=row.max_attempts,
        next_step_fence=row.next_step_fence,
    )


# What a step's previous run leaves behind, cleared whenever a new run is set up.
_RUN_COLUMNS_CLEARED: dict[str, Any] = dict.fromkeys(
    ("error", "error_code", "retryable", "queued_at", "started_at", "heartbeat_at", "finished_at")
)

_QUEUE_STEP_VALUES: dict[str, Any] = {
    "status": StepStatus.QUEUED,
    "attempt": 1,
    "fence": _STEP.c.fence + 1,
    **_RUN_COLUMNS_CLEARED,
    "queued_at": _NOW,
}
_QUEUE_STEP = (
    update(_STEP)
    .where(_THIS_STEP)
    .values(_QUEUE_STEP_VALUES)
    .returning(_STEP.c.queue, _STEP.c.fence)
)


def queue_step(session: Session, job_id: uuid.UUID, step_index: int) -> tuple[str, int]:
    """Put a step on its queue as a fresh attempt 1 under a new fence; returns (queue, fence)."""
    params = {"p_job": job_id, "index": step_index, "now": utcnow()}
    queue, fence = session.connection().execute(_QUEUE_STEP, params).one()
    return queue, fence


_MARK_WAITING = (
    update(_STEP)
    .where(
        _THIS_STEP,
        _STEP.c.fence == bindparam("p_fence"),
        _STEP.c.status.in_((StepStatus.QUEUED, StepStatus.RETRYING)),
        _JOB_IS_ACTIVE,
    )
    .values(status=StepStatus.WAITING_FOR_SLOT)
)


def mark_waiting(session: Session, job_id: uuid.UUID, step_index: int, fence: int) -> bool:
    params = {"p_job": job_id, "index": step_index, "p_fence": fence}
    changed = session.connection().execute(_MARK_WAITING, params)
    return cast(CursorResult[Any], changed).rowcount == 1


@dataclass(frozen=True)
class EventSlot:
    """Event numbers reserved on the job row by the update that changed it."""

    first_seq: int
    feature_name: str
    progress: int


_CLAIM_STEP = (
    update(_STEP)
    .where(
        _THIS_STEP,
        _STEP.c.fence == bindparam("p_fence"),
        _STEP.c.status.in_(CLAIMABLE_STEP),
        _JOB_IS_ACTIVE,
    )
    .values(status=StepStatus.RUNNING, started_at=_NOW, heartbeat_at=_NOW, finished_at=None)
)
_JOB_STARTED: dict[str, Any] = {
    "status": JobStatus.RUNNING,
    "current_step": bindparam("index"),
    "started_at": func.coalesce(_JOB.c.started_at, _NOW),
    "updated_at": _NOW,
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
    connection = session.connection()
    params = {"p_job": job_id, "index": step_index, "p_fence": fence, "now": utcnow()}
    if cast(CursorResult[Any], connection.execute(_CLAIM_STEP, params)).rowcount != 1:
        return None
    seq, feature_name, progress = connection.execute(_START_JOB, params).one()
    return EventSlot(seq, feature_name, progress)


def is_running(session: Session, job_id: uuid.UUID, step_index: int, fence: int) -> bool:
    step = session.get(JobStep, (job_id, step_index), populate_existing=True)
    return step is not None and step.fence == fence and step.status == StepStatus.RUNNING


def heartbeat(session: Session, job_id: uuid.UUID, step_index: int, fence: int) -> bool:
    return update_running_step(session, job_id, step_index, fence, heartbeat_at=utcnow())


@dataclass(frozen=True)
class Advance:
    """A committed step result: the job's new state and the event numbers reserved."""

    job_finished: bool
    events: EventSlot


_COMPLETE_STEP = (
    update(_STEP)
    .where(_THIS_STEP, _STEP.c.fence == bindparam("p_fence"), _STEP.c.status == StepStatus.RUNNING)
    .values(
        status=StepStatus.COMPLETED,
        output=bindparam("p_output", type_=JSON()),
        finished_at=_NOW,
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
    "updated_at": _NOW,
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
    return _advance(session, run, output, current_step=current_step)


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
        **{**_RUN_COLUMNS_CLEARED, "queued_at": _NOW, "started_at": _NOW, "heartbeat_at": _NOW},
    )
    .returning(_NEXT_STEP_FENCE.label("following_fence"))
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
    advance = _advance(session, run, output, current_step=run.step_index + 1, extra_events=1)
    _record(session, run.job_id, advance.events, drafts)
    return Continued(advance.events, run.successor(output, next_fence, following[0]))


def _complete(session: Session, run: StepRun, fence: int, output: dict[str, Any]) -> bool:
    params = {
        "p_job": run.job_id, "index": run.step_index, "p_fence": fence, "now": utcnow(),
        "p_output": output,
    }  # fmt: skip
    completed = session.connection().execute(_COMPLETE_STEP, params)
    return cast(CursorResult[Any], completed).rowcount == 1


def _advance(
    session: Session,
    run: StepRun,
    output: dict[str, Any],
    *,
    current_step: int,
    extra_events: int = 0,
) -> Advance:
    """Move the job past `run`'s step, reserving the seqs of the events that say so."""
    events = (2 if run.is_last else 1) + extra_events  # JOB_COMPLETED follows the last step's
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


def retry_step(
    session: Session,
    job_id: uuid.UUID,
    step_index: int,
    fence: int,
    *,
    error: str,
    code: str,
) -> int | None:
    """Give up on this attempt; returns the fence of the next one (None when stale)."""
    if not update_running_step(
        session, job_id, step_index, fence,
        status=StepStatus.RETRYING, attempt=JobStep.attempt + 1, fence=fence + 1,
        error=error, error_code=code,
        retryable=True, queued_at=utcnow(), heartbeat_at=None,
    ):  # fmt: skip
        return None
    return fence + 1


def fail_step(
    session: Session,
    job_id: uuid.UUID,
    step_index: int,
    fence: int,
    *,
    error: str,
    code: str,
    retryable: bool,
) -> bool:
    now = utcnow()
    if not update_running_step(
        session, job_id, step_index, fence,
        status=StepStatus.FAILED, error=error, error_code=code, retryable=retryable,
        finished_at=now,
    ):  # fmt: skip
        return False
    fail_job(session, job_id, error=error, code=code, retryable=retryable)
    return True


def fail_job(
    session: Session, job_id: uuid.UUID, *, error: str, code: str, retryable: bool
) -> bool:
    now = utcnow()
    result = rows_changed(
        session,
        update(Job)
        .where(Job.id == job_id, Job.status.in_(ACTIVE_JOB))
        .values(
            status=JobStatus.FAILED,
            error=error,
            error_code=code,
            retryable=retryable,
            finished_at=now,
            updated_at=now,
        ),
    )
    return result == 1


@dataclass(frozen=True)
class JobFilter:
    status: str | None = None
    feature_name: str | None = None
    tenant: str | None = None


def list_jobs(
    session: Session,
    filters: JobFilter,
    limit: int,
    before: tuple[datetime, uuid.UUID] | None = None,
) -> Sequence[Job]:
    """Newest first; `before` is the (created_at, id) of the last row of the previous page."""
    query = select(Job)
    if filters.status:
        query = query.where(Job.status == filters.status)
    if filters.feature_name:
        query = query.where(Job.feature_name == filters.feature_name)
    if filters.tenant:
        query = query.where(Job.tenant == filters.tenant)
    if before is not None:
        created_at, job_id = before
        query = query.where(
            or_(Job.created_at < created_at, and_(Job.created_at == created_at, Job.id < job_id))
        )
    return session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)).all()


# --- operator actions: resume, cancel, bulk selection, idempotency-key expiry ----------
# Resume and cancel lock the job's step rows (in step order) before the job row: the
# runner takes a step row before its job row, so a worker and an operator action
# taking them in the same order cannot deadlock each other.

# Steps that a cancel stops: queued, waiting for a slot, running or between retries.
LIVE_STEP = (*CLAIMABLE_STEP, StepStatus.RUNNING)


def lock_steps(session: Session, job_id: uuid.UUID) -> Sequence[JobStep]:
    return session.scalars(
        select(JobStep)
        .where(JobStep.job_id == job_id)
        .order_by(JobStep.step_index)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all()


def _move_job(
    session: Session, job_id: uuid.UUID, from_status: Sequence[str], **values: Any
) -> bool:
    """Change the job only while its status is in `from_status`; True if this call did."""
    result = rows_changed(
        session,
        update(Job)
        .where(Job.id == job_id, Job.status.in_(from_status))
        .values(updated_at=utcnow(), **values),
    )
    return result == 1


def reopen_failed_job(
    session: Session, job_id: uuid.UUID, *, step_index: int, progress: int, context: dict[str, Any]
) -> bool:
    """FAILED → PENDING at `step_index`; False when the job is no longer FAILED."""
    return _move_job(
        session, job_id, (JobStatus.FAILED,),
        status=JobStatus.PENDING, current_step=step_index, progress=progress, context=context,
        error=None, error_code=None, retryable=None, finished_at=None,
    )  # fmt: skip


def reset_steps_from(session: Session, job_id: uuid.UUID, step_index: int) -> None:
    """Forget the runs of steps ≥ `step_index` (their fences keep rising)."""
    session.execute(
        update(JobStep)
        .where(JobStep.job_id == job_id, JobStep.step_index >= step_index)
        .values(status=StepStatus.PENDING, attempt=0, output=None, **_RUN_COLUMNS_CLEARED)
    )


def cancel_active_job(session: Session, job_id: uuid.UUID) -> bool:
    """PENDING/RUNNING → CANCELLED; False when the job had already finished."""
    return _move_job(session, job_id, ACTIVE_JOB, status=JobStatus.CANCELLED, finished_at=utcnow())


def cancel_live_steps(session: Session, job_id: uuid.UUID) -> None:
    """Stop the job's live steps: a queued delivery is then dropped at claim and a
    running one's result is discarded, since neither finds its step claimable/RUNNING."""
    session.execute(
        update(JobStep)
        .where(JobStep.job_id == job_id, JobStep.status.in_(LIVE_STEP))
        .values(status=StepStatus.CANCELLED, finished_at=utcnow())
    )


@dataclass(frozen=True)
class FailedJobFilter:
    feature_name: str | None = None
    failed_step: int | None = None
    error_code: str | None = None
    created_after: datetime | None = None


def find_failed_job_ids(
    session: Session, filters: FailedJobFilter, limit: int
) -> Sequence[uuid.UUID]:
    """FAILED jobs matching every given filter, oldest first."""
    query = select(Job.id).where(Job.status == JobStatus.FAILED)
    if filters.feature_name is not None:
        query = query.where(Job.feature_name == filters.feature_name)
    if filters.failed_step is not None:
        query = query.where(Job.current_step == filters.failed_step)
    if filters.error_code is not None:
        query = query.where(Job.error_code == filters.error_code)
    if filters.created_after is not None:
        query = query.where(Job.created_at > filters.created_after)
    return session.scalars(query.order_by(Job.created_at, Job.id).limit(limit)).all()


def release_idempotency_key(session: Session, job_id: uuid.UUID) -> None:
    """Free an expired Idempotency-Key so that a new job can take it."""
    session.execute(update(Job).where(Job.id == job_id).values(idempotency_key=None))


# --- A step change with the job update and events that go with it --------------------
#
# Claiming a step, parking it until a slot frees and committing its result each change
# the step row, the job row (which reserves the seqs of the change's events) and the
# event log. On PostgreSQL each is one statement of data-modifying WITH clauses, every
# clause running only on the rows the one before it returned, so a stale fence changes
# nothing at all. In autocommit (db.statement_scope) that is one round trip, where the
# same changes statement by statement take five or six with BEGIN and COMMIT.
# Elsewhere (SQLite) they run statement by statement in the caller's transaction.


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

# (onupdate defaults are not applied inside a WITH clause: updated_at is set here.)
_PARKED_STEP, _PARKED_JOB = _step_and_job(
    _MARK_WAITING, true(), {"last_seq": _JOB.c.last_seq + 1, "updated_at": _NOW}
)
_PARK_STEP_AT_ONCE = _with_events(_PARKED_JOB, 1)

_DONE_STEP, _DONE_JOB = _step_and_job(
    _COMPLETE_STEP, _JOB.c.status == JobStatus.RUNNING, _JOB_ADVANCED
)
_FINISH_LAST_STEP_AT_ONCE = _with_events(_DONE_JOB, 2)
_QUEUED_NEXT = (
    update(_STEP)
    .where(_STEP.c.job_id == _DONE_STEP.c.job_id, _STEP.c.step_index == bindparam("p_next_index"))
    .values(_QUEUE_STEP_VALUES)
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
