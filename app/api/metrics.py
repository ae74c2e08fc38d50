"""GET /metrics: Prometheus text, gathered at scrape time from Redis and the database."""

from __future__ import annotations

from collections.abc import Iterator

import structlog
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from app.catalog import Catalog, current_catalog
from app.jobs.service import read_job_stats
from app.jobs.service_load import ServiceLoad, read_service_load

router = APIRouter(tags=["metrics"])
log = structlog.get_logger(__name__)

# The step latency gauge averages over this many of the most recently finished steps.
RECENT_STEPS = 1000


class GatewayCollector(Collector):
    """Queue depth, lease use, jobs by status and recent step latency."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from self._redis_metrics(current_catalog())
        yield from self._database_metrics()

    def _redis_metrics(self, catalog: Catalog) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("cao_queue_depth", "Messages waiting per queue", labels=["queue"])
        in_use = GaugeMetricFamily("cao_leases_in_use", "Leases held", labels=["service"])
        limit = GaugeMetricFamily("cao_lease_limit", "Lease limit", labels=["service"])
        waiting = GaugeMetricFamily(
            "cao_steps_waiting", "Steps waiting for a slot", labels=["service"]
        )
        try:
            load = read_service_load(catalog)  # a part Redis cannot give comes back None
        except Exception as exc:  # a scrape answers whatever else fails
            log.warning("redis metrics unavailable", error=str(exc))
            load = ServiceLoad(queue_depths=None, usages=None)
        for queue, count in (load.queue_depths or {}).items():
            depth.add_metric([queue], count)
        if load.usages is not None:
            for service in catalog.services.values():
                usage = load.usages[service.name]
                in_use.add_metric([service.name], usage.in_use)
                waiting.add_metric([service.name], usage.waiting)
                limit.add_metric([service.name], service.concurrency)
        yield from (depth, in_use, limit, waiting)

    def _database_metrics(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("cao_jobs", "Jobs by status", labels=["status"])
        latency = GaugeMetricFamily(
            "cao_step_duration_seconds_avg",
            f"Mean duration of the last {RECENT_STEPS} finished steps per service",
            labels=["service"],
        )
        try:
            stats = read_job_stats(RECENT_STEPS)
        except Exception as exc:
            log.warning("database metrics unavailable", error=str(exc))
        else:
            for status, count in stats.jobs_by_status.items():
                jobs.add_metric([status], count)
            for name, seconds in stats.mean_step_seconds.items():
                latency.add_metric([name], seconds)
        yield from (jobs, latency)


_registry = CollectorRegistry()
_registry.register(GatewayCollector())


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    return Response(generate_latest(_registry), media_type=CONTENT_TYPE_LATEST)
