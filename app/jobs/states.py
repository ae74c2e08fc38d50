"""Job and step statuses, and which transitions the domain allows."""

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
# Steps that sit in a queue or wait list and belong to a live job.
WAITING_STEP = CLAIMABLE_STEP
# Steps Beat looks after and a cancel stops: waiting to start, or running.
LIVE_STEP = (*CLAIMABLE_STEP, StepStatus.RUNNING)


def progress_for(completed_steps: int, total_steps: int) -> int:
    return 100 if total_steps == 0 else (100 * completed_steps) // total_steps
