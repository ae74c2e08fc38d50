"""The Beat schedule as Beat sends it: where its sweeps go and how they are served."""

from __future__ import annotations

import uuid

from celery.beat import Scheduler

from app.jobs.dispatch import RUN_STEP_TASK, enqueue_step
from tests.lease_support import queued_messages
from worker.celery_app import celery_app
from worker.schedule import MAINTENANCE_QUEUE


def test_sweeps_are_served_ahead_of_a_step_backlog_on_their_queue():
    """A backlog of step deliveries on the maintenance queue must not delay the sweeps
    that put stuck steps back: each schedule entry, sent the way Beat sends it, is
    received before the steps queued earlier."""
    schedule = celery_app.conf.beat_schedule
    assert {entry["options"]["queue"] for entry in schedule.values()} == {MAINTENANCE_QUEUE}
    # The same options on a queue of this test's own, which no worker consumes.
    queue = f"backlog-{uuid.uuid4().hex[:8]}"
    for index in range(5):
        enqueue_step(uuid.uuid4(), index, 1, queue, service="some_service")
    scheduler = Scheduler(app=celery_app, lazy=True)
    for name, fields in schedule.items():
        options = {**fields["options"], "queue": queue}
        scheduler.apply_async(
            scheduler.Entry(name=name, app=celery_app, **{**fields, "options": options})
        )

    served = [message.headers["task"] for message in queued_messages(queue)]
    sweeps = sorted(fields["task"] for fields in schedule.values())
    assert sorted(served[: len(sweeps)]) == sweeps, served
    assert served[len(sweeps) :] == [RUN_STEP_TASK] * 5, served
