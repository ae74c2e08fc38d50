"""The simulator ASGI app (`POST /{service}` and the `/_sim` admin routes) and the
single-worker uvicorn server that serves it for `cao simulators`, `cao dev` and
`cao demo`."""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

import uvicorn
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import Response

from app.catalog import Catalog
from app.simulators.answers import answer, record_of
from app.simulators.outputs import DEFAULT_SERVICES
from app.simulators.schemas import Behavior, ServiceCall, ServiceStatsOut
from app.simulators.state import ServiceStats, SimulatorState


def simulated_services(catalog: Catalog) -> list[str]:
    """The default services, and each http service of `catalog` by the last segment of
    its URL path (where a catalog pointed at the simulators sends its calls)."""
    named = {
        service.url.rstrip("/").rsplit("/", 1)[-1]
        for service in catalog.services.values()
        if service.url is not None
    }
    return sorted(set(DEFAULT_SERVICES) | {name for name in named if name})


def _known(services: frozenset[str], service: str) -> str:
    """`service`, if the simulator serves it; else 404: a name from nowhere must not
    add state (a behaviour, a stats entry) without bound."""
    if service not in services:
        raise HTTPException(404, f"no simulated service {service!r}")
    return service


def _admin_router(state: SimulatorState, services: frozenset[str]) -> APIRouter:
    router = APIRouter(prefix="/_sim", tags=["simulator admin"])

    @router.put("/services/{service}")
    async def put_service_behavior(service: str, behavior: Behavior) -> Behavior:
        state.set_behavior(_known(services, service), behavior)
        return behavior

    @router.put("/default")
    async def put_default_behavior(behavior: Behavior) -> Behavior:
        state.set_default(behavior)
        return behavior

    @router.get("/services/{service}/stats")
    async def service_stats(service: str) -> ServiceStatsOut:
        stats = state.stats.get(_known(services, service)) or ServiceStats()
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
    default_behavior: Behavior | None = None,
    required_api_key: str | None = None,
    services: Collection[str] = DEFAULT_SERVICES,
) -> FastAPI:
    """The simulator app: `POST /{service}` for each of `services` (any other name is a
    404), admin API under `/_sim`.

    `POST /_sim/reset` restores `default_behavior`. With `required_api_key`, calls
    without a matching `X-Internal-Api-Key` header get 401 (and are still recorded).
    """
    state = SimulatorState(default_behavior or Behavior(), required_api_key)
    known = frozenset(services)
    app = FastAPI(title="CAO simulated services")
    app.state.simulator = state
    app.include_router(_admin_router(state, known))

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/{service}")
    async def call_service(service: str, call: ServiceCall, request: Request) -> Response:
        stats = state.stats_for(_known(known, service))
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
    services: Collection[str] = DEFAULT_SERVICES,
) -> None:
    """Serve the simulated services until interrupted (used by `cao simulators`)."""
    app = create_simulator_app(behavior, required_api_key, services)
    build_simulator_server(app, host, port).run()
