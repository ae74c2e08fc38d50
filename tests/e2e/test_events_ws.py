"""Acceptance: WebSocket event streams over a real API, real Redis and real workers.

Each test attacks the promise that a dashboard never misses or repeats an event:
order and completeness live and after the fact, resume with `after`, hundreds of
sockets at once, a killed Redis subscription, and a client that stops reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvloop

from app.db import session_scope
from app.events.hub import HUB_CLIENT_NAME, MAX_SEND_STALL_S, POLL_INTERVAL_S
from app.events.log import latest_event_id
from tests.e2e.operator_support import key_of, secured_api, submit
from tests.event_clients import (
    EVENT_FIELDS,
    TERMINAL,
    FanOut,
    SocketRecorder,
    StalledSocket,
    latencies,
    latency_summary,
    submit_many,
    ws_url,
)
from tests.harness import CAO, Proc, free_port, port_open, wait_for_job, wait_until

pytestmark = pytest.mark.slow

STEPS = ["prompt_enhancer", "fast_chat_llm", "summarizer_pro", "email_notifier"]


def run(coro: Any, timeout: float = 100) -> Any:
    """Run a client scenario; a hang fails it here, well inside the test's own timeout."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(asyncio.wait_for(coro, timeout))


def newest_event_id() -> int:
    """The log's newest global id (needs the `db` fixture): `/ws?after=` it sees only new events."""
    with session_scope() as session:
        return latest_event_id(session)


def stored_log(api: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    body = api.get(f"/api/v1/jobs/{job_id}/events", params={"limit": 1000}).json()
    assert body["success"] is True, body
    return body["events"]


def assert_complete_job_stream(events: list[dict[str, Any]], job_id: str) -> None:
    """seq 1..n without gap or repeat; every step started then completed, in order;
    the job's final event last; every event carries exactly the documented fields."""
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), events
    assert all(set(e) == EVENT_FIELDS and e["job_id"] == job_id for e in events)
    assert [e["id"] for e in events] == sorted({e["id"] for e in events})
    steps = [(e["type"], e["step_index"]) for e in events if e["type"].startswith("STEP_")]
    expected = [(kind, i) for i in range(len(STEPS)) for kind in ("STEP_STARTED", "STEP_COMPLETED")]
    assert steps == expected, steps
    assert events[0]["type"] == "JOB_CREATED"
    assert events[-1]["type"] == "JOB_COMPLETED"


def test_job_stream_is_ordered_complete_and_replayable(stack, api_server):
    api, sim = stack["api"], stack["sim"]
    sim.behave("fast_chat_llm", latency_ms=150)
    job_id = submit(api, "business_plan")
    live = run(SocketRecorder(ws_url(api_server, f"/ws/{job_id}")).run())

    assert live.messages[0]["type"] == "WS_CONNECTED"
    assert live.messages[0]["job_id"] == job_id
    assert_complete_job_stream(live.events, job_id)
    assert live.close_code == 1000, (live.close_code, live.close_reason)
    assert live.events == stored_log(api, job_id)
    assert latencies([live]), "the job ran while the socket was open: some events were live"

    # After the job finished: the very same stream, then a clean close.
    replay = run(SocketRecorder(ws_url(api_server, f"/ws/{job_id}")).run())
    assert replay.messages[0]["type"] == "WS_CONNECTED"
    assert replay.events == live.events
    assert replay.close_code == 1000


def test_reconnect_with_after_yields_exactly_the_rest(stack, api_server):
    api = stack["api"]
    job_id = submit(api, "business_plan")
    assert wait_for_job(api, job_id)["status"] == "COMPLETED"
    full = stored_log(api, job_id)
    last = full[-1]["seq"]

    async def resume_at(after: int) -> SocketRecorder:
        return await SocketRecorder(ws_url(api_server, f"/ws/{job_id}?after={after}")).run()

    async def all_resumes() -> list[SocketRecorder]:
        return list(await asyncio.gather(*(resume_at(k) for k in range(last + 1))))

    for after, recorder in enumerate(run(all_resumes())):
        assert recorder.messages[0] == {**recorder.messages[0], "type": "WS_CONNECTED"}
        assert recorder.events == full[after:], after
        assert recorder.close_code == 1000, (after, recorder.close_code)


def test_unknown_job_closes_with_4004(api_server):
    for job_id in ("00000000-0000-0000-0000-000000000000", "not-a-uuid"):
        recorder = run(SocketRecorder(ws_url(api_server, f"/ws/{job_id}")).run())
        assert recorder.messages == []
        assert recorder.close_code == 4004, recorder.close_code


def test_positions_outside_the_logs_range_are_refused_at_the_handshake(stack, api_server):
    """`after` is a seq (32 bits) on a job's socket and an id (64 bits) on `/ws`: a
    position past that, negative or not a number is refused like any other bad
    parameter, before the socket opens, with 422 and the envelope naming it; the
    largest one is served."""
    import websockets

    job_id = submit(stack["api"], "python_job")

    async def handshake(path: str) -> tuple[int, dict] | str:
        try:
            async with websockets.connect(ws_url(api_server, path), open_timeout=10) as socket:
                return json.loads(await asyncio.wait_for(socket.recv(), 10))["type"]
        except websockets.InvalidStatus as refused:
            return refused.response.status_code, json.loads(refused.response.body)

    for path in (
        f"/ws/{job_id}?after=2147483648",
        f"/ws/{job_id}?after=-1",
        f"/ws/{job_id}?after=seven",
        "/ws?after=9223372036854775808",
    ):
        status, body = run(handshake(path))
        assert status == 422, path
        assert body["success"] is False, body
        assert body["error"]["code"] == "validation_error", body
        assert body["error"]["message"].startswith("query.after: "), body
    for path in (f"/ws/{job_id}?after=2147483647", "/ws?after=9223372036854775807"):
        assert run(handshake(path)) == "WS_CONNECTED", path


def test_700_sockets_each_get_every_event_in_order_while_50_jobs_run(stack, api_server, db):
    api, sim = stack["api"], stack["sim"]
    for service in STEPS:
        sim.behave(service, latency_ms=30)
    # The watched job's first call lingers so that its 500 sockets are open before it
    # moves on; most of its events are then delivered live.
    sim.behave("prompt_enhancer", latency_ms=30, script=[{"delay_ms": 6000}])
    after_id = newest_event_id()
    watched = submit(api, "business_plan")
    wait_until(lambda: sim.requests("prompt_enhancer", watched), 15, message="the watched job")

    async def scenario() -> tuple[FanOut, list[str]]:
        fan_out = FanOut(api_server, [watched] * 500, 200, after_id, jobs=50)
        await fan_out.start()
        created = await submit_many(api_server, "business_plan", 49)
        await fan_out.finish(timeout=90)
        return fan_out, created

    fan_out, others = run(scenario())
    jobs = [watched, *others]
    logs = {job: stored_log(api, job) for job in jobs}
    for job in jobs:
        assert_complete_job_stream(logs[job], job)
    for recorder in fan_out.job_sockets:
        assert recorder.events == logs[watched]
        assert recorder.close_code == 1000
    for recorder in fan_out.all_sockets:
        ids = [event["id"] for event in recorder.events]
        assert ids == sorted(set(ids)), "the all-jobs stream repeated or reordered events"
        for job in jobs:
            assert [e for e in recorder.events if e["job_id"] == job] == logs[job], job
    summary = latency_summary(latencies(fan_out.recorders))
    print(f"\nfan-out 500 on one job + 200 on /ws, 50 jobs: commit-to-receipt {summary}")
    assert summary["p99_ms"] < 5000, summary


def test_killing_the_hubs_pubsub_connection_mid_job_loses_nothing(stack, api_server, env, db):
    api, sim = stack["api"], stack["sim"]
    for service in STEPS:
        sim.behave(service, latency_ms=150)
    admin = redis.Redis.from_url(env["REDIS_URL"], decode_responses=True)
    db = admin.connection_pool.connection_kwargs.get("db", 0)

    def hub_connections() -> set[str]:
        # Only this run's API: other runs on the same Redis server use other databases.
        clients = admin.client_list(_type="pubsub")
        return {c["id"] for c in clients if c["name"] == HUB_CLIENT_NAME and int(c["db"]) == db}

    wait_until(hub_connections, 10, message="the hub's subscription")
    after_id = newest_event_id()
    job_id = submit(api, "business_plan")
    killed: set[str] = set()

    async def scenario() -> tuple[SocketRecorder, SocketRecorder]:
        one_job = SocketRecorder(ws_url(api_server, f"/ws/{job_id}"))
        every_job = SocketRecorder(ws_url(api_server, f"/ws?after={after_id}"))
        streams = asyncio.gather(
            one_job.run(), every_job.run(until=lambda e: e["type"] in TERMINAL)
        )
        deadline = time.monotonic() + 30
        while not streams.done() and time.monotonic() < deadline:  # kill it while the job runs
            for client_id in hub_connections():
                admin.client_kill_filter(_id=client_id)
                killed.add(client_id)
            await asyncio.sleep(0.02)
        await asyncio.wait_for(streams, 5)
        return one_job, every_job

    one_job, every_job = run(scenario())
    assert len(killed) >= 3, "the hub should have resubscribed after each kill"
    full = stored_log(api, job_id)
    assert_complete_job_stream(full, job_id)
    assert one_job.events == full
    assert one_job.close_code == 1000
    assert [e for e in every_job.events if e["job_id"] == job_id] == full
    wait_until(hub_connections, 10, message="the hub to subscribe again")


def test_a_socket_that_stops_reading_gets_4008_and_delays_no_one(stack, api_server, db):
    sim = stack["sim"]
    jobs = 30
    # Big step outputs fill a frozen client's buffers (a few MB) quickly.
    sim.behave("flaky", script=[{"body": {"blob": "x" * 300_000}}] * jobs)
    after_id = newest_event_id()
    frozen = StalledSocket(ws_url(api_server, f"/ws?after={after_id}"))

    async def scenario() -> FanOut:
        healthy = FanOut(api_server, [], 3, after_id, jobs=jobs)
        await healthy.start()
        await submit_many(api_server, "flaky_then_mail", jobs)
        await healthy.finish(timeout=90)
        return healthy

    healthy = run(scenario())
    # Everyone else got every event of every job, promptly, while one socket stood still.
    reference = healthy.all_sockets[0].events
    assert len({e["job_id"] for e in reference if e["type"] == "JOB_COMPLETED"}) == jobs
    for recorder in healthy.all_sockets:
        assert recorder.events == reference
    assert latency_summary(latencies(healthy.recorders))["p99_ms"] < 3000

    # The hub notices the stalled send, then the close frame waits behind the backlog.
    time.sleep(MAX_SEND_STALL_S + 2 * POLL_INTERVAL_S + 1)
    messages, code, reason = frozen.drain()
    assert code == 4008, (code, reason)
    got = [m for m in messages if m["type"] != "WS_CONNECTED"]
    assert 0 < len(got) < len(reference)
    assert got == reference[: len(got)], "what it got before the close is in order"
    assert reason.endswith(f"after={got[-1]['id']}"), reason

    # Resuming where it stopped yields exactly the rest.
    rest = run(
        SocketRecorder(ws_url(api_server, f"/ws?after={got[-1]['id']}")).run(
            until=lambda e: e.get("id") == reference[-1]["id"]
        )
    )
    assert got + rest.events == reference


def test_an_api_restart_mid_job_loses_nothing(stack, env, log_dir):
    api, sim = stack["api"], stack["sim"]
    # Still running once the first API has stopped, even when stopping it is slow on a
    # loaded machine; the job starts only once that API is up, as its start-up can take
    # seconds there (with 3 s and the job sent first, it once finished before the socket
    # opened, which then closed with 1000).
    sim.behave("summarizer_pro", latency_ms=10_000)

    with secured_api(env, log_dir) as first_api:  # an API of its own, to stop mid-job
        job_id = submit(api, "business_plan")
        path = f"/ws/{job_id}?api_key={key_of('operator')}"
        before = SocketRecorder(ws_url(first_api, path))
        reader = threading.Thread(target=lambda: run(before.run()))
        reader.start()
        wait_until(lambda: len(before.events) >= 3, 30, message="the first events")
    reader.join(15)
    assert before.close_code == 1012, "a restarting server says so"
    assert api.get(f"/api/v1/jobs/{job_id}").json()["status"] == "RUNNING"

    last_seen = before.events[-1]["seq"]
    with secured_api(env, log_dir) as second_api:
        after = run(SocketRecorder(ws_url(second_api, f"{path}&after={last_seen}")).run())
    full = stored_log(api, job_id)
    assert before.events + after.events == full
    assert after.close_code == 1000


@contextlib.contextmanager
def another_api(env: dict[str, str], log_dir: Path) -> Iterator[str]:
    """A second `cao api` on the run's database and Redis: its hub sequences too."""
    port = free_port()
    proc = Proc("api-2", [*CAO, "api", "--port", str(port)], env, log_dir)
    try:
        wait_until(lambda: port_open(port) or not proc.alive(), 30, message="second api")
        assert proc.alive(), proc.log_text()
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


def test_two_api_processes_sequencing_side_by_side_each_stream_every_id_once(
    stack, api_server, env, log_dir, db
):
    api, sim = stack["api"], stack["sim"]
    for service in STEPS:
        sim.behave(service, latency_ms=20)
    jobs = 20
    after_id = newest_event_id()

    with another_api(env, log_dir) as other_api:

        async def scenario() -> tuple[list[FanOut], list[str]]:
            fan_outs = [FanOut(url, [], 2, after_id, jobs=jobs) for url in (api_server, other_api)]
            for fan_out in fan_outs:
                await fan_out.start()
            created = [
                *await submit_many(api_server, "business_plan", jobs // 2),
                *await submit_many(other_api, "business_plan", jobs // 2),
            ]
            for fan_out in fan_outs:
                await fan_out.finish(timeout=90)
            return fan_outs, created

        fan_outs, created = run(scenario())

    logs = {job: stored_log(api, job) for job in created}
    for recorder in (r for fan_out in fan_outs for r in fan_out.all_sockets):
        ids = [event["id"] for event in recorder.events]
        # Every id, once, in order: the hubs number events in commit order without gaps.
        assert ids == list(range(after_id + 1, after_id + len(ids) + 1)), ids
        for job in created:
            assert [e for e in recorder.events if e["job_id"] == job] == logs[job], job
