"""The durable event log under concurrent writers, on the real database.

Live streams rest on two properties of the log: a job's `seq` rises by one with no
gap or repeat, and global ids become visible in id order, so a reader that resumes
after the last id it saw never skips an event committed later with a smaller id.
Events are published only once their transaction has committed.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from app.catalog import parse_catalog
from app.db import new_session, session_scope
from app.events.log import append_event, events_after_id, events_for_job, latest_event_id
from app.events.publisher import events_channel
from app.events.types import EventType
from app.jobs.service import create_job
from app.redis_client import get_redis
from tests.event_clients import EVENT_FIELDS

# A queue no worker consumes: nothing but these tests writes to the jobs.
_CATALOG = parse_catalog(
    """
services:
  idle: {kind: http, url: "http://127.0.0.1:9/idle", queue: unconsumed}
features:
  idle_job: {steps: [idle]}
""",
    "<test>",
)


def new_job() -> uuid.UUID:
    with session_scope() as session:
        return create_job(session, _CATALOG, feature_name="idle_job", input_data={}).job.id


def append_and_linger(job_id: uuid.UUID, linger_s: float) -> None:
    """One transaction that appends an event, then stays open while others commit."""
    with session_scope() as session:
        append_event(session, job_id, EventType.JOB_RESUMED, data={"by": "test"})
        time.sleep(linger_s)


def test_seq_rises_by_one_per_job_under_concurrent_writers(db):
    job_id = new_job()  # seq 1: JOB_CREATED
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda _: append_and_linger(job_id, random.uniform(0, 0.003)), range(80)))
    with session_scope() as session:
        events = events_for_job(session, job_id)
        assert [e.seq for e in events] == list(range(1, 82))
        assert [e.id for e in events] == sorted(e.id for e in events)


def test_a_reader_resuming_after_its_last_id_never_skips_an_event(db):
    jobs = [new_job() for _ in range(6)]
    with session_scope() as session:
        start = latest_event_id(session)
    writers_done = threading.Event()
    seen: list[int] = []

    def tail() -> None:
        # What the event hub does: read after the cursor, move the cursor to the last id.
        cursor = start
        while True:
            last_round = writers_done.is_set()
            with session_scope() as session:
                batch = [e.id for e in events_after_id(session, cursor, 1000)]
            seen.extend(batch)
            cursor = batch[-1] if batch else cursor
            if last_round and not batch:
                return

    reader = threading.Thread(target=tail)
    reader.start()
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(
            pool.map(
                lambda _: append_and_linger(random.choice(jobs), random.uniform(0, 0.004)),
                range(240),
            )
        )
    writers_done.set()
    reader.join(30)
    with session_scope() as session:
        committed = [e.id for e in events_after_id(session, start, 1000)]
    assert len(committed) == 240
    assert seen == committed, "the tail skipped or repeated an event"


def test_an_event_is_published_only_after_its_transaction_commits(db):
    job_id = new_job()
    pubsub = get_redis().pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(events_channel())
    try:
        pubsub.get_message(timeout=1)  # the subscribe confirmation

        doomed = new_session()
        append_event(doomed, job_id, EventType.JOB_RESUMED)
        doomed.rollback()
        doomed.close()
        with session_scope() as session:
            append_event(session, job_id, EventType.JOB_RESUMED, data={"n": 2})
            assert pubsub.get_message(timeout=0.3) is None, "published before the commit"
        message = pubsub.get_message(timeout=5)
        assert pubsub.get_message(timeout=0.3) is None, "the rolled-back event was published"
    finally:
        pubsub.close()

    assert message is not None
    published = json.loads(message["data"])
    assert set(published) == EVENT_FIELDS
    assert published["seq"] == 2, "the rolled-back event must not use up a seq"
    assert published["data"] == {"n": 2}
    with session_scope() as session:
        assert [e.seq for e in events_for_job(session, job_id)] == [1, 2]


def test_event_types_are_the_documented_ones():
    assert {t.value for t in EventType} == {
        "JOB_CREATED", "WAITING_FOR_SLOT", "STEP_STARTED", "STEP_RETRYING", "STEP_COMPLETED",
        "JOB_COMPLETED", "JOB_ERROR", "JOB_CANCELLED", "JOB_RESUMED",
    }  # fmt: skip
