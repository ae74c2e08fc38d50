"""/api/v1/health and /api/v1/health/services."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import APIRouter, Depends

from app.api.deps import CatalogDep, SettingsDep, require_operator
from app.api.responses import errors

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
    results: dict[str, Any] = {}
    timeout = httpx.Timeout(settings.http_connect_timeout_s)
    async with httpx.AsyncClient(timeout=timeout) as client:
        for service in catalog.services.values():
            if service.kind != "http" or service.url is None:
                results[service.name] = {"kind": service.kind, "reachable": True}
                continue
            try:
                response = await client.request("HEAD", service.url)
                results[service.name] = {
                    "kind": "http",
                    "reachable": True,
                    "status": response.status_code,
                }
            except httpx.HTTPError as exc:
                results[service.name] = {"kind": "http", "reachable": False, "error": str(exc)}
    return {
        "success": True,
        "ok": all(r["reachable"] for r in results.values()),
        "services": results,
    }
