"""What a worker writes as a step runs, and what creating a job writes.

Claiming a step, parking it until a slot frees and committing its result (queueing
the next step, or starting it in the same commit for this worker to run) each write
the step row(s), the job row (whose `last_seq` reserves the seqs of the change's
events) and the events, as one change. How differs per engine, behind one interface
(`StepChanges`, interface.py) chosen once per engine: on PostgreSQL each change is a
single statement of data-modifying WITH clauses (postgres/); on SQLite the same
one-table statements (per_table.py) run one by one in the caller's transaction
(sqlite.py). Both are fenced alike (see app/jobs/repository.py for the fence).

The functions below are what callers use: each picks the session's engine and hands
over. Callers never ask which engine runs.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy.orm import Session

from app.jobs.step_changes import postgres, sqlite
from app.jobs.step_changes.drafts import completed_events
from app.jobs.step_changes.earlier import failed_earlier, recorded_earlier, retried_earlier
from app.jobs.step_changes.interface import (
    Advance,
    Continued,
    EventSlot,
    Finished,
    NamedStep,
    NextStepMoved,
    StepChanges,
)
from app.jobs.step_changes.per_table import claim_step, claimed_by, complete_step, mark_waiting
from app.jobs.step_repository import StepRun

__all__ = [
    "Advance",
    "Continued",
    "EventSlot",
    "Finished",
    "NamedStep",
    "NextStepMoved",
    "StepChanges",
    "changes_for",
    "claim_step",
    "claimed_by",
    "complete_and_start_next",
    "complete_step",
    "completed_events",
    "failed_earlier",
    "finish_step",
    "mark_waiting",
    "park_named_step",
    "park_step",
    "recorded_earlier",
    "retried_earlier",
    "start_named_step",
    "start_step",
]


def changes_for(session: Session) -> StepChanges:
    """The step changes of the engine the session is bound to."""
    return _for_engine(session.get_bind().dialect.name)


@cache
def _for_engine(dialect_name: str) -> StepChanges:
    # Data-modifying WITH clauses are PostgreSQL's; any other engine goes statement by
    # statement.
    return postgres if dialect_name == "postgresql" else sqlite


def start_step(
    session: Session, run: StepRun, fence: int, *, claim_token: str | None = None
) -> EventSlot | None:
    """Start the step for the delivery holding `fence` (and `claim_token`: see
    claimed_by) and record STEP_STARTED; None when the delivery is stale or a
    duplicate."""
    return changes_for(session).start_step(session, run, fence, claim_token=claim_token)


def start_named_step(
    session: Session, named: NamedStep, *, claim_token: str | None = None
) -> StepRun | None:
    """Start the step for a delivery that names the step's service and queue (whose
    lease the caller took before knowing anything else of the step) and record
    STEP_STARTED; returns the step as claimed. None when the delivery is stale, a
    duplicate, or names another service or queue than the step's.

    On PostgreSQL the claim also reads what the run needs, in one statement: a
    delivery makes one round trip to the database before its call, not two."""
    return changes_for(session).start_named_step(session, named, claim_token=claim_token)


def park_step(session: Session, run: StepRun, data: dict[str, Any]) -> bool:
    """Put a claimable step in WAITING_FOR_SLOT and record the event (with `data`);
    False when it was not claimable under its fence (already waiting, or moved on)."""
    return changes_for(session).park_step(session, run, data)


def park_named_step(session: Session, named: NamedStep, data: dict[str, Any]) -> int | None:
    """Put the step in WAITING_FOR_SLOT for a delivery that names its service and queue
    and found that service full, and record the event (with `data`); returns the
    step's attempt. None when the delivery is stale, a duplicate (the step waits
    already, or moved on) or names another service or queue than the step's.

    On PostgreSQL one statement, which does not read the step first."""
    return changes_for(session).park_named_step(session, named, data)


def finish_step(
    session: Session, run: StepRun, fence: int, output: dict[str, Any]
) -> Finished | None:
    """Commit the output of the attempt holding `fence`, advance the job, queue its next
    step (the caller enqueues it after commit) and record the events; None when this
    result is stale."""
    return changes_for(session).finish_step(session, run, fence, output)


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
    return changes_for(session).complete_and_start_next(session, run, fence, output)
