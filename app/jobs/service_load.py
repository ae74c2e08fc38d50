"""How busy each service of the catalog is: messages waiting on its queue, leases held
and steps waiting for a slot, read from Redis for GET /services and /metrics.

Each part is read in one round trip for the whole catalog. A part Redis cannot give
is None (and logged), so a caller shows what it has rather than failing.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from redis.exceptions import RedisError

from app.catalog import Catalog
from app.leases import Usage, get_semaphore
from app.queues import queue_depths

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ServiceLoad:
    queue_depths: dict[str, int] | None  # per queue name
    usages: dict[str, Usage] | None  # per service name


def read_service_load(catalog: Catalog) -> ServiceLoad:
    try:
        depths: dict[str, int] | None = queue_depths(catalog.queues)
    except RedisError as exc:
        log.warning("queue depth unavailable", error=str(exc))
        depths = None
    try:
        usages: dict[str, Usage] | None = get_semaphore().usages(list(catalog.services))
    except RedisError as exc:
        log.warning("lease usage unavailable", error=str(exc))
        usages = None
    return ServiceLoad(queue_depths=depths, usages=usages)
