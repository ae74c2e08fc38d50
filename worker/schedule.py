"""The Beat schedule: the only place schedules live.

Intervals and thresholds come from the settings of the process that runs Beat (the
thresholds travel as task arguments, so whichever worker runs a sweep applies them).
A maintenance message expires once a newer one is due (never within 5 s), so a
backlog on the default queue does not pile sweeps up, and it is served ahead of the
step deliveries waiting there: the sweeps that put stuck steps back must not queue
behind the very backlog they may be needed for.
"""

from __future__ import annotations

from typing import Any

from app.config import Settings
from app.jobs.dispatch import HOLDS_SLOT_PRIORITY

MAINTENANCE_QUEUE = "default"
SANITY_CHECK_TASK = "cao.maintenance.sanity_check_stuck_jobs"
REAP_LEASES_TASK = "cao.maintenance.reap_expired_leases"
WAKE_WAITERS_TASK = "cao.maintenance.wake_waiters"
CLEANUP_TASK = "cao.maintenance.cleanup_old_jobs"
SEND_UNSENT_TASK = "cao.maintenance.send_unsent_steps"
# Never expire a message sooner than this, or a busy queue could starve a sweep.
MIN_EXPIRY_S = 5.0
# Ahead of fresh step deliveries, level with steps already handed a slot.
SWEEP_PRIORITY = HOLDS_SLOT_PRIORITY


def _every(seconds: float, task: str, **kwargs: Any) -> dict[str, Any]:
    return {
        "task": task,
        "schedule": seconds,
        "kwargs": kwargs,
        "options": {
            "queue": MAINTENANCE_QUEUE,
            "expires": max(seconds, MIN_EXPIRY_S),
            "priority": SWEEP_PRIORITY,
        },
    }


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    return {
        "sanity_check_stuck_jobs": _every(
            settings.sanity_check_interval_seconds,
            SANITY_CHECK_TASK,
            requeue_after_s=settings.requeue_after_seconds,
            job_stuck_s=settings.job_stuck_seconds,
        ),
        "reap_expired_leases": _every(settings.reap_leases_interval_seconds, REAP_LEASES_TASK),
        "wake_waiters": _every(settings.wake_waiters_interval_seconds, WAKE_WAITERS_TASK),
        "send_unsent_steps": _every(settings.unsent_sweep_interval_seconds, SEND_UNSENT_TASK),
        "cleanup_old_jobs": _every(
            settings.cleanup_interval_seconds,
            CLEANUP_TASK,
            retention_days=settings.job_retention_days,
        ),
    }
