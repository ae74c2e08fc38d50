"""The worker side of the one Celery instance, configured for at-least-once delivery.

app/broker.py builds the instance from Settings (broker, transport options,
serialisation) and sends through it; this module adds what only workers and Beat need:
the task modules, the per-process set-up on Celery's signals, Beat's schedule and the
worker settings. `celery -A worker.celery_app worker -Q heavy` and `cao worker` load it.

Reliability: acks_late + reject_on_worker_lost (a killed worker's message comes
back), prefetch 1 (a long step never hoards messages), and a broker visibility
timeout longer than any step (checked at start) so a slow step is not redelivered
while it runs. Routing is per message: each step is sent to its service's queue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

from celery import Task, signals

from app.broker import check_visibility_timeout, get_celery
from app.config import get_settings
from worker.schedule import beat_schedule

P = ParamSpec("P")
R = TypeVar("R")

celery_app = get_celery()
celery_app.conf.update(
    include=["worker.tasks", "worker.maintenance"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    beat_schedule=beat_schedule(get_settings()),
    # Beat's default scheduler, with a heartbeat file for its healthcheck.
    beat_scheduler="worker.heartbeat:HeartbeatScheduler",
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
)


def task(name: str, **options: Any) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """`celery_app.task(name=name, **options)`, typed: the task is called as the
    function is (Celery's own decorator loses the function's signature)."""
    return cast("Callable[[Callable[P, R]], Callable[P, R]]", celery_app.task(name=name, **options))


def bound_task(
    name: str, **options: Any
) -> Callable[[Callable[Concatenate[Task[P, R], P], R]], Callable[P, R]]:
    """`task` for a function that takes the task itself first (Celery's `bind=True`),
    to read its request: the task is called without it."""
    return cast(
        "Callable[[Callable[Concatenate[Task[P, R], P], R]], Callable[P, R]]",
        celery_app.task(name=name, bind=True, **options),
    )


def _on_worker_init(**_: Any) -> None:
    from app.db import preload_driver
    from app.logs import configure_logging
    from app.services.http import prepare_tls

    configure_logging("worker")
    check_visibility_timeout()
    # Fork-safe work done once here rather than in every pool process.
    preload_driver()
    prepare_tls()


def _on_process_init(**_: Any) -> None:
    # Engine, Redis and httpx clients are per process: build them after fork.
    from app.db import init_db
    from app.jobs.warm_up import prepare_statements, warm_up_in_background
    from app.logs import configure_logging
    from app.redis_client import get_redis
    from app.services.http import get_client

    configure_logging("worker")
    # No pre-ping: run_step retries on OperationalError, and the fence makes that safe.
    init_db(pre_ping=False)
    # Now rather than on a first step's critical path, where a slot is already held:
    # the HTTP client, then (in the background) connections and compiled statements.
    get_client()
    warm_up_in_background(prepare_statements, lambda: get_redis().ping())


def _on_process_shutdown(**_: Any) -> None:
    from app.db import dispose_db
    from app.events.publisher import drain_publishes
    from app.redis_client import close_redis
    from app.services.http import close_client

    close_client()
    drain_publishes()
    close_redis()
    dispose_db()


signals.worker_init.connect(_on_worker_init)
signals.worker_process_init.connect(_on_process_init)
signals.worker_process_shutdown.connect(_on_process_shutdown)
