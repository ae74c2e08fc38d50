"""The durable event log: append in the caller's transaction, publish after commit.

`seq` comes from the job row (`last_seq + 1` under that row's lock), so a job's
events are numbered without gaps in commit order. On PostgreSQL a transaction-scoped
advisory lock is taken just before the insert so that the global `id` is also handed
out in commit order; a subscriber that resumes `after` an id cannot skip an event
committed later with a smaller one. (SQLite serialises writers anyway.)
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, func, insert, select, text, update
from sqlalchemy.orm import Session

from app.db import on_commit
from app.events.publisher import publish_after_commit
from app.events.types import EventOut, EventType
from app.models import Job, JobEvent, job_event_table, job_table, utcnow

_EVENT_ID_LOCK = 0x0CA0E7


def to_wire(event: JobEvent) -> EventOut:
    return EventOut(
        id=event.id,
        seq=event.seq,
        type=event.type,
        job_id=str(event.job_id),
        feature_name=event.feature_name,
        step_index=event.step_index,
        step_name=event.step_name,
        attempt=event.attempt,
        progress=event.progress,
        ts=event.ts,
        data=event.data or {},
    )


_EVENT = job_event_table
_INSERT_EVENT = insert(_EVENT).returning(_EVENT.c.id)
_RESERVE_SEQ = (
    update(job_table)
    .where(job_table.c.id == bindparam("p_job"))
    .values(last_seq=job_table.c.last_seq + 1)
    .returning(job_table.c.last_seq, job_table.c.feature_name, job_table.c.progress)
)
_COLUMNS = ("job_id", "seq", "type", "feature_name", "step_index", "step_name", "attempt",
            "progress", "ts", "data")  # fmt: skip
# PostgreSQL: take the event-id lock and insert in one round trip.
_LOCKED_INSERT_EVENT = (
    text(
        "WITH id_lock AS (SELECT pg_advisory_xact_lock(:lock_key)) "
        f"INSERT INTO job_event ({', '.join(_COLUMNS)}) "
        f"SELECT {', '.join(':' + c for c in _COLUMNS)} FROM id_lock RETURNING id"
    )
    .bindparams(
        bindparam("lock_key", _EVENT_ID_LOCK),
        bindparam("job_id", type_=_EVENT.c.job_id.type),
        bindparam("ts", type_=_EVENT.c.ts.type),
        bindparam("data", type_=_EVENT.c.data.type),
    )
    .columns(id=_EVENT.c.id.type)
)


def append_event(
    session: Session,
    job_id: uuid.UUID,
    event_type: EventType,
    *,
    step_index: int | None = None,
    step_name: str | None = None,
    attempt: int | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    """Append one event to the log in the current transaction, reserving its seq."""
    seq, feature_name, progress = (
        session.connection().execute(_RESERVE_SEQ, {"p_job": job_id}).one()
    )
    record_event(
        session, job_id, event_type, seq=seq, feature_name=feature_name, progress=progress,
        step_index=step_index, step_name=step_name, attempt=attempt, data=data,
    )  # fmt: skip


def record_event(
    session: Session,
    job_id: uuid.UUID,
    event_type: EventType,
    *,
    seq: int,
    feature_name: str,
    progress: int,
    step_index: int | None = None,
    step_name: str | None = None,
    attempt: int | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    """Insert an event whose seq was reserved on the job row by the caller's update;
    it is published after the transaction commits."""
    connection = session.connection()
    row = {
        "job_id": job_id,
        "seq": seq,
        "type": str(event_type),
        "feature_name": feature_name,
        "step_index": step_index,
        "step_name": step_name,
        "attempt": attempt,
        "progress": progress,
        "ts": utcnow(),
        "data": data or {},
    }
    statement = _LOCKED_INSERT_EVENT if connection.dialect.name == "postgresql" else _INSERT_EVENT
    event_id = connection.execute(statement, row).scalar_one()
    wire = EventOut(id=event_id, **{**row, "job_id": str(job_id)})
    on_commit(session, lambda: publish_after_commit(wire))


def events_for_job(
    session: Session, job_id: uuid.UUID, after_seq: int = 0, limit: int = 1000
) -> Sequence[JobEvent]:
    return session.scalars(
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.seq > after_seq)
        .order_by(JobEvent.seq)
        .limit(limit)
    ).all()


def events_after_id(
    session: Session, after_id: int = 0, limit: int = 1000, tenant: str | None = None
) -> Sequence[JobEvent]:
    query = select(JobEvent).where(JobEvent.id > after_id).order_by(JobEvent.id).limit(limit)
    if tenant is not None:
        query = query.join(Job, Job.id == JobEvent.job_id).where(Job.tenant == tenant)
    return session.scalars(query).all()


def latest_event_id(session: Session) -> int:
    """The newest global event id (0 for an empty log): where a live tail starts."""
    return session.scalar(select(func.max(JobEvent.id))) or 0
