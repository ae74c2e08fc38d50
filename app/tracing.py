"""Traces: this process's OpenTelemetry tracer provider and the spans the gateway makes.

On when OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set (and
OTEL_SDK_DISABLED is not true), off otherwise. Off, nothing here imports the
OpenTelemetry SDK and the calls on the hot path (`step_span`, `job_trace_context`)
return at once, making no span object: a step pays one check of a module global.

On, `configure_tracing` builds the provider from the standard OTEL_* variables (the SDK
reads them itself: exporter endpoint and headers, sampler, batching), `service.name`
being the process's role (cao-api, cao-worker, cao-beat) unless OTEL_SERVICE_NAME or
OTEL_RESOURCE_ATTRIBUTES names one. FastAPI's own telemetry makes the request spans from
the global provider (app/main.py), and the httpx instrumentation the span of each call
to a service, whose W3C `traceparent` it sends (`instrument_http_client`).

One trace per job. Creating a job stores the trace context of its `POST /jobs` span with
the job (`job_trace_context`, job.trace_context); the worker starts each step attempt's
span from it (`step_span`), however the step reached it: its message, a retry, Beat's
recovery, a continuation in the same process. A resume adds a span of its own to that
trace and stores it in turn (`job_action_span`), so the steps after it hang below it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import structlog

from app.config import get_settings

if TYPE_CHECKING:
    import httpx
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

log = structlog.get_logger(__name__)

INSTRUMENTATION_NAME = "cao-gateway"
# What `pip install` adds the packages tracing needs with.
OTEL_EXTRA = "cao-gateway[otel]"

_NO_SPAN: AbstractContextManager[None] = nullcontext()
_tracer: Tracer | None = None
_provider: TracerProvider | None = None


def configure_tracing(role: str) -> bool:
    """Set up this process's tracer provider when tracing is on (`role`, e.g. cao-api,
    names the service unless the environment does); whether tracing is on. Once per
    process: the SDK's batch processor restarts its export thread in a forked child, so
    a pre-fork parent (a prefork Celery worker) may call it for its children too."""
    global _tracer, _provider
    if _tracer is not None:
        return True
    if not get_settings().tracing:
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise RuntimeError(
            f"OTEL_EXPORTER_OTLP_ENDPOINT is set but the OpenTelemetry SDK is not "
            f"installed: pip install '{OTEL_EXTRA}' ({exc})"
        ) from exc
    resource = service_resource(role)
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter()))
    trace.set_tracer_provider(provider)
    _provider, _tracer = provider, provider.get_tracer(INSTRUMENTATION_NAME)
    log.info("tracing on", service_name=resource.attributes[SERVICE_NAME])
    return True


def service_resource(role: str) -> Resource:
    """What the spans of this process are from: OTEL_RESOURCE_ATTRIBUTES and
    OTEL_SERVICE_NAME as the SDK reads them, `service.name` being `role` unless they
    name one."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: role}))
    return resource


def exporter() -> SpanExporter:
    """The OTLP exporter OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL names; it reads its
    endpoint, headers, timeout and compression from the environment itself."""
    settings = get_settings()
    protocol = (
        settings.otel_exporter_otlp_traces_protocol
        or settings.otel_exporter_otlp_protocol
        or "http/protobuf"
    )
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as OTLPGrpcSpanExporter,
            )
        except ImportError as exc:
            raise RuntimeError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs opentelemetry-exporter-otlp-proto-grpc "
                f"installed; {OTEL_EXTRA} brings http/protobuf ({exc})"
            ) from exc
        grpc_exporter: SpanExporter = OTLPGrpcSpanExporter()
        return grpc_exporter
    raise RuntimeError(
        f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported: use http/protobuf or grpc"
    )


def shutdown_tracing() -> None:
    """Export the spans still batched and stop (a process about to exit)."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer, _provider = None, None


def instrument_http_client(client: httpx.Client) -> None:
    """With tracing on, give each request of `client` a client span whose context it
    sends as the `traceparent` header (opentelemetry-instrumentation-httpx)."""
    if _tracer is None:
        return
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor.instrument_client(client)


def job_trace_context() -> dict[str, str] | None:
    """The current trace context as the configured propagators carry it (W3C
    `traceparent`, ...), to store with a new job; None with tracing off."""
    if _tracer is None:
        return None
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None


def step_span(
    trace_context: Mapping[str, Any] | None,
    *,
    job_id: str,
    step_index: int,
    step_name: str,
    attempt: int,
    service: str,
) -> AbstractContextManager[object]:
    """The span of one step attempt, current while the block runs (a call to a service
    carries it; a python step finds it as the current span), in the job's trace
    (`trace_context`, as stored with the job). An exception leaving the block marks it
    failed. With tracing off, a shared no-op."""
    if _tracer is None:
        return _NO_SPAN
    attributes = {
        "cao.job_id": job_id,
        "cao.step_index": step_index,
        "cao.step_name": step_name,
        "cao.attempt": attempt,
        "cao.service": service,
    }
    return _span(_tracer, f"step {step_name}", trace_context, attributes)


@contextmanager
def job_action_span(
    name: str, trace_context: Mapping[str, Any] | None, attributes: Mapping[str, Any]
) -> Iterator[Mapping[str, Any] | None]:
    """A span in the job's trace (`trace_context`, as stored) for an action on the job
    taken in another trace (a resume, in the operator's request: the span links to it);
    yields the trace context to store with the job, so the steps after the action join
    the trace below it. With tracing off, yields `trace_context` as it is."""
    if _tracer is None:
        yield trace_context
        return
    from opentelemetry import propagate, trace

    request = trace.get_current_span().get_span_context()
    links = [trace.Link(request)] if request.is_valid else []
    with _span(_tracer, name, trace_context or None, attributes, links):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield carrier


@contextmanager
def _span(
    tracer: Tracer,
    name: str,
    trace_context: Mapping[str, Any] | None,
    attributes: Mapping[str, Any],
    links: list[Any] | None = None,
) -> Iterator[Span]:
    from opentelemetry import propagate
    from opentelemetry.trace import StatusCode

    # Without a stored context (a job created with tracing off), the span starts in the
    # current context: a trace of its own in a worker, the request's in the API.
    parent = propagate.extract(trace_context) if trace_context else None
    with tracer.start_as_current_span(
        name,
        context=parent,
        attributes=dict(attributes),
        links=links,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except BaseException as error:
            span.record_exception(error)
            span.set_status(StatusCode.ERROR, str(error).split("\n", 1)[0])
            # A step error's stable code (http_503, timeout...) is its class of error.
            span.set_attribute("error.type", str(getattr(error, "code", type(error).__name__)))
            raise
