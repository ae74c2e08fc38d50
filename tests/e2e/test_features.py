"""Acceptance: both default features run end to end through real workers, one per queue."""

from __future__ import annotations

import pytest

from tests.harness import wait_for_job

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("feature", "steps"),
    [
        ("business_plan", ["prompt_enhancer", "fast_chat_llm", "summarizer_pro", "email_notifier"]),
        ("viral_video", ["prompt_enhancer", "video_gen_v2", "email_notifier"]),
    ],
)
def test_default_feature_completes_with_full_context(stack, feature, steps):
    api, sim = stack["api"], stack["sim"]
    created = api.post(
        "/api/v1/jobs", json={"feature_name": feature, "input_data": {"prompt": "a bakery"}}
    )
    assert created.status_code == 201, created.text
    job_id = created.json()["job_id"]
    assert created.json()["monitor_url"].endswith(f"/ws/{job_id}")

    progress_seen = []

    def poll():
        body = api.get(f"/api/v1/jobs/{job_id}").json()
        progress_seen.append(body["progress"])
        return body if body["status"] in ("COMPLETED", "FAILED") else None

    from tests.harness import wait_until

    job = wait_until(poll, 60, 0.02, "job to finish")
    assert job["status"] == "COMPLETED", job
    assert job["progress"] == 100
    assert progress_seen == sorted(progress_seen), "progress went down"
    assert [s["step_name"] for s in job["steps"]] == steps
    assert all(s["status"] == "COMPLETED" and s["attempt"] == 1 for s in job["steps"])
    assert set(job["outputs"]) == set(steps)

    # Every service got exactly one call carrying every earlier step's output.
    for index, name in enumerate(steps):
        calls = sim.requests(name, job_id)
        assert len(calls) == 1, (name, calls)
        call = calls[0]
        assert call["step_index"] == index
        assert call["idempotency_key"] == f"{job_id}:{index}"
        assert call["context"] == {prev: job["outputs"][prev] for prev in steps[:index]}

    # The durable record agrees: progress never went down across events either.
    assert job["steps"][-1]["finished_at"] is not None
    wait_for_job(api, job_id)
