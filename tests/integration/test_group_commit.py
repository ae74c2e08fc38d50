"""Group commit of new jobs (app/jobs/admission.py) on the real database and broker: a
batch commits every job and then sends each first step once; a job whose rows the
database refuses fails alone and is never sent; a batch the database cannot take
sends nothing. Concurrent creates through the API are tests/e2e/test_api_concurrency.py's,
a batch while the broker is away tests/e2e/test_broker_outage_recovery.py's."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from app.catalog import Catalog, parse_catalog
from app.db import dispose_db, init_db, session_scope
from app.events.log import events_for_job
from app.jobs import repository as repo
from app.jobs.admission import commit_and_send
from app.jobs.job_insert import NewJob
from app.jobs.service import draft_job
from tests.lease_support import queued_deliveries


@pytest.fixture
def queue() -> str:
    """A queue of this test's own, which no worker consumes."""
    return f"admission-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def catalog(queue: str) -> Catalog:
    return parse_catalog(
        f"""
services:
  one: {{kind: http, url: "http://127.0.0.1:9/one", queue: {queue}}}
  two: {{kind: http, url: "http://127.0.0.1:9/two", queue: {queue}}}
features:
  pair: {{steps: [one, two]}}
""",
        "<test>",
    )


def drafts(catalog: Catalog, count: int) -> list[NewJob]:
    return [draft_job(catalog, feature_name="pair", input_data={"n": n}) for n in range(count)]


def test_a_batch_commits_every_job_then_sends_each_first_step_once(backend, catalog, queue):
    jobs = drafts(catalog, 5)
    assert commit_and_send(jobs) == [None] * 5
    assert sorted(queued_deliveries(queue)) == sorted((str(new.job.id), 0, 1) for new in jobs)
    with session_scope() as session:
        for new in jobs:
            assert [s.status for s in repo.get_steps(session, new.job.id)] == ["QUEUED", "PENDING"]
            assert [e.type for e in events_for_job(session, new.job.id)] == ["JOB_CREATED"]


def test_a_job_the_database_refuses_fails_alone_and_is_not_sent(backend, catalog, queue):
    (taken,) = drafts(catalog, 1)
    assert commit_and_send([taken]) == [None]
    queued_deliveries(queue)  # drained
    jobs = drafts(catalog, 3)
    # The middle job reuses a committed job's id: its rows are refused, with the batch's.
    clash = jobs[1]
    clash.job.id = taken.job.id
    for step in clash.steps:
        step["job_id"] = taken.job.id

    outcomes = commit_and_send(jobs)

    assert outcomes[0] is None
    assert outcomes[2] is None
    assert isinstance(outcomes[1], IntegrityError)
    assert sorted(queued_deliveries(queue)) == sorted(
        (str(new.job.id), 0, 1) for new in (jobs[0], jobs[2])
    )


@pytest.fixture
def database_away(db: None) -> Iterator[None]:
    """This process's engine pointed at a port nothing listens on."""
    dispose_db()
    init_db("postgresql+psycopg://postgres@127.0.0.1:9/nowhere?connect_timeout=2")
    try:
        yield
    finally:
        dispose_db()
        init_db()


def test_a_batch_the_database_cannot_take_sends_nothing(database_away, catalog, queue):
    outcomes = commit_and_send(drafts(catalog, 3))
    assert all(isinstance(outcome, OperationalError) for outcome in outcomes)
    assert queued_deliveries(queue) == []
