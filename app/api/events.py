"""GET /api/v1/jobs/{job_id}/events: a job's durable event log, as JSON or as SSE.

JSON pages through the log with `after` and `limit`. With `Accept: text/event-stream`
the same endpoint streams Server-Sent Events (`id:` is the event's `seq`, `event:`
its type, `data:` the event JSON): the stored events after `after` (or after the
`Last-Event-ID` a reconnecting client sends), then live ones, ending after the
job's final event. Comments keep idle streams alive through proxies.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from app.api.deps import PrincipalDep
from app.api.responses import errors
from app.api.stream_limit import HeldStreamingResponse, acquire_or_raise
from app.errors import GatewayError
from app.events.hub import HubUnavailable, SubscriptionStopped, get_hub
from app.events.stream import JobEvents, OrderedStream
from app.events.types import MAX_SEQ, EventOut
from app.events.wire import JobHead, job_page, read_job_head

router = APIRouter(prefix="/jobs", tags=["events"])

EVENT_STREAM = "text/event-stream"
KEEPALIVE_S = 15.0
# How long a browser's EventSource waits before it reconnects (with Last-Event-ID).
RECONNECT_MS = 1000


class EventPage(BaseModel):
    success: bool = True
    events: list[EventOut]
    # Pass as `after` to read the next page (the last seq returned, or `after` itself). A
    # page holds at most `limit` events and EVENT_PAGE_MAX_BYTES of them (at least one).
    next_after: int


@router.get(
    "/{job_id}/events",
    response_model=EventPage,
    responses={
        200: {"content": {EVENT_STREAM: {}}, "description": "JSON page, or SSE"},
        **errors(401, 404, 422, 429, 503),
    },
)
async def job_events(
    job_id: uuid.UUID,
    request: Request,
    principal: PrincipalDep,
    after: Annotated[
        int, Query(ge=0, le=MAX_SEQ, description="Events with seq greater than this.")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size (JSON only).")] = 100,
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
) -> Response:
    job = await read_job_head(job_id, principal.tenant_scope)
    if EVENT_STREAM in request.headers.get("accept", ""):
        position = _resume_position(after, last_event_id)
        return HeldStreamingResponse(
            _event_stream(job, position),
            release=acquire_or_raise(principal),
            media_type=EVENT_STREAM,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return await run_in_threadpool(_page, job_id, after, limit)


def _page(job_id: uuid.UUID, after: int, limit: int) -> Response:
    """An EventPage, assembled from each event's JSON as the streams send it: at most
    EVENT_PAGE_MAX_BYTES of events (at least one), outputs as events carry them."""
    page = job_page(job_id, after, limit)
    next_after = page[-1].seq if page else after
    events = ",".join(event.text for event in page)
    body = f'{{"success":true,"events":[{events}],"next_after":{next_after}}}'
    return Response(body.encode(), media_type="application/json")


def _resume_position(after: int, last_event_id: str | None) -> int:
    """A reconnecting EventSource sends back the last `id:` it saw; it wins over `after`."""
    text = (last_event_id or "").strip()
    if not text:
        return after
    # ASCII digits only: str.isdigit also accepts the likes of "²", which int() refuses.
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_SEQ:
        raise GatewayError(
            f"Last-Event-ID must be an event seq (an integer from 0 to {MAX_SEQ})",
            code="invalid_last_event_id",
        )
    return int(text)


async def _event_stream(job: JobHead, after: int) -> AsyncIterator[str]:
    yield f"retry: {RECONNECT_MS}\n\n"
    try:
        async with get_hub().subscribe(str(job.job_id)) as sub:
            stream = OrderedStream(sub, JobEvents(job.job_id), after, finished=job.over_at(after))
            async for event in stream.events(idle_after=KEEPALIVE_S):
                if event is None:
                    yield ": keep-alive\n\n"
                else:
                    yield f"id: {event.seq}\nevent: {event.type}\ndata: {event.text}\n\n"
    except (SubscriptionStopped, HubUnavailable):
        return  # too slow, shutting down or not ready: the client resumes from its last id
