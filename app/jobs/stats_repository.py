"""The SQL behind /metrics' database gauge: jobs by status (one read, through the
(status, created_at) index)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import Job


def count_jobs_by_status(session: Session) -> dict[str, int]:
    """Every status that has jobs, with how many."""
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
    return dict(rows.all())
