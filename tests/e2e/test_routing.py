"""Acceptance: each step runs only on its service's queue."""

from __future__ import annotations

import time

import pytest

from tests.harness import wait_for_job, wait_until

pytestmark = pytest.mark.slow


def test_step_waits_queued_until_its_queue_has_a_worker(sim, workers, api):
    workers.stop("heavy")
    workers.ensure("default", "medium")
    try:
        job_id = api.post("/api/v1/jobs", json={"feature_name": "viral_video"}).json()["job_id"]

        def at_video_step():
            job = api.get(f"/api/v1/jobs/{job_id}").json()
            return job if job["steps"][1]["status"] == "QUEUED" else None

        wait_until(at_video_step, 30, message="video_gen_v2 to be queued")
        time.sleep(2)  # nothing on the heavy queue may pick it up meanwhile
        job = api.get(f"/api/v1/jobs/{job_id}").json()
        assert job["status"] == "RUNNING"
        assert job["current_step"] == 1
        assert job["current_step_name"] == "video_gen_v2"
        assert [s["status"] for s in job["steps"]] == ["COMPLETED", "QUEUED", "PENDING"]
        assert sim.requests("video_gen_v2", job_id) == []
        services = {s["name"]: s for s in api.get("/api/v1/services").json()["services"]}
        assert services["video_gen_v2"]["queue"] == "heavy"
        assert services["video_gen_v2"]["queue_depth"] >= 1
    finally:
        workers.start("heavy")
    done = wait_for_job(api, job_id, timeout=60)
    assert done["status"] == "COMPLETED"
    assert len(sim.requests("video_gen_v2", job_id)) == 1
