"""The durable event log under concurrent writers and sequencers, on the real database.

Live streams rest on two properties of the log: a job's `seq` rises by one with no
gap or repeat, and global ids are handed out in commit order, contiguously, so a
reader that resumes after the last id it saw never skips an event committed later.
On PostgreSQL writers insert without an id and the sequencer numbers committed
events; on SQLite the insert numbers them. Each property runs on both where it
applies. Events are published only once their transaction has committed, by a
per-process thread that the commit does not wait on.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
import redis
from sqlalchemy import select

from app.catalog import parse_catalog
from app.db import new_session, session_scope, statement_scope
from app.events import publisher
from app.events.log import append_event, events_after_id, events_for_job, latest_event_id
from app.events.publisher import WAKE_UP, drain_publishes, events_channel
from app.events.sequencer import read_job_events, sequence_events
from app.events.types import EventOut, EventType
from app.jobs import repository as repo
from app.jobs import step_changes as changes
from app.jobs.service import create_job
from app.models import JobEvent
from app.redis_client import get_redis
from tests.event_clients import EVENT_FIELDS
from tests.harness import wait_until

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


@contextmanager
def subscribed() -> Iterator[redis.client.PubSub]:
    """A subscription to the events channel, confirmed before the block runs."""
    pubsub = get_redis().pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(events_channel())
    try:
        pubsub.get_message(timeout=1)  # the subscribe confirmation
        yield pubsub
    finally:
        pubsub.close()


def new_job(*, published: bool = True) -> uuid.UUID:
    """A job, by default with its JOB_CREATED already published (before a test
    subscribes)."""
    with session_scope() as session:
        job_id = create_job(session, _CATALOG, feature_name="idle_job", input_data={}).job.id
    if published:
        drain_publishes()
    return job_id


def write_while_running(
    threads: list[threading.Thread],
    writers_done: threading.Event,
    write: Callable[[], None],
    transactions: int = 240,
) -> None:
    """Start `threads`, run `write` that many times from concurrent writers, then set
    `writers_done` and wait for the threads to finish."""
    for thread in threads:
        thread.start()
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda _: write(), range(transactions)))
    finally:
        writers_done.set()
        for thread in threads:
            thread.join(30)


def append_and_linger(job_id: uuid.UUID, linger_s: float, events: int = 1) -> None:
    """One transaction that appends events, then stays open while others commit."""
    with session_scope() as session:
        for _ in range(events):
            append_event(session, job_id, EventType.JOB_RESUMED, data={"by": "test"})
        time.sleep(linger_s)


def sequence_all() -> list[EventOut]:
    """What an idle sequencer leaves behind: every committed event numbered."""
    numbered: list[EventOut] = []
    while batch := sequence_events():
        numbered.extend(batch)
    return numbered


def all_ids() -> list[int | None]:
    with session_scope() as session:
        return list(session.scalars(select(JobEvent.id).order_by(JobEvent.ingest_id)))


def assert_ids_contiguous_from_1() -> None:
    ids = [i for i in all_ids() if i is not None]
    assert sorted(ids) == list(range(1, len(ids) + 1)), "ids repeat or leave a gap"


def assert_job_ids_follow_seq(job_id: uuid.UUID) -> None:
    with session_scope() as session:
        events = events_for_job(session, job_id)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        ids = [e.id for e in events]
    assert None not in ids
    assert ids == sorted(ids), "a job's ids must rise with its seq"


def test_seq_rises_by_one_per_job_under_concurrent_writers(backend):
    job_id = new_job()  # seq 1: JOB_CREATED
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda _: append_and_linger(job_id, random.uniform(0, 0.003)), range(80)))
    sequence_all()
    with session_scope() as session:
        assert [e.seq for e in events_for_job(session, job_id)] == list(range(1, 82))
    assert_job_ids_follow_seq(job_id)


def test_writers_and_sequencers_at_once_number_every_event_once_in_order(backend):
    jobs = [new_job() for _ in range(6)]
    writers_done = threading.Event()
    batches: list[list[EventOut]] = []

    def sequence_until_writers_are_done() -> None:
        while not writers_done.is_set():
            batch = sequence_events(limit=random.randint(1, 20))
            if batch:
                batches.append(batch)
            else:
                time.sleep(0.001)

    sequencers = [threading.Thread(target=sequence_until_writers_are_done) for _ in range(4)]
    write_while_running(
        sequencers,
        writers_done,
        lambda: append_and_linger(
            random.choice(jobs), random.uniform(0, 0.004), events=random.randint(1, 2)
        ),
    )
    if backend == "sqlite":
        assert batches == [], "SQLite numbers events at insert: the sequencer has nothing to do"
        assert None not in all_ids()
    batches.append(sequence_all())

    assert None not in all_ids()
    assert_ids_contiguous_from_1()
    for job_id in jobs:
        assert_job_ids_follow_seq(job_id)
    handed_out = [event.id for batch in batches for event in batch]
    assert len(handed_out) == len(set(handed_out)), "two sequencers gave out the same id"
    for batch in filter(None, batches):
        ids = [event.id for event in batch]
        assert ids == list(range(ids[0], ids[0] + len(ids))), "a batch must be contiguous"


def test_a_reader_that_sequences_then_reads_after_its_cursor_never_skips_an_event(backend):
    jobs = [new_job() for _ in range(6)]
    sequence_all()
    with session_scope() as session:
        start = latest_event_id(session)
    writers_done = threading.Event()
    seen: list[int] = []

    def tail() -> None:
        # What the event hub does: sequence, read after the cursor, move the cursor.
        cursor = start
        while True:
            last_round = writers_done.is_set()
            sequence_events()
            with session_scope() as session:
                batch = [e.id for e in events_after_id(session, cursor, 1000)]
            seen.extend(i for i in batch if i is not None)
            cursor = seen[-1] if seen else cursor
            if last_round and not batch:
                return

    def other_sequencer() -> None:
        # Another API process: it numbers events the tail then only finds in the log.
        while not writers_done.is_set():
            sequence_events(limit=random.randint(1, 5))
            time.sleep(random.uniform(0, 0.002))

    threads = [threading.Thread(target=tail), threading.Thread(target=other_sequencer)]
    write_while_running(
        threads,
        writers_done,
        lambda: append_and_linger(random.choice(jobs), random.uniform(0, 0.004)),
    )
    with session_scope() as session:
        committed = [e.id for e in events_after_id(session, start, 1000)]
    assert len(committed) == 240
    assert seen == committed, "the tail skipped or repeated an event"


def test_four_sequencers_at_once_hand_out_unique_contiguous_ids(backend):
    if backend == "sqlite":
        assert sequence_events() == []
        return
    jobs = [new_job() for _ in range(4)]
    sequence_all()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda n: append_and_linger(jobs[n % 4], 0, events=5), range(80)))
    start = threading.Barrier(4)
    batches: list[list[int]] = []

    def sequence_until_none_left() -> None:
        start.wait(10)
        while batch := sequence_events(limit=7):
            batches.append([event.id for event in batch])

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda _: sequence_until_none_left(), range(4)))

    handed_out = sorted(i for batch in batches for i in batch)
    assert len(handed_out) == len(set(handed_out)), "two sequencers gave out the same id"
    assert len(batches) > 4, "the sequencers should have taken turns"
    for batch in batches:
        assert batch == list(range(batch[0], batch[0] + len(batch)))
    assert None not in all_ids()
    assert_ids_contiguous_from_1()
    for job_id in jobs:
        assert_job_ids_follow_seq(job_id)


def test_reads_never_show_an_event_without_its_id(backend, monkeypatch):
    # No wake-up for an event hub that may be running in this test run: the events
    # stay unnumbered (until its one-second poll) unless the read numbers them.
    monkeypatch.setattr("app.events.log.publish_after_commit", lambda events: None)
    job_id = new_job()
    for _ in range(3):
        append_and_linger(job_id, 0, events=2)
    with session_scope() as session:
        waiting = [e.seq for e in events_for_job(session, job_id) if e.id is None]
        # Reads by id pass over events not numbered yet; they come after the cursor later.
        assert None not in [e.id for e in events_after_id(session, 0, 100_000)]
    if backend == "sqlite":
        assert waiting == []

    page = read_job_events(job_id, after_seq=2, limit=3)  # numbers the job's events first
    assert [e.seq for e in page] == [3, 4, 5]
    full = read_job_events(job_id)
    assert [e.seq for e in full] == list(range(1, 8))
    ids = [e.id for e in full]
    assert ids == sorted(ids)
    assert_ids_contiguous_from_1()


def test_an_event_is_published_only_after_its_transaction_commits(backend):
    job_id = new_job()
    with subscribed() as pubsub:
        doomed = new_session()
        append_event(doomed, job_id, EventType.JOB_RESUMED)
        doomed.rollback()
        doomed.close()
        with session_scope() as session:
            append_event(session, job_id, EventType.JOB_RESUMED, data={"n": 2})
            assert pubsub.get_message(timeout=0.3) is None, "published before the commit"
        message = pubsub.get_message(timeout=5)
        assert pubsub.get_message(timeout=0.3) is None, "the rolled-back event was published"

    assert message is not None
    stored = read_job_events(job_id)
    assert [e.seq for e in stored] == [1, 2], "the rolled-back event must not use up a seq"
    if backend == "postgresql":
        # Only a wake-up: the hub has the sequencer number the event, and reads it.
        assert message["data"].decode() == WAKE_UP
    else:
        published = json.loads(message["data"])
        assert set(published) == EVENT_FIELDS
        assert (published["seq"], published["data"]) == (2, {"n": 2})
        assert published["id"] == stored[-1].id
    assert_ids_contiguous_from_1()


def test_event_types_are_the_documented_ones():
    assert {t.value for t in EventType} == {
        "JOB_CREATED",
        "WAITING_FOR_SLOT",
        "STEP_STARTED",
        "STEP_RETRYING",
        "STEP_COMPLETED",
        "JOB_COMPLETED",
        "JOB_ERROR",
        "JOB_CANCELLED",
        "JOB_RESUMED",
    }


def test_retention_never_lets_global_ids_start_again(backend):
    """Deleting old jobs empties the log of their events, but the job holding the
    newest event stays, so the next id still follows every id a reader has seen."""
    from datetime import timedelta

    from sqlalchemy import update

    from app.jobs.recovery import delete_old_jobs
    from app.models import Job, utcnow

    jobs = [new_job() for _ in range(3)]
    for job_id in jobs:
        append_and_linger(job_id, 0)
    sequence_all()
    with session_scope() as session:
        newest = latest_event_id(session)
        session.execute(
            update(Job).values(status="COMPLETED", finished_at=utcnow() - timedelta(days=30))
        )

    assert delete_old_jobs(retention_days=1) == 2
    assert delete_old_jobs(retention_days=1) == 0, "the job with the newest event must stay"
    fresh = new_job()
    sequence_all()
    with session_scope() as session:
        assert [e.id for e in events_for_job(session, fresh)] == [newest + 1]


def test_retention_deletes_finished_jobs_past_it_with_their_steps_and_events(backend):
    """cleanup_old_jobs' rule: a job is deleted once it FINISHED (completed, failed or
    cancelled) longer ago than the retention, and its steps and events go with it;
    recent finished jobs and unfinished jobs of any age stay whole."""
    from datetime import timedelta

    from sqlalchemy import func, update

    from app.jobs.recovery import delete_old_jobs
    from app.models import Job, JobStep, utcnow

    long_ago, lately = utcnow() - timedelta(days=40), utcnow() - timedelta(hours=1)
    ages = {
        ("COMPLETED", long_ago): "deleted",
        ("FAILED", long_ago): "deleted",
        ("CANCELLED", long_ago): "deleted",
        ("COMPLETED", lately): "kept",
        ("RUNNING", None): "kept",
        ("PENDING", None): "kept",
    }
    jobs = {new_job(): key for key in ages}
    keeper = new_job()  # holds the newest event, which retention never deletes
    sequence_all()
    with session_scope() as session:
        for job_id, (status, finished_at) in jobs.items():
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(status=status, finished_at=finished_at, created_at=long_ago)
            )
        session.execute(
            update(Job).where(Job.id == keeper).values(status="COMPLETED", finished_at=long_ago)
        )

    assert delete_old_jobs(retention_days=30) == 3

    def rows(model: type, job_id: uuid.UUID) -> int:
        column = model.id if model is Job else model.job_id
        with session_scope() as session:
            return session.scalar(select(func.count()).where(column == job_id)) or 0

    for job_id, key in jobs.items():
        counts = (rows(Job, job_id), rows(JobStep, job_id), rows(JobEvent, job_id))
        if ages[key] == "deleted":
            assert counts == (0, 0, 0), key
        else:
            assert counts[0] == 1, key
            assert counts[1] > 0, key
            assert counts[2] > 0, key


def test_a_statement_scope_publishes_what_it_committed_even_when_the_block_fails(backend):
    """On PostgreSQL each statement of a statement_scope commits by itself: a failure
    later in the block must not swallow the events already written. On SQLite the
    block is one transaction: it rolls back and publishes nothing."""
    job_id = new_job()

    def park_then_fail() -> None:
        with statement_scope() as session:
            run = repo.load_step_run(session, job_id, 0)
            assert run is not None
            assert changes.park_step(session, run, {})
            raise RuntimeError("after the change")

    with subscribed() as pubsub:
        with pytest.raises(RuntimeError):
            park_then_fail()
        message = pubsub.get_message(timeout=2)
    stored = [event.type for event in read_job_events(job_id)]
    if backend == "postgresql":
        assert stored == ["JOB_CREATED", "WAITING_FOR_SLOT"]
        assert message is not None
        assert message["data"].decode() == WAKE_UP
    else:
        assert stored == ["JOB_CREATED"]
        assert message is None


# --- publishing: a wake-up sent by a per-process thread; a commit never waits on it ---


@pytest.fixture
def silent_redis(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """Publishes go to a Redis that takes the connection and never replies (a partition,
    a stalled server): a bare listening socket plays that server."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30, retry=None)
    monkeypatch.setattr(publisher, "get_redis", lambda: client)
    try:
        yield listener
    finally:
        listener.close()
        client.close()  # the publisher thread's pending call fails and it moves on


def test_a_commit_does_not_wait_on_a_redis_that_never_answers(backend, silent_redis):
    job_id = new_job(published=False)
    started = time.monotonic()
    for n in range(5):
        with session_scope() as session:
            append_event(session, job_id, EventType.JOB_RESUMED, data={"n": n})
    elapsed = time.monotonic() - started

    assert elapsed < 1.0, f"5 commits took {elapsed:.2f}s behind a silent Redis"
    assert [e.seq for e in read_job_events(job_id)] == [1, 2, 3, 4, 5, 6]


def test_events_committed_one_after_another_are_published_in_order(backend):
    """SQLite: the events, in order. PostgreSQL: wake-ups, at most one per commit (one
    stands for every commit queued before the publisher's send)."""
    job_id = new_job()
    with subscribed() as pubsub:
        for n in range(3):
            with session_scope() as session:
                append_event(session, job_id, EventType.JOB_RESUMED, data={"n": n})
        drain_publishes()
        received = []
        while (message := pubsub.get_message(timeout=1)) is not None:
            received.append(message["data"].decode())

    if backend == "postgresql":
        assert 1 <= len(received) <= 3, received
        assert set(received) == {WAKE_UP}, received
        return
    mine = [event for event in map(json.loads, received) if event["job_id"] == str(job_id)]
    assert [event["data"] for event in mine] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [event["seq"] for event in mine] == [2, 3, 4]


def test_wake_ups_beyond_the_queue_limit_are_dropped_not_waited_for(silent_redis):
    """While Redis does not answer, a process queues a bounded number of wake-ups and
    drops the rest at once (the log still has every event)."""
    from app.events.types import PublishedEvent

    bounded = publisher.Publisher(max_queued=3)
    event = PublishedEvent(
        id=None,
        job_id=str(uuid.uuid4()),
        seq=1,
        type="JOB_CREATED",
        feature_name="f",
        step_index=None,
        step_name=None,
        attempt=None,
        progress=0,
        ts="2026-01-01T00:00:00Z",
        data={},
    )
    bounded.submit([event])  # taken by the thread, which then waits on the silent server
    wait_until(lambda: bounded.queued == 0, 5, 0.01, "the thread to take the first")
    started = time.monotonic()
    for _ in range(10):
        bounded.submit([event])
    assert time.monotonic() - started < 0.5
    assert bounded.dropped == 7
