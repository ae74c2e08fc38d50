"""The baseline for the lease benchmark: a plain Celery app whose task makes one HTTP
call to a simulated service, with the same reliability settings as the gateway's
worker but no lease, no database and no per-service limit (the pool size is the
only bound)."""

from __future__ import annotations

import os
from typing import Any

import httpx
from celery import Celery, signals

from benchmarks.common import BASELINE_CELERY_CONF

plain_app = Celery("bench_plain", broker=os.environ["REDIS_URL"])
plain_app.conf.update(BASELINE_CELERY_CONF, task_default_queue="plain")
_client: httpx.Client | None = None


@signals.worker_process_init.connect
def _build_client(**_: Any) -> None:
    # Per process, after fork, before the first task: as the gateway's worker does.
    global _client
    _client = httpx.Client(timeout=10)


@plain_app.task(name="bench.http_call")
def http_call(url: str, n: int) -> None:
    assert _client is not None
    _client.post(url, json={"job_id": str(n), "input_data": {"n": n}}).raise_for_status()
