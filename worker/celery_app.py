"""The Celery instance, configured from Settings for at-least-once delivery.

Reliability: acks_late + reject_on_worker_lost (a killed worker's message comes
back), prefetch 1 (a long step never hoards messages), and a broker visibility
timeout longer than any step so a slow step is not redelivered while it runs.
Routing is per message: each step is sent to its service's queue.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, signals

from app.catalog import current_catalog
from app.config import get_settings
from worker.schedule import beat_schedule

settings = get_settings()

celery_app = Celery(
    "cao", broker=settings.redis_url, include=["worker.tasks", "worker.maintenance"]
)
celery_app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    result_backend=None,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue="default",
    task_create_missing_queues=True,
    broker_transport_options={
        "visibility_timeout": settings.broker_visibility_timeout_s,
        # A hung broker (not down: connections accepted, nothing answered) must not
        # hold an enqueue forever; the committed step is found again by Beat.
        "socket_connect_timeout": 3,
        "socket_timeout": 5,
    },
    broker_connection_retry_on_startup=True,
    beat_schedule=beat_schedule(settings),
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
    timezone="UTC",
    enable_utc=True,
)


class UnsafeVisibilityTimeout(RuntimeError):
    pass


# A call runs for at most about twice its timeout_s (an answer trickling in is checked
# as it arrives: app/services/http.py).
LONGEST_CALL_PER_TIMEOUT = 2


def check_visibility_timeout() -> None:
    """Refuse to run when a step could outlive the broker's visibility timeout."""
    longest = current_catalog().longest_timeout_s * LONGEST_CALL_PER_TIMEOUT
    timeout = settings.broker_visibility_timeout_s
    if timeout <= longest:
        raise UnsafeVisibilityTimeout(
            f"BROKER_VISIBILITY_TIMEOUT_S={timeout} must be longer than the longest step "
            f"could run, twice the longest timeout_s in the catalog ({longest:g}s), or "
            "running steps would be redelivered"
        )


@signals.worker_init.connect
def _on_worker_init(**_: Any) -> None:
    from app.db import preload_driver
    from app.logs import configure_logging
    from app.services.http import prepare_tls

    configure_logging("worker")
    check_visibility_timeout()
    # Fork-safe work done once here rather than in every pool process.
    preload_driver()
    prepare_tls()


@signals.worker_process_init.connect
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


@signals.worker_process_shutdown.connect
def _on_process_shutdown(**_: Any) -> None:
    from app.db import dispose_db
    from app.events.publisher import drain_publishes
    from app.redis_client import close_redis
    from app.services.http import close_client

    close_client()
    drain_publishes()
    close_redis()
    dispose_db()
