"""Job and step statuses as the domain uses them, and a job's progress.

The statuses are stored values, defined with the tables they fill (app/statuses.py);
they are named here too so that the domain reads them from its own package."""

from __future__ import annotations

from app.statuses import ACTIVE_JOB, CLAIMABLE_STEP, FINISHED_JOB, LIVE_STEP, JobStatus, StepStatus

__all__ = [
    "ACTIVE_JOB",
    "CLAIMABLE_STEP",
    "FINISHED_JOB",
    "LIVE_STEP",
    "JobStatus",
    "StepStatus",
    "progress_for",
]


def progress_for(completed_steps: int, total_steps: int) -> int:
    return 100 if total_steps == 0 else (100 * completed_steps) // total_steps
