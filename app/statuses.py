"""The statuses a job and a step can be in, as their status columns store them, and the
groups of them that queries and indexes name (the partial index on live steps in
app/models.py among them). The job domain uses them through app/jobs/states.py."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class StepStatus(StrEnum):
    PENDING = "PENDING"
    QUEUED = "QUEUED"
    WAITING_FOR_SLOT = "WAITING_FOR_SLOT"
    RUNNING = "RUNNING"
    RETRYING = "RETRYING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


ACTIVE_JOB = (JobStatus.PENDING, JobStatus.RUNNING)
FINISHED_JOB = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
# A delivery may start a step only from these; anything else means it is stale.
CLAIMABLE_STEP = (StepStatus.QUEUED, StepStatus.WAITING_FOR_SLOT, StepStatus.RETRYING)
# Steps Beat looks after and a cancel stops: waiting to start, or running.
LIVE_STEP = (*CLAIMABLE_STEP, StepStatus.RUNNING)
