"""No job lost when Redis goes away: jobs created during the outage are committed and
answered 201, and Beat puts them on their queues once Redis is back.

Everything here runs against a private `redis-server` that the test stops and
restarts (never the shared one): its own API, worker and Beat point at it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import CAO, Proc, Simulators, serving_api, wait_for_job
from tests.lease_support import RedisServer, beat_running

pytestmark = pytest.mark.slow

JOBS_DURING_OUTAGE = 6


@pytest.fixture
def redis_server(log_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(log_dir)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def outage_env(env: dict[str, str], redis_server: RedisServer) -> dict[str, str]:
    return {**env, "REDIS_URL": redis_server.url, "REQUEUE_AFTER_SECONDS": "2"}


@pytest.fixture
def outage_api(outage_env: dict[str, str], log_dir: Path, migrated: str) -> Iterator[httpx.Client]:
    with serving_api("api-outage", outage_env, log_dir) as client:
        yield client


def create(api: httpx.Client) -> tuple[str, float]:
    started = time.monotonic()
    response = api.post("/api/v1/jobs", json={"feature_name": "fragile_job", "input_data": {}})
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "PENDING"
    return response.json()["job_id"], time.monotonic() - started


def test_jobs_created_while_redis_is_down_complete_once(
    sim: Simulators, redis_server, outage_env, outage_api, log_dir
):
    """AC4: Redis stopped while jobs are created (201), restarted: all complete, none twice."""
    argv = [*CAO, "worker", "-Q", "default", "-c", "2"]
    worker = Proc("worker-outage", argv, outage_env, log_dir)
    try:
        worker.wait_for_log("ready.", timeout=60)
        with beat_running(outage_env, log_dir):
            before, _ = create(outage_api)
            assert wait_for_job(outage_api, before)["status"] == "COMPLETED"

            redis_server.stop()
            created = [create(outage_api) for _ in range(JOBS_DURING_OUTAGE)]
            redis_server.start()

            for job_id, _ in created:
                job = wait_for_job(outage_api, job_id, timeout=90)
                assert job["status"] == "COMPLETED", job
    finally:
        worker.stop()

    slowest = max(seconds for _, seconds in created)
    print(f"slowest create while Redis was down: {slowest:.2f}s")
    assert slowest < 5, "creating a job must not hang on the broker"
    for job_id, _ in created:
        for service in ("fragile", "after_fragile"):
            assert len(sim.requests(service, job_id)) == 1, f"{service} of {job_id} ran twice"
