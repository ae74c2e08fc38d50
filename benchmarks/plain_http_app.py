"""The baseline for the lease benchmark: a plain Celery app whose task makes one HTTP
call to a simulated service, with the same reliability settings as the gateway's
worker but no lease, no database and no per-service limit (the pool size is the
only bound)."""

from __future__ import annotations

import os

import httpx
from celery import Celery

plain_app = Celery("bench_plain", broker=os.environ["REDIS_URL"])
plain_app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue="plain",
    worker_hijack_root_logger=False,
)
_client: httpx.Client | None = None


@plain_app.task(name="bench.http_call")
def http_call(url: str, n: int) -> None:
    global _client
    if _client is None:
        _client = httpx.Client(timeout=10)
    _client.post(url, json={"job_id": str(n), "input_data": {"n": n}}).raise_for_status()
