"""create_app(): routers, error handlers, body limit, request telemetry and the process
lifespan.

`cao api` asks uvicorn for `create_app` as a factory; the ordinary `uvicorn
app.main:app` serves the module's `app`, built once when first asked for, from the same
environment. Everything a server process needs at start-up (the catalog and API-key
checks, migrations when RUN_MIGRATIONS_ON_STARTUP is set, warm-up, the event hub,
tracing) is in the lifespan, and logging is set up by create_app, so both commands start
the same gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from functools import cache, partial
from typing import Any

import structlog
from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig

from app.api import (
    catalog,
    dashboard,
    events,
    health,
    jobs,
    metrics,
    operator_routes,
    whoami,
    ws,
)
from app.api.deps import WebSocketDenied, close_denied_websocket
from app.api.errors import BodySizeLimit, install_error_handlers
from app.api.head import HeadAsGet
from app.api.responses import ANY_ROUTE, Utf8JSONResponse
from app.auth import announce_access_mode
from app.broker import flush_sent_events
from app.catalog import current_catalog
from app.config import get_settings
from app.db import dispose_db, init_db
from app.events.hub import start_hub, stop_hub
from app.events.publisher import drain_publishes
from app.jobs.warm_up import prepare_job_creation, warm_up_in_background
from app.logs import configure_logging
from app.redis_client import close_redis
from app.tracing import configure_tracing, shutdown_tracing

log = structlog.get_logger(__name__)
API_PREFIX = "/api/v1"
# Requests that make no trace: scrapes and probes, every few seconds.
UNTRACED_PATHS = ("/metrics", f"{API_PREFIX}/health")


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    configure_tracing("cao-api")
    catalog = current_catalog()  # an invalid catalog stops start-up here, naming the key
    announce_access_mode()  # so do malformed API keys; running open is logged loudly
    if settings.run_migrations_on_startup:
        from app.migrate import upgrade_with_retries

        upgrade_with_retries()
    init_db()
    warm_up_in_background(partial(prepare_job_creation, catalog))
    start_hub(settings.redis_url)  # the one event subscription of this process
    log.info("api ready", features=sorted(catalog.features), catalog=catalog.source)
    yield
    await stop_hub()
    await asyncio.to_thread(drain_publishes)
    await asyncio.to_thread(flush_sent_events)
    close_redis()
    dispose_db()
    shutdown_tracing()


def _untraced(scope: MutableMapping[str, Any]) -> bool:
    return str(scope.get("path", "")).startswith(UNTRACED_PATHS)


def request_telemetry(tracing: bool) -> TelemetryConfig:
    """FastAPI's own OpenTelemetry telemetry: a span per request (in the caller's trace
    when it sends a `traceparent`) while tracing is on (app/tracing.py), nothing
    otherwise. Only spans: the gateway's metrics are its own (/metrics). No spans of
    FastAPI's inner operations, so that the current span in a route is the request's,
    which a job created there stores as its trace."""
    return {
        "tracing": tracing,
        "metrics": False,
        "logs": False,
        "operation_spans": False,
        "exclude": _untraced,
    }


def create_app() -> FastAPI:
    # Here rather than in the lifespan: uvicorn logs its start before the lifespan runs.
    configure_logging("api")
    settings = get_settings()
    app = FastAPI(
        title="CAO Gateway",
        version="0.1.0",
        summary="Orchestration gateway for multi-step AI workflows",
        lifespan=lifespan,
        telemetry=request_telemetry(settings.tracing),
        default_response_class=Utf8JSONResponse,
        # DOCS_ENABLED (off by default in production): /docs, /redoc and /openapi.json.
        docs_url="/docs" if settings.docs_on else None,
        redoc_url="/redoc" if settings.docs_on else None,
        openapi_url="/openapi.json" if settings.docs_on else None,
    )
    install_error_handlers(app)
    app.add_exception_handler(WebSocketDenied, close_denied_websocket)
    routers = (
        jobs.router,
        operator_routes.router,
        catalog.router,
        health.router,
        events.router,
        whoami.router,
    )
    for router in routers:
        app.include_router(router, prefix=API_PREFIX, responses=ANY_ROUTE)
    app.include_router(ws.router)  # WebSockets live at /ws/..., outside the prefix
    app.include_router(metrics.router)
    app.include_router(dashboard.router)  # the pages, outside the API's prefix
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(HeadAsGet)
    return app


@cache
def _app() -> FastAPI:
    return create_app()


def __getattr__(name: str) -> FastAPI:
    # `uvicorn app.main:app`: built once, on first access rather than at import, so that
    # importing this module (tests, `cao api`) reads no settings and builds nothing.
    if name == "app":
        return _app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
