"""/api/v1/features and /api/v1/services: what the catalog offers and how busy it is."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from app.api.deps import CatalogDep, get_principal, require_operator
from app.api.responses import errors
from app.jobs.service_load import read_service_load

router = APIRouter(tags=["catalog"])


# With keys configured: any key lists the features (what a client may submit); only an
# operator sees the services' limits, load and queues.
@router.get("/features", dependencies=[Depends(get_principal)], responses=errors(401))
def list_features(catalog: CatalogDep) -> dict[str, Any]:
    return {
        "success": True,
        "features": [
            {
                "name": feature.name,
                "description": feature.description,
                "steps": [
                    {
                        "step_index": i,
                        "service": name,
                        "queue": catalog.services[name].queue,
                        "weight": weight,
                    }
                    for i, (name, weight) in enumerate(
                        zip(feature.steps, feature.weights, strict=True)
                    )
                ],
            }
            for feature in catalog.features.values()
        ],
    }


@router.get("/services", dependencies=[Depends(require_operator)], responses=errors(401, 403))
def list_services(catalog: CatalogDep) -> dict[str, Any]:
    load = read_service_load(catalog)
    depths = load.queue_depths or {}
    usages = load.usages or {}
    services = []
    for service in catalog.services.values():
        usage = usages.get(service.name)
        services.append(
            {
                "name": service.name,
                "kind": service.kind,
                "queue": service.queue,
                "limit": service.concurrency,
                "leases_in_use": usage.in_use if usage is not None else None,
                "waiting": usage.waiting if usage is not None else None,
                "queue_depth": depths.get(service.queue),
                "timeout_s": service.timeout_s,
                "lease_ttl_s": service.lease_ttl_s,
                "max_attempts": service.max_attempts,
            }
        )
    queues = [{"name": queue, "depth": depths.get(queue)} for queue in catalog.queues]
    return {"success": True, "services": services, "queues": queues}
