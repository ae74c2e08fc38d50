"""Resume: a FAILED job restarts at its failed step (or an earlier one) through real
workers; completed steps are never called again, concurrent resumes start it once,
and bulk resume's dry run reports exactly what the real run then resumes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.e2e.operator_support import (
    assert_error,
    concurrently,
    event_types,
    step_fence,
    submit,
)
from tests.harness import wait_for_job

pytestmark = pytest.mark.slow

FOUR_STEPS = ["prompt_enhancer", "fast_chat_llm", "flaky", "email_notifier"]


def _fail_at_flaky(api, sim, feature="four_steps", status=503):
    """Submit a job whose `flaky` step fails (503: retried to exhaustion; 400: at once)."""
    sim.behave("flaky", failure_rate=1.0, failure_status=status)
    job = wait_for_job(api, submit(api, feature))
    assert job["status"] == "FAILED", job
    return job


def _calls(sim, job_id):
    return {name: len(sim.requests(name, job_id)) for name in FOUR_STEPS}


def test_resume_reruns_only_the_failed_step_with_a_fresh_budget(stack, db):
    api, sim = stack["api"], stack["sim"]
    failed = _fail_at_flaky(api, sim)
    job_id = failed["job_id"]
    assert failed["current_step"] == 2
    assert failed["retryable"] is True
    assert failed["steps"][2]["attempt"] == 3 == failed["steps"][2]["max_attempts"]

    sim.behave("flaky")  # the service recovers
    response = api.post(f"/api/v1/jobs/{job_id}/resume")
    assert response.status_code == 200, response.text
    resumed = response.json()
    assert resumed["status"] == "PENDING"
    assert resumed["current_step"] == 2
    assert resumed["error"] is None
    assert resumed["progress"] == failed["progress"]
    assert resumed["steps"][2]["attempt"] == 1, "resume must reset the attempt budget"

    done = wait_for_job(api, job_id)
    assert done["status"] == "COMPLETED", done
    assert _calls(sim, job_id) == {
        "prompt_enhancer": 1,
        "fast_chat_llm": 1,
        "flaky": 4,
        "email_notifier": 1,
    }
    for index in (0, 1):  # the earlier steps' records are the originals, not reruns
        assert done["steps"][index] == failed["steps"][index]
    flaky_calls = sim.requests("flaky", job_id)
    assert {call["idempotency_key"] for call in flaky_calls} == {f"{job_id}:2"}
    assert [call["attempt"] for call in flaky_calls] == [1, 2, 3, 1]
    assert flaky_calls[-1]["context"] == {n: done["outputs"][n] for n in FOUR_STEPS[:2]}
    assert event_types(job_id).count("JOB_RESUMED") == 1


def test_resume_from_an_earlier_step_keeps_what_came_before(stack):
    api, sim = stack["api"], stack["sim"]
    failed = _fail_at_flaky(api, sim)
    job_id = failed["job_id"]
    sim.behave("flaky")

    response = api.post(f"/api/v1/jobs/{job_id}/resume", json={"from_step": 1})
    assert response.status_code == 200, response.text
    resumed = response.json()
    assert resumed["current_step"] == 1
    assert resumed["progress"] == 25 < failed["progress"], "an explicit rerun lowers progress"
    assert set(resumed["outputs"]) == {"prompt_enhancer"}
    assert [s["status"] for s in resumed["steps"]] == ["COMPLETED", "QUEUED", "PENDING", "PENDING"]

    done = wait_for_job(api, job_id)
    assert done["status"] == "COMPLETED", done
    assert _calls(sim, job_id) == {
        "prompt_enhancer": 1,
        "fast_chat_llm": 2,
        "flaky": 4,
        "email_notifier": 1,
    }
    assert done["steps"][0] == failed["steps"][0]
    rerun = sim.requests("fast_chat_llm", job_id)[-1]
    assert rerun["context"] == {"prompt_enhancer": failed["outputs"]["prompt_enhancer"]}


def test_resume_refusals_use_the_envelope_and_change_nothing(stack, db):
    api, sim = stack["api"], stack["sim"]
    failed = _fail_at_flaky(api, sim, "flaky_then_mail", status=400)
    job_id = failed["job_id"]
    assert failed["current_step"] == 0
    assert failed["retryable"] is False

    for from_step in (1, 5):  # past the failed step, past the recipe
        response = api.post(f"/api/v1/jobs/{job_id}/resume", json={"from_step": from_step})
        assert_error(response, 422, "invalid_from_step")
    assert_error(
        api.post(f"/api/v1/jobs/{job_id}/resume", json={"from_step": -1}), 422, "validation_error"
    )
    assert api.get(f"/api/v1/jobs/{job_id}").json() == failed
    assert "JOB_RESUMED" not in event_types(job_id)

    completed = wait_for_job(api, submit(api, "python_job"))
    assert completed["status"] == "COMPLETED"
    assert_error(api.post(f"/api/v1/jobs/{completed['job_id']}/resume"), 409, "job_not_resumable")
    unknown = "00000000-0000-4000-8000-000000000000"
    assert_error(api.post(f"/api/v1/jobs/{unknown}/resume"), 404, "job_not_found")


def test_concurrent_resumes_start_the_job_once(stack, db):
    api, sim = stack["api"], stack["sim"]
    failed = _fail_at_flaky(api, sim, "flaky_then_mail", status=400)
    job_id = failed["job_id"]
    fence_before = step_fence(job_id, 0)
    sim.behave("flaky")

    responses = concurrently(10, lambda _: api.post(f"/api/v1/jobs/{job_id}/resume"))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] + [409] * 9, [r.text for r in responses]
    for loser in (r for r in responses if r.status_code == 409):
        assert_error(loser, 409, "job_not_resumable")

    done = wait_for_job(api, job_id)
    assert done["status"] == "COMPLETED", done
    assert event_types(job_id).count("JOB_RESUMED") == 1
    # One queue_step: the step's delivery token rose exactly once.
    assert step_fence(job_id, 0) == fence_before + 1
    assert [c["attempt"] for c in sim.requests("flaky", job_id)] == [1, 1]
    assert len(sim.requests("email_notifier", job_id)) == 1


def test_bulk_resume_dry_run_reports_exactly_what_the_real_run_resumes(stack, db):
    api, sim = stack["api"], stack["sim"]
    since = datetime.now(UTC).isoformat()
    sim.behave("flaky", failure_rate=1.0, failure_status=400)
    wanted = [submit(api, "flaky_then_mail") for _ in range(3)]
    other = submit(api, "four_steps")  # fails too, at step 2: outside the filter
    for job_id in [*wanted, other]:
        assert wait_for_job(api, job_id)["status"] == "FAILED"
    logs_before = {job_id: event_types(job_id) for job_id in [*wanted, other]}
    selection = {
        "feature_name": "flaky_then_mail",
        "failed_step": 0,
        "error": "http_400",
        "created_after": since,
    }

    dry = api.post("/api/v1/jobs/resume", json={**selection, "dry_run": True})
    assert dry.status_code == 200, dry.text
    assert dry.json()["dry_run"] is True
    assert (dry.json()["count"], dry.json()["matched"], dry.json()["more"]) == (3, 3, False)
    assert sorted(dry.json()["job_ids"]) == sorted(wanted)
    # A limit below the matches takes the oldest and says that more match.
    capped = api.post("/api/v1/jobs/resume", json={**selection, "dry_run": True, "limit": 2})
    assert (capped.json()["count"], capped.json()["matched"], capped.json()["more"]) == (2, 3, True)
    assert capped.json()["job_ids"] == wanted[:2]
    assert {job_id: event_types(job_id) for job_id in logs_before} == logs_before
    assert all(api.get(f"/api/v1/jobs/{j}").json()["status"] == "FAILED" for j in wanted)
    narrower = api.post(
        "/api/v1/jobs/resume", json={**selection, "failed_step": 1, "dry_run": True}
    )
    assert narrower.json()["count"] == 0

    sim.behave("flaky")
    first = api.post("/api/v1/jobs/resume", json={**selection, "limit": 2})
    assert first.status_code == 200, first.text
    assert (first.json()["count"], first.json()["more"]) == (2, True)
    assert first.json()["job_ids"] == capped.json()["job_ids"]
    rest = api.post("/api/v1/jobs/resume", json=selection)
    assert (rest.json()["count"], rest.json()["matched"], rest.json()["more"]) == (1, 1, False)
    assert sorted(first.json()["job_ids"] + rest.json()["job_ids"]) == sorted(wanted)
    for job_id in wanted:
        assert wait_for_job(api, job_id)["status"] == "COMPLETED"
    assert api.get(f"/api/v1/jobs/{other}").json()["status"] == "FAILED"
    assert api.post("/api/v1/jobs/resume", json=selection).json()["count"] == 0


def _resumed_data(api, job_id):
    events = api.get(f"/api/v1/jobs/{job_id}/events").json()["events"]
    return [e["data"] for e in events if e["type"] == "JOB_RESUMED"]


def test_rerun_of_a_completed_job_is_new_work_with_new_keys_and_a_failed_step_keeps_its_own(
    stack,
):
    api, sim = stack["api"], stack["sim"]
    job_id = submit(api, "four_steps")
    first = wait_for_job(api, job_id)
    assert first["status"] == "COMPLETED", first

    response = api.post(f"/api/v1/jobs/{job_id}/resume", json={"from_step": 1})
    assert response.status_code == 200, response.text
    rerun = response.json()
    assert (rerun["status"], rerun["current_step"], rerun["progress"]) == ("PENDING", 1, 25)
    assert set(rerun["outputs"]) == {"prompt_enhancer"}
    assert [s["attempt"] for s in rerun["steps"]] == [1, 1, 0, 0]

    done = wait_for_job(api, job_id)
    assert done["status"] == "COMPLETED", done
    assert _calls(sim, job_id) == {
        "prompt_enhancer": 1,  # step 0 is not called again
        "fast_chat_llm": 2,
        "flaky": 2,
        "email_notifier": 2,
    }
    assert done["steps"][0] == first["steps"][0]
    for index, name in enumerate(FOUR_STEPS[1:], start=1):
        calls = sim.requests(name, job_id)
        # Fresh attempts, and a key that differs from the first run's: new work.
        assert [c["attempt"] for c in calls] == [1, 1]
        assert [c["idempotency_key"] for c in calls] == [
            f"{job_id}:{index}",
            f"{job_id}:{index}:r1",
        ]
    assert sim.requests("fast_chat_llm", job_id)[-1]["context"] == {
        "prompt_enhancer": first["outputs"]["prompt_enhancer"]
    }
    assert _resumed_data(api, job_id) == [
        {"from_step": 1, "rerun": True, "rerun_count": 1, "previous_status": "COMPLETED"}
    ]

    # A second rerun fails at `flaky`; resuming that FAILED step keeps the rerun's key.
    sim.behave("flaky", failure_rate=1.0, failure_status=400)
    assert api.post(f"/api/v1/jobs/{job_id}/resume", json={"from_step": 2}).status_code == 200
    assert wait_for_job(api, job_id)["status"] == "FAILED"
    sim.behave("flaky")
    assert api.post(f"/api/v1/jobs/{job_id}/resume").status_code == 200
    assert wait_for_job(api, job_id)["status"] == "COMPLETED"
    keys = [c["idempotency_key"] for c in sim.requests("flaky", job_id)]
    assert keys == [f"{job_id}:2", f"{job_id}:2:r1", f"{job_id}:2:r2", f"{job_id}:2:r2"]
    resumed = _resumed_data(api, job_id)
    assert [d["rerun"] for d in resumed] == [True, True, False]
    assert resumed[2]["failed_step"] == 2


def test_a_cancelled_job_reruns_from_a_step_it_reached(stack):
    api = stack["api"]
    job_id = submit(api, "stalled_job")  # its queue has no worker: it stays where it is
    assert api.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
    assert_error(
        api.post(f"/api/v1/jobs/{job_id}/resume", json={"from_step": 1}), 422, "invalid_from_step"
    )
    response = api.post(f"/api/v1/jobs/{job_id}/resume", json={"from_step": 0})
    assert response.status_code == 200, response.text
    rerun = response.json()
    assert (rerun["status"], rerun["current_step"], rerun["progress"]) == ("PENDING", 0, 0)
    assert (rerun["steps"][0]["status"], rerun["steps"][0]["attempt"]) == ("QUEUED", 1)
    assert _resumed_data(api, job_id) == [
        {"from_step": 0, "rerun": True, "rerun_count": 1, "previous_status": "CANCELLED"}
    ]
    assert api.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200


def test_rerun_refusals(stack):
    api = stack["api"]
    job_id = submit(api, "python_job")
    assert wait_for_job(api, job_id)["status"] == "COMPLETED"
    # Without from_step a COMPLETED job is not resumable; past its last step, not rerunnable.
    assert_error(api.post(f"/api/v1/jobs/{job_id}/resume"), 409, "job_not_resumable")
    assert_error(
        api.post(f"/api/v1/jobs/{job_id}/resume", json={"from_step": 2}), 422, "invalid_from_step"
    )
    assert _resumed_data(api, job_id) == []
