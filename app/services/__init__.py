"""Calling a step's service: the only place that talks to services."""

from __future__ import annotations

from typing import Any

import structlog

from app.catalog import Service
from app.services.errors import StepError
from app.services.http import call_http
from app.services.interrupt import CallInterrupted, Interruptible
from app.services.python import call_python

__all__ = ["CallInterrupted", "Interruptible", "StepCall", "StepError", "call_service"]

log = structlog.get_logger(__name__)


class StepCall:
    """Everything a service needs to run one attempt of one step."""

    def __init__(
        self,
        *,
        job_id: str,
        feature_name: str,
        step_index: int,
        step_name: str,
        attempt: int,
        input_data: dict[str, Any],
        context: dict[str, Any],
        rerun: int = 0,
    ) -> None:
        self.job_id = job_id
        self.feature_name = feature_name
        self.step_index = step_index
        self.step_name = step_name
        self.attempt = attempt
        self.input_data = input_data
        self.context = context
        self.rerun = rerun

    @property
    def idempotency_key(self) -> str:
        """`<job_id>:<step_index>`, identical on every attempt of a step (and when a
        failed step is resumed), so a service can deduplicate; a step an operator reran
        is new work: `<job_id>:<step_index>:r<N>` on the job's Nth rerun."""
        key = f"{self.job_id}:{self.step_index}"
        return key if self.rerun == 0 else f"{key}:r{self.rerun}"

    def payload(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "feature_name": self.feature_name,
            "step_index": self.step_index,
            "step_name": self.step_name,
            "attempt": self.attempt,
            "input_data": self.input_data,
            "context": self.context,
        }


def call_service(
    service: Service, call: StepCall, handle: Interruptible | None = None
) -> dict[str, Any]:
    """Run one attempt; returns the step output or raises StepError, or CallInterrupted
    when another thread interrupts `handle` (app/services/interrupt.py).

    Any other exception is a fault of the gateway's own (input stored before it was
    checked, a bug): it fails the attempt at once with `internal_error`, not retried,
    since the same call would fail the same way. Escaping instead, it would end the
    task, and the step would be put back again and again as if its worker had died."""
    try:
        if service.kind == "http":
            return call_http(service, call, handle)
        return call_python(service, call, handle)
    except (StepError, CallInterrupted):
        raise
    except Exception as exc:
        log.exception("unexpected error calling a service", service=service.name)
        raise StepError(
            f"internal error calling {service.name}: {type(exc).__name__}: {exc}",
            code="internal_error",
            retryable=False,
        ) from exc
