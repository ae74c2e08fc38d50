"""Runs one delivery of one step attempt: lease → claim → call → commit → next.

Every delivery carries (job_id, step_index, fence). Only the delivery whose fence
matches the step row and whose claim wins the conditional update calls the service;
its result is committed only if the step is still RUNNING under that fence.
Duplicate, late and zombie deliveries therefore change nothing. The slot a finished
call frees is handed to the oldest waiting step, which this same process then runs
(app/jobs/handoff.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import partial, wraps
from typing import Any

import structlog
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.catalog import Service, current_catalog
from app.db import on_commit, session_scope, statement_scope, while_database_unreachable
from app.events.log import append_event
from app.events.types import EventType
from app.jobs import repository as repo
from app.jobs import step_changes as changes
from app.jobs.backoff import retry_delay
from app.jobs.dispatch import enqueue_step
from app.jobs.handoff import HandedOver, HandoffChain, Recording
from app.jobs.heartbeat import beating
from app.jobs.repository import StepRun
from app.jobs.states import StepStatus
from app.leases import LeaseId, LeaseSemaphore, Slot, get_semaphore
from app.logs import bind_step, first_line, step_scope
from app.services import StepCall, StepError, call_service

log = structlog.get_logger(__name__)


class Outcome(StrEnum):
    STALE = "stale"
    WAITING = "waiting"
    COMPLETED = "completed"
    RETRYING = "retrying"
    FAILED = "failed"
    DISCARDED = "discarded"


def live_service(snapshot: dict[str, Any]) -> Service:
    """The job's snapshot of the service, with limits from the live catalog."""
    service = Service(**snapshot)
    current = current_catalog().services.get(service.name)
    if current is None:
        return service
    return service.model_copy(
        update={"concurrency": current.concurrency, "lease_ttl_s": current.lease_ttl_s}
    )


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


def _wake_or_log(woken: list[LeaseId], service: str) -> None:
    """`wake`, for a caller with a result still to record: a broker that fails here
    must not lose it. The woken steps' leases then expire unused and Beat sends the
    steps again."""
    try:
        wake(woken, service)
    except Exception:
        log.exception("wake-up failed", service=service, woken=[str(lease) for lease in woken])


@dataclass(frozen=True)
class NamedSlot:
    """The service and queue a step message names (app/jobs/dispatch.py), whether the
    delivery was handed its slot by a release (the lease was made for it), and whether
    that release was this process's own, a moment ago (handoff.py)."""

    service: str
    queue: str
    holds_slot: bool = False
    handed_here: bool = False


@dataclass(frozen=True)
class RecordUsually:
    """The next step could not start in this process: record the result the usual way.
    `started_next` is the fence the next step got if the commit that started it landed
    while its answer was lost (the database went away meanwhile): that step is then
    RUNNING under it with no worker, and recording puts it back on its queue."""

    started_next: int | None = None


@dataclass(frozen=True)
class Claimed:
    """A step attempt this process has claimed and whose lease it holds."""

    run: StepRun
    service: Service
    lease: LeaseId
    log: Any


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
        _execute(taken, chain)
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
        claimed: Claimed | Outcome | None = None
        if named is not None:
            claimed = _claim_named(job_id, step_index, fence, named)
        if claimed is None:
            claimed = _claim(job_id, step_index, fence, named is not None and named.holds_slot)
    finally:
        chain.step_claimed()  # however the claim ended, deferred recordings may go
    if isinstance(claimed, Outcome):
        return claimed
    _bind_claimed(claimed)
    return _execute(claimed, chain)


def _claim_named(
    job_id: uuid.UUID, step_index: int, fence: int, named: NamedSlot
) -> Claimed | Outcome | None:
    """The claim of a delivery that names its service and queue: take the slot first,
    then claim and read the step in one statement; or, when the service is full, park
    the step in one statement and wait in line. None when that neither starts nor
    parks the step (the service is unknown here, or the delivery is stale, a duplicate
    or names another service): `_claim` then decides, reading the step first."""
    service = current_catalog().services.get(named.service)
    if service is None:
        return None
    semaphore = get_semaphore()
    lease = LeaseId(str(job_id), step_index, fence, named.queue)
    ttl, limit = service.lease_ttl_s, service.concurrency
    if named.handed_here:
        # This process's release made the lease a moment ago, for a full lease_ttl_s:
        # taking it again would only renew it, one Redis round trip on the slot's turn.
        taken = LeaseSemaphore.ALREADY_HELD
    else:
        taken = semaphore.acquire(service.name, lease, ttl, limit, wait=False)
    if taken == LeaseSemaphore.FULL:
        if not _park_named(job_id, step_index, fence, named, limit):
            return None
        # In line only once parked, so a stale delivery never waits; and a slot freed
        # since is taken here rather than left to a release that found no one waiting.
        taken = semaphore.acquire(service.name, lease, ttl, limit, wait=True)
        if taken == LeaseSemaphore.FULL:
            return Outcome.WAITING
    created = taken == LeaseSemaphore.ACQUIRED
    step = changes.NamedStep(job_id, step_index, fence, named.service, named.queue)
    token = uuid.uuid4().hex
    try:
        run = _claim_once(
            lambda session: changes.start_named_step(session, step, claim_token=token),
            lambda session: _claimed_run(session, job_id, step_index, fence, token),
            lambda: semaphore.acquire(service.name, lease, ttl, limit, wait=False) > 0,
            log.bind(job_id=str(job_id), step_index=step_index, fence=fence, queue=named.queue),
        )
        # Give back a lease this call created, unless the delivery running this very
        # fence holds it (its own had expired): that one keeps it.
        if run is None and created and not _is_running(job_id, step_index, fence):
            _release(semaphore, service.model_dump(), lease)
    except BaseException:
        if created:
            _release(semaphore, service.model_dump(), lease)
        raise
    if run is None:
        return None
    bound = log.bind(
        job_id=str(job_id), step_index=step_index, attempt=run.attempt, queue=run.queue
    )
    bound.info("step started", service=service.name)
    return Claimed(run, live_service(run.service_spec), lease, bound)


def _claim_once(
    claim: Callable[[Session], StepRun | None],
    landed: Callable[[Session], StepRun | None],
    keep_slot: Callable[[], bool],
    bound: Any,
) -> StepRun | None:
    """`claim(session)`: the claim of a delivery whose lease is taken, one statement
    that commits on its own; the step claimed, or None (stale, a duplicate).

    When its answer is lost, the claim may have landed all the same. Once the database
    answers again, `landed(session)` finds the step if it runs under this delivery's
    claim, and the delivery goes on with it as its own, provided `keep_slot()` finds its
    lease still held or takes it again (it may have lapsed meanwhile); if not, Beat puts
    the step back. A claim that did not land is made again."""
    try:
        with statement_scope() as session:
            return claim(session)
    except OperationalError as error:
        _claiming_again(bound, error, 0.0)

    def find_or_claim() -> StepRun | None:
        with statement_scope() as session:
            run = landed(session)
            if run is None:
                return claim(session)
        if not keep_slot():
            bound.warning(
                "claim landed while its answer was lost, but its slot lapsed "
                "meanwhile; Beat puts the step back"
            )
            return None
        _found_earlier_try(bound, "claim")
        return run

    return while_database_unreachable(partial(_claiming_again, bound))(find_or_claim)


def _claiming_again(bound: Any, error: BaseException, wait_s: float) -> None:
    bound.warning(
        "database unreachable; claiming the step again",
        in_s=round(wait_s, 2),
        error=first_line(error),
    )


def _claimed_run(
    session: Session, job_id: uuid.UUID, step_index: int, fence: int, token: str
) -> StepRun | None:
    """The step, when it runs under the claim that carried `token`."""
    if not changes.claimed_by(session, job_id, step_index, fence, token):
        return None
    return repo.load_step_run(session, job_id, step_index)


def _is_running(job_id: uuid.UUID, step_index: int, fence: int) -> bool:
    with statement_scope() as session:
        return repo.is_running(session, job_id, step_index, fence)


def _park_named(
    job_id: uuid.UUID, step_index: int, fence: int, named: NamedSlot, limit: int
) -> bool:
    """Park the step of a named delivery whose service is full; False when the
    delivery does not match the step (stale, a duplicate, another service)."""
    data = {"service": named.service, "limit": limit}
    with statement_scope() as session:
        step = changes.NamedStep(job_id, step_index, fence, named.service, named.queue)
        attempt = changes.park_named_step(session, step, data)
    if attempt is None:
        return False
    log.info(
        "waiting for a slot",
        job_id=str(job_id),
        step_index=step_index,
        attempt=attempt,
        queue=named.queue,
        service=named.service,
        limit=limit,
    )
    return True


def _claim(
    job_id: uuid.UUID, step_index: int, fence: int, holds_slot: bool = False
) -> Claimed | Outcome:
    """Read the step, take its slot and claim it (or park it until a slot frees). Each
    change is one statement on PostgreSQL, so no transaction spans the lease call."""
    semaphore = get_semaphore()
    held: tuple[StepRun, LeaseId] | None = None  # a slot this call must give back
    try:
        with statement_scope() as session:
            run = repo.load_step_run(session, job_id, step_index)
            if run is None or not run.accepts(fence):
                return _drop_stale(semaphore, run, job_id, step_index, fence, holds_slot)
            service = live_service(run.service_spec)
            bound = log.bind(
                job_id=str(job_id), step_index=step_index, attempt=run.attempt, queue=run.queue
            )
            lease = LeaseId(str(job_id), step_index, fence, run.queue)
            limit, ttl = service.concurrency, service.lease_ttl_s
            if semaphore.acquire(service.name, lease, ttl, limit) == LeaseSemaphore.FULL:
                changes.park_step(session, run, {"service": service.name, "limit": limit})
                bound.info("waiting for a slot", service=service.name, limit=limit)
                return Outcome.WAITING
            held = (run, lease)
        token = uuid.uuid4().hex
        claimed = _claim_once(
            lambda session: (
                run
                if changes.start_step(session, run, fence, claim_token=token) is not None
                else None
            ),
            lambda session: _claimed_run(session, job_id, step_index, fence, token),
            lambda: semaphore.acquire(service.name, lease, ttl, limit, wait=False) > 0,
            bound,
        )
        if claimed is None and _is_running(job_id, step_index, fence):
            held = None  # the delivery running this very fence holds this lease
    except BaseException:
        if held is not None:
            _release(semaphore, held[0].service_spec, held[1])
        raise
    if claimed is None:
        if held is not None:
            _release(semaphore, run.service_spec, lease)
        bound.info("duplicate or stale delivery dropped after lease")
        return Outcome.STALE
    bound.info("step started", service=service.name)
    return Claimed(run, service, lease, bound)


def _execute(claimed: Claimed, chain: HandoffChain[Claimed]) -> Outcome | Recording[Outcome]:
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
    )
    released = False
    try:
        result: dict[str, Any] | StepError
        with beating(semaphore, service, lease, bound):
            try:
                result = call_service(service, call)
            except StepError as error:
                result = error
        if isinstance(result, StepError):
            failure = result
            # Free the slot before recording, so the next step starts sooner.
            released = True
            _release(semaphore, run.service_spec, lease, chain)
            return chain.record(lambda: _record_failure(run, service, failure, bound))
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
            _release(semaphore, run.service_spec, lease, chain)
        return chain.record(lambda: _record_success(run, output, usually.started_next, bound))
    finally:
        if not released:
            _release(semaphore, run.service_spec, lease)


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
    try:
        acquired, woken = semaphore.hand_on(
            Slot(service.name, claimed.lease, service.lease_ttl_s, service.concurrency),
            Slot(next_service.name, next_lease, next_service.lease_ttl_s, next_service.concurrency),
        )
    except Exception:
        log.exception("lease hand-on failed; releasing the usual way", lease=str(claimed.lease))
        _release(semaphore, run.service_spec, claimed.lease, chain)
        return RecordUsually()
    if not acquired:
        _wake_or_log(chain.keep(run.queue, woken, service.name), service.name)
        return RecordUsually()
    _wake_or_log(woken, service.name)
    try:
        with statement_scope() as session:
            continued = changes.complete_and_start_next(session, run, run.fence, output)
    except changes.NextStepMoved:
        _release(semaphore, run.next_spec(), next_lease)
        return RecordUsually()
    except OperationalError:
        # The database gone: record the usual way, which waits for it without holding
        # the next step's slot. The commit may have landed all the same.
        _release(semaphore, run.next_spec(), next_lease)
        bound.warning("database unreachable; recording the result without the next step")
        return RecordUsually(started_next=next_lease.fence)
    except BaseException:
        _release(semaphore, run.next_spec(), next_lease)
        raise
    if continued is None:
        _release(semaphore, run.next_spec(), next_lease)
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


def _release(
    semaphore: LeaseSemaphore,
    service_spec: dict[str, Any],
    lease: LeaseId,
    chain: HandoffChain[Claimed] | None = None,
) -> None:
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


def _drop_stale(
    semaphore: LeaseSemaphore,
    run: StepRun | None,
    job_id: uuid.UUID,
    step_index: int,
    fence: int,
    holds_slot: bool,
) -> Outcome:
    log.info("stale delivery dropped", job_id=str(job_id), step_index=step_index, fence=fence)
    if (
        holds_slot
        and run is not None
        and not (run.status == StepStatus.RUNNING and run.fence == fence)
    ):
        # A waiter woken after its job was cancelled or its step moved on holds the
        # slot it was handed; give it back now rather than after lease_ttl_s. Any
        # other delivery took no slot here: a lease under this fence is the one of a
        # call still in flight (a duplicate after a cancel), which keeps it.
        _release(semaphore, run.service_spec, LeaseId(str(job_id), step_index, fence, run.queue))
    return Outcome.STALE


def _kept_until_recorded(record: Callable[..., Outcome]) -> Callable[..., Outcome]:
    """`record(run, ..., bound)`, retried while the database cannot be reached: the
    result is in hand, and giving up leaves the step to Beat, which calls the service
    again. The writes are fenced, so a retry after a commit that landed writes nothing
    again; it recognises that commit and sends what its lost answer kept back."""

    @wraps(record)
    def recording(*args: Any) -> Outcome:
        bound = args[-1]

        def retrying(error: BaseException, wait_s: float) -> None:
            bound.warning(
                "database unreachable; recording the result again",
                in_s=round(wait_s, 2),
                error=first_line(error),
            )

        try:
            return record(*args)  # as a rule: without the retry machinery's 30-40 µs
        except OperationalError as error:
            retrying(error, 0.0)  # at once: a dropped pooled connection reconnects
        return while_database_unreachable(retrying)(record, *args)

    return recording


@_kept_until_recorded
def _record_success(
    run: StepRun, output: dict[str, Any], started_next: int | None, bound: Any
) -> Outcome:
    """Commit the result and queue the next step (see RecordUsually for `started_next`)."""
    with statement_scope() as session:
        finished = changes.finish_step(session, run, run.fence, output)
        if finished is None:
            finished = changes.recorded_earlier(session, run, started_next)
            if finished is None:
                bound.warning("late result discarded: the step moved on without this attempt")
                return Outcome.DISCARDED
            _found_earlier_try(bound, "result")
        queue, fence = finished.next_queue, finished.next_fence
        if queue is not None and fence is not None:
            # The next step's delivery goes out before the events are published.
            enqueue = partial(
                enqueue_step,
                run.job_id,
                run.step_index + 1,
                fence,
                queue,
                service=run.next_spec()["name"],
            )
            on_commit(session, enqueue, first=True)
    bound.info("step completed", job_finished=finished.job_finished)
    return Outcome.COMPLETED


@_kept_until_recorded
def _record_failure(run: StepRun, service: Service, error: StepError, bound: Any) -> Outcome:
    with session_scope() as session:
        if error.retryable and run.attempt < run.max_attempts:
            return _schedule_retry(session, run, service, error, bound)
        if not repo.fail_step(
            session,
            run.job_id,
            run.step_index,
            run.fence,
            error=error.message,
            code=error.code,
            retryable=error.retryable,
        ):
            if not changes.failed_earlier(session, run):
                return _late_failure(bound, error)
            _found_earlier_try(bound, "failure")
            return Outcome.FAILED
        append_event(
            session,
            run.job_id,
            EventType.JOB_ERROR,
            step_index=run.step_index,
            step_name=run.step_name,
            attempt=run.attempt,
            data={"error": error.message, "code": error.code, "retryable": error.retryable},
        )
    bound.warning("step failed; job failed", error=error.message, retryable=error.retryable)
    return Outcome.FAILED


def _found_earlier_try(bound: Any, what: str) -> None:
    bound.warning(f"{what} recorded by an earlier try whose commit's answer was lost")


def _late_failure(bound: Any, error: StepError) -> Outcome:
    bound.warning(
        "late failure discarded: the step moved on without this attempt", error=error.message
    )
    return Outcome.DISCARDED


def _schedule_retry(
    session: Session, run: StepRun, service: Service, error: StepError, bound: Any
) -> Outcome:
    delay = retry_delay(service.backoff, run.attempt, error.retry_after_s)
    next_fence = repo.retry_step(
        session, run.job_id, run.step_index, run.fence, error=error.message, code=error.code
    )
    if next_fence is None:
        next_fence = changes.retried_earlier(session, run)
        if next_fence is None:
            return _late_failure(bound, error)
        _found_earlier_try(bound, "retry")  # the enqueue below is what its answer held back
    else:
        append_event(
            session,
            run.job_id,
            EventType.STEP_RETRYING,
            step_index=run.step_index,
            step_name=run.step_name,
            attempt=run.attempt,
            data={
                "error": error.message,
                "code": error.code,
                "delay_s": round(delay, 3),
                "next_attempt": run.attempt + 1,
            },
        )
    # The retry waits in the broker (an ETA message), not in a worker slot.
    on_commit(
        session,
        lambda: enqueue_step(
            run.job_id, run.step_index, next_fence, run.queue, delay, service=service.name
        ),
    )
    bound.info("step will retry", error=error.message, delay_s=round(delay, 3))
    return Outcome.RETRYING
