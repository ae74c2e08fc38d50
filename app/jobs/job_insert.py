"""How a job is created: its row, its step rows and its first event, as one change
(one statement on PostgreSQL; elsewhere one per table in the caller's transaction:
app/jobs/step_changes/)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.events.log import EventDraft
from app.jobs.step_changes import changes_for
from app.models import Job


def insert_job(
    session: Session, job: Job, steps: list[dict[str, Any]], created: EventDraft
) -> None:
    """Insert a new job (a transient `Job`, left out of the session), its step rows and
    its first event (seq 1), published once the session commits."""
    changes_for(session).insert_job(session, job, steps, created)
