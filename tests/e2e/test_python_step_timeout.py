"""`timeout_s` bounds a `kind: python` step as it bounds an HTTP call: a step that runs
past it is interrupted and fails its attempt as a retryable timeout, instead of
holding its worker process, and its slot (the heartbeat renews the lease), for ever."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from app.catalog import Service
from app.services import StepError, call_service
from tests.harness import assert_failed, step_call, wait_for_job

pytestmark = pytest.mark.slow


def stubborn(input_data: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """Sleeps, and swallows every Exception while it does."""
    deadline = time.monotonic() + input_data["seconds"]
    while time.monotonic() < deadline:
        try:
            time.sleep(0.05)
        except Exception:  # noqa: BLE001, S112 (the point: a step that catches everything)
            continue
    return {"done": True}


def _call(seconds: float, target: str = f"{__name__}:stubborn") -> dict[str, Any]:
    service = Service(name="s", kind="python", target=target, timeout_s=0.3)
    return call_service(service, step_call(seconds=seconds))


# pytest-timeout's own alarm is off for these tests: with another alarm set, a step
# runs unbounded rather than disturb it (the last test shows that).
@pytest.mark.timeout(0)
def test_a_python_step_past_timeout_s_is_interrupted_and_retryable():
    started = time.monotonic()
    with pytest.raises(StepError) as failed:
        _call(seconds=30)
    assert time.monotonic() - started < 2
    assert failed.value.code == "timeout"
    assert failed.value.retryable is True
    assert "ran past timeout_s=0.3s" in failed.value.message


@pytest.mark.timeout(0)
def test_a_step_within_its_timeout_leaves_no_alarm_behind():
    before = signal.getsignal(signal.SIGALRM)
    assert _call(seconds=0.05, target="app.steps:pause") == {"paused_s": 0.05}
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) is before
    time.sleep(0.4)  # past the 0.3 s the alarm was set for: nothing goes off


@pytest.mark.timeout(60)
def test_an_alarm_set_by_something_else_is_left_alone():
    """pytest-timeout (signal method) has one set for this test."""
    handler, (delay, _) = signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL)
    assert delay > 0
    assert _call(seconds=0.5, target="app.steps:pause") == {"paused_s": 0.5}  # past 0.3 s
    assert signal.getsignal(signal.SIGALRM) is handler
    assert 0 < signal.getitimer(signal.ITIMER_REAL)[0] < delay


def test_a_hung_python_step_fails_retryable_after_its_attempts_in_a_worker(stack):
    """Through a real prefork worker, whose pool processes run steps in their main
    thread; the same worker then runs the next job."""
    api = stack["api"]
    created = api.post(
        "/api/v1/jobs", json={"feature_name": "napping_job", "input_data": {"seconds": 60}}
    )
    job = wait_for_job(api, created.json()["job_id"], timeout=30)
    assert_failed(job, retryable=True, code="timeout", says=("ran past timeout_s=0.5s",))
    assert job["steps"][0]["attempt"] == 2
    after = api.post("/api/v1/jobs", json={"feature_name": "python_job", "input_data": {}})
    assert wait_for_job(api, after.json()["job_id"])["status"] == "COMPLETED"
