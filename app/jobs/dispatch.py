"""The one door from app/ to the worker: put a step delivery on its Celery queue.

A message carries (job_id, step_index, fence); see app/jobs/repository.py.
"""

from __future__ import annotations

import uuid

RUN_STEP_TASK = "cao.run_step"
# On the Redis transport a lower number is served first. A delivery that already
# holds its service slot (handed over by a release) jumps the line: every moment it
# waits behind fresh deliveries is a slot the service does not use.
HOLDS_SLOT_PRIORITY = 0
DEFAULT_PRIORITY = 5


def enqueue_step(
    job_id: uuid.UUID | str,
    step_index: int,
    fence: int,
    queue: str,
    countdown: float | None = None,
    *,
    holds_slot: bool = False,
) -> None:
    from worker.celery_app import celery_app

    celery_app.send_task(
        RUN_STEP_TASK,
        args=[str(job_id), step_index, fence],
        queue=queue,
        countdown=countdown if countdown and countdown > 0 else None,
        priority=HOLDS_SLOT_PRIORITY if holds_slot else DEFAULT_PRIORITY,
        # Fail fast when the broker is down: the committed step is found again by Beat.
        retry=True,
        retry_policy={"max_retries": 1, "interval_start": 0.1, "interval_step": 0.2},
    )
