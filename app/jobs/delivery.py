"""What a step delivery brings and what becomes of it: the terms the runner's parts share.

A delivery is one Celery message for (job_id, step_index, fence); it may name the
step's service and queue (NamedSlot), and it ends as one Outcome. While the database
is away, a delivery's claim and its result are tried again (warn_unreachable
logs each try). The parts that run it are app/jobs/claim.py, execute.py, record.py
and slots.py; app/jobs/runner.py is their entry point.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from structlog.typing import FilteringBoundLogger

from app.logs import first_line


class Outcome(StrEnum):
    STALE = "stale"
    WAITING = "waiting"
    COMPLETED = "completed"
    RETRYING = "retrying"
    FAILED = "failed"
    DISCARDED = "discarded"
    # The call was interrupted: its job was cancelled, or its step sent again.
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class NamedSlot:
    """The service and queue a step message names (app/jobs/dispatch.py), whether the
    delivery was handed its slot by a release (the lease was made for it), and whether
    that release was this process's own, a moment ago (handoff.py)."""

    service: str
    queue: str
    holds_slot: bool = False
    handed_here: bool = False


def warn_unreachable(
    bound: FilteringBoundLogger, doing: str, error: BaseException, wait_s: float
) -> None:
    """Log that the database could not be reached and `doing` is tried again in `wait_s`."""
    bound.warning(
        f"database unreachable; {doing} again", in_s=round(wait_s, 2), error=first_line(error)
    )
