"""GET /metrics: Prometheus text for the whole deployment, the same from any replica.

Counters and histograms come from the fold of the event log (app/events/metrics_fold.py),
which this scrape first brings up to date; gauges are read at scrape time from Redis
(queues, leases, waiting steps) and the database (jobs by status). With API keys
configured it takes an operator key (Prometheus: `authorization: {credentials: KEY}`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from app.api.deps import require_operator
from app.auth import Principal
from app.catalog import Catalog, current_catalog
from app.events.metrics_counts import COUNT, COUNTERS, HISTOGRAMS, INF, SUM, Histogram, bucket_part
from app.events.metrics_fold import fold_events, read_folded
from app.events.metrics_store import Aggregate
from app.jobs.service import read_jobs_by_status
from app.jobs.service_load import ServiceLoad, read_service_load

router = APIRouter(tags=["metrics"])
log = structlog.get_logger(__name__)

# How long a scrape may spend folding new events; a larger backlog is folded over the
# next scrapes (and by retention), so a scrape stays well inside Prometheus' timeout.
FOLD_BUDGET_S = 2.0


class GatewayCollector(Collector):
    """The counters and histograms folded from the log, and the live gauges."""

    def collect(self) -> Iterator[Metric]:
        yield from self._folded_metrics()
        yield from self._redis_metrics(current_catalog())
        yield from self._database_metrics()

    def _folded_metrics(self) -> Iterator[Metric]:
        try:
            fold_events(FOLD_BUDGET_S)
            aggregates = read_folded()
        except Exception as exc:  # a scrape answers whatever else it can
            log.warning("folded metrics unavailable", error=str(exc))
            return
        by_metric: dict[str, list[Aggregate]] = {}
        for aggregate in aggregates:
            by_metric.setdefault(aggregate.metric, []).append(aggregate)
        for counter in COUNTERS:
            family = CounterMetricFamily(counter.name, counter.documentation, labels=counter.labels)
            for aggregate in by_metric.get(counter.name, ()):
                family.add_metric(json.loads(aggregate.labels), aggregate.value)
            yield family
        for histogram in HISTOGRAMS:
            yield _histogram_family(histogram, by_metric.get(histogram.name, ()))

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
        for service in catalog.services.values():
            limit.add_metric([service.name], service.concurrency)
            if load.usages is not None:
                usage = load.usages[service.name]
                in_use.add_metric([service.name], usage.in_use)
                waiting.add_metric([service.name], usage.waiting)
        yield from (depth, in_use, limit, waiting)

    def _database_metrics(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("cao_jobs", "Jobs by status", labels=["status"])
        try:
            by_status = read_jobs_by_status()
        except Exception as exc:
            log.warning("database metrics unavailable", error=str(exc))
        else:
            for status, count in by_status.items():
                jobs.add_metric([status], count)
        yield jobs


def _histogram_family(histogram: Histogram, aggregates: Sequence[Aggregate]) -> Metric:
    """Buckets stored as each bucket's own count, rendered cumulative."""
    family = HistogramMetricFamily(histogram.name, histogram.documentation, labels=histogram.labels)
    by_labels: dict[str, dict[str, float]] = {}
    for aggregate in aggregates:
        by_labels.setdefault(aggregate.labels, {})[aggregate.part] = aggregate.value
    for labels, parts in sorted(by_labels.items()):
        running = 0.0
        buckets: list[tuple[str, float]] = []
        for bound in histogram.bounds:
            running += parts.get(bucket_part(float(bound)), 0.0)
            buckets.append((repr(float(bound)), running))
        buckets.append((INF, parts.get(COUNT, 0.0)))
        family.add_metric(json.loads(labels), buckets, sum_value=parts.get(SUM, 0.0))
    return family


_registry = CollectorRegistry()
_registry.register(GatewayCollector())


def render() -> bytes:
    """One scrape's answer: fold what is new, then every metric as Prometheus text."""
    return generate_latest(_registry)


@router.get("/metrics", include_in_schema=False)
def metrics(_: Annotated[Principal, Depends(require_operator)]) -> Response:
    return Response(render(), media_type=CONTENT_TYPE_LATEST)
