"""The one door from app/ to the worker: put a step delivery on its Celery queue.

A message carries (job_id, step_index, fence) as arguments (see
app/jobs/repository.py) and, in headers, the step's service and queue when the sender
knows them.
"""

from __future__ import annotations

import uuid

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


def enqueue_step(
    job_id: uuid.UUID | str,
    step_index: int,
    fence: int,
    queue: str,
    countdown: float | None = None,
    *,
    holds_slot: bool = False,
    service: str | None = None,
) -> None:
    """Send a step delivery to `queue`. Naming the step's `service` lets the worker take
    its slot before it reads the step, and claim and read it in one statement."""
    from worker.celery_app import celery_app

    headers = {SERVICE_HEADER: service, QUEUE_HEADER: queue} if service else {}
    if holds_slot:
        headers[HOLDS_SLOT_HEADER] = "1"
    celery_app.send_task(
        RUN_STEP_TASK,
        args=[str(job_id), step_index, fence],
        # Headers, not arguments: a worker that does not know them ignores them.
        headers=headers or None,
        queue=queue,
        countdown=countdown if countdown and countdown > 0 else None,
        priority=HOLDS_SLOT_PRIORITY if holds_slot else DEFAULT_PRIORITY,
        # Fail fast when the broker is down: the committed step is found again by Beat.
        retry=True,
        retry_policy={"max_retries": 1, "interval_start": 0.1, "interval_step": 0.2},
    )


def connect_broker() -> None:
    """Load the broker transport and open the connection sends use, now rather than on
    the first send (lazy imports and set-up: about 100 ms on the 2-core dev machine)."""
    from worker.celery_app import celery_app

    celery_app.backend  # noqa: B018 (every send consults it; it is loaded on first use)
    with celery_app.producer_or_acquire() as producer:
        producer.connection.ensure_connection(max_retries=1)
