"""create_app(): routers, error handlers, body limit and the process lifespan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import structlog
from fastapi import FastAPI

from app.api import catalog, events, health, jobs, metrics, operator_routes, ws
from app.api.deps import WebSocketDenied, close_denied_websocket
from app.api.errors import BodySizeLimit, install_error_handlers
from app.api.head import HeadAsGet
from app.api.responses import ANY_ROUTE, Utf8JSONResponse
from app.auth import announce_access_mode
from app.catalog import current_catalog
from app.config import get_settings
from app.db import dispose_db, init_db
from app.events.hub import start_hub, stop_hub
from app.events.publisher import drain_publishes
from app.jobs.warm_up import prepare_job_creation, warm_up_in_background
from app.logs import configure_logging
from app.redis_client import close_redis

log = structlog.get_logger(__name__)
API_PREFIX = "/api/v1"


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    configure_logging("api")
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
    close_redis()
    dispose_db()


def create_app() -> FastAPI:
    settings = get_settings()
    app = FastAPI(
        title="CAO Gateway",
        version="0.1.0",
        summary="Orchestration gateway for multi-step AI workflows",
        lifespan=lifespan,
        default_response_class=Utf8JSONResponse,
        # DOCS_ENABLED (off by default in production): /docs, /redoc and /openapi.json.
        docs_url="/docs" if settings.docs_on else None,
        redoc_url="/redoc" if settings.docs_on else None,
        openapi_url="/openapi.json" if settings.docs_on else None,
    )
    install_error_handlers(app)
    app.add_exception_handler(WebSocketDenied, close_denied_websocket)
    routers = (jobs.router, operator_routes.router, catalog.router, health.router, events.router)
    for router in routers:
        app.include_router(router, prefix=API_PREFIX, responses=ANY_ROUTE)
    app.include_router(ws.router)  # WebSockets live at /ws/..., outside the prefix
    app.include_router(metrics.router)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(HeadAsGet)
    return app
