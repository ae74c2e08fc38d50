"""Executing a claimed step: call its service under the lease heartbeat, then go on.

The lease is renewed while the call runs (app/jobs/heartbeat.py) and freed as soon
as it ends, before the result is recorded, so the next step waiting for the slot
starts sooner. A cancel of its job interrupts the call (app/jobs/cancel_notices.py),
which then records nothing (the cancel recorded the step as CANCELLED) and frees the
slot all the same. When the job's next step belongs to a queue this worker consumes, the
result is committed in the same statement that starts the next step, whose slot is
taken as this one is freed (one Redis round trip), and the chain runs it here next
(app/jobs/handoff.py); otherwise the result is recorded the usual way
(app/jobs/record.py).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy.exc import OperationalError
from structlog.typing import FilteringBoundLogger

from app.catalog import Service
from app.db import statement_scope
from app.jobs import step_changes as changes
from app.jobs.cancel_notices import watching_cancel
from app.jobs.claim import Claimed
from app.jobs.delivery import Outcome
from app.jobs.handoff import HandoffChain, Recording
from app.jobs.heartbeat import beating
from app.jobs.record import record_failure, record_success
from app.jobs.repository import StepRun
from app.jobs.slots import hand_on, live_service, release
from app.leases import LeaseId, Slot, get_semaphore
from app.services import CallInterrupted, Interruptible, StepCall, StepError, call_service
from app.tracing import step_span

log: FilteringBoundLogger = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RecordUsually:
    """The next step could not start in this process: record the result the usual way.
    `started_next` is the fence the next step got if the commit that started it landed
    while its answer was lost (the database went away meanwhile): that step is then
    RUNNING under it with no worker, and recording puts it back on its queue."""

    started_next: int | None = None


def execute(claimed: Claimed, chain: HandoffChain[Claimed]) -> Outcome | Recording[Outcome]:
    """Call the service, free the slot, record the result (or start the next step)."""
    run, service, lease, bound = claimed.run, claimed.service, claimed.lease, claimed.log
    semaphore = get_semaphore()
    call = StepCall(
        job_id=str(run.job_id),
        feature_name=run.feature_name,
        step_index=run.step_index,
        step_name=run.step_name,
        attempt=run.attempt,
        input_data=run.input_data,
        context=run.context,
        rerun=run.rerun,
    )
    released = False
    handle = Interruptible()
    try:
        result: dict[str, Any] | StepError
        with (
            beating(semaphore, service, lease, bound, handle),
            watching_cancel(lease.job_id, lease.step_index, lease.fence, handle),
        ):
            try:
                with _attempt_span(run, call, service):
                    result = call_service(service, call, handle)
            except StepError as error:
                result = error
            except CallInterrupted:
                # Stopped because its step no longer runs under it: nothing to record.
                bound.warning("call interrupted: the step no longer runs under this attempt")
                return Outcome.CANCELLED
        if isinstance(result, StepError):
            failure = result
            # Free the slot before recording, so the next step starts sooner.
            released = True
            release(semaphore, run.service_spec, lease, chain)
            return chain.record(lambda: record_failure(run, service, failure, bound))
        output = result
        usually = RecordUsually()
        if not run.is_last and chain.may_continue(run.next_spec()["queue"]):
            released = True
            continued = _continue(claimed, output, chain)
            if isinstance(continued, Outcome):
                return continued
            usually = continued
        else:
            released = True
            release(semaphore, run.service_spec, lease, chain)
        return chain.record(lambda: record_success(run, output, usually.started_next, bound))
    finally:
        if not released:
            release(semaphore, run.service_spec, lease)


def _attempt_span(run: StepRun, call: StepCall, service: Service) -> AbstractContextManager[object]:
    """The span of this attempt, in the job's trace (a no-op with tracing off)."""
    return step_span(
        run.trace_context,
        job_id=call.job_id,
        step_index=call.step_index,
        step_name=call.step_name,
        attempt=call.attempt,
        service=service.name,
    )


def _continue(
    claimed: Claimed, output: dict[str, Any], chain: HandoffChain[Claimed]
) -> Outcome | RecordUsually:
    """Free this step's slot, take one for the next step and start it in the
    transaction that commits this result, to run it here next. RecordUsually when the
    next step cannot start here (its service is full, it is not where this run found
    it, the database went away): this slot is freed either way, and the caller records
    the result the usual way."""
    run, bound = claimed.run, claimed.log
    assert run.next_step_fence is not None  # loaded with every step but the last
    semaphore = get_semaphore()
    service = live_service(run.service_spec)
    next_service = live_service(run.next_spec())
    next_lease = LeaseId(
        str(run.job_id), run.step_index + 1, run.next_step_fence + 1, next_service.queue
    )
    if not hand_on(
        semaphore,
        run,
        Slot(service.name, claimed.lease, service.lease_ttl_s, service.concurrency),
        Slot(next_service.name, next_lease, next_service.lease_ttl_s, next_service.concurrency),
        chain,
    ):
        return RecordUsually()
    try:
        with statement_scope() as session:
            continued = changes.complete_and_start_next(session, run, run.fence, output)
    except changes.NextStepMoved:
        release(semaphore, run.next_spec(), next_lease)
        return RecordUsually()
    except OperationalError:
        # The database gone: record the usual way, which waits for it without holding
        # the next step's slot. The commit may have landed all the same.
        release(semaphore, run.next_spec(), next_lease)
        bound.warning("database unreachable; recording the result without the next step")
        return RecordUsually(started_next=next_lease.fence)
    except BaseException:
        release(semaphore, run.next_spec(), next_lease)
        raise
    if continued is None:
        release(semaphore, run.next_spec(), next_lease)
        bound.warning("late result discarded: the step moved on without this attempt")
        return Outcome.DISCARDED
    next_run = continued.next_run
    next_bound = log.bind(
        job_id=str(run.job_id), step_index=next_run.step_index, attempt=1, queue=next_run.queue
    )
    bound.info("step completed", job_finished=False)
    next_bound.info("step started", service=next_service.name)
    chain.continue_with(Claimed(next_run, next_service, next_lease, next_bound))
    return Outcome.COMPLETED
