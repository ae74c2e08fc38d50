"""Answering one call to a simulated service: the API key check, a scripted answer if
one is queued, else the service's behaviour (latency, jitter, failures, hangs), and
the early end of a pause when the caller disconnects or the server shuts down."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from app.simulators.outputs import simulate_output
from app.simulators.schemas import (
    CLIENT_CLOSED_STATUS,
    RequestRecord,
    ScriptedResponse,
    ServiceCall,
)
from app.simulators.state import SimulatorState

HANG_SECONDS = 3600.0

Interruption = Literal["disconnected", "closing"]


async def _client_gone(request: Request) -> None:
    # The body is already read, so the next ASGI message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _pause(request: Request, seconds: float, state: SimulatorState) -> Interruption | None:
    """Sleep `seconds`, unless the client disconnects or the server shuts down first."""
    if seconds <= 0:
        return None
    sleeper = asyncio.ensure_future(asyncio.sleep(seconds))
    watcher = asyncio.ensure_future(_client_gone(request))
    shutdown = asyncio.ensure_future(state.closing_event().wait())
    waiters = (sleeper, watcher, shutdown)
    try:
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waiters:
            task.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
    if sleeper in done:
        return None
    return "closing" if shutdown in done else "disconnected"


def _interrupted(reason: Interruption) -> Response:
    if reason == "closing":
        return JSONResponse({"error": "simulator shutting down"}, status_code=503)
    # Nobody is listening any more; the status is only what the stats record.
    return Response(status_code=CLIENT_CLOSED_STATUS)


def _body_response(status: int, body: dict[str, Any] | str, retry_after: float | None) -> Response:
    headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
    if isinstance(body, str):
        return PlainTextResponse(body, status_code=status, headers=headers)
    return JSONResponse(body, status_code=status, headers=headers)


def _error_body(service: str, status: int) -> dict[str, Any]:
    return {"error": f"{service}: simulated {status}"}


async def _play_script(
    item: ScriptedResponse, service: str, call: ServiceCall, request: Request, state: SimulatorState
) -> Response:
    seconds = HANG_SECONDS if item.hang else item.delay_ms / 1000
    interruption = await _pause(request, seconds, state)
    if interruption is not None:
        return _interrupted(interruption)
    body = item.body
    if body is None:
        ok = 200 <= item.status < 300
        body = simulate_output(service, call) if ok else _error_body(service, item.status)
    return _body_response(item.status, body, item.retry_after)


async def _play_behavior(
    service: str, call: ServiceCall, request: Request, state: SimulatorState
) -> Response:
    behavior = state.behavior_for(service)
    rng = state.runtime_for(service).rng
    # Draw at arrival so the random sequence depends only on the order of requests.
    jitter_ms = rng.uniform(0, behavior.jitter_ms) if behavior.jitter_ms else 0.0
    failed = behavior.failure_rate > 0 and rng.random() < behavior.failure_rate
    seconds = HANG_SECONDS if behavior.hang else (behavior.latency_ms + jitter_ms) / 1000
    interruption = await _pause(request, seconds, state)
    if interruption is not None:
        return _interrupted(interruption)
    if failed:
        status = behavior.failure_status
        return JSONResponse(_error_body(service, status), status_code=status)
    return JSONResponse(simulate_output(service, call))


async def answer(
    service: str, call: ServiceCall, request: Request, state: SimulatorState
) -> Response:
    """The response `service` gives to `call`, after whatever pause its knobs ask for."""
    if not state.api_key_ok(request.headers.get("x-internal-api-key")):
        return JSONResponse({"error": "missing or invalid X-Internal-Api-Key"}, status_code=401)
    script = state.runtime_for(service).script
    if script:
        return await _play_script(script.popleft(), service, call, request, state)
    return await _play_behavior(service, call, request, state)


# Headers whose values are recorded as they came; any other may carry a credential.
PLAIN_HEADERS = frozenset(
    {
        "accept",
        "accept-encoding",
        "connection",
        "content-length",
        "content-type",
        "host",
        "idempotency-key",
        "traceparent",
        "tracestate",
        "user-agent",
        "x-job-id",
    }
)
REDACTED = "[redacted]"


def record_of(call: ServiceCall, request: Request) -> RequestRecord:
    """What the statistics keep of one call: its body's ids and the gateway's headers,
    without the value of any header that may hold a secret."""
    headers = request.headers
    seen = {name: value if name in PLAIN_HEADERS else REDACTED for name, value in headers.items()}
    return RequestRecord(
        job_id=call.job_id,
        step_index=call.step_index,
        step_name=call.step_name,
        attempt=call.attempt,
        idempotency_key=headers.get("idempotency-key"),
        x_job_id=headers.get("x-job-id"),
        traceparent=headers.get("traceparent"),
        headers=seen,
        context=call.context,
        input_data=call.input_data,
        received_at=time.time(),
    )
