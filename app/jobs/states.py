"""Job and step statuses as the domain uses them, and a job's progress.

The statuses are stored values, defined with the tables they fill (app/statuses.py);
they are named here too so that the domain reads them from its own package."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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


def progress_for(recipe_steps: Sequence[Mapping[str, Any]], completed_steps: int) -> int:
    """The progress (0-100) of a job whose first `completed_steps` steps are done: the
    weights of those steps over the total of the recipe snapshot's weights. A snapshot
    taken before steps had weights counts each step as 1."""
    if completed_steps >= len(recipe_steps):
        return 100
    weights = [float(step.get("weight", 1)) for step in recipe_steps]
    total = sum(weights)
    if total <= 0:  # the catalog refuses it; an old snapshot cannot have it either
        return 0
    # The epsilon keeps 30/100 at 30, not 29, whatever the float rounding.
    return min(100, int(100 * sum(weights[:completed_steps]) / total + 1e-9))
