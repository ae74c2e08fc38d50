"""Shared set-up for benchmarks: a scratch PostgreSQL database, a Redis database and
the environment every process of the run gets (set before app modules are imported)."""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psycopg

ROOT = Path(__file__).resolve().parent.parent
_Result = TypeVar("_Result")
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_BASE = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")


@contextlib.contextmanager
def scratch_environment(redis_db: int = 12, **extra: str) -> Iterator[dict[str, str]]:
    """A fresh PostgreSQL database and a flushed Redis database for one run."""
    import redis

    name = f"cao_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    pg_url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    redis_url = f"{REDIS_BASE}/{redis_db}"
    redis.Redis.from_url(redis_url).flushdb()
    env = {
        "DATABASE_URL": pg_url.replace("postgresql://", "postgresql+psycopg://"),
        "BENCH_PG_URL": pg_url,
        "REDIS_URL": redis_url,
        "CAO_CATALOG": str(ROOT / "benchmarks" / "catalog.yaml"),
        "CAO_ENV": "test",
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
        **extra,
    }
    os.environ.update(env)
    # This process's settings follow the run's environment, whatever read them first
    # (a catalog parsed at import reads HTTP_READ_TIMEOUT_S).
    from app.config import get_settings

    get_settings.cache_clear()
    try:
        yield {**os.environ}
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_folder(catalog: str) -> tuple[Path, Path]:
    """A fresh folder for a run's logs, holding the run's catalog: (folder, catalog)."""
    logs = Path(tempfile.mkdtemp(prefix="cao-bench-"))
    path = logs / "catalog.yaml"
    path.write_text(catalog)
    return logs, path


def add_run_options(parser: argparse.ArgumentParser, redis_db: int) -> None:
    """The options every comparison benchmark takes: its Redis database and rounds."""
    parser.add_argument("--redis-db", type=int, default=redis_db)
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each running all")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def run_rounds(
    runs: dict[str, Callable[[dict[str, str]], _Result]], rounds: int, env: dict[str, str]
) -> list[dict[str, _Result]]:
    """Each run once per round, starting one later in the order each round (so that no
    run always goes first while the machine drifts); results per round, by name."""
    names = list(runs)
    results = []
    for number in range(rounds):
        shift = number % len(names)
        order = names[shift:] + names[:shift]
        print(f"round {number + 1}/{rounds}: {', '.join(order)}", flush=True)
        done = {name: runs[name](env) for name in order}
        results.append({name: done[name] for name in names})
    return results


def python() -> str:
    return sys.executable


# What a plain Celery baseline shares with the gateway's (app/broker.py, worker/celery_app.py):
# at-least-once delivery, one message per process at a time, no result backend.
BASELINE_CELERY_CONF = {
    "task_serializer": "json",
    "accept_content": ["json"],
    "task_ignore_result": True,
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
    "worker_hijack_root_logger": False,
}


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children (a worker: its main process and its pool)."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def wait_until_idle(pid: int, timeout: float = 60.0, window: float = 0.5) -> None:
    """Wait until a process and its children stop using CPU (a pool finished forking
    and initialising), so that start-up work is not timed as part of a run."""
    import time

    deadline = time.monotonic() + timeout
    before = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(window)
        now = cpu_seconds(pid)
        if now - before < 0.02 * window:
            return
        before = now
    raise TimeoutError(f"process {pid} still busy after {timeout:g}s")
