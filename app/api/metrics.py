"""GET /metrics: Prometheus text, gathered at scrape time from Redis and the database."""

from __future__ import annotations

from collections.abc import Iterator

import structlog
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from app.catalog import current_catalog
from app.db import session_scope
from app.leases import get_semaphore
from app.models import Job, JobStep
from app.queues import queue_depths

router = APIRouter(tags=["metrics"])
log = structlog.get_logger(__name__)


class GatewayCollector(Collector):
    """Queue depth, lease use, jobs by status and recent step latency."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        catalog = current_catalog()
        yield from self._redis_metrics(catalog)
        yield from self._database_metrics()

    def _redis_metrics(self, catalog: object) -> Iterator[GaugeMetricFamily]:
        from app.catalog import Catalog

        assert isinstance(catalog, Catalog)
        depth = GaugeMetricFamily("cao_queue_depth", "Messages waiting per queue", labels=["queue"])
        in_use = GaugeMetricFamily("cao_leases_in_use", "Leases held", labels=["service"])
        limit = GaugeMetricFamily("cao_lease_limit", "Lease limit", labels=["service"])
        waiting = GaugeMetricFamily(
            "cao_steps_waiting", "Steps waiting for a slot", labels=["service"]
        )
        try:
            for queue, count in queue_depths(catalog.queues).items():
                depth.add_metric([queue], count)
            usages = get_semaphore().usages(list(catalog.services))
            for service in catalog.services.values():
                usage = usages[service.name]
                in_use.add_metric([service.name], usage.in_use)
                waiting.add_metric([service.name], usage.waiting)
                limit.add_metric([service.name], service.concurrency)
        except Exception as exc:
            log.warning("redis metrics unavailable", error=str(exc))
        yield from (depth, in_use, limit, waiting)

    def _database_metrics(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("cao_jobs", "Jobs by status", labels=["status"])
        latency = GaugeMetricFamily(
            "cao_step_duration_seconds_avg",
            "Mean duration of the last 1000 finished steps per service",
            labels=["service"],
        )
        try:
            with session_scope() as session:
                for status, count in session.execute(
                    select(Job.status, func.count()).group_by(Job.status)
                ):
                    jobs.add_metric([status], count)
                recent = (
                    select(JobStep.step_name, JobStep.started_at, JobStep.finished_at)
                    .where(JobStep.finished_at.is_not(None), JobStep.started_at.is_not(None))
                    .order_by(JobStep.finished_at.desc())
                    .limit(1000)
                )
                totals: dict[str, list[float]] = {}
                for name, started, finished in session.execute(recent):
                    if started is not None and finished is not None:
                        seconds = (finished - started).total_seconds()
                        totals.setdefault(name, []).append(seconds)
                for name, values in totals.items():
                    latency.add_metric([name], sum(values) / len(values))
        except Exception as exc:
            log.warning("database metrics unavailable", error=str(exc))
        yield from (jobs, latency)


_registry = CollectorRegistry()
_registry.register(GatewayCollector())


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    return Response(generate_latest(_registry), media_type=CONTENT_TYPE_LATEST)
