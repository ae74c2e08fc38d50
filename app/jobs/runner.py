"""Runs one delivery of one step attempt: lease → claim → call → commit → next.

Every delivery carries (job_id, step_index, fence). Only the delivery whose fence
matches the step row and whose claim wins the conditional update calls the service;
its result is committed only if the step is still RUNNING under that fence.
Duplicate, late and zombie deliveries therefore change nothing. The slot a finished
call frees is handed to the oldest waiting step, which this same process then runs
(app/jobs/handoff.py).

This module is the entry point the Celery task calls; the parts live beside it:
claiming (app/jobs/claim.py), calling and continuing (execute.py), recording
(record.py), and freeing slots and waking waiters (slots.py).
"""

from __future__ import annotations

import uuid

import structlog
from structlog.typing import FilteringBoundLogger

from app.jobs.claim import Claimed, claim_delivery
from app.jobs.delivery import NamedSlot, Outcome
from app.jobs.execute import execute
from app.jobs.handoff import HandedOver, HandoffChain, Recording
from app.logs import bind_step, step_scope

__all__ = ["NamedSlot", "Outcome", "run_step"]

log: FilteringBoundLogger = structlog.get_logger(__name__)


def run_step(
    job_id: uuid.UUID,
    step_index: int,
    fence: int,
    local_queues: frozenset[str] = frozenset(),
    named: NamedSlot | None = None,
) -> Outcome:
    """Run this delivery, then what the chain took over: steps its released slots were
    handed to, and next steps of the same job on `local_queues` (handoff.py). `named`
    is the service and queue the message names, when it does (dispatch.py)."""
    chain: HandoffChain[Claimed] = HandoffChain(local_queues)
    try:
        # This delivery's step fields stay bound after it, for the caller's lines about
        # it (Celery's on the task's result); each step taken over has its own.
        outcome = _run_delivery(job_id, step_index, fence, chain, named)
        while (taken := chain.take()) is not None:
            try:
                with step_scope():
                    _run_taken(taken, chain)
            except Exception:
                # Its lease expires and Beat puts the step back; stop taking work over.
                log.exception("step taken over in-process failed", taken=str(taken))
                break
    finally:
        chain.close()
    return (outcome.result() or Outcome.DISCARDED) if isinstance(outcome, Recording) else outcome


def _run_taken(taken: HandedOver | Claimed, chain: HandoffChain[Claimed]) -> None:
    if isinstance(taken, Claimed):
        _bind_claimed(taken)
        chain.step_claimed()
        execute(taken, chain)
    else:
        lease = taken.lease
        _run_delivery(
            uuid.UUID(lease.job_id),
            lease.step_index,
            lease.fence,
            chain,
            NamedSlot(taken.service, lease.queue, holds_slot=True, handed_here=True),
        )


def _bind_claimed(claimed: Claimed) -> None:
    """Every line about the claimed step carries its fields (app/logs.py)."""
    run = claimed.run
    bind_step(
        run.job_id,
        run.step_index,
        attempt=run.attempt,
        service=claimed.service.name,
        queue=run.queue,
    )


def _run_delivery(
    job_id: uuid.UUID,
    step_index: int,
    fence: int,
    chain: HandoffChain[Claimed],
    named: NamedSlot | None = None,
) -> Outcome | Recording[Outcome]:
    # What the message names; the attempt once the step is claimed.
    bind_step(
        job_id,
        step_index,
        service=named.service if named else None,
        queue=named.queue if named else None,
    )
    try:
        claimed = claim_delivery(job_id, step_index, fence, named)
    finally:
        chain.step_claimed()  # however the claim ended, deferred recordings may go
    if isinstance(claimed, Outcome):
        return claimed
    _bind_claimed(claimed)
    return execute(claimed, chain)
