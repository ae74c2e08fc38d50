"""The broker: the one Celery instance of every process, and sending through it.

Built from Settings once per process, on first use: the broker URL and its transport
options, serialisation, and the settings a sender's messages depend on. The worker
side (task modules, process signals, Beat's schedule, worker settings) is added to
this same instance by worker/celery_app.py. app/ never imports worker/: it names the
worker's app as a string when it starts Celery's own command, as `celery -A` does.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from app.catalog import current_catalog
from app.config import get_settings

if TYPE_CHECKING:
    from celery import Celery

# The module that adds the worker side: `celery -A worker.celery_app worker -Q heavy`.
WORKER_APP = "worker.celery_app"
# Fail fast when the broker is down: a committed step is found again by Beat.
SEND_RETRY_POLICY = {"max_retries": 1, "interval_start": 0.1, "interval_step": 0.2}
# A call runs for at most about twice its timeout_s (an answer trickling in is checked
# as it arrives: app/services/http.py).
LONGEST_CALL_PER_TIMEOUT = 2
# Task events go out in batches, one message per this interval (at most this many events
# in one message): a message costs about 140 us of the sender's CPU, an event in a batch
# about 15 us (2-core machine, 2026-12-06). A monitor sees them up to this much later.
EVENTS_FLUSH_INTERVAL_S = 0.5
EVENTS_BUFFER_LIMIT = 500


@lru_cache(maxsize=1)
def get_celery() -> Celery:
    """The process's Celery instance. Celery is imported here, not with this module:
    a process that never sends (the `cao` client commands) does not pay for it."""
    from celery import Celery

    settings = get_settings()
    celery = Celery("cao", broker=settings.redis_url)
    celery.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_default_queue="default",
        task_create_missing_queues=True,
        broker_transport_options={
            # Longer than any step, or a running step's message would be delivered again.
            "visibility_timeout": settings.broker_visibility_timeout_s,
            # A hung broker (not down: connections accepted, nothing answered) must not
            # hold an enqueue forever; the committed step is found again by Beat.
            "socket_connect_timeout": 3,
            "socket_timeout": 5,
        },
        timezone="UTC",
        enable_utc=True,
        # A step waiting on its queue shows in Flower as sent, before a worker takes it.
        task_send_sent_event=settings.task_events,
    )
    return celery


@dataclass(frozen=True)
class Message:
    """One task message to send: what `send` takes, for `send_many`."""

    task: str
    args: Sequence[Any]
    queue: str
    priority: int
    headers: dict[str, str] | None = None
    countdown: float | None = None


def send(
    task: str,
    args: Sequence[Any],
    *,
    queue: str,
    priority: int,
    headers: dict[str, str] | None = None,
    countdown: float | None = None,
) -> None:
    """Put one message for `task` on `queue`, retrying once, briefly, if the broker
    does not answer (then the broker's error is raised)."""
    message = Message(task, args, queue, priority, headers, countdown)
    _publish(message, retry=True, retry_policy=SEND_RETRY_POLICY)


def send_many(messages: Sequence[Message]) -> None:
    """Put every message on its queue in one round trip (kombu's publish batch: one
    Redis pipeline), on one producer. Raises the broker's error if the batch fails;
    then some of the messages may have been sent (a duplicate of a step delivery
    finds its fence used)."""
    if len(messages) == 1:
        _publish(messages[0], retry=True, retry_policy=SEND_RETRY_POLICY)
        return
    celery = get_celery()
    with celery.producer_or_acquire() as producer, producer.batch(max_size=len(messages)):
        for message in messages:
            _publish(message, producer=producer)


def _publish(message: Message, **options: Any) -> None:
    get_celery().send_task(
        message.task,
        args=message.args,
        headers=message.headers,
        queue=message.queue,
        countdown=message.countdown,
        priority=message.priority,
        # With task events on, the message's "task-sent" event joins the next batch.
        event_dispatcher=_sent_events(),
        **options,
    )


class _SentEvents:
    """This process's "task-sent" events, sent by a thread of their own every
    EVENTS_FLUSH_INTERVAL_S as one message, instead of one message after each task
    message on the sender's path (a POST /jobs, a worker's hand-off). Celery calls
    `publish` as it would on its own dispatcher when task_send_sent_event is on. An
    event still buffered when the broker is gone, or the process ends without
    `flush_sent_events`, is lost: they only feed a monitor."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dispatcher: Any = None  # Celery's, buffering; built on the first event
        self._due = threading.Event()

    def publish(self, event_type: str, fields: dict[str, Any], producer: Any, **_: Any) -> None:
        with self._lock:
            if self._dispatcher is None:
                celery = get_celery()
                self._dispatcher = celery.events.Dispatcher(
                    celery.connection_for_write(),
                    buffer_group=["task"],
                    buffer_limit=EVENTS_BUFFER_LIMIT,
                    on_send_buffered=self._due.set,
                )
                threading.Thread(target=self._run, name="cao-task-events", daemon=True).start()
            self._dispatcher.send(event_type, **fields)

    def _run(self) -> None:
        while self._due.wait():
            time.sleep(EVENTS_FLUSH_INTERVAL_S)  # the batch gathers
            self.flush()

    def flush(self) -> None:
        with self._lock:
            # Under the lock, as sends are: an event buffered after this flush sets it again.
            self._due.clear()
            if self._dispatcher is not None:
                self._dispatcher.flush()


_sent_events_of_process: dict[int, _SentEvents] = {}


def _sent_events() -> _SentEvents:
    """The buffer of this process: a forked pool process builds its own (its parent's
    thread and connection do not survive the fork)."""
    pid = os.getpid()
    if pid not in _sent_events_of_process:
        _sent_events_of_process.clear()
        _sent_events_of_process[pid] = _SentEvents()
    return _sent_events_of_process[pid]


def flush_sent_events() -> None:
    """Send the "task-sent" events still buffered (a process about to exit)."""
    events = _sent_events_of_process.get(os.getpid())
    if events is not None:
        events.flush()


def connect() -> None:
    """Load the broker transport and open the connection sends use, now rather than on
    the first send (lazy imports and set-up: about 100 ms on the 2-core dev machine)."""
    celery = get_celery()
    celery.backend  # noqa: B018 (every send consults it; it is loaded on first use)
    with celery.producer_or_acquire() as producer:
        producer.connection.ensure_connection(max_retries=1)


def answers() -> bool:
    """Whether the broker takes a connection now: one try on a connection of its own
    (not the senders' pool), at most about SEND_RETRY_POLICY's time."""
    try:
        with get_celery().connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0)
    except Exception:
        return False
    return True


class UnsafeVisibilityTimeout(RuntimeError):
    pass


def check_visibility_timeout() -> None:
    """Refuse to run when a step could outlive the broker's visibility timeout."""
    longest = current_catalog().longest_timeout_s * LONGEST_CALL_PER_TIMEOUT
    timeout = get_settings().broker_visibility_timeout_s
    if timeout <= longest:
        raise UnsafeVisibilityTimeout(
            f"BROKER_VISIBILITY_TIMEOUT_S={timeout} must be longer than the longest step "
            f"could run, twice the longest timeout_s in the catalog ({longest:g}s), or "
            "running steps would be redelivered"
        )


def run_celery_command(argv: Sequence[str]) -> None:
    """Run Celery's own command line on the worker's app, in this process: what
    `celery -A worker.celery_app ARGV...` does (e.g. ARGV `worker -Q heavy`)."""
    from celery.bin.celery import celery

    celery.main(args=["--app", WORKER_APP, *argv], standalone_mode=False)
