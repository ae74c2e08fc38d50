"""Step deliveries: what a message to run a step carries, and putting it on its queue
(through app/broker.py, which owns sending).

A message carries (job_id, step_index, fence) as arguments (see
app/jobs/repository.py) and, in headers, the step's service and queue when the sender
knows them. A `Delivery` is such a message with the time it is due to run.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import ParamSpec

from app import broker
from app.models import utcnow

_Args = ParamSpec("_Args")
RUN_STEP_TASK = "cao.run_step"
# On the Redis transport a lower number is served first. A delivery that already
# holds its service slot (handed over by a release) jumps the line: every moment it
# waits behind fresh deliveries is a slot the service does not use.
HOLDS_SLOT_PRIORITY = 0
DEFAULT_PRIORITY = 5
# Message headers naming the step's service and queue (optional), and marking a
# delivery that was handed its slot by a release (the lease was made for it).
SERVICE_HEADER = "cao_service"
QUEUE_HEADER = "cao_queue"
HOLDS_SLOT_HEADER = "cao_holds_slot"


def step_message(
    job_id: uuid.UUID | str,
    step_index: int,
    fence: int,
    queue: str,
    countdown: float | None = None,
    *,
    holds_slot: bool = False,
    service: str | None = None,
) -> broker.Message:
    """The message of a step delivery to `queue`. Naming the step's `service` lets the
    worker take its slot before it reads the step, and claim and read it in one
    statement."""
    headers = {SERVICE_HEADER: service, QUEUE_HEADER: queue} if service else {}
    if holds_slot:
        headers[HOLDS_SLOT_HEADER] = "1"
    return broker.Message(
        RUN_STEP_TASK,
        [str(job_id), step_index, fence],
        queue=queue,
        priority=HOLDS_SLOT_PRIORITY if holds_slot else DEFAULT_PRIORITY,
        # Headers, not arguments: a worker that does not know them ignores them.
        headers=headers or None,
        countdown=countdown if countdown and countdown > 0 else None,
    )


def _sent(build: Callable[_Args, broker.Message]) -> Callable[_Args, None]:
    def send(*args: _Args.args, **kwargs: _Args.kwargs) -> None:
        broker.send_many([build(*args, **kwargs)])

    return send


# Send a step delivery to its queue: step_message's arguments.
enqueue_step = _sent(step_message)


@dataclass(frozen=True)
class Delivery:
    """A step's delivery naming its service: what its message carries, and when it is
    due to run (a retry's backoff after the commit that scheduled it)."""

    job_id: uuid.UUID
    step_index: int
    fence: int
    queue: str
    service: str
    due_at: datetime

    @classmethod
    def of(
        cls,
        job_id: uuid.UUID,
        step_index: int,
        fence: int,
        queue: str,
        service: str,
        delay_s: float = 0.0,
    ) -> Delivery:
        """A delivery due `delay_s` from now."""
        due_at = utcnow() + timedelta(seconds=delay_s)
        return cls(job_id, step_index, fence, queue, service, due_at)


def send_delivery(delivery: Delivery, now: datetime | None = None) -> None:
    """Send `delivery`, to run once it is due (at once if it is overdue)."""
    send_deliveries([delivery], now)


def send_deliveries(deliveries: Sequence[Delivery], now: datetime | None = None) -> None:
    """Send every delivery in one round trip to the broker, each to run once it is due."""
    now = now or utcnow()
    broker.send_many(
        [
            step_message(
                delivery.job_id,
                delivery.step_index,
                delivery.fence,
                delivery.queue,
                (delivery.due_at - now).total_seconds(),
                service=delivery.service,
            )
            for delivery in deliveries
        ]
    )


def connect_broker() -> None:
    """Connect to the broker now rather than on the first send (see app/broker.py)."""
    broker.connect()


def broker_answers() -> bool:
    """Whether the broker takes a connection now (see app/broker.py)."""
    return broker.answers()
