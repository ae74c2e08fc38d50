"""Acceptance: a step's result is committed at most once, whatever the deliveries do."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from app.catalog import parse_catalog
from app.db import session_scope, statement_scope
from app.events.log import events_for_job
from app.events.publisher import WAKE_UP, drain_publishes, events_channel
from app.jobs import repository as repo
from app.jobs import step_changes as changes
from app.jobs.dispatch import enqueue_step
from app.jobs.service import create_job
from app.redis_client import get_redis
from tests.harness import UNCONSUMED_PAIR as _CATALOG
from tests.harness import wait_for_job, wait_until


def _event_types(job_id: uuid.UUID) -> list[str]:
    with session_scope() as session:
        return [e.type for e in events_for_job(session, job_id)]


@pytest.fixture
def pending_job(backend) -> uuid.UUID:
    """A job of two steps in a database of its own, on each backend."""
    with session_scope() as session:
        return create_job(session, _CATALOG, feature_name="pair", input_data={}).job.id


def test_stale_fence_can_neither_claim_nor_commit(pending_job):
    job_id = pending_job
    with session_scope() as session:
        assert changes.claim_step(session, job_id, 0, fence=1) is not None
        assert changes.claim_step(session, job_id, 0, fence=1) is None, "a duplicate claimed twice"
        next_fence = repo.retry_step(session, job_id, 0, 1, error="503", code="http_503")
    assert next_fence == 2
    with session_scope() as session:
        run = repo.load_step_run(session, job_id, 0)
        assert run is not None
        # The zombie of fence 1 returns late: nothing changes.
        assert changes.complete_step(session, run, 1, {"late": True}) is None
        assert repo.retry_step(session, job_id, 0, 1, error="x", code="x") is None
        assert not repo.fail_step(session, job_id, 0, 1, error="x", code="x", retryable=False)
        assert changes.claim_step(session, job_id, 0, fence=2) is not None
        advance = changes.complete_step(session, run, 2, {"fresh": True})
        assert advance is not None
        assert not advance.job_finished
    with session_scope() as session:
        job = repo.get_job(session, job_id)
        assert job is not None
        assert job.context == {"one": {"fresh": True}}
        assert job.progress == 50
        assert job.current_step == 1
        # A redelivery of the winning fence after the commit is also a no-op.
        assert changes.complete_step(session, run, 2, {"again": True}) is None
        assert changes.claim_step(session, job_id, 0, fence=2) is None
        step = repo.get_step(session, job_id, 0)
        assert step is not None
        assert step.output == {"fresh": True}
        assert step.attempt == 2


def _claimed_first_step(job_id: uuid.UUID) -> repo.StepRun:
    """The job's first step, claimed under fence 1, as its worker then knows it."""
    with session_scope() as session:
        assert changes.claim_step(session, job_id, 0, fence=1) is not None
    with session_scope() as session:
        run = repo.load_step_run(session, job_id, 0)
    assert run is not None
    return run


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_continuation_locks_its_steps_in_step_order_as_a_cancel_does(
    pending_job, private_postgres
):
    """A cancel locks a job's steps in step order. A continuation that locked the next
    step first, then waited for its own step held by the cancel, would deadlock with
    it as soon as the cancel reached the next step (and one of the two would fail)."""
    import psycopg

    job_id = pending_job
    run = _claimed_first_step(job_id)

    def continue_run() -> Any:
        with statement_scope() as session:
            return changes.complete_and_start_next(session, run, 1, {"ok": True})

    url = private_postgres.replace("postgresql+psycopg://", "postgresql://")
    lock = "SELECT 1 FROM job_step WHERE job_id = %s AND step_index = %s FOR UPDATE"
    waiting = (
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    with psycopg.connect(url) as canceller, psycopg.connect(url, autocommit=True) as watcher:
        canceller.execute(lock, (job_id, 0))
        with ThreadPoolExecutor(1) as pool:
            continued = pool.submit(continue_run)
            wait_until(
                lambda: watcher.execute(waiting).fetchone()[0] > 0,
                10,
                0.02,
                "the continuation to wait for the step the cancel holds",
            )
            canceller.execute(lock, (job_id, 1))  # at once: the continuation holds nothing
            canceller.rollback()
            assert continued.result(timeout=10) is not None


def test_continuation_commits_the_result_and_starts_the_next_step_only_under_its_fence(
    pending_job,
):
    """A worker running the next step itself starts it in the transaction that commits
    this result: a stale result starts nothing, and a next step that moved meanwhile
    leaves the result uncommitted (on PostgreSQL one autocommitted statement changes
    nothing; on SQLite the transaction rolls back)."""
    job_id = pending_job
    run = _claimed_first_step(job_id)
    assert run.next_step_fence == 0

    # A zombie of an older fence: nothing is committed or started.
    with statement_scope() as session:
        stale = dataclasses.replace(run, fence=0)
        assert changes.complete_and_start_next(session, stale, 0, {"late": True}) is None
    with session_scope() as session:
        assert repo.get_step(session, job_id, 1).status == "PENDING"

    # The next step moved (its fence rose): the result is not half-committed.
    moved = dataclasses.replace(run, next_step_fence=7)
    # (pytest.raises outside: the exception must leave the transaction, rolling it back.)
    with pytest.raises(changes.NextStepMoved), statement_scope() as session:
        changes.complete_and_start_next(session, moved, 1, {"ok": True})
    with session_scope() as session:
        assert repo.get_step(session, job_id, 0).status == "RUNNING"
        assert repo.get_step(session, job_id, 1).status == "PENDING"

    with statement_scope() as session:
        continued = changes.complete_and_start_next(session, run, 1, {"ok": True})
        assert continued is not None
        # The seqs of STEP_COMPLETED and the next STEP_STARTED (JOB_CREATED=1, STARTED=2).
        assert continued.events.first_seq == 3
    with session_scope() as session:
        first, second = repo.get_step(session, job_id, 0), repo.get_step(session, job_id, 1)
        job = repo.get_job(session, job_id)
        assert (first.status, first.output) == ("COMPLETED", {"ok": True})
        assert (second.status, second.attempt, second.fence) == ("RUNNING", 1, 1)
        assert second.queued_at == second.started_at
        assert (job.current_step, job.progress, job.last_seq) == (1, 50, 4)
    next_run = continued.next_run
    assert (next_run.step_index, next_run.fence, next_run.context) == (1, 1, {"one": {"ok": True}})
    with session_scope() as session:
        # The started step is RUNNING under its fence: a queued delivery cannot claim it.
        assert changes.claim_step(session, job_id, 1, fence=1) is None
        assert changes.complete_step(session, next_run, 1, {"two": 2}) is not None
    with session_scope() as session:
        assert repo.get_job(session, job_id).status == "COMPLETED"


def _published(pubsub: Any) -> list[dict[str, Any]]:
    """Every payload published on the channel so far."""
    drain_publishes()
    seen = []
    while (message := pubsub.get_message(timeout=0.5)) is not None:
        seen.append(json.loads(message["data"]))
    return seen


def _stored(job_id: uuid.UUID) -> list[tuple[int, str]]:
    with session_scope() as session:
        return [(e.seq, e.type) for e in events_for_job(session, job_id)]


def test_each_step_change_commits_its_job_update_and_events_at_once_under_its_fence(backend):
    """The worker's claim, park and result commit: on PostgreSQL each is one statement
    in autocommit, elsewhere statements in one transaction. Either way a stale or
    duplicate change writes nothing, and the events stored are the events published."""
    with session_scope() as session:
        job_id = create_job(session, _CATALOG, feature_name="pair", input_data={}).job.id
    drain_publishes()  # its JOB_CREATED goes out before the subscription
    pubsub = get_redis().pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(events_channel())
    pubsub.get_message(timeout=1)  # the subscribe confirmation

    def run_of(step_index: int) -> repo.StepRun:
        with statement_scope() as session:
            run = repo.load_step_run(session, job_id, step_index)
        assert run is not None
        return run

    def change(act: Any) -> Any:
        with statement_scope() as session:
            return act(session)

    try:
        first = run_of(0)
        assert change(lambda s: changes.start_step(s, first, 1)) == changes.EventSlot(2, "pair", 0)
        assert change(lambda s: changes.start_step(s, first, 1)) is None, "claimed twice"
        assert change(lambda s: changes.park_step(s, first, {})) is False, "parked while running"
        assert change(lambda s: changes.finish_step(s, first, 0, {"late": True})) is None
        finished = change(lambda s: changes.finish_step(s, first, 1, {"ok": True}))
        assert finished == changes.Finished(
            job_finished=False, next_queue="unconsumed", next_fence=1
        )
        assert change(lambda s: changes.finish_step(s, first, 1, {"again": True})) is None

        second = run_of(1)
        assert (second.status, second.fence, second.context) == ("QUEUED", 1, {"one": {"ok": True}})

        # A delivery naming its service parks and claims the step without reading it
        # first (the second step's park and claim take that form here): not under
        # another service, queue or fence, and not twice.
        def named(service: str, queue: str, fence: int = 1) -> changes.NamedStep:
            return changes.NamedStep(job_id, 1, fence, service, queue)

        def park_named(*names: Any, fence: int = 1) -> int | None:
            return change(lambda s: changes.park_named_step(s, named(*names, fence), {"limit": 1}))

        assert park_named("one", "unconsumed") is None
        assert park_named("two", "elsewhere") is None
        assert park_named("two", "unconsumed", fence=0) is None, "a stale fence parked"
        assert park_named("two", "unconsumed") == 1
        assert park_named("two", "unconsumed") is None, "parked twice"
        assert change(lambda s: changes.park_step(s, second, {"limit": 1})) is False
        assert change(lambda s: changes.start_step(s, second, 0)) is None, "a stale fence claimed"
        assert change(lambda s: changes.start_named_step(s, named("one", "unconsumed"))) is None
        assert change(lambda s: changes.start_named_step(s, named("two", "elsewhere"))) is None
        claimed = change(lambda s: changes.start_named_step(s, named("two", "unconsumed")))
        assert claimed == dataclasses.replace(second, status="RUNNING", job_status="RUNNING")
        assert change(lambda s: changes.start_named_step(s, named("two", "unconsumed"))) is None
        assert change(
            lambda s: changes.finish_step(s, run_of(1), 1, {"two": 2})
        ) == changes.Finished(job_finished=True)
        published = _published(pubsub)
    finally:
        pubsub.close()

    expected = [
        (1, "JOB_CREATED"),
        (2, "STEP_STARTED"),
        (3, "STEP_COMPLETED"),
        (4, "WAITING_FOR_SLOT"),
        (5, "STEP_STARTED"),
        (6, "STEP_COMPLETED"),
        (7, "JOB_COMPLETED"),
    ]
    assert _stored(job_id) == expected
    # Subscribed after the job was created. SQLite publishes the events themselves;
    # PostgreSQL only wakes the hubs, which read them from the log.
    if backend == "postgresql":
        assert published, "no wake-up"
        assert all(payload == json.loads(WAKE_UP) for payload in published), published
    else:
        assert [(event["seq"], event["type"]) for event in published] == expected[1:]
        # The events whose attempt the statement read from the step row publish that too.
        assert [(e["step_name"], e["attempt"]) for e in published[2:4]] == [("two", 1)] * 2
    with session_scope() as session:
        job = repo.get_job(session, job_id)
        steps = repo.get_steps(session, job_id)
        events = events_for_job(session, job_id)
    assert (job.status, job.progress, job.last_seq) == ("COMPLETED", 100, 7)
    assert job.context == {"one": {"ok": True}, "two": {"two": 2}}
    assert [(s.status, s.output) for s in steps] == [
        ("COMPLETED", {"ok": True}),
        ("COMPLETED", {"two": 2}),
    ]
    assert events[2].data == {"output": {"ok": True}}
    assert (events[3].step_name, events[3].attempt, events[3].data) == ("two", 1, {"limit": 1})
    assert (events[4].step_name, events[4].attempt, events[4].data) == ("two", 1, {})
    assert [e.progress for e in events] == [0, 0, 50, 50, 50, 100, 100]


def test_racing_claims_of_one_delivery_start_the_step_once(backend):
    """Eight copies of one delivery claim at the same moment: one STEP_STARTED."""
    with session_scope() as session:
        job_id = create_job(session, _CATALOG, feature_name="pair", input_data={}).job.id
    with statement_scope() as session:
        run = repo.load_step_run(session, job_id, 0)
    barrier = threading.Barrier(8)

    def claim(_: int) -> bool:
        barrier.wait()
        with statement_scope() as session:
            return changes.start_step(session, run, 1) is not None

    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(claim, range(8)))
    assert won.count(True) == 1
    assert [t for _, t in _stored(job_id)] == ["JOB_CREATED", "STEP_STARTED"]


def _redeliver(job_id: str, step_index: int, fence: int, service: str) -> None:
    """The step's message again: as the gateway sends it (naming its service, so the
    worker takes the slot first) and as a message naming none (claimed read-first)."""
    enqueue_step(job_id, step_index, fence, "default", service=service)
    enqueue_step(job_id, step_index, fence, "default")


@pytest.mark.slow
def test_duplicate_message_runs_the_step_once(stack, db):
    api, sim = stack["api"], stack["sim"]
    sim.behave("flaky", latency_ms=800)
    job_id = api.post("/api/v1/jobs", json={"feature_name": "flaky_then_mail"}).json()["job_id"]
    _redeliver(job_id, 0, 1, "flaky")  # the same delivery, again
    job = wait_for_job(api, job_id)
    assert job["status"] == "COMPLETED"
    _redeliver(job_id, 0, 1, "flaky")  # and late redeliveries after the commit
    _redeliver(job_id, 1, 1, "email_notifier")
    time.sleep(1.5)
    assert len(sim.requests("flaky", job_id)) == 1
    assert len(sim.requests("email_notifier", job_id)) == 1
    types = _event_types(uuid.UUID(job_id))
    assert types.count("STEP_COMPLETED") == 2
    assert types.count("JOB_COMPLETED") == 1
    assert api.get(f"/api/v1/jobs/{job_id}").json()["updated_at"] == job["updated_at"]


@pytest.mark.slow
def test_old_attempt_delivered_after_a_newer_one_started_changes_nothing(stack, db):
    api, sim = stack["api"], stack["sim"]
    sim.behave("flaky", script=[{"status": 503}, {"status": 200, "delay_ms": 1500}])
    job_id = api.post("/api/v1/jobs", json={"feature_name": "flaky_then_mail"}).json()["job_id"]

    def second_attempt_running():
        step = api.get(f"/api/v1/jobs/{job_id}").json()["steps"][0]
        return step["attempt"] == 2 and step["status"] == "RUNNING"

    wait_until(second_attempt_running, 20, message="attempt 2 to run")
    _redeliver(job_id, 0, 1, "flaky")  # the old attempt's message, redelivered
    _redeliver(job_id, 0, 2, "flaky")  # and a duplicate of the running one
    job = wait_for_job(api, job_id)
    assert job["status"] == "COMPLETED"
    time.sleep(1.0)
    assert [c["attempt"] for c in sim.requests("flaky", job_id)] == [1, 2]
    assert len(sim.requests("email_notifier", job_id)) == 1
    types = _event_types(uuid.UUID(job_id))
    assert types.count("STEP_STARTED") == 3  # attempt 1, attempt 2, email
    assert types.count("STEP_COMPLETED") == 2


_TRIO = parse_catalog(
    """
services:
  one: {kind: http, url: "http://127.0.0.1:9/one", queue: unconsumed}
features:
  trio: {steps: [one, one, one]}
""",
    "<test>",
)


def test_a_continued_step_knows_the_fence_of_the_step_after_it(backend):
    """So that it too can be continued in the worker: on SQLite as on PostgreSQL."""
    with session_scope() as session:
        job_id = create_job(session, _TRIO, feature_name="trio", input_data={}).job.id
    with statement_scope() as session:
        run = repo.load_step_run(session, job_id, 0)
        assert run is not None
        assert changes.start_step(session, run, run.fence) is not None
    assert run.next_step_fence == 0
    for step_index in (1, 2):
        with session_scope() as session:
            continued = changes.complete_and_start_next(session, run, run.fence, {})
        assert continued is not None
        run = continued.next_run
        assert run.step_index == step_index
        assert run.next_step_fence == (0 if step_index == 1 else None)
        if step_index == 1:
            with session_scope() as session:
                assert repo.get_step(session, job_id, 2).fence == run.next_step_fence


def test_a_claim_is_known_by_its_own_token_only(pending_job):
    """A delivery that lost its claim's answer asks whether the step runs under its own
    claim: yes for the token its claim carried; no for a duplicate's token, and no once
    the step has moved on (its fence is another's)."""
    job_id = pending_job
    with session_scope() as session:
        assert changes.claim_step(session, job_id, 0, fence=1, claim_token="mine") is not None
    with session_scope() as session:
        assert changes.claimed_by(session, job_id, 0, 1, "mine")
        assert not changes.claimed_by(session, job_id, 0, 1, "a duplicate's")
        assert not changes.claimed_by(session, job_id, 0, 2, "mine"), "under another fence"
        assert repo.retry_step(session, job_id, 0, 1, error="503", code="http_503") == 2
    with session_scope() as session:
        assert not changes.claimed_by(session, job_id, 0, 1, "mine"), "the step moved on"
        assert changes.claim_step(session, job_id, 0, fence=2, claim_token="next") is not None
    with session_scope() as session:
        assert changes.claimed_by(session, job_id, 0, 2, "next")
        assert not changes.claimed_by(session, job_id, 0, 2, "mine")
