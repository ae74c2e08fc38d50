"""Whether each service of the catalog answers: the probe behind GET /health/services.

An http service is probed with one HEAD request to its URL, and any HTTP answer counts
as reachable (a service need not implement HEAD); a python service runs inside the
workers and is always reachable.
"""

from __future__ import annotations

from typing import Any

import httpx

from app.catalog import Catalog


async def probe_services(catalog: Catalog, connect_timeout_s: float) -> dict[str, dict[str, Any]]:
    """Per service name: `kind`, `reachable`, and the HTTP `status` or the `error`."""
    results: dict[str, dict[str, Any]] = {}
    async with httpx.AsyncClient(timeout=httpx.Timeout(connect_timeout_s)) as client:
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
    return results
