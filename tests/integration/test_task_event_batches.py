"""With task events on, a sender's "task-sent" events go out in batches on the real
broker (app/broker.py): many sends, one event message, holding every event in order,
in the form Celery's EventReceiver (and so Flower) reads. A worker's own task events
are batched the same way (worker/task_events.py): Flower still shows every step task
(tests/e2e/test_flower.py)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from app.broker import EVENTS_FLUSH_INTERVAL_S, get_celery, send
from tests.harness import wait_until

pytestmark = pytest.mark.timeout(30)
SENDS = 20


@pytest.fixture
def sent_events_on() -> Iterator[None]:
    conf = get_celery().conf
    before = conf.task_send_sent_event
    conf.task_send_sent_event = True
    try:
        yield
    finally:
        conf.task_send_sent_event = before


def _events_of(message: dict[str, Any]) -> list[dict[str, Any]]:
    envelope = json.loads(message["data"])
    body = json.loads(base64.b64decode(envelope["body"]))
    return body if isinstance(body, list) else [body]


def test_task_sent_events_go_out_together(env: dict[str, str], sent_events_on: None) -> None:
    client = redis.Redis.from_url(env["REDIS_URL"])
    db = client.connection_pool.connection_kwargs.get("db", 0)
    queue = f"event-batches-{uuid.uuid4().hex[:8]}"  # no worker consumes it
    pubsub = client.pubsub()
    pubsub.psubscribe(f"/{db}.celeryev/task.*")  # kombu's channel for the events exchange
    try:
        wait_until(lambda: pubsub.get_message(timeout=0.1), 5, 0, "the subscription")
        for number in range(SENDS):
            send("cao.run_step", [str(number), 0, 1], queue=queue, priority=0)

        messages: list[dict[str, Any]] = []

        def all_arrived() -> bool:
            message = pubsub.get_message(timeout=0.1)
            if message is not None:
                messages.append(message)
            return sum(len(_events_of(m)) for m in messages) >= SENDS

        wait_until(all_arrived, 2 + 4 * EVENTS_FLUSH_INTERVAL_S, 0, "the task-sent events")
    finally:
        pubsub.close()
        client.delete(queue, f"_kombu.binding.{queue}")

    events = [event for message in messages for event in _events_of(message)]
    assert [e["type"] for e in events] == ["task-sent"] * SENDS
    assert [json.loads(e["args"].replace("'", '"'))[0] for e in events] == [
        str(n) for n in range(SENDS)
    ]
    assert {e["queue"] for e in events} == {queue}
    # One message per interval: the sends take well under one here, two at the most.
    assert len(messages) <= 2, [len(_events_of(m)) for m in messages]
