"""Simulated HTTP services: deterministic stand-ins for the gateway's `kind: http` steps.

Owns the simulator ASGI app (`create_simulator_app`), its behaviour knobs (latency,
jitter, failure rate, hangs, scripted responses), the per-service call statistics the
end-to-end tests assert on, and `run_simulators`, which serves it with uvicorn for
`cao simulators`, `cao dev` and `cao demo`.

Everything lives in memory in one process, so the counters are exact only with a
single worker; that is the only way this module serves the app.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field

DEFAULT_SERVICES = (
    "prompt_enhancer",
    "fast_chat_llm",
    "summarizer_pro",
    "email_notifier",
    "video_gen_v2",
)
HANG_SECONDS = 3600.0
MAX_RECORDED_REQUESTS = 5000
# nginx's "client closed request": recorded when the caller gave up before the answer.
CLIENT_CLOSED_STATUS = 499

Interruption = Literal["disconnected", "closing"]


class ScriptedResponse(BaseModel):
    """One canned answer, consumed by one request before the normal behaviour applies."""

    model_config = ConfigDict(extra="forbid")

    status: int = Field(200, ge=100, le=599)
    retry_after: float | None = Field(None, ge=0)
    # A string body is sent as text/plain, so tests can produce non-JSON answers.
    body: dict[str, Any] | str | None = None
    delay_ms: float = Field(0.0, ge=0)
    hang: bool = False


class Behavior(BaseModel):
    """How one simulated service (or, as the default, every service) answers."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: float = Field(0.0, ge=0)
    jitter_ms: float = Field(0.0, ge=0)
    failure_rate: float = Field(0.0, ge=0, le=1)
    failure_status: int = Field(503, ge=400, le=599)
    hang: bool = False
    script: list[ScriptedResponse] = Field(default_factory=list)
    seed: int = 0


class ServiceCall(BaseModel):
    """The body the gateway POSTs to a service (DESIGN.md "Calling a service")."""

    job_id: str | None = None
    feature_name: str | None = None
    step_index: int | None = None
    step_name: str | None = None
    attempt: int | None = None
    input_data: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)


class RequestRecord(BaseModel):
    job_id: str | None
    step_index: int | None
    step_name: str | None
    attempt: int | None
    idempotency_key: str | None
    x_job_id: str | None
    internal_api_key: str | None
    context: dict[str, Any]
    input_data: dict[str, Any]
    received_at: float
    # None while the request is still in flight.
    status: int | None = None


class ServiceStatsOut(BaseModel):
    calls: int
    in_flight: int
    max_in_flight: int
    busy_seconds: float
    first_call_at: float | None
    last_end_at: float | None
    requests: list[RequestRecord]


# --- deterministic outputs -------------------------------------------------------------


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _digest(*parts: Any, length: int = 16) -> str:
    return hashlib.sha256(_canonical(list(parts)).encode()).hexdigest()[:length]


def _prompt_of(call: ServiceCall) -> str:
    prompt = call.input_data.get("prompt")
    if isinstance(prompt, str) and prompt:
        return prompt
    return _canonical(call.input_data)


def _context_text(context: Mapping[str, Any], step: str, key: str) -> str | None:
    output = context.get(step)
    value = output.get(key) if isinstance(output, dict) else None
    return value if isinstance(value, str) and value else None


def _enhance_prompt(call: ServiceCall) -> dict[str, Any]:
    prompt = _prompt_of(call)
    return {"enhanced_prompt": f"{prompt} (state the goal, the audience and concrete steps)"}


def _chat(call: ServiceCall) -> dict[str, Any]:
    prompt = _context_text(call.context, "prompt_enhancer", "enhanced_prompt") or _prompt_of(call)
    return {"text": f"Answer [{_digest(prompt, length=8)}]: a structured response to: {prompt}"}


def _summarize(call: ServiceCall) -> dict[str, Any]:
    source = _context_text(call.context, "fast_chat_llm", "text")
    if source is None:
        source = _canonical(call.context) if call.context else _prompt_of(call)
    words = source.split()
    tail = " ..." if len(words) > 24 else ""
    return {"summary": "Summary: " + " ".join(words[:24]) + tail}


def _notify(call: ServiceCall) -> dict[str, Any]:
    return {
        "sent": True,
        "message_id": _digest(call.job_id, call.context),
        "to": call.input_data.get("email", "demo@example.com"),
    }


def _generate_video(call: ServiceCall) -> dict[str, Any]:
    video_id = _digest(call.input_data, call.context)
    return {"video_url": f"https://videos.example/{video_id}.mp4", "duration_s": 15}


_OUTPUTS: dict[str, Callable[[ServiceCall], dict[str, Any]]] = {
    "prompt_enhancer": _enhance_prompt,
    "fast_chat_llm": _chat,
    "summarizer_pro": _summarize,
    "email_notifier": _notify,
    "video_gen_v2": _generate_video,
}


def simulate_output(service: str, call: ServiceCall) -> dict[str, Any]:
    """The step output `service` answers for `call`: a pure function of its inputs."""
    build = _OUTPUTS.get(service)
    if build is not None:
        return build(call)
    return {"service": service, "echo": call.input_data, "seen_context": sorted(call.context)}


# --- state: behaviours, scripts and statistics ----------------------------------------


@dataclass
class ServiceStats:
    calls: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    busy_seconds: float = 0.0
    first_call_at: float | None = None
    last_end_at: float | None = None
    requests: deque[RequestRecord] = field(
        default_factory=lambda: deque(maxlen=MAX_RECORDED_REQUESTS)
    )

    def begin(self, record: RequestRecord) -> None:
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if self.first_call_at is None:
            self.first_call_at = record.received_at
        self.requests.append(record)

    def end(self, record: RequestRecord, busy: float) -> None:
        self.in_flight -= 1
        self.busy_seconds += busy
        self.last_end_at = time.time()
        if record.status is None:
            record.status = CLIENT_CLOSED_STATUS

    def snapshot(self) -> ServiceStatsOut:
        return ServiceStatsOut(
            calls=self.calls,
            in_flight=self.in_flight,
            max_in_flight=self.max_in_flight,
            busy_seconds=self.busy_seconds,
            first_call_at=self.first_call_at,
            last_end_at=self.last_end_at,
            requests=list(self.requests),
        )


@dataclass
class ServiceRuntime:
    """What a service consumes as it answers: its remaining script and its RNG."""

    script: deque[ScriptedResponse]
    rng: random.Random


class SimulatorState:
    """Behaviours, scripts and statistics of one simulator app (in memory)."""

    def __init__(self, default_behavior: Behavior, required_api_key: str | None) -> None:
        self.initial_default = default_behavior
        self.required_api_key = required_api_key
        self._closed = False
        self._closing: asyncio.Event | None = None
        self._closing_loop: asyncio.AbstractEventLoop | None = None
        self.reset()

    def reset(self) -> None:
        self.default = self.initial_default
        self.behaviors: dict[str, Behavior] = {}
        self.runtimes: dict[str, ServiceRuntime] = {}
        self.stats: dict[str, ServiceStats] = {}

    def behavior_for(self, service: str) -> Behavior:
        return self.behaviors.get(service, self.default)

    def runtime_for(self, service: str) -> ServiceRuntime:
        runtime = self.runtimes.get(service)
        if runtime is None:
            behavior = self.behavior_for(service)
            runtime = ServiceRuntime(
                script=deque(behavior.script), rng=random.Random(f"{behavior.seed}:{service}")
            )
            self.runtimes[service] = runtime
        return runtime

    def set_behavior(self, service: str, behavior: Behavior) -> None:
        self.behaviors[service] = behavior
        self.runtimes.pop(service, None)

    def set_default(self, behavior: Behavior) -> None:
        self.default = behavior
        # Services without their own behaviour restart the new default's script.
        for service in [name for name in self.runtimes if name not in self.behaviors]:
            del self.runtimes[service]

    def stats_for(self, service: str) -> ServiceStats:
        return self.stats.setdefault(service, ServiceStats())

    def closing_event(self) -> asyncio.Event:
        """Set when the server shuts down, so hanging requests end instead of blocking it."""
        # An Event binds to one loop; an app may be driven by several (one per test).
        loop = asyncio.get_running_loop()
        if self._closing is None or self._closing_loop is not loop:
            self._closing, self._closing_loop = asyncio.Event(), loop
            if self._closed:
                self._closing.set()
        return self._closing

    def begin_shutdown(self) -> None:
        """Called on the serving loop when the server starts shutting down."""
        self._closed = True
        if self._closing is not None:
            self._closing.set()

    def api_key_ok(self, presented: str | None) -> bool:
        if self.required_api_key is None:
            return True
        return presented is not None and secrets.compare_digest(
            presented.encode(), self.required_api_key.encode()
        )


# --- answering a call -----------------------------------------------------------------


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


async def _answer(
    service: str, call: ServiceCall, request: Request, state: SimulatorState
) -> Response:
    if not state.api_key_ok(request.headers.get("x-internal-api-key")):
        return JSONResponse({"error": "missing or invalid X-Internal-Api-Key"}, status_code=401)
    script = state.runtime_for(service).script
    if script:
        return await _play_script(script.popleft(), service, call, request, state)
    return await _play_behavior(service, call, request, state)


def _record_of(call: ServiceCall, request: Request) -> RequestRecord:
    headers = request.headers
    return RequestRecord(
        job_id=call.job_id,
        step_index=call.step_index,
        step_name=call.step_name,
        attempt=call.attempt,
        idempotency_key=headers.get("idempotency-key"),
        x_job_id=headers.get("x-job-id"),
        internal_api_key=headers.get("x-internal-api-key"),
        context=call.context,
        input_data=call.input_data,
        received_at=time.time(),
    )


# --- the app ---------------------------------------------------------------------------


def _admin_router(state: SimulatorState) -> APIRouter:
    router = APIRouter(prefix="/_sim", tags=["simulator admin"])

    @router.put("/services/{service}")
    async def put_service_behavior(service: str, behavior: Behavior) -> Behavior:
        state.set_behavior(service, behavior)
        return behavior

    @router.put("/default")
    async def put_default_behavior(behavior: Behavior) -> Behavior:
        state.set_default(behavior)
        return behavior

    @router.get("/services/{service}/stats")
    async def service_stats(service: str) -> ServiceStatsOut:
        stats = state.stats.get(service) or ServiceStats()
        return stats.snapshot()

    @router.get("/stats")
    async def all_stats() -> dict[str, ServiceStatsOut]:
        return {name: stats.snapshot() for name, stats in state.stats.items()}

    @router.post("/reset")
    async def reset() -> dict[str, bool]:
        state.reset()
        return {"ok": True}

    return router


def create_simulator_app(
    default_behavior: Behavior | None = None, required_api_key: str | None = None
) -> FastAPI:
    """The simulator app: `POST /{service}` for any name, admin API under `/_sim`.

    `POST /_sim/reset` restores `default_behavior`. With `required_api_key`, calls
    without a matching `X-Internal-Api-Key` header get 401 (and are still recorded).
    """
    state = SimulatorState(default_behavior or Behavior(), required_api_key)
    app = FastAPI(title="CAO simulated services")
    app.state.simulator = state
    app.include_router(_admin_router(state))

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/{service}")
    async def call_service(service: str, call: ServiceCall, request: Request) -> Response:
        stats = state.stats_for(service)
        record = _record_of(call, request)
        started = time.monotonic()
        stats.begin(record)
        try:
            response = await _answer(service, call, request, state)
            record.status = response.status_code
            return response
        finally:
            stats.end(record, time.monotonic() - started)

    return app


class _SimulatorServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: SimulatorState) -> None:
        super().__init__(config)
        self._state = state

    async def shutdown(self, sockets: Any = None) -> None:
        # Wake hanging requests first; uvicorn otherwise waits for them forever.
        self._state.begin_shutdown()
        await super().shutdown(sockets)


def build_simulator_server(
    app: FastAPI, host: str = "127.0.0.1", port: int = 8100
) -> uvicorn.Server:
    """A single-worker uvicorn server for `app` whose shutdown ends hanging requests."""
    config = uvicorn.Config(
        app, host=host, port=port, workers=1, log_level="warning", lifespan="off"
    )
    return _SimulatorServer(config, app.state.simulator)


def run_simulators(
    host: str = "127.0.0.1",
    port: int = 8100,
    behavior: Behavior | None = None,
    required_api_key: str | None = None,
) -> None:
    """Serve the simulated services until interrupted (used by `cao simulators`)."""
    app = create_simulator_app(behavior, required_api_key)
    build_simulator_server(app, host, port).run()
