"""The simulators' bodies: the knobs an admin PUTs (`Behavior`, `ScriptedResponse`), the
call the gateway POSTs (`ServiceCall`) and the statistics a test reads back."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# nginx's "client closed request": recorded when the caller gave up before the answer.
CLIENT_CLOSED_STATUS = 499


class ScriptedResponse(BaseModel):
    """One canned answer, consumed by one request before the normal behaviour applies."""

    model_config = ConfigDict(extra="forbid")

    status: int = Field(200, ge=100, le=599)
    retry_after: float | None = Field(None, ge=0)
    # A string body is sent as text/plain, so tests can produce non-JSON answers.
    body: dict[str, Any] | str | None = None
    delay_ms: float = Field(0.0, ge=0)
    hang: bool = False


class Behavior(BaseModel):
    """How one simulated service (or, as the default, every service) answers."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: float = Field(0.0, ge=0)
    jitter_ms: float = Field(0.0, ge=0)
    failure_rate: float = Field(0.0, ge=0, le=1)
    failure_status: int = Field(503, ge=400, le=599)
    hang: bool = False
    script: list[ScriptedResponse] = Field(default_factory=list)
    seed: int = 0


class ServiceCall(BaseModel):
    """The body the gateway POSTs to a service (DESIGN.md "Calling a service")."""

    job_id: str | None = None
    feature_name: str | None = None
    step_index: int | None = None
    step_name: str | None = None
    attempt: int | None = None
    input_data: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)


class RequestRecord(BaseModel):
    job_id: str | None
    step_index: int | None
    step_name: str | None
    attempt: int | None
    idempotency_key: str | None
    x_job_id: str | None
    # The W3C trace context the call carried (the gateway sends it with tracing on).
    traceparent: str | None = None
    # Every header received, by lower-case name; the value only of those that can hold
    # no secret (the rest read "[redacted]": X-Internal-Api-Key, Authorization, a
    # service's own `headers:`), so the admin API never hands out a credential.
    headers: dict[str, str]
    context: dict[str, Any]
    input_data: dict[str, Any]
    received_at: float
    # None while the request is still in flight; 499 when the caller went first.
    status: int | None = None
    # When the answer was sent, or the caller was seen to go (epoch seconds).
    ended_at: float | None = None


class ServiceStatsOut(BaseModel):
    calls: int
    in_flight: int
    max_in_flight: int
    busy_seconds: float
    first_call_at: float | None
    last_end_at: float | None
    requests: list[RequestRecord]
