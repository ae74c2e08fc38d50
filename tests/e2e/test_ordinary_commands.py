"""Acceptance: the ordinary commands of the tools run the gateway as the `cao` ones do.

`uvicorn app.main:app` serves the API (its lifespan does the start-up `cao api` does),
`celery -A worker.celery_app worker` runs steps and `celery -A worker.celery_app beat`
starts, with settings from the same environment; a job completes through them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.operator_support import submit
from tests.harness import Proc, free_port, running, wait_for_job

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
# A queue of this test's own, so that the job can only run on the worker started here.
CATALOG = """
services:
  plain_words: {kind: python, target: "app.steps:word_count", queue: plain, timeout_s: 10}
  plain_noop: {kind: python, target: "app.steps:noop", queue: plain, timeout_s: 10}
features:
  plain_job: {steps: [{service: plain_words, weight: 3}, plain_noop]}
"""


@pytest.mark.timeout(120)
def test_uvicorn_and_celery_commands_run_a_job_end_to_end(env, log_dir, migrated, tmp_path):
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG)
    plain_env = {**env, "CAO_CATALOG": str(catalog), "RUN_MIGRATIONS_ON_STARTUP": "true"}
    port = free_port()
    api_argv = [str(BIN / "uvicorn"), "app.main:app", "--port", str(port)]
    worker_argv = [str(BIN / "celery"), "-A", "worker.celery_app", "worker"]
    worker_argv += ["-Q", "plain", "--concurrency", "2"]
    beat_argv = [str(BIN / "celery"), "-A", "worker.celery_app", "beat"]
    beat_argv += ["--schedule", str(tmp_path / "beat-schedule")]
    with (
        running(Proc("uvicorn", api_argv, plain_env, log_dir)) as api_proc,
        running(Proc("celery-worker", worker_argv, plain_env, log_dir)) as worker,
        running(Proc("celery-beat", beat_argv, plain_env, log_dir)) as beat,
    ):
        api_proc.wait_for_port(port, 60)
        worker.wait_for_log("ready.", timeout=60)
        beat.wait_for_log("beat: Starting", timeout=60)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as api:
            job_id = submit(api, "plain_job", {"text": "three little words"})
            job = wait_for_job(api, job_id, timeout=30)
            assert job["status"] == "COMPLETED", job
            assert job["outputs"] == {"plain_words": {"words": 3}, "plain_noop": {"ok": True}}
            events = api.get(f"/api/v1/jobs/{job_id}/events").json()["events"]
        assert [e["progress"] for e in events if e["type"] == "STEP_COMPLETED"] == [75, 100]
        # The lifespan did what `cao api` does at start-up: migrations, then ready.
        assert "api ready" in api_proc.log_text()
        assert worker.alive()
        assert beat.alive()
