"""WebSockets: `/ws/{job_id}` (one job, `?after=SEQ`) and `/ws` (every job, `?after=ID`).

On connect: `WS_CONNECTED`, then every stored event after the client's position,
then live events, in order and each once (see app/events/stream.py). Close codes:
1000 after a job's final event, 4004 unknown job, 4008 too slow (reconnect with
`after`; the reason names the position), 4029 the API key already holds
MAX_STREAMS_PER_KEY streams, 1009 a client message over WS_MAX_MESSAGE_BYTES,
1011 stream failed, 1012 server restarting, 1013 try again later. A bad `after`
gets no socket: the handshake is answered 422 with the error envelope
(app/api/errors.py).
Idle sockets are kept alive by the server's protocol pings (`cao api` sets them).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect

from app.api.deps import WsPrincipalDep
from app.api.stream_limit import WS_TOO_MANY_STREAMS, acquire, refusal
from app.auth import Principal
from app.config import get_settings
from app.errors import JobNotFound
from app.events.hub import HubUnavailable, StopReason, Subscription, get_hub
from app.events.stream import AllEvents, EventSource, JobEvents, OrderedStream
from app.events.types import MAX_EVENT_ID, MAX_SEQ
from app.events.wire import read_job_head
from app.models import utcnow

log = structlog.get_logger(__name__)
router = APIRouter(tags=["events"])

WS_NORMAL = 1000
WS_MESSAGE_TOO_BIG = 1009
WS_INTERNAL_ERROR = 1011
WS_RESTARTING = 1012
WS_TRY_AGAIN = 1013
WS_UNKNOWN_JOB = 4004
WS_TOO_SLOW = 4008
# A close frame waits behind whatever the client has not read yet (a slow client gets
# it once it reads again); give up after this.
CLOSE_TIMEOUT_S = 30.0

SeqAfter = Annotated[int, Query(ge=0, le=MAX_SEQ, description="Resume after this seq.")]
IdAfter = Annotated[int, Query(ge=0, le=MAX_EVENT_ID, description="Resume after this id.")]


@router.websocket("/ws/{job_id}")
async def job_socket(
    websocket: WebSocket, job_id: str, principal: WsPrincipalDep, after: SeqAfter = 0
) -> None:
    await websocket.accept()
    async with _stream_slot(websocket, principal) as held:
        if not held:
            return
        try:
            job = await read_job_head(uuid.UUID(job_id), principal.tenant_scope)
        except (ValueError, JobNotFound):
            await websocket.close(WS_UNKNOWN_JOB, f"job {job_id} does not exist"[:120])
            return
        await _connected(websocket, after, job_id=str(job.job_id), status=job.status)
        source = JobEvents(job.job_id)
        finished = job.over_at(after)
        await _serve(websocket, source, after, job_id=str(job.job_id), finished=finished)


@router.websocket("/ws")
async def all_jobs_socket(
    websocket: WebSocket, principal: WsPrincipalDep, after: IdAfter = 0
) -> None:
    await websocket.accept()
    async with _stream_slot(websocket, principal) as held:
        if not held:
            return
        await _connected(websocket, after, job_id=None, status=None)
        source = AllEvents(get_hub(), tenant=principal.tenant_scope)
        await _serve(websocket, source, after, job_id=None, finished=False)


@contextlib.asynccontextmanager
async def _stream_slot(websocket: WebSocket, principal: Principal) -> AsyncIterator[bool]:
    """One of the key's MAX_STREAMS_PER_KEY streams for this socket, held while it is
    served; past the cap the socket is closed with 4029 and False is yielded."""
    release = acquire(principal)
    if release is None:
        await _close(websocket, WS_TOO_MANY_STREAMS, refusal(get_settings().max_streams_per_key))
        yield False
        return
    try:
        yield True
    finally:
        release()


async def _connected(
    websocket: WebSocket, after: int, *, job_id: str | None, status: str | None
) -> None:
    message: dict[str, Any] = {"type": "WS_CONNECTED", "job_id": job_id, "after": after}
    if status is not None:
        message["status"] = status
    message["ts"] = utcnow().isoformat()
    await websocket.send_json(message)


async def _serve(
    websocket: WebSocket, source: EventSource, after: int, *, job_id: str | None, finished: bool
) -> None:
    try:
        async with get_hub().subscribe(job_id) as sub:
            stream = OrderedStream(sub, source, after, finished=finished)
            code, reason = await _pump(websocket, sub, stream)
    except HubUnavailable as exc:
        code, reason = WS_TRY_AGAIN, str(exc)
    if code is not None:
        await _close(websocket, code, reason)


async def _pump(
    websocket: WebSocket, sub: Subscription, stream: OrderedStream
) -> tuple[int | None, str]:
    """Send until the stream ends, the client leaves or the hub stops the subscription."""

    async def send_all() -> None:
        async for event in stream.events():
            if event is not None:
                await websocket.send_text(event.text)

    sender = asyncio.create_task(send_all())
    client_gone = asyncio.create_task(_until_client_leaves(websocket))
    stopped = asyncio.create_task(sub.stopped.wait())
    tasks = {sender, client_gone, stopped}
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if sub.stop_reason is StopReason.SLOW:
        return WS_TOO_SLOW, f"too slow; reconnect with after={stream.delivered}"
    if sub.stop_reason is StopReason.SHUTDOWN:
        return WS_RESTARTING, f"server restarting; reconnect with after={stream.delivered}"
    if not sender.done() or sender.cancelled():
        return None, ""  # the client left: nothing to say
    error = sender.exception()
    if error is None:
        return WS_NORMAL, "job finished"
    if isinstance(error, WebSocketDisconnect):
        return None, ""  # the connection broke mid-send
    log.error("event stream failed", job_id=sub.job_id, error=repr(error))
    return WS_INTERNAL_ERROR, f"stream failed; reconnect with after={stream.delivered}"


async def _until_client_leaves(websocket: WebSocket) -> None:
    # Messages from the client carry nothing; reading them is how a close is noticed.
    # `cao api` has uvicorn refuse a large frame before it is read (ws_max_size); under
    # a server without that limit, the socket closes here all the same.
    limit = get_settings().ws_max_message_bytes
    while (message := await websocket.receive())["type"] != "websocket.disconnect":
        size = len(message.get("bytes") or b"") + len(message.get("text") or "")
        if size > limit:
            await _close(websocket, WS_MESSAGE_TOO_BIG, f"messages are limited to {limit} bytes")
            return


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(websocket.close(code, reason[:120]), CLOSE_TIMEOUT_S)
