"""Beat tasks: find work and fan it out (stuck jobs, expired leases, steps the broker
refused, retention).

Thin wrappers over app/jobs/recovery.py, where every per-job action is a conditional
update: two runs at once, or a run racing a worker, change nothing twice. The
thresholds arrive as arguments from the Beat schedule (worker/schedule.py), so the
process that runs Beat decides them; a direct call falls back to this process's
settings.
"""

from __future__ import annotations

from dataclasses import asdict

import structlog

from app.config import get_settings
from app.db import init_db
from app.jobs import outbox, recovery
from worker.celery_app import task
from worker.schedule import (
    CLEANUP_TASK,
    REAP_LEASES_TASK,
    SANITY_CHECK_TASK,
    SEND_UNSENT_TASK,
    WAKE_WAITERS_TASK,
)

log = structlog.get_logger(__name__)


@task(SANITY_CHECK_TASK)
def sanity_check_stuck_jobs(
    requeue_after_s: float | None = None, job_stuck_s: float | None = None
) -> dict[str, dict[str, int]]:
    """Restart steps whose worker went silent, re-enqueue steps whose message may be
    lost (jobs committed but never enqueued included), fail jobs stuck too long."""
    init_db()
    settings = get_settings()
    reports = {
        "silent_steps": recovery.sweep_silent_steps(),
        "idle_steps": recovery.sweep_idle_steps(requeue_after_s or settings.requeue_after_seconds),
        "stuck_jobs": recovery.sweep_stuck_jobs(job_stuck_s or settings.job_stuck_seconds),
    }
    summary = {name: asdict(report) for name, report in reports.items()}
    if any(any(counts.values()) for counts in summary.values()):
        log.info("sanity check acted", **summary)
    return summary


@task(REAP_LEASES_TASK)
def reap_expired_leases() -> dict[str, int]:
    """Free leases whose worker died, put their steps back, wake waiting steps."""
    init_db()
    return asdict(recovery.reap_expired_leases())


@task(WAKE_WAITERS_TASK)
def wake_waiters() -> int:
    """The bounded safety re-check for steps waiting on a service slot."""
    return recovery.wake_all_waiters()


@task(SEND_UNSENT_TASK)
def send_unsent_steps() -> int:
    """Send the steps whose delivery the broker refused (a process that marked them may
    be gone), as soon as it takes messages again."""
    init_db()
    sent = outbox.sweep_unsent()
    if sent:
        log.info("unsent steps sent", count=sent)
    return sent


@task(CLEANUP_TASK)
def cleanup_old_jobs(retention_days: float | None = None) -> int:
    """Delete finished jobs, with their steps and events, past retention."""
    init_db()
    deleted = recovery.delete_old_jobs(retention_days or get_settings().job_retention_days)
    if deleted:
        log.info("old jobs deleted", count=deleted)
    return deleted
