"""Request and response bodies of the jobs API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from app.json_values import check_storable
from app.models import Job, JobStep


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    feature_name: StrictStr = Field(
        min_length=1,
        max_length=100,
        description="A feature of the catalog (GET /api/v1/features lists them).",
        examples=["business_plan"],
    )
    input_data: dict[str, Any] = Field(
        default_factory=dict,
        description="Passed to every step as `input_data`.",
        examples=[{"prompt": "A bakery that delivers by bicycle"}],
    )

    @field_validator("input_data")
    @classmethod
    def _storable(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_storable(value)  # NaN or an infinity: a 422 now, not a failed insert
        return value


class JobCreated(BaseModel):
    success: bool = True
    job_id: uuid.UUID
    monitor_url: str
    status: str


class StepOut(BaseModel):
    step_index: int
    step_name: str
    queue: str
    status: str
    attempt: int
    max_attempts: int
    output: dict[str, Any] | None
    error: str | None
    error_code: str | None
    retryable: bool | None
    queued_at: datetime | None
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None

    @classmethod
    def of(cls, step: JobStep) -> StepOut:
        duration = None
        if step.started_at and step.finished_at:
            duration = round((step.finished_at - step.started_at).total_seconds(), 3)
        return cls(
            step_index=step.step_index,
            step_name=step.step_name,
            queue=step.queue,
            status=step.status,
            attempt=step.attempt,
            max_attempts=step.max_attempts,
            output=step.output,
            error=step.error,
            error_code=step.error_code,
            retryable=step.retryable,
            queued_at=step.queued_at,
            started_at=step.started_at,
            heartbeat_at=step.heartbeat_at,
            finished_at=step.finished_at,
            duration_s=duration,
        )


class JobSummary(BaseModel):
    job_id: uuid.UUID
    tenant: str
    feature_name: str
    status: str
    progress: int
    current_step: int
    current_step_name: str | None
    total_steps: int
    error: str | None
    error_code: str | None
    retryable: bool | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def fields_of(cls, job: Job) -> dict[str, Any]:
        steps = job.recipe.get("steps", [])
        current = steps[job.current_step]["name"] if job.current_step < len(steps) else None
        return {
            "job_id": job.id,
            "tenant": job.tenant,
            "feature_name": job.feature_name,
            "status": job.status,
            "progress": job.progress,
            "current_step": job.current_step,
            "current_step_name": current,
            "total_steps": job.total_steps,
            "error": job.error,
            "error_code": job.error_code,
            "retryable": job.retryable,
            "created_at": job.created_at,
            "updated_at": job.updated_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
        }


class JobDetail(JobSummary):
    success: bool = True
    input_data: dict[str, Any]
    outputs: dict[str, Any]
    steps: list[StepOut]

    @classmethod
    def of(cls, job: Job, steps: list[JobStep]) -> JobDetail:
        return cls(
            **cls.fields_of(job),
            input_data=job.input_data,
            outputs=job.context or {},
            steps=[StepOut.of(step) for step in steps],
        )


class JobPage(BaseModel):
    success: bool = True
    items: list[JobSummary]
    next_cursor: str | None
    last_event_id: int = Field(
        description="The newest global event id when this page was read: a dashboard "
        "that lists jobs and then follows `/ws?after=` this id misses no change."
    )
