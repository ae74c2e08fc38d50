"""Events on their way to subscribers, and the log reads that produce them.

An event is parsed and serialized once per API process, whichever way it arrived
(a pub/sub payload, the sequencer or a log row), and the same JSON text goes to
every socket. Database work runs in a worker thread: sessions are synchronous and
the event loop serves every socket of the process.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from pydantic_core import PydanticSerializationError
from starlette.concurrency import run_in_threadpool

from app.config import get_settings
from app.db import session_scope
from app.errors import JobNotFound
from app.events import log, sequencer
from app.events.types import TERMINAL_EVENTS, EventOut, output_left_out
from app.json_values import utf8_text
from app.statuses import FINISHED_JOB

# Rows per log read; a longer back-fill reads page after page.
LOG_PAGE = 500
# What an event holds besides its output, at most (ids, names, timestamps).
_EVENT_OVERHEAD = 2048


class WirePage(list["WireEvent"]):
    """One read of the log, cut at EVENT_PAGE_MAX_BYTES of event JSON (at least one
    event); `more` when the log may hold further events after it."""

    more: bool = False


@dataclass(frozen=True, slots=True)
class WireEvent:
    """One event: the keys streams order and route by, and its JSON text."""

    id: int
    seq: int
    job_id: str
    type: str
    text: str

    @property
    def is_terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS

    @classmethod
    def from_json(cls, text: str | bytes) -> WireEvent | None:
        """From a pub/sub payload (the publisher's JSON); None for a wake-up, which has
        no id (PostgreSQL: the sequencer numbers events, app/events/publisher.py)."""
        body = json.loads(text)
        if body["id"] is None:
            return None
        decoded = text if isinstance(text, str) else text.decode()
        return cls(
            id=int(body["id"]),
            seq=int(body["seq"]),
            job_id=str(body["job_id"]),
            type=str(body["type"]),
            text=decoded,
        )

    @classmethod
    def from_event(cls, event: EventOut) -> WireEvent:
        return cls(
            id=event.id,
            seq=event.seq,
            job_id=event.job_id,
            type=event.type,
            text=_event_json(event),
        )


def _event_json(event: EventOut) -> str:
    """The event's JSON. What an older version stored is made sendable here: an output
    over EVENT_OUTPUT_MAX_BYTES is left out (as it is written now), a lone surrogate
    becomes U+FFFD."""
    try:
        text = event.model_dump_json()
    except PydanticSerializationError:
        text = utf8_text(json.dumps(event.model_dump(mode="json"), ensure_ascii=False))
    limit = get_settings().event_output_max_bytes
    output = event.data.get("output")
    if len(text) > limit + _EVENT_OVERHEAD and output is not None:
        event = event.model_copy(update={"data": output_left_out(event.data, len(text))})
        return _event_json(event)
    return text


def _page(events: Iterable[WireEvent], rows: int, limit: int) -> WirePage:
    """The events up to EVENT_PAGE_MAX_BYTES; `rows` of `limit` were read."""
    budget = get_settings().event_page_max_bytes
    page = WirePage()
    size = 0
    for event in events:
        size += len(event.text)
        if page and size > budget:
            page.more = True
            return page
        page.append(event)
    page.more = rows >= limit
    return page


@dataclass(frozen=True, slots=True)
class JobHead:
    """Where a job's stream stands when a client connects."""

    job_id: uuid.UUID
    status: str
    last_seq: int

    def over_at(self, after: int) -> bool:
        """True when a client at `after` has seen the job's final event already."""
        return self.status in FINISHED_JOB and self.last_seq <= after


def _job_head(job_id: uuid.UUID, tenant: str | None) -> JobHead:
    with session_scope() as session:
        head = log.job_head(session, job_id)
    # Another tenant's job is reported as missing, not forbidden: no existence leak.
    if head is None or (tenant is not None and head.tenant != tenant):
        raise JobNotFound(job_id)
    return JobHead(job_id, head.status, head.last_seq)


def job_page(job_id: uuid.UUID, after_seq: int, limit: int) -> WirePage:
    """A page of a job's events (see read_job_events), in the calling thread."""
    events = sequencer.read_job_events(job_id, after_seq, limit)
    return _page((WireEvent.from_event(event) for event in events), len(events), limit)


def _global_page(after_id: int, limit: int, tenant: str | None, before_id: int | None) -> WirePage:
    with session_scope() as session:
        rows = log.events_after_id(session, after_id, limit, tenant, before_id=before_id)
        wire = (WireEvent.from_event(log.to_wire(row)) for row in rows)
        return _page(wire, len(rows), limit)


def _sequence() -> list[WireEvent]:
    return [WireEvent.from_event(event) for event in sequencer.sequence_events()]


def _latest_id() -> int:
    with session_scope() as session:
        return log.latest_event_id(session)


def _tenant_of(job_id: uuid.UUID) -> str | None:
    with session_scope() as session:
        head = log.job_head(session, job_id)
    return None if head is None else head.tenant


async def read_job_head(job_id: uuid.UUID, tenant: str | None) -> JobHead:
    """The job as the principal may see it; raises JobNotFound (also for another tenant's)."""
    return await run_in_threadpool(_job_head, job_id, tenant)


async def read_job_events(job_id: uuid.UUID, after_seq: int, limit: int = LOG_PAGE) -> WirePage:
    """One page of a job's events with `seq > after_seq`, in seq order."""
    return await run_in_threadpool(job_page, job_id, after_seq, limit)


async def read_events_after(
    after_id: int, limit: int = LOG_PAGE, tenant: str | None = None, before_id: int | None = None
) -> WirePage:
    """One page of every job's events with `after_id < id < before_id` (optionally one
    tenant's)."""
    return await run_in_threadpool(_global_page, after_id, limit, tenant, before_id)


async def sequence_pending() -> list[WireEvent]:
    """Number the events waiting for their id (one batch), in id order; see sequencer.py."""
    return await run_in_threadpool(_sequence)


async def read_latest_id() -> int:
    return await run_in_threadpool(_latest_id)


async def read_job_tenant(job_id: uuid.UUID) -> str | None:
    return await run_in_threadpool(_tenant_of, job_id)
