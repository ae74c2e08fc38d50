"""Calling a step's service: the only place that talks to services."""

from __future__ import annotations

from typing import Any

from app.catalog import Service
from app.services.errors import StepError
from app.services.http import call_http
from app.services.interrupt import CallInterrupted, Interruptible
from app.services.python import call_python

__all__ = ["CallInterrupted", "Interruptible", "StepCall", "StepError", "call_service"]


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
    ) -> None:
        self.job_id = job_id
        self.feature_name = feature_name
        self.step_index = step_index
        self.step_name = step_name
        self.attempt = attempt
        self.input_data = input_data
        self.context = context

    @property
    def idempotency_key(self) -> str:
        # Identical on every attempt of a step, so a service can deduplicate.
        return f"{self.job_id}:{self.step_index}"

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
    when another thread interrupts `handle` (app/services/interrupt.py)."""
    if service.kind == "http":
        return call_http(service, call, handle)
    return call_python(service, call, handle)
