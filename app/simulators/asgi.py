"""The simulator ASGI app (`POST /{service}` and the `/_sim` admin routes) and the
single-worker uvicorn server that serves it for `cao simulators`, `cao dev` and
`cao demo`."""

from __future__ import annotations

import time
from typing import Any

import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

from app.simulators.answers import answer, record_of
from app.simulators.schemas import Behavior, ServiceCall, ServiceStatsOut
from app.simulators.state import ServiceStats, SimulatorState


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
        record = record_of(call, request)
        started = time.monotonic()
        stats.begin(record)
        try:
            response = await answer(service, call, request, state)
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
