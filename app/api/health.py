"""/api/v1/health (the process answers), /api/v1/health/ready (it can serve: the
database and Redis answer) and /api/v1/health/services (the probe is
app/services/reachability.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from app.api.deps import CatalogDep, SettingsDep, require_operator
from app.api.responses import errors
from app.db import session_scope
from app.errors import NotReady
from app.redis_client import get_redis
from app.services.reachability import probe_services

router = APIRouter(tags=["health"])


@router.get("/health")
def health() -> dict[str, bool]:
    return {"ok": True}


# Each dependency gets this long to answer a readiness probe.
READY_TIMEOUT_S = 3.0


def _database_answers() -> None:
    with session_scope() as session:
        session.execute(text("SELECT 1"))


def _redis_answers() -> None:
    get_redis().ping()


async def _check(probe: Any) -> str:
    try:
        await asyncio.wait_for(run_in_threadpool(probe), READY_TIMEOUT_S)
    except Exception as exc:  # any failure means "not ready"; the kind is the detail
        return f"unavailable ({type(exc).__name__})"
    return "ok"


@router.get("/health/ready", responses=errors(503))
async def ready() -> dict[str, Any]:
    """200 when the database and Redis both answer; 503 in the envelope otherwise, with
    each one's state in `details` (for load balancers and orchestrators)."""
    checks = dict(
        zip(
            ("database", "redis"),
            await asyncio.gather(_check(_database_answers), _check(_redis_answers)),
            strict=True,
        )
    )
    if any(state != "ok" for state in checks.values()):
        summary = ", ".join(f"{name} {state}" for name, state in checks.items())
        raise NotReady(f"not ready: {summary}", details=checks)
    return {"ok": True, **checks}


# Operators only when keys are configured: it names the services' addresses and errors,
# and each call makes a request to every service.
@router.get(
    "/health/services", dependencies=[Depends(require_operator)], responses=errors(401, 403)
)
async def health_services(catalog: CatalogDep, settings: SettingsDep) -> dict[str, Any]:
    """Reachability per service: any HTTP answer counts as reachable."""
    results = await probe_services(catalog, settings.http_connect_timeout_s)
    return {
        "success": True,
        "ok": all(r["reachable"] for r in results.values()),
        "services": results,
    }
