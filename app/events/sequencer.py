"""The event sequencer: gives committed events their global `id`, in commit order.

PostgreSQL writers insert events with `id` NULL and take no lock (app/events/log.py).
`sequence_events` then numbers, in its own short transaction, the committed events
that have no id yet: in `ingest_id` order, `max(id) + 1, max(id) + 2, ...`. Why
that is commit order: the statement only sees committed rows, and an advisory lock
orders sequencer transactions, each seeing the ids the previous one gave; so an event
committed later gets a larger id, and a reader at `id > cursor` never skips one. A
job's events are inserted in seq order (its next seq is reserved under its row lock,
after the previous event committed), so ordering by `ingest_id` keeps them in seq
order. Only sequencers wait on the lock, never writers.

The event hub of each API process runs it (app/events/hub.py); reads that show a
job's events to a client number what they find unnumbered first. On SQLite events
are numbered at insert and the sequencer does nothing.
"""

from __future__ import annotations

import uuid
from itertools import takewhile

from sqlalchemy import Integer, bindparam, func, select, text, update

from app.db import get_engine, session_scope
from app.events.log import events_for_job, to_wire
from app.events.types import EventOut
from app.models import job_event_table

SEQUENCER_LOCK = 0x0CA0E7
# Events numbered per transaction: a backlog is worked off one batch per run.
SEQUENCE_BATCH = 500

_EVENT = job_event_table
_LOCK = text("SELECT pg_advisory_xact_lock(:key)").bindparams(key=SEQUENCER_LOCK)
_waiting = (
    select(_EVENT.c.ingest_id)
    .where(_EVENT.c.id.is_(None))
    .order_by(_EVENT.c.ingest_id)
    .limit(bindparam("limit", type_=Integer))
    .subquery("waiting")
)
_batch = select(
    _waiting.c.ingest_id, func.row_number().over(order_by=_waiting.c.ingest_id).label("n")
).subquery("batch")
_numbered = _EVENT.alias("numbered")
_top = select(func.coalesce(func.max(_numbered.c.id), 0)).scalar_subquery()
_NUMBER = (
    update(_EVENT)
    .where(_EVENT.c.ingest_id == _batch.c.ingest_id)
    .values(id=_top + _batch.c.n)
    .returning(*(_EVENT.c[name] for name in EventOut.model_fields))
)


def sequence_events(limit: int = SEQUENCE_BATCH) -> list[EventOut]:
    """Number up to `limit` committed events that have no id yet, oldest first, and
    commit; returns them in id order (contiguous after the previous max). A no-op on
    SQLite."""
    if get_engine().dialect.name != "postgresql":
        return []
    with session_scope() as session:
        # READ COMMITTED takes a snapshot per statement: the numbering statement must
        # start after the lock is granted, to see what the previous holder numbered.
        connection = session.connection(execution_options={"isolation_level": "READ COMMITTED"})
        connection.execute(_LOCK)
        rows = connection.execute(_NUMBER, {"limit": limit}).all()
    return sorted((to_wire(row) for row in rows), key=lambda event: event.id)


def read_job_events(job_id: uuid.UUID, after_seq: int = 0, limit: int = 1000) -> list[EventOut]:
    """A page of a job's events in seq order, every one with its id: when the page
    holds events the sequencer has not reached yet, sequence and read again."""
    stalled = False
    while True:
        with session_scope() as session:
            rows = events_for_job(session, job_id, after_seq, limit)
            # A job's unnumbered events all come after its numbered ones.
            page = [to_wire(row) for row in takewhile(lambda row: row.id is not None, rows)]
        if len(page) == len(rows) or stalled:
            return page  # a short page is still a correct one; the reader comes back
        # When it numbered nothing, another process did meanwhile: one more read shows it.
        stalled = not sequence_events()
