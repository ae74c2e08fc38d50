"""Jobs and their events written straight into the log, numbered, for tests of what the
log's readers make of it (the metrics fold)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import insert

from app.db import session_scope
from app.models import job_event_table, job_table

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Event(NamedTuple):
    """One event: its type, step index and service, seconds after T0, a retry's delay."""

    type: str
    step: int | None = None
    service: str | None = None
    at: float = 0.0
    delay_s: float | None = None


def job_row(job_id: uuid.UUID, feature: str, last_seq: int) -> dict[str, Any]:
    return {
        "id": job_id,
        "tenant": "default",
        "feature_name": feature,
        "status": "COMPLETED",
        "progress": 100,
        "current_step": 0,
        "total_steps": 1,
        "input_data": {},
        "context": {},
        "recipe": {},
        "last_seq": last_seq,
        "created_at": T0,
        "updated_at": T0,
        "finished_at": T0,
    }


def event_rows(
    job_id: uuid.UUID, feature: str, events: Sequence[Event], first_id: int
) -> list[dict[str, Any]]:
    return [
        {
            "id": first_id + n,
            "job_id": job_id,
            "seq": n + 1,
            "type": event.type,
            "feature_name": feature,
            "step_index": event.step,
            "step_name": event.service,
            "attempt": None if event.step is None else 1,
            "progress": 0,
            "ts": T0 + timedelta(seconds=event.at),
            "data": {} if event.delay_s is None else {"delay_s": event.delay_s},
        }
        for n, event in enumerate(events)
    ]


def write_jobs(jobs: Sequence[Sequence[Event]], first_id: int, feature: str = "feat") -> int:
    """Each job's events, numbered from `first_id` job after job; returns the next id."""
    job_rows, rows = [], []
    for events in jobs:
        job_id = uuid.uuid4()
        job_rows.append(job_row(job_id, feature, len(events)))
        rows += event_rows(job_id, feature, events, first_id + len(rows))
    with session_scope() as session:
        session.execute(insert(job_table), job_rows)
        session.execute(insert(job_event_table), rows)
    return first_id + len(rows)
