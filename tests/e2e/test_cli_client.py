"""The operator CLI (`cao submit/jobs/show/resume/cancel`) as real processes against a
live API and real workers: exit codes, what it prints, and that its actions happen."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.e2e.operator_support import key_of, secured_api, submit, wait_for_step
from tests.harness import CAO, wait_for_job

pytestmark = pytest.mark.slow


def cao(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # A wide terminal so that tables print ids whole.
    full_env = {**os.environ, "COLUMNS": "250", **env}
    return subprocess.run(
        [*CAO, *args], env=full_env, capture_output=True, text=True, timeout=90, check=False
    )


def test_submit_watch_exits_zero_on_completion_and_non_zero_on_failure(stack, api_server):
    api, sim = stack["api"], stack["sim"]
    done = cao(
        "submit",
        "business_plan",
        "--input",
        '{"prompt": "a bakery"}',
        "--watch",
        "--url",
        api_server,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    job_id = done.stdout.splitlines()[0]
    job = api.get(f"/api/v1/jobs/{job_id}").json()
    assert job["status"] == "COMPLETED"
    assert job["outputs"]["email_notifier"]["message_id"] in done.stdout

    sim.behave("flaky", failure_rate=1.0, failure_status=400)
    failed = cao("submit", "flaky_then_mail", "--watch", "--url", api_server)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    job_id = failed.stdout.splitlines()[0]
    assert f"job {job_id} FAILED" in failed.stderr
    assert api.get(f"/api/v1/jobs/{job_id}").json()["status"] == "FAILED"

    refused = cao("submit", "no_such_feature", "--url", api_server)
    assert refused.returncode == 1
    assert "422 unknown_feature" in refused.stderr


def test_jobs_show_resume_and_cancel_act_on_the_gateway(stack, api_server):
    api, sim = stack["api"], stack["sim"]
    sim.behave("flaky", failure_rate=1.0, failure_status=400)
    job_id = submit(api, "flaky_then_mail")
    assert wait_for_job(api, job_id)["status"] == "FAILED"

    listed = cao("jobs", "--status", "FAILED", "--feature", "flaky_then_mail", "--url", api_server)
    assert listed.returncode == 0, listed.stderr
    assert job_id in listed.stdout

    shown = cao("show", job_id, "--url", api_server)
    assert shown.returncode == 0, shown.stderr
    for expected in ("FAILED", "http_400", "flaky", "email_notifier", "1/3"):
        assert expected in shown.stdout, (expected, shown.stdout)
    as_json = cao("show", job_id, "--json", "--url", api_server)
    assert json.loads(as_json.stdout) == api.get(f"/api/v1/jobs/{job_id}").json()

    sim.behave("flaky")
    resumed = cao("resume", job_id, "--from-step", "0", "--watch", "--url", api_server)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"job {job_id} resumed at step 0 (flaky): PENDING" in resumed.stdout
    assert api.get(f"/api/v1/jobs/{job_id}").json()["status"] == "COMPLETED"

    again = cao("cancel", job_id, "--url", api_server)
    assert again.returncode == 1
    assert "409 job_not_cancellable" in again.stderr

    sim.behave("fast_chat_llm", latency_ms=8000)  # outlasts a slow CLI start; cancel interrupts it
    running = submit(api, "four_steps")
    wait_for_step(api, running, 1, "RUNNING")
    cancelled = cao("cancel", running, "--url", api_server)
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"job {running} CANCELLED" in cancelled.stdout
    assert api.get(f"/api/v1/jobs/{running}").json()["status"] == "CANCELLED"


def test_api_key_comes_from_the_option_or_the_environment(env, log_dir, migrated):
    with secured_api(env, log_dir) as url:
        anonymous = cao("jobs", "--url", url)
        assert anonymous.returncode == 1
        assert "401 missing_api_key" in anonymous.stderr
        assert cao("jobs", "--url", url, "--api-key", key_of("operator")).returncode == 0
        by_env = cao("jobs", CAO_URL=url, CAO_API_KEY=key_of("client_a"))
        assert by_env.returncode == 0, by_env.stderr
        forbidden = cao(  # resume is an operator's (a client may cancel its own jobs)
            "resume",
            "00000000-0000-4000-8000-000000000000",
            CAO_URL=url,
            CAO_API_KEY=key_of("client_a"),
        )
        assert "403 operator_required" in forbidden.stderr
    unreachable = cao("jobs", "--url", url)
    assert unreachable.returncode == 2
    assert "cannot reach the gateway" in unreachable.stderr


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ('{"prompt": ', "not valid JSON"),
        ('{"score": NaN}', "NaN is not a JSON number"),
        ('["a list"]', "must be a JSON object"),
        ("@/no/such/input.json", "cannot read /no/such/input.json"),
    ],
)
def test_submit_refuses_bad_input_before_sending_anything(given, says):
    # Port 9 (discard): were anything sent, the error would be a connection failure.
    refused = cao("submit", "business_plan", "--input", given, "--url", "http://127.0.0.1:9")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert says in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
