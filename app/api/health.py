"""/api/v1/health and /api/v1/health/services (the probe is app/services/reachability.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from app.api.deps import CatalogDep, SettingsDep, require_operator
from app.api.responses import errors
from app.services.reachability import probe_services

router = APIRouter(tags=["health"])


@router.get("/health")
def health() -> dict[str, bool]:
    return {"ok": True}


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
