"""Thin Celery tasks: parse the message, call the runner, map infrastructure errors."""

from __future__ import annotations

import uuid
from typing import Any

from celery import Task
from celery.app.task import Context
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import OperationalError

from app.db import init_db
from app.jobs import runner
from app.jobs.dispatch import HOLDS_SLOT_HEADER, QUEUE_HEADER, RUN_STEP_TASK, SERVICE_HEADER
from worker.celery_app import bound_task, celery_app


@bound_task(
    RUN_STEP_TASK,
    # A database or Redis blip re-runs the same delivery; the step fence makes it safe.
    autoretry_for=(OperationalError, RedisConnectionError),
    retry_backoff=0.5,
    retry_backoff_max=30,
    max_retries=20,
)
def run_step(self: Task[Any, Any], job_id: str, step_index: int, fence: int) -> str:
    init_db()
    named = named_slot(self.request)
    return str(runner.run_step(uuid.UUID(job_id), step_index, fence, consumed_queues(), named))


def named_slot(request: Context) -> runner.NamedSlot | None:
    """The service and queue the message's headers name (Celery puts a message's own
    headers into the task's request), or None for a message that names none."""
    service, queue = request.get(SERVICE_HEADER), request.get(QUEUE_HEADER)
    if not (service and queue):
        return None
    return runner.NamedSlot(service, queue, holds_slot=bool(request.get(HOLDS_SLOT_HEADER)))


def consumed_queues() -> frozenset[str]:
    """The queues this worker consumes (its -Q): a next step of one of them may run
    here at once instead of going through the broker."""
    selected = celery_app.amqp.queues.consume_from
    if selected:
        return frozenset(selected)
    return frozenset({celery_app.conf.task_default_queue})
