"""What the step changes are, whatever the engine: the `StepChanges` protocol, which
app/jobs/step_changes/postgres/ (one statement per change) and
app/jobs/step_changes/sqlite.py (statement by statement) implement, and the values
its changes take and return.

Each change writes the step row(s), the job row (whose `last_seq` reserves the seqs of
the change's events) and the events, as one change: fenced alike on either engine, it
happens whole or not at all.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from sqlalchemy.orm import Session

from app.events.log import EventDraft
from app.jobs.step_repository import StepRun
from app.models import Job

# A new job's rows: the job (transient), its step rows and its first event.
JobRows = tuple[Job, list[dict[str, Any]], EventDraft]


class NamedStep(NamedTuple):
    """The step a delivery that names its service and queue acts on (app/jobs/dispatch.py)."""

    job_id: uuid.UUID
    step_index: int
    fence: int
    service: str
    queue: str


@dataclass(frozen=True)
class EventSlot:
    """Event numbers reserved on the job row by the update that changed it."""

    first_seq: int
    feature_name: str
    progress: int


@dataclass(frozen=True)
class Advance:
    """A committed step result: the job's new state and the event numbers reserved."""

    job_finished: bool
    events: EventSlot


class NextStepMoved(Exception):
    """The next step is not the PENDING row this run expected (roll back, go the usual way)."""


@dataclass(frozen=True)
class Continued:
    """A committed result whose next step started in the same transaction."""

    events: EventSlot  # STEP_COMPLETED at first_seq, the next STEP_STARTED after it
    next_run: StepRun


@dataclass(frozen=True)
class Finished:
    """A committed step result: whether the job is done, else its next step's delivery."""

    job_finished: bool
    next_queue: str | None = None
    next_fence: int | None = None


class StepChanges(Protocol):
    """The changes whose form differs per engine. Each records its events, published
    once the session commits; app/jobs/step_changes/__init__.py documents each."""

    def insert_job(
        self, session: Session, job: Job, steps: list[dict[str, Any]], created: EventDraft
    ) -> None: ...

    def insert_jobs(self, session: Session, jobs: Sequence[JobRows]) -> None: ...

    def start_step(
        self, session: Session, run: StepRun, fence: int, *, claim_token: str | None = None
    ) -> EventSlot | None: ...

    def start_named_step(
        self, session: Session, named: NamedStep, *, claim_token: str | None = None
    ) -> StepRun | None: ...

    def park_step(self, session: Session, run: StepRun, data: dict[str, Any]) -> bool: ...

    def park_named_step(
        self, session: Session, named: NamedStep, data: dict[str, Any]
    ) -> int | None: ...

    def finish_step(
        self, session: Session, run: StepRun, fence: int, output: dict[str, Any]
    ) -> Finished | None: ...

    def complete_and_start_next(
        self, session: Session, run: StepRun, fence: int, output: dict[str, Any]
    ) -> Continued | None: ...
