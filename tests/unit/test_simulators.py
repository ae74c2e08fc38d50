"""Tests for the simulated services: outputs, knobs, scripts, stats and the admin API."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from app.simulators import (
    DEFAULT_SERVICES,
    Behavior,
    build_simulator_server,
    create_simulator_app,
)

pytestmark = pytest.mark.anyio

JOB_ID = "00000000-0000-0000-0000-000000000001"
# The services these tests call: the defaults and a few of their own.
SERVICES = (*DEFAULT_SERVICES, "flaky", "other", "slow", "anything", "x")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_simulator_app(services=SERVICES))
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as http:
        yield http


@pytest.fixture
def live_server() -> Iterator[tuple[str, uvicorn.Server]]:
    """The simulator served by real uvicorn in a thread, for disconnects and shutdown."""
    server = build_simulator_server(create_simulator_app(services=SERVICES), port=0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not server.started:
        assert time.monotonic() < deadline, "simulator server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", server
    server.should_exit = True
    thread.join(timeout=5)
    assert not thread.is_alive()


def payload(
    step_name: str = "prompt_enhancer",
    input_data: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
    attempt: int = 1,
) -> dict[str, Any]:
    return {
        "job_id": JOB_ID,
        "feature_name": "business_plan",
        "step_index": 0,
        "step_name": step_name,
        "attempt": attempt,
        "input_data": input_data if input_data is not None else {"prompt": "a bakery"},
        "context": context or {},
    }


async def stats(http: httpx.AsyncClient, service: str) -> dict[str, Any]:
    response = await http.get(f"/_sim/services/{service}/stats")
    assert response.status_code == 200
    return response.json()


async def wait_for_stats(
    http: httpx.AsyncClient, service: str, ready: Any, timeout: float = 3.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        current = await stats(http, service)
        if ready(current):
            return current
        assert time.monotonic() < deadline, f"stats never became ready: {current}"
        await asyncio.sleep(0.02)


async def test_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.json() == {"ok": True}


async def test_outputs_are_deterministic_across_attempts(client: httpx.AsyncClient) -> None:
    context = {"prompt_enhancer": {"enhanced_prompt": "a bakery, better"}}
    for service in ("prompt_enhancer", "fast_chat_llm", "summarizer_pro", "video_gen_v2"):
        first = await client.post(f"/{service}", json=payload(service, context=context))
        again = await client.post(f"/{service}", json=payload(service, context=context, attempt=2))
        assert first.status_code == again.status_code == 200
        assert first.json() == again.json()
    chat = await client.post("/fast_chat_llm", json=payload("fast_chat_llm", context=context))
    assert "a bakery, better" in chat.json()["text"]


async def test_default_service_outputs(client: httpx.AsyncClient) -> None:
    enhanced = await client.post("/prompt_enhancer", json=payload())
    assert "a bakery" in enhanced.json()["enhanced_prompt"]

    email = await client.post("/email_notifier", json=payload("email_notifier"))
    body = email.json()
    assert body["sent"] is True
    assert body["to"] == "demo@example.com"
    assert len(body["message_id"]) == 16

    video = (await client.post("/video_gen_v2", json=payload("video_gen_v2"))).json()
    assert video["video_url"].startswith("https://videos.example/")
    assert video["video_url"].endswith(".mp4")
    assert video["duration_s"] == 15


async def test_unknown_service_echoes(client: httpx.AsyncClient) -> None:
    context = {"b": {"x": 1}, "a": {}}
    response = await client.post("/flaky", json=payload("flaky", {"n": 3}, context))
    assert response.json() == {"service": "flaky", "echo": {"n": 3}, "seen_context": ["a", "b"]}


async def test_script_is_consumed_in_order_then_falls_back(client: httpx.AsyncClient) -> None:
    script = [{"status": 503}, {"status": 503}, {"status": 200, "body": {"done": 1}}]
    put = await client.put("/_sim/services/flaky", json={"script": script})
    assert put.status_code == 200

    statuses = []
    for _ in range(4):
        statuses.append((await client.post("/flaky", json=payload("flaky"))).status_code)
    assert statuses == [503, 503, 200, 200]

    recorded = await stats(client, "flaky")
    assert [r["status"] for r in recorded["requests"]] == [503, 503, 200, 200]
    assert recorded["calls"] == 4


async def test_scripted_bodies_and_retry_after(client: httpx.AsyncClient) -> None:
    script = [
        {"status": 429, "retry_after": 2},
        {"status": 200, "body": {"done": 1}},
        {"status": 200, "body": "not json"},
    ]
    await client.put("/_sim/services/flaky", json={"script": script})

    limited = await client.post("/flaky", json=payload("flaky"))
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "2"
    assert limited.json() == {"error": "flaky: simulated 429"}

    scripted = await client.post("/flaky", json=payload("flaky"))
    assert scripted.json() == {"done": 1}

    text = await client.post("/flaky", json=payload("flaky"))
    assert text.status_code == 200
    assert text.headers["content-type"].startswith("text/plain")
    with pytest.raises(ValueError, match="Expecting value"):
        text.json()


async def test_failure_rate_and_switching_back(client: httpx.AsyncClient) -> None:
    await client.put("/_sim/services/summarizer_pro", json={"failure_rate": 1.0})
    failing = await client.post("/summarizer_pro", json=payload("summarizer_pro"))
    assert failing.status_code == 503

    await client.put(
        "/_sim/services/summarizer_pro", json={"failure_rate": 1.0, "failure_status": 500}
    )
    assert (await client.post("/summarizer_pro", json=payload())).status_code == 500

    await client.put("/_sim/services/summarizer_pro", json={})
    assert (await client.post("/summarizer_pro", json=payload())).status_code == 200


async def test_default_behavior_applies_to_every_service(client: httpx.AsyncClient) -> None:
    await client.put("/_sim/default", json={"failure_rate": 1.0, "failure_status": 502})
    await client.put("/_sim/services/prompt_enhancer", json={})
    assert (await client.post("/anything", json=payload())).status_code == 502
    assert (await client.post("/prompt_enhancer", json=payload())).status_code == 200


async def test_bad_behavior_is_rejected(client: httpx.AsyncClient) -> None:
    unknown_knob = await client.put("/_sim/services/x", json={"latency": 5})
    assert unknown_knob.status_code == 422
    bad_rate = await client.put("/_sim/default", json={"failure_rate": 2})
    assert bad_rate.status_code == 422


async def test_concurrent_requests_are_counted_in_flight(client: httpx.AsyncClient) -> None:
    await client.put("/_sim/services/video_gen_v2", json={"latency_ms": 200})
    started = time.monotonic()
    responses = await asyncio.gather(
        *(client.post("/video_gen_v2", json=payload("video_gen_v2")) for _ in range(5))
    )
    elapsed = time.monotonic() - started
    assert all(response.status_code == 200 for response in responses)

    recorded = await stats(client, "video_gen_v2")
    assert recorded["calls"] == 5
    assert recorded["in_flight"] == 0
    assert recorded["max_in_flight"] == 5
    # Each call is busy for its latency at least, and for no longer than the calls took
    # (a slow moment of the machine stretches both alike).
    assert 5 * 0.2 <= recorded["busy_seconds"] <= 5 * elapsed
    assert recorded["first_call_at"] <= recorded["last_end_at"]


async def test_requests_record_headers_and_body(client: httpx.AsyncClient) -> None:
    headers = {
        "X-Job-Id": JOB_ID,
        "Idempotency-Key": f"{JOB_ID}:0",
        "X-Internal-Api-Key": "k",
    }
    await client.post("/prompt_enhancer", json=payload(attempt=2), headers=headers)

    (record,) = (await stats(client, "prompt_enhancer"))["requests"]
    assert record["job_id"] == record["x_job_id"] == JOB_ID
    assert record["idempotency_key"] == f"{JOB_ID}:0"
    assert record["headers"]["x-internal-api-key"] == "[redacted]"
    assert record["attempt"] == 2
    assert record["step_index"] == 0
    assert record["step_name"] == "prompt_enhancer"
    assert record["input_data"] == {"prompt": "a bakery"}
    assert record["status"] == 200
    assert record["received_at"] == pytest.approx(time.time(), abs=5)


async def test_reset_clears_behaviors_scripts_and_stats(client: httpx.AsyncClient) -> None:
    await client.put("/_sim/services/flaky", json={"script": [{"status": 500}]})
    await client.put("/_sim/default", json={"failure_rate": 1.0})
    await client.post("/other", json=payload())

    assert (await client.post("/_sim/reset")).status_code == 200

    assert (await client.get("/_sim/stats")).json() == {}
    assert (await client.post("/flaky", json=payload("flaky"))).status_code == 200
    assert (await client.post("/other", json=payload())).status_code == 200
    assert (await stats(client, "flaky"))["calls"] == 1


async def test_all_stats_are_keyed_by_service(client: httpx.AsyncClient) -> None:
    await client.post("/prompt_enhancer", json=payload())
    await client.post("/flaky", json=payload("flaky"))
    all_stats = (await client.get("/_sim/stats")).json()
    assert set(all_stats) == {"prompt_enhancer", "flaky"}
    assert all_stats["flaky"]["calls"] == 1


async def test_required_api_key() -> None:
    app = create_simulator_app(required_api_key="secret")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as http:
        missing = await http.post("/prompt_enhancer", json=payload())
        wrong = await http.post(
            "/prompt_enhancer", json=payload(), headers={"X-Internal-Api-Key": "nope"}
        )
        right = await http.post(
            "/prompt_enhancer", json=payload(), headers={"X-Internal-Api-Key": "secret"}
        )
        assert [missing.status_code, wrong.status_code, right.status_code] == [401, 401, 200]
        assert (await stats(http, "prompt_enhancer"))["calls"] == 3


async def test_cancelled_caller_leaves_nothing_in_flight(client: httpx.AsyncClient) -> None:
    await client.put("/_sim/services/video_gen_v2", json={"hang": True})
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.post("/video_gen_v2", json=payload()), timeout=0.2)

    recorded = await stats(client, "video_gen_v2")
    assert recorded["in_flight"] == 0
    assert recorded["requests"][0]["status"] == 499


async def test_hang_ends_when_the_client_times_out(
    live_server: tuple[str, uvicorn.Server],
) -> None:
    base_url, _ = live_server
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as admin:
        await admin.put("/_sim/services/video_gen_v2", json={"script": [{"hang": True}]})
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=base_url, timeout=0.3) as caller:
            with pytest.raises(httpx.ReadTimeout):
                await caller.post("/video_gen_v2", json=payload("video_gen_v2"))
        assert 0.25 < time.monotonic() - started < 2

        def settled(current: dict[str, Any]) -> bool:
            return current["in_flight"] == 0

        recorded = await wait_for_stats(admin, "video_gen_v2", settled)
        assert recorded["requests"][0]["status"] == 499
        call = recorded["requests"][0]
        assert 0.25 < call["ended_at"] - call["received_at"] < 2, "when the caller went"
        assert recorded["max_in_flight"] == 1

        after = await admin.post("/video_gen_v2", json=payload("video_gen_v2"))
        assert after.status_code == 200


async def test_shutdown_ends_hanging_requests(live_server: tuple[str, uvicorn.Server]) -> None:
    base_url, server = live_server
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        await http.put("/_sim/default", json=Behavior(hang=True).model_dump())
        pending = asyncio.ensure_future(http.post("/slow", json=payload("slow")))

        def in_flight(current: dict[str, Any]) -> bool:
            return current["in_flight"] == 1

        await wait_for_stats(http, "slow", in_flight)
        server.should_exit = True
        response = await asyncio.wait_for(pending, timeout=3)
    assert response.status_code == 503
    assert response.json() == {"error": "simulator shutting down"}


async def test_the_admin_api_never_returns_a_secret(client: httpx.AsyncClient) -> None:
    secrets = {
        "X-Internal-Api-Key": "internal-secret-1",
        "Authorization": "Bearer bearer-secret-2",
        "X-Service-Token": "own-secret-3",  # a service's own `headers:`
    }
    await client.post("/prompt_enhancer", json=payload(), headers={"X-Job-Id": JOB_ID, **secrets})

    for path in ("/_sim/stats", "/_sim/services/prompt_enhancer/stats"):
        text = (await client.get(path)).text
        for secret in ("internal-secret-1", "bearer-secret-2", "own-secret-3"):
            assert secret not in text, path
    (record,) = (await stats(client, "prompt_enhancer"))["requests"]
    assert {name.lower() for name in secrets} <= set(record["headers"])  # seen, not kept
    assert record["headers"]["x-job-id"] == JOB_ID


async def test_unknown_service_names_are_refused_and_add_no_state(
    client: httpx.AsyncClient,
) -> None:
    for index in range(50):
        assert (await client.post(f"/made_up_{index}", json=payload())).status_code == 404
    assert (await client.put("/_sim/services/made_up", json={})).status_code == 404
    missing = await client.get("/_sim/services/made_up/stats")
    assert missing.status_code == 404
    assert (await client.get("/_sim/stats")).json() == {}
