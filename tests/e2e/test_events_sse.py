"""Acceptance: a job's event log over REST, as JSON pages and as Server-Sent Events.

An SSE client that drops and reconnects with `Last-Event-ID` must get exactly the
events it missed: none twice, none lost, in order, and the stream ends after the
job's final event.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.operator_support import assert_error, submit
from tests.event_clients import read_sse
from tests.harness import wait_for_job

pytestmark = pytest.mark.slow

SSE = {"Accept": "text/event-stream"}


def stream_events(
    api_server: str, job_id: str, headers: dict[str, str], stop_after: int | None = None
) -> list[dict[str, Any]]:
    """Read SSE events until the server ends the stream (or `stop_after` events, then hang up)."""
    received: list[dict[str, Any]] = []
    url = f"{api_server}/api/v1/jobs/{job_id}/events"
    deadline = time.monotonic() + 40

    def lines_in_time(response: httpx.Response) -> Iterator[str]:
        for line in response.iter_lines():  # keep-alives come at least every 15 s
            assert time.monotonic() < deadline, f"the stream did not end: {received}"
            yield line

    with httpx.stream("GET", url, headers={**SSE, **headers}, timeout=30) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for frame in read_sse(lines_in_time(response)):
            event = json.loads(frame["data"])
            assert frame["id"] == str(event["seq"]), frame
            assert frame["event"] == event["type"], frame
            received.append(event)
            if stop_after is not None and len(received) == stop_after:
                break
    return received


def test_sse_resume_with_last_event_id_gets_exactly_the_missing_events(stack, api_server):
    api, sim = stack["api"], stack["sim"]
    sim.behave("fast_chat_llm", latency_ms=300)
    sim.behave("summarizer_pro", latency_ms=300)
    job_id = submit(api, "business_plan")

    first = stream_events(api_server, job_id, {}, stop_after=3)
    # A reconnecting EventSource sends the last id it saw; it wins over ?after.
    rest = stream_events(api_server, job_id, {"Last-Event-ID": str(first[-1]["seq"])})

    full = api.get(f"/api/v1/jobs/{job_id}/events").json()["events"]
    assert first + rest == full
    assert [e["seq"] for e in full] == list(range(1, len(full) + 1))
    assert full[-1]["type"] == "JOB_COMPLETED"
    # The job was still running at the reconnect, so the second stream was (partly) live.
    assert rest[0]["type"] != "JOB_COMPLETED"

    # After the job finished: the same events, and the stream ends by itself.
    assert stream_events(api_server, job_id, {}) == full
    assert stream_events(api_server, job_id, {"Last-Event-ID": str(len(full) - 2)}) == full[-2:]


def test_json_log_pages_with_after_and_limit(stack):
    api = stack["api"]
    job_id = submit(api, "business_plan")
    assert wait_for_job(api, job_id)["status"] == "COMPLETED"
    full = api.get(f"/api/v1/jobs/{job_id}/events").json()["events"]
    assert len(full) == 10  # created, 4 x (started, completed), completed

    pages, after = [], 0
    while True:
        body = api.get(f"/api/v1/jobs/{job_id}/events", params={"after": after, "limit": 3}).json()
        assert body["success"] is True
        if not body["events"]:
            assert body["next_after"] == after
            break
        assert len(body["events"]) <= 3
        pages.append(body["events"])
        after = body["next_after"]
        assert after == body["events"][-1]["seq"]
    assert [e for page in pages for e in page] == full
    assert [len(page) for page in pages] == [3, 3, 3, 1]


def test_event_endpoint_errors_use_the_envelope(stack):
    api = stack["api"]
    missing = "00000000-0000-0000-0000-000000000000"
    assert_error(api.get(f"/api/v1/jobs/{missing}/events"), 404, "job_not_found")
    assert_error(api.get(f"/api/v1/jobs/{missing}/events", headers=SSE), 404, "job_not_found")
    assert_error(api.get("/api/v1/jobs/not-a-uuid/events"), 422, "validation_error")
    job_id = submit(api, "python_job")
    assert_error(api.get(f"/api/v1/jobs/{job_id}/events?after=-1"), 422, "validation_error")
    # Past the range of a seq: refused as input, not failed in the query that binds it.
    assert_error(api.get(f"/api/v1/jobs/{job_id}/events?after=2147483648"), 422, "validation_error")
    for resume_at in (b"seven", b"2147483648", "\u00b2".encode("latin-1")):  # "\u00b2".isdigit()
        bad_resume = api.get(
            f"/api/v1/jobs/{job_id}/events", headers={**SSE, "Last-Event-ID": resume_at}
        )
        assert_error(bad_resume, 400, "invalid_last_event_id")
