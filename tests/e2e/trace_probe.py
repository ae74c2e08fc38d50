"""What a process has of tracing, reported from inside it (tests/e2e/test_traces.py): as
a python step, by the worker that runs it; or by a test's own subprocess.

"Of tracing": the OpenTelemetry SDK's trace part, an exporter, an instrumentation, and
the global tracer provider. Not the rest of the SDK: redis-py imports its metrics part
at import time when it is installed, only to learn whether it could use it.
"""

from __future__ import annotations

import sys
from typing import Any

TRACING = ("opentelemetry.sdk.trace", "opentelemetry.exporter", "opentelemetry.instrumentation")


def tracing_in_process() -> dict[str, Any]:
    # Modules by their package (opentelemetry.sdk.trace, opentelemetry.exporter.otlp...).
    loaded = {".".join(name.split(".")[:3]) for name in sys.modules if name.startswith(TRACING)}
    from opentelemetry import trace  # the API only (FastAPI depends on it)

    return {
        "tracing_modules": sorted(loaded),
        "tracer_provider": type(trace.get_tracer_provider()).__name__,
    }


def report(input_data: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """The step: what its worker has of tracing, and the trace it runs in."""
    found = tracing_in_process()
    from opentelemetry import trace

    span = trace.get_current_span().get_span_context()
    return {
        **found,
        "trace_id": format(span.trace_id, "032x"),
        "span_id": format(span.span_id, "016x"),
    }
