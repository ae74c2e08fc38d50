"""Bounded reads and connections: what one client can make an API process hold.

- a page of 500 jobs whose inputs and contexts are 1 MiB each costs the API a few MiB
  (LIST_RSS_BUDGET_MIB): lists carry neither;
- one API key holds at most MAX_STREAMS_PER_KEY (16) event streams: the 17th
  WebSocket is closed with 4029, the 17th SSE stream answered 429;
- a client's 1 MiB WebSocket frame closes that socket (1009), no other;
- a request whose headers or body arrive too slowly loses its connection;
- a replay longer than one page's byte budget goes on to the end, in order.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import httpx
import psutil
import pytest
from sqlalchemy import text
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.db import session_scope
from app.events.log import latest_event_id
from tests.e2e.operator_support import submit
from tests.event_clients import ws_url
from tests.harness import serving_api, wait_for_job

pytestmark = pytest.mark.timeout(120)

# How much the API's resident memory may grow while it lists 500 jobs of 1 MiB input
# and 1 MiB context each, three times over (loading them would take over 1 GiB).
LIST_RSS_BUDGET_MIB = 64
MIB = 1024 * 1024


def _api_process(api_url: str) -> psutil.Process:
    port = api_url.rsplit(":", 1)[1]
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "api" in cmdline and "--port" in cmdline and port in cmdline:
            return proc
    raise AssertionError(f"no API process on port {port}")


@pytest.fixture
def big_jobs(db, backend_name):
    """500 finished jobs, each with 1 MiB of input and 1 MiB of context (made by the
    server: PostgreSQL compresses them on disk, and would expand each on read)."""
    if backend_name != "postgresql":
        pytest.skip("generates its rows with PostgreSQL functions")
    with session_scope() as session:
        session.execute(
            text(
                """
                INSERT INTO job (id, tenant, feature_name, status, progress, current_step,
                                 total_steps, input_data, context, recipe, last_seq,
                                 created_at, updated_at)
                SELECT gen_random_uuid(), 'bounds', 'business_plan', 'COMPLETED', 100, 1, 1,
                       json_build_object('blob', repeat(md5(g::text), 32768)),
                       json_build_object('step', repeat(md5((-g)::text), 32768)),
                       '{"steps": [{"name": "prompt_enhancer", "service": {}}]}'::json,
                       0, now(), now()
                FROM generate_series(1, 500) AS g
                """
            )
        )
    yield
    with session_scope() as session:
        session.execute(text("DELETE FROM job WHERE tenant = 'bounds'"))


def test_a_page_of_500_jobs_with_1_mib_inputs_stays_within_the_memory_budget(
    api, api_server, big_jobs
):
    process = _api_process(api_server)
    api.get("/api/v1/jobs", params={"limit": 500})  # warm: code paths, pools, caches
    before = process.memory_info().rss
    for _ in range(3):
        page = api.get("/api/v1/jobs", params={"limit": 500})
        assert page.status_code == 200, page.text
        items = page.json()["items"]
        assert len(items) == 500
        assert "input_data" not in items[0]
        assert "outputs" not in items[0]
    grown_mib = (process.memory_info().rss - before) / MIB
    assert grown_mib < LIST_RSS_BUDGET_MIB, f"the API grew {grown_mib:.0f} MiB"
    assert len(page.content) < 2 * MIB


KEY_ONE, KEY_TWO = "bounds-key-one", "bounds-key-two"


@pytest.fixture(scope="module")
def keyed_api(env, log_dir, migrated):
    """A `cao api` of its own, with two client keys of one tenant."""
    keys = f"{KEY_ONE}:client:bounds,{KEY_TWO}:client:bounds,operator-key-9:operator"
    bounded = {**env, "API_KEYS": keys, "HTTP_REQUEST_TIMEOUT_S": "2"}
    with serving_api("api-bounds", bounded, log_dir) as client:
        yield client


async def _open(api_url: str, key: str) -> ClientConnection:
    socket = await connect(ws_url(api_url, "/ws"), additional_headers={"X-API-Key": key})
    hello = json.loads(await asyncio.wait_for(socket.recv(), 10))
    assert hello["type"] == "WS_CONNECTED"
    return socket


async def _closed_with(socket: ClientConnection) -> tuple[int | None, str | None]:
    """How the server closed `socket` (whatever it sent before is skipped)."""
    await asyncio.wait_for(socket.wait_closed(), 10)
    assert socket.close_code is not None
    return socket.close_code, socket.close_reason


def _job(api: httpx.Client, key: str) -> str:
    created = api.post(
        "/api/v1/jobs", json={"feature_name": "business_plan"}, headers={"X-API-Key": key}
    )
    assert created.status_code == 201, created.text
    return str(created.json()["job_id"])


def _sse_status(api: httpx.Client, key: str, job_id: str) -> tuple[int, Any]:
    headers = {"X-API-Key": key, "Accept": "text/event-stream"}
    with api.stream("GET", f"/api/v1/jobs/{job_id}/events", headers=headers) as response:
        body = response.read() if response.status_code != 200 else None
        return response.status_code, json.loads(body) if body else None


def test_a_17th_stream_for_one_key_is_refused_clearly(keyed_api):
    api_url = str(keyed_api.base_url).rstrip("/")
    job_id = _job(keyed_api, KEY_ONE)

    async def scenario() -> None:
        held = [await _open(api_url, KEY_ONE) for _ in range(16)]
        try:
            extra = await connect(ws_url(api_url, "/ws"), additional_headers={"X-API-Key": KEY_ONE})
            code, reason = await _closed_with(extra)
            assert code == 4029
            assert reason is not None
            assert "MAX_STREAMS_PER_KEY=16" in reason
            status, envelope = await asyncio.to_thread(_sse_status, keyed_api, KEY_ONE, job_id)
            assert status == 429
            assert envelope["error"]["code"] == "too_many_streams"
            # Another key is not held back by this one.
            other = await _open(api_url, KEY_TWO)
            await other.close()
            # A stream that ends gives its place back.
            await held.pop().close()
            for _ in range(50):
                try:
                    held.append(await _open(api_url, KEY_ONE))
                    break
                except (AssertionError, ConnectionClosed, InvalidStatus):
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("the key never got its stream back")
        finally:
            await asyncio.gather(*(socket.close() for socket in held))

    asyncio.run(scenario())


def test_a_1_mib_client_frame_closes_that_socket_only(keyed_api):
    api_url = str(keyed_api.base_url).rstrip("/")

    async def scenario() -> None:
        # max_size: the client's own limit on what it receives, not on what it sends.
        loud = await _open(api_url, KEY_TWO)
        quiet = await _open(api_url, KEY_TWO)
        try:
            await loud.send("x" * MIB)
            code, _ = await _closed_with(loud)
            assert code == 1009  # message too big
            job_id = await asyncio.to_thread(_job, keyed_api, KEY_TWO)
            while True:
                event = json.loads(await asyncio.wait_for(quiet.recv(), 10))
                if event["job_id"] == job_id and event["type"] == "JOB_CREATED":
                    break
        finally:
            await asyncio.gather(loud.close(), quiet.close())

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "partial",
    [
        b"GET /api/v1/health HTTP/1.1\r\nHost: api\r\nX-Slow: ",  # headers never end
        b"POST /api/v1/jobs HTTP/1.1\r\nHost: api\r\nContent-Length: 100\r\n\r\n{",  # body
    ],
    ids=["headers", "body"],
)
def test_a_request_arriving_too_slowly_loses_its_connection(keyed_api, partial):
    host, port = str(keyed_api.base_url).removeprefix("http://").rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as slow:
        slow.sendall(partial)
        started = time.monotonic()
        assert keyed_api.get("/api/v1/health").status_code == 200  # others are served
        while slow.recv(65536):  # whatever answer, then the close
            pass
        assert time.monotonic() - started < 2 + 3  # HTTP_REQUEST_TIMEOUT_S, and margin


def test_a_replay_past_one_pages_byte_budget_goes_on_to_the_end(stack, api_server, db):
    api, sim = stack["api"], stack["sim"]
    jobs = 4
    # 400 KB outputs (under this run's EVENT_OUTPUT_MAX_BYTES, so kept in the events):
    # their events take several pages of EVENT_PAGE_MAX_BYTES (1 MiB).
    sim.behave("flaky", script=[{"body": {"blob": "x" * 400_000}}] * jobs)
    with session_scope() as session:
        after_id = latest_event_id(session)
    job_ids = [submit(api, "flaky_then_mail") for _ in range(jobs)]
    for job_id in job_ids:
        assert wait_for_job(api, job_id)["status"] == "COMPLETED"

    async def replay() -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        finished: set[str] = set()
        url = ws_url(api_server, f"/ws?after={after_id}")
        async with connect(url, max_size=None) as socket:
            while finished != set(job_ids):
                message = json.loads(await asyncio.wait_for(socket.recv(), 10))
                if message["type"] == "WS_CONNECTED":
                    continue
                seen.append(message)
                if message["type"] == "JOB_COMPLETED":
                    finished.add(message["job_id"])
        return seen

    seen = [event for event in asyncio.run(replay()) if event["job_id"] in job_ids]
    ids = [event["id"] for event in seen]
    assert ids == sorted(set(ids)), "in order, each once"
    for job_id in job_ids:
        page = api.get(f"/api/v1/jobs/{job_id}/events", params={"limit": 1000}).json()
        assert [e for e in seen if e["job_id"] == job_id] == page["events"]
