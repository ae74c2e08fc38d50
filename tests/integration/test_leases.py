"""The lease semaphore against a real Redis: limits, wait-list hand-off, renewal and
expiry on Redis time, reaping; and a woken waiter that turns out stale gives its slot
back at once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from app.leases import LeaseId, LeaseSemaphore, LeaseState, Usage
from app.redis_client import build_redis

TTL_S = 30.0


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    client = build_redis()
    yield client
    client.close()


@pytest.fixture
def semaphore(client: redis.Redis) -> LeaseSemaphore:
    return LeaseSemaphore(client)


@pytest.fixture
def service(client: redis.Redis) -> Iterator[str]:
    name = f"svc-{uuid.uuid4().hex[:8]}"
    yield name
    client.delete(*LeaseSemaphore.keys(name))


def lease(n: int, fence: int = 1) -> LeaseId:
    return LeaseId(f"00000000-0000-0000-0000-{n:012d}", 0, fence, "default")


def test_usages_of_many_services_in_one_round_trip_match_each_usage(semaphore, client):
    """What GET /services and /metrics read for the whole catalog at once."""
    names = [f"svc-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    try:
        for taken, name in enumerate(names):  # 0, 1 and 2 slots of a limit of 1
            for n in range(taken):
                semaphore.acquire(name, lease(n), TTL_S, limit=1)
        expected = {name: semaphore.usage(name) for name in names}
        assert expected == {names[0]: Usage(0, 0), names[1]: Usage(1, 0), names[2]: Usage(1, 1)}
        client.script_flush()  # a fresh Redis: the pipeline loads its script first
        assert semaphore.usages(names) == expected
        assert semaphore.usages([]) == {}
    finally:
        for name in names:
            client.delete(*LeaseSemaphore.keys(name))


def test_limit_is_exact_and_full_steps_queue_in_arrival_order(semaphore, service):
    acquired = [semaphore.acquire(service, lease(i), TTL_S, limit=2) for i in range(5)]
    assert acquired == [LeaseSemaphore.ACQUIRED] * 2 + [LeaseSemaphore.FULL] * 3
    assert semaphore.usage(service).in_use == 2
    assert semaphore.usage(service).waiting == 3
    # A duplicate delivery of a held lease takes no second slot.
    assert semaphore.acquire(service, lease(0), TTL_S, limit=2) == LeaseSemaphore.ALREADY_HELD
    assert semaphore.usage(service).in_use == 2
    # A step re-checked while waiting keeps its place in the line.
    assert semaphore.acquire(service, lease(2), TTL_S, limit=2) == LeaseSemaphore.FULL

    woken = semaphore.release(service, lease(0), TTL_S, limit=2)
    assert woken == [lease(2)], "the oldest waiter gets the freed slot"
    assert semaphore.state(service, lease(2)) is LeaseState.HELD
    assert semaphore.state(service, lease(3)) is LeaseState.WAITING
    assert semaphore.state(service, lease(0)) is LeaseState.NONE
    # The slot was handed over: a newcomer cannot take it.
    assert semaphore.acquire(service, lease(9), TTL_S, limit=2) == LeaseSemaphore.FULL
    # Its woken delivery finds the lease already made for it.
    assert semaphore.acquire(service, lease(2), TTL_S, limit=2) == LeaseSemaphore.ALREADY_HELD
    assert semaphore.usage(service).in_use == 2


def test_live_limit_changes(semaphore, service):
    for i in range(6):
        semaphore.acquire(service, lease(i), TTL_S, limit=2)
    # Raised from 2 to 4: the periodic re-check hands the two new slots out at once.
    assert semaphore.wake_waiters(service, TTL_S, limit=4) == [lease(2), lease(3)]
    assert semaphore.usage(service).in_use == 4
    # Lowered to 2 with 4 held: nothing new gets in, and releases wake nobody until
    # the count is under the new limit.
    assert semaphore.acquire(service, lease(8), TTL_S, limit=2) == LeaseSemaphore.FULL
    assert semaphore.release(service, lease(0), TTL_S, limit=2) == []
    assert semaphore.release(service, lease(1), TTL_S, limit=2) == []
    assert semaphore.release(service, lease(2), TTL_S, limit=2) == [lease(4)]
    assert semaphore.usage(service).in_use == 2
    # Releasing one that is already gone is harmless and frees nothing extra.
    assert semaphore.release(service, lease(0), TTL_S, limit=2) == []
    assert semaphore.usage(service).in_use == 2


def test_expiry_renewal_and_reaping_run_on_redis_time(semaphore, service, client, monkeypatch):
    # The worker's clock is wildly wrong; the lease deadline must not care.
    monkeypatch.setattr(time, "time", lambda: 946684800.0)  # 2000-01-01
    assert semaphore.acquire(service, lease(1), 0.3, limit=1) == LeaseSemaphore.ACQUIRED
    assert semaphore.acquire(service, lease(2), 60, limit=5) == LeaseSemaphore.ACQUIRED
    monkeypatch.undo()
    seconds, micros = client.time()
    redis_now_ms = seconds * 1000 + micros // 1000
    deadline = client.zscore(LeaseSemaphore.keys(service)[0], str(lease(1)))
    assert deadline is not None
    assert 0 < deadline - redis_now_ms <= 300

    assert semaphore.renew(service, lease(1), 0.3)
    time.sleep(0.45)
    # Expired: no longer counted or renewable, and its slot is free before any reaping.
    assert semaphore.state(service, lease(1)) is LeaseState.NONE
    assert not semaphore.renew(service, lease(1), 0.3)
    assert semaphore.usage(service).in_use == 1
    assert semaphore.acquire(service, lease(3), TTL_S, limit=2) == LeaseSemaphore.ACQUIRED

    assert semaphore.reap_expired(service) == [lease(1)]
    assert semaphore.reap_expired(service) == [], "a lease is reaped once"
    assert semaphore.state(service, lease(2)) is LeaseState.HELD


def test_stale_woken_delivery_gives_its_slot_back(db, semaphore):
    """A waiter woken after its job moved on must not sit on the slot for lease_ttl_s."""
    from app.catalog import current_catalog
    from app.db import session_scope
    from app.jobs import repository as repo
    from app.jobs.runner import NamedSlot, Outcome, run_step
    from app.jobs.service import create_job

    with session_scope() as session:
        job = create_job(session, current_catalog(), feature_name="stalled_job", input_data={})
        job_id = job.job.id
    # The step moved on (say a recovery gave it a new fence) while its old delivery
    # sat on the wait list; a release then handed that old delivery a slot.
    with session_scope() as session:
        repo.queue_step(session, job_id, 0)
    old = LeaseId(str(job_id), 0, 1, "stalled")
    semaphore.acquire("stalled", old, TTL_S, limit=1)
    waiter = LeaseId(str(uuid.uuid4()), 0, 1, "stalled")
    assert semaphore.acquire("stalled", waiter, TTL_S, limit=1) == LeaseSemaphore.FULL
    try:
        woken = NamedSlot("stalled", "stalled", holds_slot=True)  # as a release sends it
        assert run_step(job_id, 0, 1, named=woken) is Outcome.STALE
        assert semaphore.state("stalled", old) is LeaseState.NONE
        assert semaphore.state("stalled", waiter) is LeaseState.HELD, "next waiter woken"
    finally:
        semaphore.release("stalled", waiter, TTL_S, limit=1)


def test_a_duplicate_delivery_after_a_cancel_leaves_the_running_calls_slot(db, semaphore):
    """Cancel while a step's call is in flight, then a duplicate of its delivery (a
    re-sent message) arrives: it is dropped, and the slot stays with the call that is
    still running. Freeing it would let one more call in than the limit."""
    from app.catalog import current_catalog
    from app.db import session_scope, statement_scope
    from app.jobs import step_changes as changes
    from app.jobs.operator_actions import cancel_job
    from app.jobs.runner import NamedSlot, Outcome, run_step
    from app.jobs.service import create_job
    from tests.lease_support import queued_deliveries

    with session_scope() as session:
        job_id = create_job(
            session, current_catalog(), feature_name="solo_job", input_data={}
        ).job.id
    queued_deliveries("solo")  # driven by hand
    running = LeaseId(str(job_id), 0, 1, "solo")
    try:
        # The delivery's claim: the slot, then the step RUNNING; its call is in flight.
        assert semaphore.acquire("solo", running, TTL_S, limit=1) == LeaseSemaphore.ACQUIRED
        with statement_scope() as session:
            step = changes.NamedStep(job_id, 0, 1, "solo", "solo")
            assert changes.start_named_step(session, step) is not None
        with session_scope() as session:
            cancel_job(session, job_id)

        duplicate = NamedSlot("solo", "solo")
        assert run_step(job_id, 0, 1, named=duplicate) is Outcome.STALE
        assert semaphore.state("solo", running) is LeaseState.HELD, "the call lost its slot"
        assert semaphore.usage("solo").in_use == 1
    finally:
        semaphore.release("solo", running, TTL_S, limit=1)


def test_a_broker_failing_to_wake_a_waiter_does_not_lose_the_result(db, semaphore, monkeypatch):
    """A finished step passes its slot to a waiter and starts its job's next step (of
    another service) in the same process; the broker refuses the waiter's delivery.
    The result is recorded and the next step runs all the same; the waiter's unused
    lease expires and Beat sends it again."""
    from kombu.exceptions import OperationalError as BrokerError

    from app.catalog import current_catalog
    from app.db import session_scope
    from app.jobs import repository as repo
    from app.jobs.runner import Outcome, run_step
    from app.jobs.service import create_job
    from tests.lease_support import queued_deliveries
    from worker.celery_app import celery_app

    with session_scope() as session:
        running = create_job(
            session, current_catalog(), feature_name="solo_then_next", input_data={}
        ).job.id
        waiting = create_job(
            session, current_catalog(), feature_name="solo_job", input_data={}
        ).job.id
    queued_deliveries("solo")  # driven by hand
    held, waiter = (LeaseId(str(job_id), 0, 1, "solo") for job_id in (running, waiting))
    try:
        assert semaphore.acquire("solo", held, TTL_S, limit=1) == LeaseSemaphore.ACQUIRED
        assert run_step(waiting, 0, 1) is Outcome.WAITING  # in line for the only slot

        def refuse(*args: Any, **kwargs: Any) -> None:
            raise BrokerError("broker unreachable")

        monkeypatch.setattr(celery_app, "send_task", refuse)
        assert run_step(running, 0, 1, frozenset({"solo"})) is Outcome.COMPLETED
        with session_scope() as session:
            statuses = [step.status for step in repo.get_steps(session, running)]
        assert statuses == ["COMPLETED", "COMPLETED"], "the wake-up's failure lost the result"
        assert semaphore.state("solo", waiter) is LeaseState.HELD, "handed over, not sent"
    finally:
        monkeypatch.undo()
        for lease in (held, waiter):
            semaphore.release("solo", lease, TTL_S, limit=1)
        queued_deliveries("solo")


def test_released_slot_is_taken_over_in_process(db, semaphore):
    """The worker that frees a slot runs the step it hands the slot to: no broker hop."""
    from app.catalog import current_catalog
    from app.db import session_scope
    from app.jobs import repository as repo
    from app.jobs.runner import Outcome, run_step
    from app.jobs.service import create_job
    from tests.lease_support import queued_deliveries

    with session_scope() as session:
        first, second = (
            create_job(session, current_catalog(), feature_name="solo_job", input_data={}).job.id
            for _ in range(2)
        )
    queued_deliveries("solo")  # the creation messages; these steps are driven by hand
    first_lease = LeaseId(str(first), 0, 1, "solo")
    try:
        # The first step's delivery holds the only slot; the second must wait for it.
        assert semaphore.acquire("solo", first_lease, TTL_S, limit=1) == LeaseSemaphore.ACQUIRED
        assert run_step(second, 0, 1) is Outcome.WAITING
        assert semaphore.state("solo", LeaseId(str(second), 0, 1, "solo")) is LeaseState.WAITING

        assert run_step(first, 0, 1) is Outcome.COMPLETED
        with session_scope() as session:
            jobs = [repo.get_job(session, job_id) for job_id in (first, second)]
            assert [job.status if job else None for job in jobs] == ["COMPLETED"] * 2
        assert queued_deliveries("solo") == [], "the hand-off went through the broker"
        assert semaphore.usage("solo").in_use == 0
    finally:
        semaphore.release("solo", first_lease, TTL_S, limit=1)


def test_hand_on_frees_the_slot_for_waiters_before_the_next_step_takes_one(semaphore, service):
    """A finished step passing on to its job's next step: waiters that were in line
    first get the freed slot; the next step takes a slot only if one is left, and is
    never put on the wait list by this call."""
    from app.leases import Slot

    def slot(n: int) -> Slot:
        return Slot(service, lease(n), TTL_S, limit=1)

    assert semaphore.acquire(service, lease(0), TTL_S, limit=1) == LeaseSemaphore.ACQUIRED
    acquired, woken = semaphore.hand_on(slot(0), slot(1))
    assert (acquired, woken) == (True, []), "no one waits: the next step takes the slot"
    assert semaphore.state(service, lease(0)) is LeaseState.NONE
    assert semaphore.state(service, lease(1)) is LeaseState.HELD

    assert semaphore.acquire(service, lease(5), TTL_S, limit=1) == LeaseSemaphore.FULL
    acquired, woken = semaphore.hand_on(slot(1), slot(2))
    assert (acquired, woken) == (False, [lease(5)]), "the waiter was first in line"
    assert semaphore.state(service, lease(5)) is LeaseState.HELD
    assert semaphore.state(service, lease(2)) is LeaseState.NONE, "not queued by hand_on"
    assert semaphore.usage(service) == Usage(in_use=1, waiting=0)


def test_hand_on_from_a_lapsed_lease_takes_no_slot_for_the_next_step(semaphore, service):
    """A delivery whose lease lapsed (reaped, or expired and not yet reaped) may be a
    zombie whose step runs again elsewhere. The slot it would take for its next step
    carries the id that the other run's next step takes too, and the zombie, fenced out
    by the database, would give it back while that step's call runs: one call more than
    the limit. So it takes none (the caller then records the usual way)."""
    from app.leases import Slot

    def slot(n: int) -> Slot:
        return Slot(service, lease(n), TTL_S, limit=1)

    # Reaped: the lease is gone.
    acquired, _ = semaphore.hand_on(slot(0), slot(1))
    assert acquired is False
    assert semaphore.state(service, lease(1)) is LeaseState.NONE
    # Expired, still in the set until Beat reaps it.
    assert semaphore.acquire(service, lease(2), 0.05, limit=1) == LeaseSemaphore.ACQUIRED
    time.sleep(0.1)
    acquired, _ = semaphore.hand_on(slot(2), slot(3))
    assert acquired is False
    assert semaphore.state(service, lease(3)) is LeaseState.NONE
    assert semaphore.usage(service) == Usage(in_use=0, waiting=0)
    # Held: it hands on.
    assert semaphore.acquire(service, lease(4), TTL_S, limit=1) == LeaseSemaphore.ACQUIRED
    assert semaphore.hand_on(slot(4), slot(5)) == (True, [])
    assert semaphore.state(service, lease(5)) is LeaseState.HELD


def test_a_delivery_naming_its_service_takes_the_slot_first_and_keeps_every_rule(db, semaphore):
    """A message that names its step's service and queue (what the gateway sends) lets
    the worker take the slot before it reads the step. A full service still parks the
    step, a duplicate leaves the running delivery's lease alone, and a message naming
    another service than the step's gives back the slot it took and runs as usual."""
    from app.catalog import current_catalog
    from app.db import session_scope, statement_scope
    from app.jobs import repository as repo
    from app.jobs import step_changes as changes
    from app.jobs.runner import NamedSlot, Outcome, run_step
    from app.jobs.service import create_job
    from tests.lease_support import queued_deliveries

    named = NamedSlot("solo", "solo")
    with session_scope() as session:
        first, second, third, fourth = (
            create_job(session, current_catalog(), feature_name="solo_job", input_data={}).job.id
            for _ in range(4)
        )
    queued_deliveries("solo")  # the creation messages; these steps are driven by hand
    holder = LeaseId(str(uuid.uuid4()), 0, 1, "solo")
    assert semaphore.acquire("solo", holder, TTL_S, limit=1) == LeaseSemaphore.ACQUIRED
    try:
        # Full: a stale delivery neither parks its step nor waits in line for a slot.
        assert run_step(fourth, 0, 7, named=named) is Outcome.STALE
        assert semaphore.state("solo", LeaseId(str(fourth), 0, 7, "solo")) is LeaseState.NONE
        # Full: the step is parked and queued for the slot, as an unnamed delivery is.
        assert run_step(second, 0, 1, named=named) is Outcome.WAITING
        assert semaphore.state("solo", LeaseId(str(second), 0, 1, "solo")) is LeaseState.WAITING
        with session_scope() as session:
            assert repo.get_step(session, second, 0).status == "WAITING_FOR_SLOT"
        # The slot freed is handed to the waiter, whose delivery holds it already.
        woken = semaphore.release("solo", holder, TTL_S, limit=1)
        assert woken == [LeaseId(str(second), 0, 1, "solo")]
        assert run_step(second, 0, 1, named=named) is Outcome.COMPLETED

        # A duplicate of a running delivery: STALE, and the running one keeps its slot.
        running = LeaseId(str(first), 0, 1, "solo")
        assert semaphore.acquire("solo", running, TTL_S, limit=1) == LeaseSemaphore.ACQUIRED
        with statement_scope() as session:
            step = changes.NamedStep(first, 0, 1, "solo", "solo")
            assert changes.start_named_step(session, step) is not None
        assert run_step(first, 0, 1, named=named) is Outcome.STALE
        assert semaphore.state("solo", running) is LeaseState.HELD
        semaphore.release("solo", running, TTL_S, limit=1)

        # Named with another service than the step's: its slot goes back, the step runs.
        assert run_step(third, 0, 1, named=NamedSlot("stalled", "solo")) is Outcome.COMPLETED
        assert semaphore.usage("stalled").in_use == 0
        # A stale named delivery takes nothing either.
        assert run_step(fourth, 0, 7, named=named) is Outcome.STALE
        assert semaphore.usage("solo").in_use == 0
        with session_scope() as session:
            statuses = [repo.get_job(session, job).status for job in (second, third, fourth)]
        assert statuses == ["COMPLETED", "COMPLETED", "PENDING"]
        assert queued_deliveries("solo") == []
    finally:
        semaphore.release("solo", holder, TTL_S, limit=1)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_named_delivery_reaches_its_call_in_one_statement(backend, semaphore):
    """On PostgreSQL the claim of a delivery that names its service also reads the
    step: one statement before the call and one to record the result, where an
    unnamed delivery needs a read first; so does its park when the service is full. A
    step a released slot is handed to, and that the releasing process runs next, is
    claimed the same way."""
    from sqlalchemy import event

    from app.catalog import current_catalog
    from app.db import get_engine, session_scope
    from app.jobs.runner import NamedSlot, Outcome, run_step
    from app.jobs.service import create_job
    from tests.lease_support import queued_deliveries

    with session_scope() as session:
        named_job, unnamed_job, holder_job, waiter_job, unnamed_waiter_job = (
            create_job(session, current_catalog(), feature_name="solo_job", input_data={}).job.id
            for _ in range(5)
        )
    queued_deliveries("solo")
    solo = NamedSlot("solo", "solo")
    statements: list[str] = []

    def count(_conn, _cursor, sql, *_args) -> None:
        statements.append(sql)

    event.listen(get_engine(), "before_cursor_execute", count)
    try:
        assert run_step(named_job, 0, 1, named=solo) is Outcome.COMPLETED
        named = len(statements)
        assert run_step(unnamed_job, 0, 1) is Outcome.COMPLETED
        unnamed = len(statements) - named
        # The holder's slot is taken; the waiter parks, then is handed the slot when
        # the holder's call ends, and runs in the holder's process.
        holder = LeaseId(str(holder_job), 0, 1, "solo")
        assert semaphore.acquire("solo", holder, TTL_S, limit=1) == LeaseSemaphore.ACQUIRED
        before = len(statements)
        assert run_step(waiter_job, 0, 1, named=solo) is Outcome.WAITING
        named_park = len(statements) - before
        before = len(statements)
        assert run_step(holder_job, 0, 1, named=solo) is Outcome.COMPLETED
        holder_and_handed_over = len(statements) - before
        # An unnamed delivery reads the step before it parks it.
        other = LeaseId(str(uuid.uuid4()), 0, 1, "solo")
        assert semaphore.acquire("solo", other, TTL_S, limit=1) == LeaseSemaphore.ACQUIRED
        before = len(statements)
        assert run_step(unnamed_waiter_job, 0, 1) is Outcome.WAITING
        unnamed_park = len(statements) - before
        assert semaphore.release("solo", other, TTL_S, limit=1) == [
            LeaseId(str(unnamed_waiter_job), 0, 1, "solo")
        ]
        assert run_step(unnamed_waiter_job, 0, 1, named=solo) is Outcome.COMPLETED
    finally:
        event.remove(get_engine(), "before_cursor_execute", count)
    assert (named, unnamed) == (2, 3), statements
    assert (named_park, unnamed_park) == (1, 2), statements
    assert holder_and_handed_over == 4, statements[-holder_and_handed_over:]
    assert queued_deliveries("solo") == [], "the hand-off went through the broker"


def test_a_step_message_names_its_service_and_queue_to_the_worker(db):
    """The headers job creation sends reach the task's request as Celery builds it from
    the message a worker receives, and name the step's service and queue."""
    from celery.app.task import Context
    from celery.worker.request import Request

    from app.catalog import current_catalog
    from app.db import session_scope
    from app.jobs.runner import NamedSlot
    from app.jobs.service import create_job
    from app.jobs.slots import wake
    from tests.lease_support import queued_deliveries, queued_messages
    from worker.celery_app import celery_app
    from worker.tasks import named_slot

    queued_deliveries("solo")
    with session_scope() as session:
        create_job(session, current_catalog(), feature_name="solo_job", input_data={})
    [message] = queued_messages("solo")
    request = Request(message, app=celery_app)
    assert named_slot(Context(request.request_dict)) == NamedSlot("solo", "solo")
    assert named_slot(Context({})) is None, "a message naming nothing is claimed as before"
    # A waiter handed a slot by a release: its delivery says it holds it.
    wake([LeaseId(str(uuid.uuid4()), 0, 1, "solo")], "solo")
    [message] = queued_messages("solo")
    request = Request(message, app=celery_app)
    assert named_slot(Context(request.request_dict)) == NamedSlot("solo", "solo", holds_slot=True)
