"""The outbox on the real database and broker: a step marked unsent (as when the broker
refused its delivery) is sent once however many sweeps race for it, keeps a retry's
delay, is neither failed as stuck nor requeued by the idle sweep while it waits, and
a mark the step has moved past is forgotten, not sent.

The broker's refusal itself, with a real Redis stopped and started again, is the
end-to-end tests' (tests/e2e/test_broker_outage_recovery.py)."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta

import pytest

from app.catalog import Catalog, parse_catalog
from app.db import session_scope
from app.jobs import outbox
from app.jobs import outbox_repository as outbox_repo
from app.jobs import recovery_repository as recovery_repo
from app.jobs import repository as repo
from app.jobs import step_changes as changes
from app.jobs.operator_actions import cancel_job
from app.jobs.service import create_job
from app.models import utcnow
from tests.lease_support import queued_deliveries, queued_messages


@pytest.fixture
def queue() -> str:
    """A queue of this test's own, which no worker consumes."""
    return f"outbox-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def catalog(queue: str) -> Catalog:
    return parse_catalog(
        f"""
services:
  one: {{kind: http, url: "http://127.0.0.1:9/one", queue: {queue}}}
features:
  single: {{steps: [one]}}
""",
        "<test>",
    )


def new_job(catalog: Catalog, queue: str) -> uuid.UUID:
    """A job whose first step the broker took (that delivery drained), marked unsent
    as if it had not: step 0, fence 1, due now."""
    with session_scope() as session:
        job_id = create_job(session, catalog, feature_name="single", input_data={}).job.id
    assert queued_deliveries(queue) == [(str(job_id), 0, 1)]
    assert mark(job_id, utcnow())
    return job_id


def mark(job_id: uuid.UUID, due_at: datetime, fence: int = 1) -> bool:
    with session_scope() as session:
        return outbox_repo.mark_unsent(session, job_id, 0, fence, due_at)


def updated_at(job_id: uuid.UUID) -> datetime:
    with session_scope() as session:
        job = repo.get_job(session, job_id)
        assert job is not None
        return job.updated_at


def test_a_marked_step_is_sent_once_whatever_the_sweeps_racing_for_it(backend, catalog, queue):
    jobs = [new_job(catalog, queue) for _ in range(3)]
    before = {job_id: updated_at(job_id) for job_id in jobs}
    sent: list[int] = []

    def sweep() -> None:
        sent.append(outbox.sweep_unsent())

    sweepers = [threading.Thread(target=sweep) for _ in range(4)]
    for thread in sweepers:
        thread.start()
    for thread in sweepers:
        thread.join(timeout=30)

    assert sum(sent) == 3, sent
    assert sorted(queued_deliveries(queue)) == sorted((str(job_id), 0, 1) for job_id in jobs)
    assert outbox.sweep_unsent() == 0
    for job_id in jobs:
        # The job's stuck clock starts again from the send.
        assert updated_at(job_id) > before[job_id]


def test_a_retry_sent_late_keeps_the_rest_of_its_delay(backend, catalog, queue):
    job_id = new_job(catalog, queue)
    due_at = utcnow() + timedelta(seconds=30)
    assert mark(job_id, due_at)

    assert outbox.sweep_unsent() == 1
    (message,) = queued_messages(queue)
    eta = datetime.fromisoformat(message.headers["eta"])
    assert abs((eta - due_at).total_seconds()) < 1, (eta, due_at)


def test_a_job_waiting_for_an_unsent_step_is_neither_stuck_nor_requeued(backend, catalog, queue):
    job_id = new_job(catalog, queue)
    later = utcnow() + timedelta(hours=1)
    with session_scope() as session:
        assert job_id not in recovery_repo.find_stuck_job_ids(session, later, 500)
        idle = recovery_repo.find_idle_queued_steps(session, later, 500)
        assert job_id not in {step.job_id for step in idle}

    assert outbox.sweep_unsent() == 1
    with session_scope() as session:
        # Sent: the job's clock runs again, from the send.
        just_before = utcnow() - timedelta(seconds=5)
        assert job_id not in recovery_repo.find_stuck_job_ids(session, just_before, 500)
        assert job_id in recovery_repo.find_stuck_job_ids(session, later, 500)


def test_a_mark_the_step_moved_past_is_forgotten_not_sent(backend, catalog, queue):
    cancelled = new_job(catalog, queue)
    with session_scope() as session:
        cancel_job(session, cancelled)
    claimed = new_job(catalog, queue)
    with session_scope() as session:
        # A delivery that did arrive claimed it: the mark no longer stands.
        run = repo.load_step_run(session, claimed, 0)
        assert run is not None
        assert changes.start_step(session, run, 1) is not None

    assert outbox.sweep_unsent() == 0
    assert queued_deliveries(queue) == []
    with session_scope() as session:
        for job_id in (cancelled, claimed):
            step = repo.get_step(session, job_id, 0)
            assert step is not None
            assert (step.unsent_fence, step.unsent_due_at) == (None, None)
        # A step that no longer waits for the delivery is not marked at all.
        assert not outbox_repo.mark_unsent(session, claimed, 0, 1, utcnow())
