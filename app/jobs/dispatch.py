"""The one door from app/ to the worker: put a step delivery on its Celery queue.

A message carries (job_id, step_index, fence); see app/jobs/repository.py.
"""

from __future__ import annotations

import uuid

RUN_STEP_TASK = "cao.run_step"


def enqueue_step(
    job_id: uuid.UUID | str,
    step_index: int,
    fence: int,
    queue: str,
    countdown: float | None = None,
) -> None:
    from worker.celery_app import celery_app

    celery_app.send_task(
        RUN_STEP_TASK,
        args=[str(job_id), step_index, fence],
        queue=queue,
        countdown=countdown if countdown and countdown > 0 else None,
        # Fail fast when the broker is down: the committed step is found again by Beat.
        retry=True,
        retry_policy={"max_retries": 1, "interval_start": 0.1, "interval_step": 0.2},
    )
