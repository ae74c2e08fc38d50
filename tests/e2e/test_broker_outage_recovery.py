"""A broker outage ends, and the steps it kept back start at once, not on a timer.

Sends the broker refused are marked unsent and sent by whichever process finds it
back first (app/jobs/outbox.py): the API for the jobs it accepted meanwhile, a worker
for a next step or a retry it recorded meanwhile, Beat's sweep for the marks of a
process gone. Requeue settings are the defaults (REQUEUE_AFTER_SECONDS 120), so only
the outbox can start these jobs within the test's bounds; JOB_STUCK_SECONDS is far
below the outage, which must not count against the jobs.

Everything here runs against a private `redis-server` that the tests stop and start
again (never the shared one): its own API, worker and Beat point at it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import CAO, Proc, Simulators, serving_api, wait_for_job, wait_until
from tests.lease_support import RedisServer, beat_running

pytestmark = pytest.mark.slow

JOBS_DURING_OUTAGE = 8
JOB_STUCK_S = 4.0
# Acceptance: every job COMPLETED within this of the broker's return.
BACK_WITHIN_S = 20.0


@pytest.fixture(scope="module")
def broker(log_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(log_dir)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def outage_env(env: dict[str, str], broker: RedisServer) -> dict[str, str]:
    return {
        **env,
        "REDIS_URL": broker.url,
        "REQUEUE_AFTER_SECONDS": "120",  # the default: no requeue timer helps here
        "JOB_STUCK_SECONDS": str(JOB_STUCK_S),
    }


@pytest.fixture(scope="module")
def api(outage_env: dict[str, str], log_dir: Path, migrated: str) -> Iterator[httpx.Client]:
    with serving_api("api-broker-outage", outage_env, log_dir) as client:
        yield client


@pytest.fixture(scope="module")
def worker_and_beat(outage_env: dict[str, str], log_dir: Path, migrated: str) -> Iterator[None]:
    argv = [*CAO, "worker", "-Q", "default", "-c", "3"]
    worker = Proc("worker-broker-outage", argv, outage_env, log_dir)
    try:
        worker.wait_for_log("ready.", timeout=60)
        with beat_running(outage_env, log_dir):
            yield
    finally:
        worker.stop()


@pytest.fixture
def stack(sim: Simulators, api: httpx.Client, worker_and_beat: None) -> httpx.Client:
    return api


def create(api: httpx.Client, feature: str) -> str:
    response = api.post("/api/v1/jobs", json={"feature_name": feature, "input_data": {}})
    assert response.status_code == 201, response.text
    return str(response.json()["job_id"])


def step(api: httpx.Client, job_id: str, index: int) -> dict[str, Any]:
    return dict(api.get(f"/api/v1/jobs/{job_id}").json()["steps"][index])


def finished_after(job: dict[str, Any], moment: datetime) -> float:
    return (datetime.fromisoformat(job["finished_at"]) - moment).total_seconds()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    wait_until(lambda: condition() or None, timeout, 0.05, what)


def test_jobs_accepted_while_the_broker_is_down_complete_soon_after_it_returns(
    stack: httpx.Client, sim: Simulators, broker: RedisServer
):
    """AC1: Redis stopped, jobs created (201), Redis started again: every job COMPLETED
    within 20 s of its return with the default requeue settings, each step called once,
    none failed as stuck for an outage longer than JOB_STUCK_SECONDS."""
    api = stack
    assert wait_for_job(api, create(api, "fragile_job"))["status"] == "COMPLETED"

    broker.stop()
    outage_began = time.monotonic()
    # All at once: they commit in batches (app/jobs/admission.py) whose first steps the
    # broker refuses together.
    with ThreadPoolExecutor(JOBS_DURING_OUTAGE) as pool:
        created = list(pool.map(lambda _: create(api, "fragile_job"), range(JOBS_DURING_OUTAGE)))
    # Longer than JOB_STUCK_SECONDS: the wait is the gateway's, not the jobs'.
    time.sleep(max(0.0, outage_began + JOB_STUCK_S + 1 - time.monotonic()))
    broker.start()
    back_at = datetime.now(UTC)

    jobs = [wait_for_job(api, job_id, timeout=BACK_WITHIN_S + 10) for job_id in created]
    for job in jobs:
        assert job["status"] == "COMPLETED", job
    slowest = max(finished_after(job, back_at) for job in jobs)
    print(f"every job completed {slowest:.2f}s after the broker's return")
    assert slowest < BACK_WITHIN_S
    for job_id in created:
        for service in ("fragile", "after_fragile"):
            assert len(sim.requests(service, job_id)) == 1, f"{service} of {job_id} ran twice"


def test_a_next_step_and_a_retry_recorded_while_the_broker_is_down_are_sent_on_its_return(
    stack: httpx.Client, sim: Simulators, broker: RedisServer
):
    """A worker records a step's result (its next step to send) and a failed attempt
    (its retry to send) while Redis is down: both are sent once Redis is back."""
    api = stack
    sim.behave("fragile", latency_ms=2500)
    sim.behave("flaky", script=[{"status": 503, "delay_ms": 2500}])
    next_step = create(api, "fragile_job")
    retry = create(api, "flaky_then_mail")
    wait_for(lambda: all(sim.stats(s)["in_flight"] for s in ("fragile", "flaky")), 20, "both calls")

    broker.stop()
    wait_for(
        lambda: (
            step(api, next_step, 1)["status"] == "QUEUED"
            and step(api, retry, 0)["status"] == "RETRYING"
        ),
        20,
        "both results recorded",
    )
    broker.start()
    back_at = datetime.now(UTC)

    jobs = [wait_for_job(api, job_id, timeout=BACK_WITHIN_S + 10) for job_id in (next_step, retry)]
    for job in jobs:
        assert job["status"] == "COMPLETED", job
    slowest = max(finished_after(job, back_at) for job in jobs)
    print(f"both jobs completed {slowest:.2f}s after the broker's return")
    assert slowest < BACK_WITHIN_S
    calls = {
        (service, job_id): len(sim.requests(service, job_id))
        for service, job_id in [
            ("fragile", next_step),
            ("after_fragile", next_step),
            ("flaky", retry),
            ("email_notifier", retry),
        ]
    }
    assert calls == {
        ("fragile", next_step): 1,
        ("after_fragile", next_step): 1,
        ("flaky", retry): 2,  # the 503, then its retry
        ("email_notifier", retry): 1,
    }
