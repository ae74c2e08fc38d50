"""Freeing a service's slot and sending the steps it woke: release, hand-on and wake.

Releasing a lease hands every free slot of its service to the oldest waiting steps
(app/leases.py); those steps go to their queues ahead of fresh deliveries, or one of
them is kept to run in this process next (app/jobs/handoff.py). Limits are read from
the live catalog at each release, so a raised limit wakes waiters at once. A release
or wake-up that fails is logged, never raised: the result in hand must still be
recorded, and Beat reaps the lease and sends the waiters again (app/jobs/recovery.py).
"""

from __future__ import annotations

from typing import Any, Protocol

import structlog
from structlog.typing import FilteringBoundLogger

from app.catalog import Service, current_catalog
from app.jobs.dispatch import enqueue_step
from app.jobs.repository import StepRun
from app.leases import LeaseId, LeaseSemaphore, Slot

log: FilteringBoundLogger = structlog.get_logger(__name__)


class Chain(Protocol):
    """What a release asks of the hand-off chain (app/jobs/handoff.py)."""

    def keep(self, queue: str, woken: list[LeaseId], service: str) -> list[LeaseId]:
        """Keep one step of `queue` woken with a slot of `service` to run here next;
        returns the others."""
        ...


def live_service(snapshot: dict[str, Any]) -> Service:
    """The job's snapshot of the service, with limits from the live catalog."""
    service = Service(**snapshot)
    current = current_catalog().services.get(service.name)
    if current is None:
        return service
    # Headers are never in a snapshot (they hold credentials): always the live ones.
    live = {"concurrency": current.concurrency, "lease_ttl_s": current.lease_ttl_s}
    return service.model_copy(update={**live, "headers": current.headers})


def wake(woken: list[LeaseId], service: str) -> None:
    """Send steps that were handed a slot of `service` to their queues, ahead of fresh
    deliveries."""
    for lease in woken:
        enqueue_step(
            lease.job_id,
            lease.step_index,
            lease.fence,
            lease.queue,
            holds_slot=True,
            service=service,
        )


def wake_or_log(woken: list[LeaseId], service: str) -> None:
    """`wake`, for a caller with a result still to record: a broker that fails here
    must not lose it. The woken steps' leases then expire unused and Beat sends the
    steps again."""
    try:
        wake(woken, service)
    except Exception:
        log.exception("wake-up failed", service=service, woken=[str(lease) for lease in woken])


def release(
    semaphore: LeaseSemaphore,
    service_spec: dict[str, Any],
    lease: LeaseId,
    chain: Chain | None = None,
) -> None:
    """Give back `lease` and send the steps its slot was handed to (one of them kept
    by `chain`, when given, to run here next)."""
    # The limit as it is now, not when the step started: a raised limit wakes at once.
    service = live_service(service_spec)
    try:
        woken = semaphore.release(service.name, lease, service.lease_ttl_s, service.concurrency)
        if chain is not None:
            woken = chain.keep(lease.queue, woken, service.name)
        wake(woken, service.name)
    except Exception:
        # The result must still be recorded; Beat reaps the lease and re-enqueues waiters.
        log.exception("lease release or wake-up failed", lease=str(lease))


def hand_on(
    semaphore: LeaseSemaphore, run: StepRun, current: Slot, next_slot: Slot, chain: Chain
) -> bool:
    """Free `run`'s slot (`current`) and take `next_slot` for the job's next step, in one
    round trip, then send the steps the freed slot woke. False when the next step did
    not get its slot: this step's slot is freed all the same (one woken step of its
    queue kept by `chain`)."""
    try:
        acquired, woken = semaphore.hand_on(current, next_slot)
    except Exception:
        log.exception("lease hand-on failed; releasing the usual way", lease=str(current.lease))
        release(semaphore, run.service_spec, current.lease, chain)
        return False
    if not acquired:
        wake_or_log(chain.keep(run.queue, woken, current.service), current.service)
        return False
    wake_or_log(woken, current.service)
    return True
