"""Input that has no UTF-8 form: refused at the door (tests/integration/test_api_input.py),
and, where an older version stored it, a step that cannot send it fails once with
`internal_error` while every read of the job still answers 200."""

from __future__ import annotations

import pytest

from app.catalog import current_catalog
from app.jobs.service import submit_job
from tests.harness import assert_failed, wait_for_job

pytestmark = pytest.mark.timeout(60)


def test_a_valid_surrogate_pair_is_accepted(stack):
    api = stack["api"]
    body = b'{"feature_name": "business_plan", "input_data": {"note": "\\ud83d\\ude00"}}'
    response = api.post("/api/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 201, response.text
    job = wait_for_job(api, response.json()["job_id"])
    assert job["status"] == "COMPLETED", job
    assert job["input_data"] == {"note": "\U0001f600"}


def test_a_stored_lone_surrogate_fails_its_step_once_and_reads_answer_200(stack, db):
    api, sim = stack["api"], stack["sim"]
    # As a version that did not check input stored it: past the API's validation.
    created = submit_job(
        current_catalog(),
        feature_name="business_plan",
        input_data={"note": "\ud800", "\udfff": [1]},
    )
    job_id = str(created.job.id)

    job = wait_for_job(api, job_id)
    assert_failed(job, retryable=False, code="internal_error", says=("UnicodeEncodeError",))
    first = job["steps"][0]
    assert (first["status"], first["attempt"], first["error_code"]) == (
        "FAILED",
        1,
        "internal_error",
    )
    assert sim.stats("prompt_enhancer")["calls"] == 0  # nothing half-sent
    # What cannot be sent as it is stored is shown with U+FFFD in its place.
    assert job["input_data"]["note"] == "\ufffd"
    assert len(job["input_data"]) == 2

    events = api.get(f"/api/v1/jobs/{job_id}/events")
    assert events.status_code == 200, events.text
    types = [event["type"] for event in events.json()["events"]]
    assert types == ["JOB_CREATED", "STEP_STARTED", "JOB_ERROR"], types
    listed = api.get("/api/v1/jobs", params={"limit": 5})
    assert listed.status_code == 200, listed.text
    assert job_id in [item["job_id"] for item in listed.json()["items"]]
