"""How a job is created: its row, its step rows and its first event, as one change
(one statement on PostgreSQL; elsewhere one per table in the caller's transaction:
app/jobs/step_changes/). Several jobs go in one transaction the same way."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.events.log import EventDraft
from app.jobs.dispatch import Delivery
from app.jobs.step_changes import changes_for
from app.models import Job


@dataclass(frozen=True)
class NewJob:
    """A job drafted for creation (app/jobs/service.py): a transient `Job`, its step
    rows, its first event, and the delivery of its first step, owed once it commits."""

    job: Job
    steps: list[dict[str, Any]]
    created: EventDraft
    first: Delivery


def insert_job(session: Session, new: NewJob) -> None:
    """Insert a new job (left out of the session), its step rows and its first event
    (seq 1), published once the session commits."""
    changes_for(session).insert_job(session, new.job, new.steps, new.created)


def insert_jobs(session: Session, jobs: Sequence[NewJob]) -> None:
    """Insert several new jobs as insert_job does, in one round trip on PostgreSQL."""
    rows = [(new.job, new.steps, new.created) for new in jobs]
    changes_for(session).insert_jobs(session, rows)
