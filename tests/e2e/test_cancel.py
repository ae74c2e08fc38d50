"""Cancel: the job is CANCELLED at once and stays so; a running step's call is
interrupted and its result never recorded, a queued or waiting step is never called,
its lease or slot is given back. (tests/e2e/test_cancel_interrupts.py times it.)"""

from __future__ import annotations

import uuid

import pytest

from app.catalog import parse_catalog
from app.db import session_scope
from app.jobs import operator_actions
from app.jobs import repository as repo
from app.jobs import step_changes as changes
from app.jobs.runner import Outcome, run_step
from app.jobs.service import create_job
from app.leases import LeaseId, LeaseSemaphore, get_semaphore
from tests.e2e.operator_support import (
    assert_error,
    event_types,
    service_usage,
    step_fence,
    submit,
    wait_for_step,
)
from tests.harness import wait_for_job, wait_until

# A queue no worker consumes: deliveries are made by hand, after the cancel.
_CATALOG = parse_catalog(
    """
services:
  parked: {kind: http, url: "http://127.0.0.1:9/parked", queue: unconsumed, concurrency: 1}
features:
  parked_job: {steps: [parked, parked]}
""",
    "<test>",
)


@pytest.mark.slow
def test_cancel_while_a_step_runs_stops_its_call_and_frees_its_lease(stack, db):
    api, sim = stack["api"], stack["sim"]
    sim.behave("fast_chat_llm", latency_ms=1500)
    job_id = submit(api, "four_steps")
    wait_for_step(api, job_id, 1, "RUNNING")
    wait_until(lambda: sim.requests("fast_chat_llm", job_id), 15, message="the call in flight")

    response = api.post(f"/api/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "CANCELLED"
    assert response.json()["steps"][1]["status"] == "CANCELLED"

    # The call is interrupted (the service sees its caller go: 499), never answered;
    # the worker then gives its lease back.
    assert sim.requests("fast_chat_llm", job_id)[0]["status"] != 200, "cancelled too late"
    wait_until(lambda: sim.requests("fast_chat_llm", job_id)[0]["status"] == 499, 15)
    wait_until(lambda: service_usage(api, "fast_chat_llm")["leases_in_use"] == 0, 15)
    job = api.get(f"/api/v1/jobs/{job_id}").json()
    assert job["status"] == "CANCELLED", job
    assert job["steps"][1]["status"] == "CANCELLED"
    assert job["steps"][1]["output"] is None
    assert "fast_chat_llm" not in job["outputs"]
    assert sim.requests("flaky", job_id) == [], "the next step was called after cancel"
    events = event_types(job_id)
    assert events[-1] == "JOB_CANCELLED"
    assert "JOB_COMPLETED" not in events
    assert events.count("STEP_COMPLETED") == 1  # prompt_enhancer only

    assert_error(api.post(f"/api/v1/jobs/{job_id}/cancel"), 409, "job_not_cancellable")
    unknown = "00000000-0000-4000-8000-000000000000"
    assert_error(api.post(f"/api/v1/jobs/{unknown}/cancel"), 404, "job_not_found")


@pytest.mark.slow
def test_cancel_of_a_finished_job_is_a_conflict(stack):
    api = stack["api"]
    job = wait_for_job(api, submit(api, "python_job", {"text": "two words"}))
    assert job["status"] == "COMPLETED"
    assert_error(api.post(f"/api/v1/jobs/{job['job_id']}/cancel"), 409, "job_not_cancellable")
    assert api.get(f"/api/v1/jobs/{job['job_id']}").json() == job


def _parked_job() -> tuple[uuid.UUID, int]:
    with session_scope() as session:
        job = create_job(session, _CATALOG, feature_name="parked_job", input_data={}).job
    return job.id, step_fence(str(job.id), 0)


def _cancel(job_id: uuid.UUID) -> None:
    with session_scope() as session:
        operator_actions.cancel_job(session, job_id)


def test_a_queued_delivery_arriving_after_cancel_is_dropped(db):
    job_id, fence = _parked_job()
    _cancel(job_id)

    assert run_step(job_id, 0, fence) == Outcome.STALE
    with session_scope() as session:
        steps = repo.get_steps(session, job_id)
        assert [s.status for s in steps] == ["CANCELLED", "PENDING"]
        assert steps[0].started_at is None, "the cancelled step was started"
    assert event_types(str(job_id)) == ["JOB_CREATED", "JOB_CANCELLED"]


def test_cancel_takes_a_waiting_step_off_the_wait_list(db):
    job_id, fence = _parked_job()
    semaphore = get_semaphore()
    holder = LeaseId(str(uuid.uuid4()), 0, 1, "unconsumed")
    waiter = LeaseId(str(job_id), 0, fence, "unconsumed")
    assert semaphore.acquire("parked", holder, 30, 1) == LeaseSemaphore.ACQUIRED
    try:
        assert semaphore.acquire("parked", waiter, 30, 1) == LeaseSemaphore.FULL
        with session_scope() as session:
            assert changes.mark_waiting(session, job_id, 0, fence)
        assert semaphore.usage("parked").waiting == 1

        _cancel(job_id)

        assert semaphore.usage("parked").waiting == 0
        # The freed slot goes to nobody: the cancelled step is not woken.
        assert semaphore.release("parked", holder, 30, 1) == []
    finally:
        semaphore.release("parked", holder, 30, 1)
    assert semaphore.usage("parked").in_use == 0
