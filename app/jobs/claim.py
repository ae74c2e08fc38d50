"""Claiming a delivery: take its step's slot, then claim the step under its fence.

Only the delivery whose fence matches the step row and whose claim wins the
conditional update (app/jobs/step_changes.py) runs the step; a stale, duplicate or
zombie delivery changes nothing. Around that claim the lease handling is written once
(_claim_with_slot): take the service's slot first; when the service is full, park the
step (WAITING_FOR_SLOT) and wait in line for a release to hand it a slot; claim; and
give back a slot taken here when the claim misses or fails. A delivery obtains its
step in one of two ways:

- by name (_ByName): its message names the step's service and queue
  (app/jobs/dispatch.py), so it takes the slot before knowing anything else of the
  step, and claims and reads the step in one statement;
- by reading first (_ReadFirst): a delivery the first way did not settle (it names
  nothing, names a service unknown here, or did not match the step) reads the step,
  drops a stale delivery, and takes the slot in the session that read it.

On PostgreSQL each change is one statement that commits on its own, so no transaction
spans a lease call.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

import structlog
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from structlog.typing import FilteringBoundLogger

from app.catalog import Service, current_catalog
from app.db import statement_scope, while_database_unreachable
from app.jobs import repository as repo
from app.jobs import step_changes as changes
from app.jobs.delivery import NamedSlot, Outcome, warn_unreachable
from app.jobs.repository import StepRun
from app.jobs.slots import live_service, release
from app.jobs.states import StepStatus
from app.leases import LeaseId, LeaseSemaphore, get_semaphore

log: FilteringBoundLogger = structlog.get_logger(__name__)

_Miss = TypeVar("_Miss", Outcome, None)


@dataclass(frozen=True)
class Claimed:
    """A step attempt this process has claimed and whose lease it holds."""

    run: StepRun
    service: Service
    lease: LeaseId
    log: FilteringBoundLogger


def claim_delivery(
    job_id: uuid.UUID, step_index: int, fence: int, named: NamedSlot | None = None
) -> Claimed | Outcome:
    """Claim the step this delivery carries, or say why not (STALE, WAITING). `named`
    is the service and queue the message names, when it does."""
    if named is not None:
        service = current_catalog().services.get(named.service)
        if service is not None:
            by_name = _ByName(job_id, step_index, fence, named, service)
            claimed = _claim_with_slot(nullcontext(by_name))
            if claimed is not None:
                return claimed
    holds_slot = named is not None and named.holds_slot
    return _claim_with_slot(_read_first(job_id, step_index, fence, holds_slot))


class _StepSource(ABC, Generic[_Miss]):
    """One way a delivery obtains its step: what the lease handling around the claim
    needs to know of it. `_Miss` is what a delivery that did not match the step ends as."""

    # Whether the step was read, and accepts this delivery, before its slot is taken.
    # Then the first acquire joins the wait list at once, and a slot the claim found
    # held is the step's own, to give back when the claim misses. A delivery that did
    # not read first may be stale, so it waits in line only once its step is parked,
    # and leaves a slot it found to reading first (_drop_stale gives it back).
    step_read_first: bool
    job_id: uuid.UUID
    service: Service  # whose slot the step takes, with its limits as of now
    lease: LeaseId
    bound: FilteringBoundLogger
    already_held = False  # the lease was made for this delivery a moment ago

    @abstractmethod
    def park(self, data: dict[str, Any]) -> int | None:
        """Put the step in WAITING_FOR_SLOT (event `data`): its attempt, or None when the
        delivery does not match the step."""

    @abstractmethod
    def claim(self, session: Session, token: str) -> StepRun | None:
        """Claim the step under this delivery's fence and `token`, one statement that
        commits on its own: the step claimed, or None (stale, a duplicate)."""

    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """The service spec a slot taken here is given back under."""

    @abstractmethod
    def missed(self) -> _Miss:
        """What a delivery that did not match the step ends as."""

    @abstractmethod
    def started(self, run: StepRun) -> Claimed:
        """The claimed step, as this delivery runs it."""


class _ByName(_StepSource[None]):
    """The step of a delivery that names its service and queue: the slot is taken
    before anything is read, and the claim reads the step. A miss (stale, a duplicate,
    another service) is settled by reading first."""

    step_read_first = False

    def __init__(
        self, job_id: uuid.UUID, step_index: int, fence: int, named: NamedSlot, service: Service
    ) -> None:
        self.step = changes.NamedStep(job_id, step_index, fence, named.service, named.queue)
        self.job_id, self.service = job_id, service
        self.lease = LeaseId(str(job_id), step_index, fence, named.queue)
        self.bound = log.bind(
            job_id=str(job_id), step_index=step_index, fence=fence, queue=named.queue
        )
        # This process's release made a lease handed here a moment ago, for a full
        # lease_ttl_s: taking it again would only renew it, one Redis round trip on the
        # slot's turn.
        self.already_held = named.handed_here

    def park(self, data: dict[str, Any]) -> int | None:
        with statement_scope() as session:
            return changes.park_named_step(session, self.step, data)

    def claim(self, session: Session, token: str) -> StepRun | None:
        return changes.start_named_step(session, self.step, claim_token=token)

    def spec(self) -> dict[str, Any]:
        return self.service.model_dump()

    def missed(self) -> None:
        return None

    def started(self, run: StepRun) -> Claimed:
        bound = log.bind(
            job_id=str(self.job_id),
            step_index=self.step.step_index,
            attempt=run.attempt,
            queue=run.queue,
        )
        bound.info("step started", service=self.service.name)
        return Claimed(run, live_service(run.service_spec), self.lease, bound)


class _ReadFirst(_StepSource[Outcome]):
    """The step as read before its slot is taken; a full service parks it in the
    session that read it."""

    step_read_first = True

    def __init__(self, session: Session, run: StepRun, fence: int) -> None:
        self.session = session  # open only while the slot is taken
        self.run, self.job_id = run, run.job_id
        self.service = live_service(run.service_spec)
        self.lease = LeaseId(str(run.job_id), run.step_index, fence, run.queue)
        self.bound = log.bind(
            job_id=str(run.job_id), step_index=run.step_index, attempt=run.attempt, queue=run.queue
        )

    def park(self, data: dict[str, Any]) -> int | None:
        changes.park_step(self.session, self.run, data)
        return self.run.attempt  # parked already, or moved on: waiting either way

    def claim(self, session: Session, token: str) -> StepRun | None:
        started = changes.start_step(session, self.run, self.lease.fence, claim_token=token)
        return None if started is None else self.run

    def spec(self) -> dict[str, Any]:
        return self.run.service_spec

    def missed(self) -> Outcome:
        self.bound.info("duplicate or stale delivery dropped after lease")
        return Outcome.STALE

    def started(self, run: StepRun) -> Claimed:
        # The step as read: a claim that lost its answer reads it again, and only its
        # status changed.
        self.bound.info("step started", service=self.service.name)
        return Claimed(self.run, self.service, self.lease, self.bound)


@contextmanager
def _read_first(
    job_id: uuid.UUID, step_index: int, fence: int, holds_slot: bool
) -> Iterator[_ReadFirst | Outcome]:
    """Read the step; the session stays open while its slot is taken. STALE when the
    step does not accept this delivery."""
    with statement_scope() as session:
        run = repo.load_step_run(session, job_id, step_index)
        if run is None or not run.accepts(fence):
            yield _drop_stale(run, job_id, step_index, fence, holds_slot)
        else:
            yield _ReadFirst(session, run, fence)


def _claim_with_slot(
    opened: AbstractContextManager[_StepSource[_Miss] | Outcome],
) -> Claimed | Outcome | _Miss:
    """Take the step's slot (or park the step and wait in line), claim the step, and
    give back a slot taken here when the claim misses or fails."""
    semaphore = get_semaphore()
    held: _StepSource[_Miss] | None = None  # a slot this call must give back
    try:
        with opened as source:
            if isinstance(source, Outcome):
                return source
            taken = _take_slot(semaphore, source)
            if taken is None:
                return source.missed()
            if taken == LeaseSemaphore.FULL:
                return Outcome.WAITING
            if taken == LeaseSemaphore.ACQUIRED or source.step_read_first:
                held = source
        lease, service, token = source.lease, source.service, uuid.uuid4().hex
        ttl, limit = service.lease_ttl_s, service.concurrency
        run = _claim_once(
            partial(source.claim, token=token),
            partial(_claimed_run, job_id=source.job_id, lease=lease, token=token),
            lambda: semaphore.acquire(service.name, lease, ttl, limit, wait=False) > 0,
            source.bound,
        )
        if run is None and held is not None and _is_running(source.job_id, lease):
            held = None  # the delivery running this very fence holds this lease
    except BaseException:
        if held is not None:
            release(semaphore, held.spec(), held.lease)
        raise
    if run is None:
        if held is not None:
            release(semaphore, held.spec(), held.lease)
        return source.missed()
    return source.started(run)


def _take_slot(semaphore: LeaseSemaphore, source: _StepSource[_Miss]) -> int | None:
    """Take the step's slot: ACQUIRED, or ALREADY_HELD. When the service is full, park
    the step and wait in line: FULL. None when the delivery does not match the step."""
    service, lease = source.service, source.lease
    ttl, limit = service.lease_ttl_s, service.concurrency
    if source.already_held:
        taken = LeaseSemaphore.ALREADY_HELD
    else:
        taken = semaphore.acquire(service.name, lease, ttl, limit, wait=source.step_read_first)
    if taken != LeaseSemaphore.FULL:
        return taken
    attempt = source.park({"service": service.name, "limit": limit})
    if attempt is None:
        return None
    log.info(
        "waiting for a slot",
        job_id=lease.job_id,
        step_index=lease.step_index,
        attempt=attempt,
        queue=lease.queue,
        service=service.name,
        limit=limit,
    )
    if source.step_read_first:
        return taken  # in line already: the first acquire joined it
    # In line only once parked, so a stale delivery never waits; and a slot freed
    # since is taken here rather than left to a release that found no one waiting.
    return semaphore.acquire(service.name, lease, ttl, limit, wait=True)


def _claim_once(
    claim: Callable[[Session], StepRun | None],
    landed: Callable[[Session], StepRun | None],
    keep_slot: Callable[[], bool],
    bound: FilteringBoundLogger,
) -> StepRun | None:
    """`claim(session)`: the claim of a delivery whose lease is taken, one statement
    that commits on its own; the step claimed, or None (stale, a duplicate).

    When its answer is lost, the claim may have landed all the same. Once the database
    answers again, `landed(session)` finds the step if it runs under this delivery's
    claim, and the delivery goes on with it as its own, provided `keep_slot()` finds its
    lease still held or takes it again (it may have lapsed meanwhile); if not, Beat puts
    the step back. A claim that did not land is made again."""
    claiming_again = partial(warn_unreachable, bound, "claiming the step")
    try:
        with statement_scope() as session:
            return claim(session)
    except OperationalError as error:
        claiming_again(error, 0.0)

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
        bound.warning("claim recorded by an earlier try whose commit's answer was lost")
        return run

    return while_database_unreachable(claiming_again)(find_or_claim)


def _claimed_run(
    session: Session, *, job_id: uuid.UUID, lease: LeaseId, token: str
) -> StepRun | None:
    """The step, when it runs under the claim that carried `token`."""
    if not changes.claimed_by(session, job_id, lease.step_index, lease.fence, token):
        return None
    return repo.load_step_run(session, job_id, lease.step_index)


def _is_running(job_id: uuid.UUID, lease: LeaseId) -> bool:
    with statement_scope() as session:
        return repo.is_running(session, job_id, lease.step_index, lease.fence)


def _drop_stale(
    run: StepRun | None, job_id: uuid.UUID, step_index: int, fence: int, holds_slot: bool
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
        lease = LeaseId(str(job_id), step_index, fence, run.queue)
        release(get_semaphore(), run.service_spec, lease)
    return Outcome.STALE
