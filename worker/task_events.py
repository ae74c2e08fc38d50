"""A worker's task events, sent in batches on a timer rather than one message each.

Celery's worker buffers task events (received, started, succeeded ...) when it runs its
event loop (the prefork pool), but flushes the buffer on the loop's next turn: a
delivery still costs three event messages, one per turn in which it changed state,
and the first (task-received) is published before the delivery is written to a pool
process, so a hand-off through the broker waits on that publish. Here the buffer is
flushed at most every EVENTS_FLUSH_INTERVAL_S (app/broker.py) instead, as one message
holding every event of that interval (Celery's EventReceiver, and so Flower, takes a
list of events in one message). The events keep the times they were sent with; a
monitor sees them up to that interval later.

A pool without the event loop (threads) sends each event at once, as Celery does.
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps

from app.broker import EVENTS_BUFFER_LIMIT, EVENTS_FLUSH_INTERVAL_S


class BatchedTaskEvents(bootsteps.StartStopStep):
    """Consumer step after Celery's Events step, which builds the dispatcher anew on
    every (re)connection: this one makes that dispatcher flush on a timer."""

    requires = ("celery.worker.consumer.events:Events",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._pending: Any = None  # the timer entry of the next flush, while one is due

    def start(self, parent: Any) -> None:
        dispatcher = parent.event_dispatcher
        if parent.hub is None or dispatcher is None:
            return
        dispatcher.buffer_limit = EVENTS_BUFFER_LIMIT
        dispatcher.on_send_buffered = lambda: self._schedule(parent)

    def _schedule(self, parent: Any) -> None:
        if self._pending is None:
            self._pending = parent.hub.call_later(EVENTS_FLUSH_INTERVAL_S, self._flush, parent)

    def _flush(self, parent: Any) -> None:
        self._pending = None
        if parent.event_dispatcher is not None:
            parent.event_dispatcher.flush()

    def stop(self, parent: Any) -> None:
        # Before Celery's Events step closes the dispatcher (steps stop in reverse).
        if self._pending is not None:
            self._pending.cancel()
            self._flush(parent)

    shutdown = stop
