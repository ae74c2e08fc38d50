"""The durable event log: append in the caller's transaction, publish after commit.

`seq` comes from the job row (`last_seq + 1` under that row's lock), so a job's
events are numbered without gaps in commit order. The global `id` must also follow
commit order (a subscriber that resumes `after` an id must not skip an event
committed later with a smaller one), without making writers wait on each other:

- PostgreSQL: an event is inserted with `id` NULL and no lock; the sequencer
  (app/events/sequencer.py) numbers committed events afterwards.
- SQLite: writers are serialised by the database (BEGIN IMMEDIATE, app/db.py), so
  the insert itself takes `max(id) + 1`, which is then commit order already.

Reads by `id` never see an event that has no id yet.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple, Required, TypedDict

from sqlalchemy import (
    JSON,
    Integer,
    Row,
    String,
    bindparam,
    func,
    insert,
    select,
    union_all,
    update,
)
from sqlalchemy.orm import Session

from app.db import on_commit
from app.events.publisher import publish_after_commit, wake_after_commit
from app.events.types import EventOut, EventType, PublishedEvent
from app.models import Job, JobEvent, UTCDateTime, job_event_table, job_table, utcnow


def to_wire(event: JobEvent | Row[Any]) -> EventOut:
    """The client's view of a stored event (an ORM row, or the sequencer's RETURNING)."""
    if event.id is None:
        raise ValueError(f"event {event.job_id}/{event.seq} has no global id yet")
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
_INSERT_EVENT = insert(_EVENT)
_INSERT_NUMBERED_EVENT = (
    insert(_EVENT)
    .values(id=select(func.coalesce(func.max(_EVENT.c.id), 0) + 1).scalar_subquery())
    .returning(_EVENT.c.id)
)
_RESERVE_SEQ = (
    update(job_table)
    .where(job_table.c.id == bindparam("p_job"))
    .values(last_seq=job_table.c.last_seq + 1)
    .returning(job_table.c.last_seq, job_table.c.feature_name, job_table.c.progress)
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
        session,
        job_id,
        event_type,
        seq=seq,
        feature_name=feature_name,
        progress=progress,
        step_index=step_index,
        step_name=step_name,
        attempt=attempt,
        data=data,
    )


class EventDraft(TypedDict, total=False):
    """An event before its seq is known: its type and what it is about."""

    type: Required[EventType]
    step_index: int | None
    step_name: str | None
    attempt: int | None
    data: dict[str, Any]


class NewEvent(EventDraft, total=False):
    """One event for `record_events`: a draft with the seq reserved for it."""

    seq: Required[int]


def numbered(drafts: Sequence[EventDraft], first_seq: int) -> list[NewEvent]:
    """The drafts with consecutive seqs from `first_seq`."""
    return [NewEvent(**draft, seq=first_seq + offset) for offset, draft in enumerate(drafts)]


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
    it is published after the transaction commits (without an id on PostgreSQL)."""
    event = NewEvent(
        type=event_type,
        seq=seq,
        step_index=step_index,
        step_name=step_name,
        attempt=attempt,
        data=data or {},
    )
    record_events(session, job_id, [event], feature_name=feature_name, progress=progress)


def record_events(
    session: Session,
    job_id: uuid.UUID,
    events: Sequence[NewEvent],
    *,
    feature_name: str,
    progress: int,
) -> None:
    """Insert one job's events, in seq order (the sequencer numbers by insertion), in one
    round trip on PostgreSQL; all are published together after the transaction commits."""
    connection = session.connection()
    rows = _rows(job_id, events, feature_name, progress, utcnow())
    if connection.dialect.name == "postgresql":
        # Several rows: psycopg pipelines an executemany (one round trip, rows in order),
        # which costs less CPU than building a multi-row VALUES statement each time.
        connection.execute(_INSERT_EVENT, rows[0] if len(rows) == 1 else rows)
        wake_on_commit(session)
        return
    # Row by row: each insert's max(id) + 1 must see the row before it.
    ids = [connection.execute(_INSERT_NUMBERED_EVENT, row).scalar_one() for row in rows]
    _publish_on_commit(session, job_id, rows, ids)


def _rows(
    job_id: uuid.UUID,
    events: Sequence[NewEvent],
    feature_name: str,
    progress: int,
    ts: datetime,
) -> list[dict[str, Any]]:
    return [
        {
            "job_id": job_id,
            "seq": event["seq"],
            "type": str(event["type"]),
            "feature_name": feature_name,
            "step_index": event.get("step_index"),
            "step_name": event.get("step_name"),
            "attempt": event.get("attempt"),
            "progress": progress,
            "ts": ts,
            "data": event.get("data") or {},
        }
        for event in events
    ]


def _publish_on_commit(
    session: Session, job_id: uuid.UUID, rows: list[dict[str, Any]], ids: Sequence[int]
) -> None:
    published = [
        PublishedEvent(id=event_id, **{**row, "job_id": str(job_id)})
        for event_id, row in zip(ids, rows, strict=True)
    ]
    on_commit(session, lambda: publish_after_commit(published))


def wake_on_commit(session: Session) -> None:
    """Once the session commits, wake the hubs to read the events it inserted without
    ids (PostgreSQL: the sequencer numbers them; app/events/publisher.py)."""
    on_commit(session, wake_after_commit)


# --- PostgreSQL: events inserted by the statement that reserves their seqs -----------


def inserted_after(reserving: Any, count: int, *, attempt: Any = None) -> Any:
    """A CTE inserting `count` events (PostgreSQL, id NULL) whose seqs `reserving` (a
    CTE of the job row update, returning `id`, `last_seq`, `feature_name` and
    `progress`) reserved: the last `count` seqs up to its `last_seq`, in seq order.
    Each event's own fields are bound as e<i>_<field> (see `inserted_params`), but for
    `attempt` when given: an expression the statement computes itself."""
    # Typed parameters (rendered with a cast): a NULL in a UNION is not taken as text.
    selects = [
        select(
            reserving.c.id,
            reserving.c.last_seq - (count - 1 - index),
            bindparam(f"e{index}_type", type_=String()),
            reserving.c.feature_name,
            bindparam(f"e{index}_step_index", type_=Integer()),
            bindparam(f"e{index}_step_name", type_=String()),
            bindparam(f"e{index}_attempt", type_=Integer()) if attempt is None else attempt,
            reserving.c.progress,
            bindparam("now", type_=UTCDateTime()),
            bindparam(f"e{index}_data", type_=JSON()),
        )
        for index in range(count)
    ]
    columns = [
        "job_id",
        "seq",
        "type",
        "feature_name",
        "step_index",
        "step_name",
        "attempt",
        "progress",
        "ts",
        "data",
    ]
    if count == 1:
        ordered: Any = selects[0]
    else:
        # Rows go in seq order: the sequencer numbers events in insertion order.
        rows = union_all(*selects).subquery()
        ordered = select(rows).order_by(list(rows.c)[1])
    return insert(_EVENT).from_select(columns, ordered).cte(f"inserted_{count}_events")


def inserted_params(drafts: Sequence[EventDraft]) -> dict[str, Any]:
    """The bind values of `inserted_after`'s events."""
    params: dict[str, Any] = {}
    for index, draft in enumerate(drafts):
        params[f"e{index}_type"] = str(draft["type"])
        params[f"e{index}_step_index"] = draft.get("step_index")
        params[f"e{index}_step_name"] = draft.get("step_name")
        params[f"e{index}_attempt"] = draft.get("attempt")
        params[f"e{index}_data"] = draft.get("data") or {}
    return params


def events_for_job(
    session: Session, job_id: uuid.UUID, after_seq: int = 0, limit: int = 1000
) -> Sequence[JobEvent]:
    """A job's stored events in seq order; on PostgreSQL the newest may have no id
    yet (app/events/sequencer.py reads them for clients)."""
    return session.scalars(
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.seq > after_seq)
        .order_by(JobEvent.seq)
        .limit(limit)
    ).all()


def events_after_id(
    session: Session,
    after_id: int = 0,
    limit: int = 1000,
    tenant: str | None = None,
    *,
    before_id: int | None = None,
) -> Sequence[JobEvent]:
    """Every job's events with `after_id < id` (and `id < before_id`), in id order."""
    query = select(JobEvent).where(JobEvent.id > after_id).order_by(JobEvent.id).limit(limit)
    if before_id is not None:
        query = query.where(JobEvent.id < before_id)
    if tenant is not None:
        query = query.join(Job, Job.id == JobEvent.job_id).where(Job.tenant == tenant)
    return session.scalars(query).all()


def latest_event_id(session: Session) -> int:
    """The newest global event id (0 for an empty log): where a live tail starts."""
    return session.scalar(select(func.max(JobEvent.id))) or 0


class JobHeadRow(NamedTuple):
    """Whose a job is, and where its stream stands."""

    tenant: str
    status: str
    last_seq: int


def job_head(session: Session, job_id: uuid.UUID) -> JobHeadRow | None:
    """The job's tenant, status and last seq, or None when there is no such job."""
    query = select(job_table.c.tenant, job_table.c.status, job_table.c.last_seq)
    row = session.execute(query.where(job_table.c.id == job_id)).one_or_none()
    return None if row is None else JobHeadRow(*row)
