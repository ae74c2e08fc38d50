"""The worker side of the one Celery instance, configured for at-least-once delivery.

app/broker.py builds the instance from Settings (broker, transport options,
serialisation) and sends through it; this module adds what only workers and Beat need:
the task modules, the per-process set-up on Celery's signals, Beat's schedule and the
worker settings. `celery -A worker.celery_app worker -Q heavy` and `cao worker` load it,
and `celery -A worker.celery_app beat` and `cao beat`: what a process needs at start-up
(logging, the start-up checks, per-process clients) hangs on Celery's signals here, so
the ordinary commands start the same worker and Beat as the `cao` ones.

Reliability: acks_late + reject_on_worker_lost (a killed worker's message comes
back), prefetch 1 (a long step never hoards messages), and a broker visibility
timeout longer than any step (checked at start) so a slow step is not redelivered
while it runs. Routing is per message: each step is sent to its service's queue.

Task events: a worker sends them once a monitor asks (Flower does on its own), or from
the start with TASK_EVENTS=true; either way Flower pointed at the broker shows the
workers, their queues and the step tasks. They go out in batches, a message per half
second (worker/task_events.py; a sender's "task-sent": app/broker.py). Logging is
app/logs.py's: Celery asks for it through its `setup_logging` signal and leaves its own
set-up out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Concatenate, NoReturn, ParamSpec, TypeVar, cast

import structlog
from celery import Task, signals

from app.broker import UnsafeVisibilityTimeout, check_visibility_timeout, get_celery
from app.config import get_settings
from app.logs import configure_logging, route_terminal_output, unbind_step
from app.tracing import configure_tracing, shutdown_tracing
from worker.schedule import beat_schedule
from worker.task_events import BatchedTaskEvents

P = ParamSpec("P")
R = TypeVar("R")

log = structlog.get_logger(__name__)
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
    worker_send_task_events=get_settings().task_events,
)
celery_app.steps["consumer"].add(BatchedTaskEvents)


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


def _refuse_to_start(error: Exception) -> NoReturn:
    """Stop a worker or Beat that must not run. Celery logs and swallows an Exception
    raised by a signal handler; SystemExit is not one, so the command exits (code 1)
    with the reason, as `cao worker` does."""
    log.critical("refusing to start", error=str(error))
    raise SystemExit(f"refusing to start: {error}")


def _celery_command() -> str:
    """The Celery command this process runs (worker, beat), for the `process` field."""
    import click

    context = click.get_current_context(silent=True)
    if context is None:
        return "worker"
    return context.invoked_subcommand or context.info_name or "worker"


def _on_setup_logging(loglevel: int | None = None, **_: Any) -> None:
    from celery.utils.log import get_multiprocessing_logger

    # The pool's own logger, at ERROR as Celery sets it, made to write through ours.
    pool_logger = get_multiprocessing_logger()
    if pool_logger is not None:  # None before multiprocessing's logging is loaded
        pool_logger.setLevel("ERROR")
    configure_logging(_celery_command(), stdlib_level=_least_level(loglevel))


def _least_level(loglevel: int | None) -> int:
    """LOG_LEVEL is the least a worker or Beat logs: `cao worker` and `cao beat` pass it
    (INFO by default) as --loglevel, and the ordinary commands, whose --loglevel defaults
    to WARNING, would otherwise hide the lines operators rely on (a worker's "ready.",
    Beat's start). A lower --loglevel (DEBUG) still wins."""
    level = logging.getLevelName(get_settings().log_level.upper())
    least = level if isinstance(level, int) else logging.INFO
    return least if loglevel is None else min(loglevel, least)


def _on_celeryd_init(instance: Any, **_: Any) -> None:
    if get_settings().log_json:
        # The banner is printed to the terminal itself, past sys.stdout: its facts are
        # logged instead once the worker is set up (_on_after_setup).
        instance.quiet = True
        route_terminal_output()


def _on_after_setup(sender: str, instance: Any, **_: Any) -> None:
    if get_settings().log_json:
        log.info(
            "worker starting",
            hostname=sender,
            queues=sorted(instance.app.amqp.queues.consume_from or ()),
            concurrency=instance.concurrency,
            pool=f"{instance.pool_cls.__module__}.{instance.pool_cls.__name__}",
            task_events=get_settings().task_events,
        )


def _on_task_postrun(**_: Any) -> None:
    # Step fields a delivery bound (app/jobs/runner.py) end with its task: Celery's
    # lines about the task, its result or failure, carried them up to here.
    unbind_step()


def _on_worker_init(**_: Any) -> None:
    from app.catalog import CatalogError
    from app.db import preload_driver
    from app.services.http import prepare_tls

    try:
        # Reads the catalog too: an invalid one stops the worker here, naming the key.
        check_visibility_timeout()
    except (CatalogError, UnsafeVisibilityTimeout) as exc:
        _refuse_to_start(exc)
    # Fork-safe work done once here rather than in every pool process. The tracer
    # provider too: its export thread restarts in each forked child, and a pool that
    # does not fork (threads) runs its steps in this process.
    preload_driver()
    prepare_tls()
    configure_tracing("cao-worker")


def _on_process_init(**_: Any) -> None:
    # Engine, Redis and httpx clients are per process: build them after fork.
    from app.db import init_db
    from app.jobs.warm_up import prepare_statements, warm_up_in_background
    from app.redis_client import get_redis
    from app.services.http import get_client

    # No pre-ping: run_step retries on OperationalError, and the fence makes that safe.
    init_db(pre_ping=False)
    # Now rather than on a first step's critical path, where a slot is already held:
    # the HTTP client, then (in the background) connections and compiled statements.
    get_client()
    warm_up_in_background(prepare_statements, lambda: get_redis().ping())


def _on_process_shutdown(**_: Any) -> None:
    from app.broker import flush_sent_events
    from app.db import dispose_db
    from app.events.publisher import drain_publishes
    from app.redis_client import close_redis
    from app.services.http import close_client

    close_client()
    drain_publishes()
    flush_sent_events()
    close_redis()
    dispose_db()
    shutdown_tracing()  # export what is still batched


def _on_beat_init(**_: Any) -> None:
    from app.catalog import CatalogError, current_catalog

    try:
        current_catalog()  # Beat's tasks read it: refuse an invalid one at start-up
    except CatalogError as exc:
        _refuse_to_start(exc)
    configure_tracing("cao-beat")


if get_settings().log_json:
    # Now, as the app loads: Beat prints its banner before Celery sets up logging.
    configure_logging(_celery_command())
signals.setup_logging.connect(_on_setup_logging)
signals.celeryd_init.connect(_on_celeryd_init)
signals.celeryd_after_setup.connect(_on_after_setup)
signals.task_postrun.connect(_on_task_postrun)
signals.worker_init.connect(_on_worker_init)
signals.beat_init.connect(_on_beat_init)
signals.worker_process_init.connect(_on_process_init)
signals.worker_process_shutdown.connect(_on_process_shutdown)
