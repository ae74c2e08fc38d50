"""Acceptance: the retry taxonomy, backoff with Retry-After, and timeouts."""

from __future__ import annotations

import pytest

from tests.harness import assert_failed, wait_for_job

pytestmark = pytest.mark.slow


def _create(api, feature):
    response = api.post("/api/v1/jobs", json={"feature_name": feature, "input_data": {"n": 1}})
    assert response.status_code == 201, response.text
    return response.json()["job_id"]


def test_503_twice_then_200_completes_after_three_attempts_with_one_key(stack):
    api, sim = stack["api"], stack["sim"]
    sim.behave("flaky", script=[{"status": 503}, {"status": 503}])
    job_id = _create(api, "flaky_then_mail")
    job = wait_for_job(api, job_id)
    assert job["status"] == "COMPLETED", job
    calls = sim.requests("flaky", job_id)
    assert [c["status"] for c in calls] == [503, 503, 200]
    assert [c["attempt"] for c in calls] == [1, 2, 3]
    assert {c["idempotency_key"] for c in calls} == {f"{job_id}:0"}
    assert job["steps"][0]["attempt"] == 3
    assert len(sim.requests("email_notifier", job_id)) == 1


def test_429_retry_after_is_honoured(stack):
    api, sim = stack["api"], stack["sim"]
    sim.behave("flaky", script=[{"status": 429, "retry_after": 1}])
    job_id = _create(api, "flaky_then_mail")
    assert wait_for_job(api, job_id)["status"] == "COMPLETED"
    first, second = sim.requests("flaky", job_id)
    assert first["status"] == 429
    assert second["received_at"] - first["received_at"] >= 1.0


def test_400_fails_at_once_and_is_not_retryable(stack):
    api, sim = stack["api"], stack["sim"]
    sim.behave("flaky", script=[{"status": 400, "body": {"error": "prompt too short"}}])
    job_id = _create(api, "flaky_then_mail")
    job = wait_for_job(api, job_id)
    assert_failed(job, retryable=False, code="http_400", says=("prompt too short",))
    assert len(sim.requests("flaky", job_id)) == 1
    assert sim.requests("email_notifier", job_id) == []


def test_non_json_body_is_permanent(stack):
    api, sim = stack["api"], stack["sim"]
    sim.behave("flaky", script=[{"status": 200, "body": "<html>oops</html>"}])
    job = wait_for_job(api, _create(api, "flaky_then_mail"))
    assert_failed(job, retryable=False, code="invalid_response", says=("not valid JSON",))


@pytest.mark.parametrize("number", ["NaN", "Infinity", "1e999"])
def test_an_answer_json_cannot_store_is_permanent(stack, number):
    """Python's JSON reader accepts NaN and infinities; the job's JSON columns do not.
    Such an answer fails the step at once, with the reason, rather than failing the
    commit of its result and leaving the step to the stuck-job sweep."""
    api, sim = stack["api"], stack["sim"]
    sim.behave("flaky", script=[{"status": 200, "body": f'{{"score": {number}}}'}])
    job_id = _create(api, "flaky_then_mail")
    job = wait_for_job(api, job_id, timeout=15)
    assert_failed(job, retryable=False, code="invalid_response", says=("not valid JSON", number))
    assert len(sim.requests("flaky", job_id)) == 1
    assert sim.requests("email_notifier", job_id) == []


def test_hanging_service_times_out_every_attempt_and_fails_retryable(stack):
    api, sim = stack["api"], stack["sim"]
    sim.behave("sleepy", hang=True)
    job_id = _create(api, "sleepy_job")
    job = wait_for_job(api, job_id, timeout=30)
    assert_failed(job, retryable=True, code="timeout", says=("timed out",))
    assert job["steps"][0]["attempt"] == 2  # max_attempts of `sleepy`
    assert len(sim.requests("sleepy", job_id)) == 2


def test_python_steps_run_in_the_worker(stack):
    api = stack["api"]
    response = api.post(
        "/api/v1/jobs",
        json={"feature_name": "python_job", "input_data": {"text": "one two three"}},
    )
    job = wait_for_job(api, response.json()["job_id"])
    assert job["status"] == "COMPLETED"
    assert job["outputs"] == {"words": {"words": 3}, "noop": {"ok": True}}


def test_error_text_the_database_cannot_hold_is_stored_cleaned(stack):
    """A service's error page may hold NUL bytes (PostgreSQL text cannot) or be huge: the
    job still fails at once with the error, instead of failing the commit of its failure
    and leaving the step to the stuck-job sweep."""
    api, sim = stack["api"], stack["sim"]
    page = "bad\x00input " + "x" * 20_000
    sim.behave("flaky", script=[{"status": 400, "body": page}])
    job_id = _create(api, "flaky_then_mail")
    job = wait_for_job(api, job_id, timeout=15)
    assert_failed(job, retryable=False, code="http_400", says=("bad\ufffdinput",))
    assert len(job["error"]) <= 2000
    assert len(sim.requests("flaky", job_id)) == 1
