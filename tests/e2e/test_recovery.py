"""No job lost: a worker killed or frozen mid-step, a job that never progresses, and
Beat's sweeps racing each other. Workers and Beat are real processes; the `fragile`
service has a 2 s lease so that recovery takes seconds."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from app.leases import LeaseId, LeaseSemaphore
from app.redis_client import build_redis
from tests.e2e.operator_support import event_types, submit
from tests.harness import (
    CAO,
    Proc,
    Simulators,
    Workers,
    assert_failed,
    wait_for_job,
    wait_until,
)
from tests.lease_support import beat_running, queued_deliveries

pytestmark = pytest.mark.slow

LEASE_TTL_S = 2.0  # `fragile` in tests/catalog.yaml


def start_victim(workers: Workers) -> Proc:
    """The only consumer of the default queue, so that it takes the fragile step."""
    workers.stop("default")
    return workers.start("default", concurrency=1, name="victim")


def fragile_job_in_flight(api: Any, sim: Simulators) -> str:
    job_id = submit(api, "fragile_job")
    wait_until(lambda: sim.stats("fragile")["in_flight"] == 1, 30, 0.02, "the fragile call")
    return job_id


def fragile_leases_in_use() -> int:
    client = build_redis()
    try:
        return LeaseSemaphore(client).usage("fragile").in_use
    finally:
        client.close()


def test_killed_worker_lease_is_reclaimed_and_step_rerun(sim, api, workers, env, log_dir, db):
    """AC2: SIGKILL mid-step; the lease comes back after lease_ttl_s, the step runs again,
    the job completes and the next step is called exactly once."""
    sim.behave("fragile", script=[{"delay_ms": 60_000}])  # the first call hangs; retries don't
    victim = start_victim(workers)
    job_id = fragile_job_in_flight(api, sim)
    workers.start("default")  # the rescuer; it also runs Beat's sweeps
    with beat_running(env, log_dir):
        victim.kill()
        workers.procs.pop("victim")
        killed_at = time.time()
        assert fragile_leases_in_use() == 1, "a dead worker's slot is held until its lease expires"
        job = wait_for_job(api, job_id, timeout=60)

    assert job["status"] == "COMPLETED", job
    first, second = sim.requests("fragile", job_id)
    assert (first["attempt"], second["attempt"]) == (1, 2)
    # The lease was renewed at most lease_ttl_s / 3 before the kill.
    assert second["received_at"] - killed_at >= LEASE_TTL_S * 2 / 3 - 0.1
    assert len(sim.requests("after_fragile", job_id)) == 1, "the next step ran twice"
    assert job["steps"][0]["attempt"] == 2
    assert event_types(job_id).count("STEP_RETRYING") == 1
    assert fragile_leases_in_use() == 0


def test_a_long_healthy_call_keeps_its_lease_and_runs_once(sim, api, workers, env, log_dir, db):
    """A call three times longer than lease_ttl_s, with Beat reaping meanwhile: its
    worker renews the lease, so it is never reaped, the step is called once and the
    slot is held throughout."""
    workers.ensure("default")
    sim.behave("fragile", script=[{"delay_ms": 3 * LEASE_TTL_S * 1000}])
    with beat_running(env, log_dir):
        job_id = fragile_job_in_flight(api, sim)
        time.sleep(2 * LEASE_TTL_S)
        assert fragile_leases_in_use() == 1, "the lease lapsed while its call ran"
        job = wait_for_job(api, job_id, timeout=30)
    assert job["status"] == "COMPLETED", job
    assert len(sim.requests("fragile", job_id)) == 1
    assert "STEP_RETRYING" not in event_types(job_id)
    assert job["steps"][0]["attempt"] == 1
    assert fragile_leases_in_use() == 0


def test_frozen_worker_late_result_is_rejected(sim, api, workers, env, log_dir, db):
    """AC3: SIGSTOP past 2 x lease_ttl_s while another worker finishes the step; after
    SIGCONT the frozen worker's result changes nothing."""
    sim.behave("fragile", script=[{"delay_ms": 3_000}])
    victim = start_victim(workers)
    job_id = fragile_job_in_flight(api, sim)
    # Frozen at once, with its call in flight: starting the rescuer and Beat first took
    # longer than the call on a loaded machine, and the victim finished the job itself.
    victim.signal_group(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        workers.start("default")
        with beat_running(env, log_dir):
            job = wait_for_job(api, job_id, timeout=60)
            assert job["status"] == "COMPLETED", job
            events_before = event_types(job_id)
            time.sleep(max(0.0, stopped_at + 2 * LEASE_TTL_S + 1 - time.monotonic()))
            victim.signal_group(signal.SIGCONT)
            victim.wait_for_log("late result discarded", timeout=30)
    finally:
        victim.signal_group(signal.SIGCONT)
        workers.stop("victim")

    assert api.get(f"/api/v1/jobs/{job_id}").json() == job, "the late result changed the job"
    assert event_types(job_id) == events_before
    assert [r["attempt"] for r in sim.requests("fragile", job_id)] == [1, 2]
    assert len(sim.requests("after_fragile", job_id)) == 1, "the next step ran twice"


def test_job_without_progress_fails_retryable(api, workers, env, log_dir, db):
    """AC5: no progress for JOB_STUCK_SECONDS → FAILED, retryable, with a clear error."""
    workers.ensure("default")  # runs the sweep; nothing consumes the `stalled` queue
    with beat_running(env, log_dir, JOB_STUCK_SECONDS="3", SANITY_CHECK_INTERVAL_SECONDS="0.5"):
        job_id = submit(api, "stalled_job")
        job = wait_for_job(api, job_id, timeout=30)
    assert_failed(
        job,
        retryable=True,
        code="job_stuck",
        says=("no progress for 3s", "(stalled) stayed QUEUED"),
    )
    assert job["steps"][0]["status"] == "FAILED"
    assert event_types(job_id)[-1] == "JOB_ERROR"


def test_worker_refuses_a_visibility_timeout_shorter_than_a_step(env):
    done = subprocess.run(
        [*CAO, "worker", "-Q", "default"],
        env={**env, "BROKER_VISIBILITY_TIMEOUT_S": "10"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "BROKER_VISIBILITY_TIMEOUT_S=10 must be longer than the longest step" in done.stderr


# --- AC7: sweeps racing each other --------------------------------------------------------


def _stuck_steps(count: int) -> list[uuid.UUID]:
    from app.catalog import current_catalog
    from app.db import session_scope
    from app.jobs.service import create_job

    with session_scope() as session:
        return [
            create_job(session, current_catalog(), feature_name="stalled_job", input_data={}).job.id
            for _ in range(count)
        ]


def _set_step(job_id: uuid.UUID, **values: Any) -> None:
    from app.db import session_scope
    from app.models import JobStep

    with session_scope() as session:
        session.execute(
            update(JobStep)
            .where(JobStep.job_id == job_id, JobStep.step_index == 0)
            .values(**values)
        )


def test_concurrent_sweeps_requeue_each_stuck_step_once(db):
    """AC7: two sanity checks and two reapers at the same moment: one re-enqueue each."""
    from app.catalog import current_catalog
    from app.db import session_scope
    from app.events.log import append_event
    from app.events.types import EventType
    from app.models import utcnow
    from worker import maintenance

    long_ago = utcnow() - timedelta(minutes=10)
    lease_expired, lease_gone, message_lost, waiting, retry_later = _stuck_steps(5)
    for job_id in (lease_expired, lease_gone):  # a worker died mid-call
        _set_step(job_id, status="RUNNING", started_at=long_ago, heartbeat_at=long_ago)
    _set_step(message_lost, queued_at=long_ago)
    _set_step(waiting, status="WAITING_FOR_SLOT", queued_at=long_ago)
    _set_step(retry_later, status="RETRYING", queued_at=long_ago)
    with session_scope() as session:
        append_event(
            session,
            retry_later,
            EventType.STEP_RETRYING,
            step_index=0,
            step_name="stalled",
            attempt=1,
            data={"delay_s": 3600},
        )
    client = build_redis()
    semaphore = LeaseSemaphore(client)
    semaphore.acquire("stalled", LeaseId(str(lease_expired), 0, 1, "stalled"), 0.05, limit=1)
    time.sleep(0.1)
    # The service is full (by other steps), so the waiting one stays on its wait list.
    limit = current_catalog().services["stalled"].concurrency
    for _ in range(limit):
        semaphore.acquire("stalled", LeaseId(str(uuid.uuid4()), 0, 1, "x"), 600, limit=limit)
    semaphore.acquire("stalled", LeaseId(str(waiting), 0, 1, "stalled"), 600, limit=limit)
    queued_deliveries("stalled")  # drop the creation messages

    sweeps = [maintenance.sanity_check_stuck_jobs, maintenance.reap_expired_leases] * 2
    start = threading.Barrier(len(sweeps))

    def run(sweep: Any) -> None:
        start.wait()
        sweep(**({"requeue_after_s": 5, "job_stuck_s": 3600} if "sanity" in sweep.name else {}))

    threads = [threading.Thread(target=run, args=(sweep,)) for sweep in sweeps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        deliveries = sorted(queued_deliveries("stalled"))
        expected = sorted(
            [(str(lease_expired), 0, 2), (str(lease_gone), 0, 2), (str(message_lost), 0, 1)]
        )
        assert deliveries == expected
        for job_id in (lease_expired, lease_gone):
            assert event_types(str(job_id)).count("STEP_RETRYING") == 1
    finally:
        client.delete(*LeaseSemaphore.keys("stalled"))
        client.close()


def test_leases_of_a_service_removed_from_the_catalog_are_still_reaped(db):
    """A job keeps calling a service its recipe snapshot names after the service leaves
    the catalog; when its worker dies, the reaper still finds that service's expired
    lease and puts the step back (the lease names a service the live catalog lacks)."""
    from app.catalog import current_catalog
    from app.models import utcnow
    from worker import maintenance

    retired = f"retired_{uuid.uuid4().hex[:8]}"
    assert retired not in current_catalog().services
    (job_id,) = _stuck_steps(1)
    _set_step(job_id, status="RUNNING", fence=1, started_at=utcnow(), heartbeat_at=utcnow())
    queued_deliveries("stalled")  # drop the creation message
    client = build_redis()
    semaphore = LeaseSemaphore(client)
    try:
        semaphore.acquire(retired, LeaseId(str(job_id), 0, 1, "stalled"), 0.05, limit=1)
        time.sleep(0.1)
        maintenance.reap_expired_leases()
        assert queued_deliveries("stalled") == [(str(job_id), 0, 2)]
        assert event_types(str(job_id)).count("STEP_RETRYING") == 1
        assert semaphore.usage(retired).in_use == 0
    finally:
        client.delete(*LeaseSemaphore.keys(retired))
        client.close()
