"""The baseline: a plain Celery app running chains of no-op tasks, optionally writing a
row per step, with the same reliability settings as the gateway's worker."""

from __future__ import annotations

import os
import time

import psycopg
import redis
from celery import Celery

BROKER = os.environ["REDIS_URL"]
DATABASE = os.environ.get("BENCH_PG_URL", "")
DONE_KEY = "bench:chain:done"

chain_app = Celery("bench_chain", broker=BROKER)
chain_app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue="chain",
    worker_hijack_root_logger=False,
)
_conn: psycopg.Connection | None = None
_redis: redis.Redis | None = None


def _db() -> psycopg.Connection:
    global _conn
    if _conn is None:
        _conn = psycopg.connect(DATABASE)
    return _conn


def _done() -> None:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(BROKER)
    _redis.incr(DONE_KEY)


@chain_app.task(name="bench.noop")
def noop(previous: object, step: int, last: bool) -> dict[str, bool]:
    if last:
        _done()
    return {"ok": True}


@chain_app.task(name="bench.noop_db")
def noop_db(previous: object, step: int, last: bool, run_id: str) -> dict[str, bool]:
    with _db().transaction():
        _db().execute(
            "INSERT INTO bench_step (run_id, step, done_at) VALUES (%s, %s, now())", (run_id, step)
        )
    if last:
        _done()
    return {"ok": True}


def stamps_key(run_id: str) -> str:
    return f"bench:chain:stamps:{run_id}"


@chain_app.task(name="bench.stamped")
def stamped(previous: object, step: int, last: bool, run_id: str) -> dict[str, bool]:
    """A no-op that records when the first step ran and when the last one finished, for
    one chain at a time (the latency of the front-door benchmark)."""
    global _redis
    if step == 0 or last:
        if _redis is None:
            _redis = redis.Redis.from_url(BROKER)
        _redis.hset(stamps_key(run_id), str(step), repr(time.time()))
    return {"ok": True}
