"""The SQL behind /metrics' database gauges: jobs by status and recent step latency.

Reads only, each one statement; the caller's transaction scopes them.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import Job, JobStep


def count_jobs_by_status(session: Session) -> dict[str, int]:
    """Every status that has jobs, with how many."""
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
    return dict(rows.all())


def mean_step_seconds(session: Session, recent: int) -> dict[str, float]:
    """Mean duration (started until finished) per step name, over the `recent` steps
    that finished last, whichever job they belong to."""
    query = (
        select(JobStep.step_name, JobStep.started_at, JobStep.finished_at)
        .where(JobStep.finished_at.is_not(None), JobStep.started_at.is_not(None))
        .order_by(JobStep.finished_at.desc())
        .limit(recent)
    )
    durations: dict[str, list[float]] = {}
    for name, started, finished in session.execute(query):
        if started is not None and finished is not None:
            durations.setdefault(name, []).append((finished - started).total_seconds())
    return {name: sum(values) / len(values) for name, values in durations.items()}
