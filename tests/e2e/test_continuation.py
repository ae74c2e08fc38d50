"""A worker that consumes the queue of a job's next step starts that step in the
transaction that commits the current result and runs it itself, without a broker
round trip; a worker that dies in such a step loses no work (Beat restarts it)."""

from __future__ import annotations

import uuid

import pytest

from app.db import session_scope
from app.jobs.repository import get_step
from app.queues import queue_depths
from tests.e2e.operator_support import event_types, submit
from tests.e2e.test_recovery import start_victim
from tests.harness import wait_for_job, wait_until
from tests.lease_support import beat_running

pytestmark = pytest.mark.slow


def _step(job_id: str, index: int):  # noqa: ANN202 - a detached ORM row
    with session_scope() as session:
        step = get_step(session, uuid.UUID(job_id), index)
        assert step is not None
        return step


def test_next_step_runs_in_the_worker_without_a_broker_message(sim, api, workers, db):
    from worker.celery_app import celery_app

    sim.behave("fragile", latency_ms=1500)
    start_victim(workers)  # the only consumer of `default`
    try:
        job_id = submit(api, "fragile_job")  # fragile → after_fragile, both on `default`
        wait_until(lambda: sim.stats("fragile")["in_flight"] == 1, 30, 0.02, "the fragile call")
        # From now on the worker takes nothing from the broker.
        celery_app.control.cancel_consumer("default", reply=True, timeout=5)
        job = wait_for_job(api, job_id, timeout=30)
    finally:
        workers.stop("victim")

    assert job["status"] == "COMPLETED", job
    assert len(sim.requests("after_fragile", job_id)) == 1
    assert queue_depths(["default"]) == {"default": 0}, "the next step went through the broker"
    second = _step(job_id, 1)
    assert second.queued_at == second.started_at, "started with the previous commit"
    assert event_types(job_id) == [
        "JOB_CREATED",
        "STEP_STARTED",
        "STEP_COMPLETED",
        "STEP_STARTED",
        "STEP_COMPLETED",
        "JOB_COMPLETED",
    ]


def test_worker_killed_in_a_continued_step_loses_nothing(sim, api, workers, env, log_dir, db):
    """The continued step has no broker message of its own: its lease expires, Beat
    puts it back, another worker runs it, and the step before it is not run again."""
    sim.behave("fragile", script=[{"delay_ms": 60_000}])  # the first call hangs
    victim = start_victim(workers)
    job_id = submit(api, "noop_then_fragile")  # noop → fragile, both on `default`
    wait_until(lambda: sim.stats("fragile")["in_flight"] == 1, 30, 0.02, "the fragile call")
    continued = _step(job_id, 1)
    assert continued.queued_at == continued.started_at, "fragile was not continued in-process"
    workers.start("default")  # the rescuer
    with beat_running(env, log_dir):
        victim.kill()
        workers.procs.pop("victim")
        job = wait_for_job(api, job_id, timeout=60)

    assert job["status"] == "COMPLETED", job
    assert [r["attempt"] for r in sim.requests("fragile", job_id)] == [1, 2]
    assert job["steps"][0]["attempt"] == 1
    assert event_types(job_id).count("STEP_COMPLETED") == 2, "a step was committed twice"
