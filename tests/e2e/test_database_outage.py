"""The database gone and back. While PostgreSQL cannot be reached the API answers 503
`database_unavailable` with `Retry-After` (a client may retry; nothing was written),
not a 500, and once it is back the same API process serves again. A worker whose
service call ends meanwhile keeps its result and records it when the database
returns: the service is not called again.

PostgreSQL is real; it is reached through a TCP proxy that the test cuts (nothing
listens, every connection drops) and restores."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import structlog
from sqlalchemy.engine import make_url
from structlog.testing import capture_logs
from websockets.sync.client import connect

from tests.e2e.tcp_proxy import TcpProxy
from tests.harness import CAO, Proc, Simulators, serving_api, wait_for_job, wait_until
from tests.lease_support import queued_deliveries

pytestmark = pytest.mark.slow

# Its queue has no worker of the session's: the jobs stay PENDING/QUEUED unless a test
# starts one, and touch nothing else.
FEATURE = "stalled_job"
# How long the worker is without its database once the call has ended.
OUTAGE_AFTER_THE_CALL_S = 3.0


@pytest.fixture
def proxied_database(private_postgres: str) -> Iterator[tuple[str, TcpProxy]]:
    url = make_url(private_postgres)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    try:
        yield url.set(host="127.0.0.1", port=proxy.port).render_as_string(False), proxy
    finally:
        proxy.close()


@pytest.fixture
def api_via_proxy(
    env: dict[str, str], log_dir: Path, proxied_database: tuple[str, TcpProxy]
) -> Iterator[httpx.Client]:
    url, _ = proxied_database
    with serving_api("api-db-outage", {**env, "DATABASE_URL": url}, log_dir) as client:
        yield client


def _create(api: httpx.Client) -> httpx.Response:
    return api.post("/api/v1/jobs", json={"feature_name": FEATURE, "input_data": {}})


def _jobs_in(database_url: str) -> int:
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM job").fetchone()
    assert row is not None
    return int(row[0])


def test_api_answers_503_while_the_database_is_gone_then_serves_again(
    api_via_proxy: httpx.Client, proxied_database: tuple[str, TcpProxy], private_postgres: str
):
    api, (_, proxy) = api_via_proxy, proxied_database
    first = _create(api)
    assert first.status_code == 201, first.text
    job_id = first.json()["job_id"]

    proxy.cut()
    for method, path in (
        ("POST", "/api/v1/jobs"),
        ("GET", f"/api/v1/jobs/{job_id}"),
        ("GET", "/api/v1/jobs"),
        ("GET", f"/api/v1/jobs/{job_id}/events"),
    ):
        body = {"feature_name": FEATURE, "input_data": {}} if method == "POST" else None
        answer = api.request(method, path, json=body)
        assert answer.status_code == 503, (path, answer.status_code, answer.text)
        assert answer.json()["error"]["code"] == "database_unavailable", answer.text
        assert answer.headers["Retry-After"] == "1"
    assert _jobs_in(private_postgres) == 1, "nothing is written while the database is gone"
    time.sleep(2.5)  # past the event hub's once-a-second run: it meets the outage too

    proxy.restore()
    again = wait_until(
        lambda: (r := _create(api)).status_code == 201 and r,
        15,
        0.2,
        "the API to create jobs again",
    )
    assert api.get(f"/api/v1/jobs/{again.json()['job_id']}").json()["status"] in {
        "PENDING",
        "RUNNING",
    }
    assert _jobs_in(private_postgres) == 2
    # The event hub lived through it: a new socket gets both jobs' events from the log.
    url = str(api.base_url).replace("http://", "ws://") + "/ws?after=0"
    with connect(url, open_timeout=10) as socket:
        messages = [json.loads(socket.recv(timeout=10)) for _ in range(3)]
    assert messages[0]["type"] == "WS_CONNECTED"
    assert [(m["type"], m["job_id"]) for m in messages[1:]] == [
        ("JOB_CREATED", job_id),
        ("JOB_CREATED", again.json()["job_id"]),
    ]


@pytest.mark.parametrize(
    ("feature", "fallback"),
    [
        ("stalled_job", "recording the result again"),
        # The worker would start the next step in the same commit; without a database
        # it gives the next step's slot back and records the result the usual way.
        ("stalled_twice", "recording the result without the next step"),
    ],
)
def test_a_result_in_hand_when_the_database_goes_is_recorded_when_it_returns(
    feature: str,
    fallback: str,
    sim: Simulators,
    env: dict[str, str],
    log_dir: Path,
    private_postgres: str,
    proxied_database: tuple[str, TcpProxy],
):
    url, proxy = proxied_database
    sim.behave("stalled", script=[{"delay_ms": 2000}])
    argv = [*CAO, "worker", "-Q", "stalled", "-c", "1"]
    worker = Proc("worker-db-outage", argv, {**env, "DATABASE_URL": url}, log_dir)
    try:
        worker.wait_for_log("ready.", timeout=60)
        # This API reaches the database directly: only the worker loses it.
        with serving_api(
            "api-db-direct", {**env, "DATABASE_URL": private_postgres}, log_dir
        ) as api:
            created = api.post("/api/v1/jobs", json={"feature_name": feature, "input_data": {}})
            job_id = created.json()["job_id"]
            wait_until(lambda: sim.stats("stalled")["in_flight"] == 1, 30, 0.02, "the call")
            proxy.cut()
            wait_until(lambda: sim.stats("stalled")["in_flight"] == 0, 10, 0.05, "the call to end")
            time.sleep(OUTAGE_AFTER_THE_CALL_S)
            proxy.restore()
            job = wait_for_job(api, job_id, timeout=30)
        log = worker.log_text()
    finally:
        worker.stop()
    assert job["status"] == "COMPLETED", job
    assert f"database unreachable; {fallback}" in log
    # Heartbeats missed meanwhile are one line each, on the step's own logger.
    missed = [line for line in log.splitlines() if "heartbeat not recorded" in line]
    assert missed, log
    assert all(f"job_id={job_id}" in line for line in missed), missed
    assert "Traceback" not in log
    assert [step["attempt"] for step in job["steps"]] == [1] * len(job["steps"])
    calls = [(call["step_index"], call["attempt"]) for call in sim.requests("stalled", job_id)]
    assert calls == [(index, 1) for index in range(len(job["steps"]))], "a step ran twice"


@pytest.fixture
def worker_engine_via_proxy(proxied_database: tuple[str, TcpProxy]) -> Iterator[TcpProxy]:
    """This process's engine reaches the private database through the proxy, as a
    worker's does (no pre-ping); the run's engine again afterwards."""
    from app.db import dispose_db, init_db

    url, proxy = proxied_database
    dispose_db()
    init_db(url, pre_ping=False)
    try:
        yield proxy
    finally:
        dispose_db()
        init_db()


def _new_job(feature: str) -> Any:
    """A job of `feature`, whose queue nothing consumes (its creation message dropped)."""
    from app.catalog import current_catalog
    from app.db import session_scope
    from app.jobs.service import create_job

    with session_scope() as session:
        job_id = create_job(session, current_catalog(), feature_name=feature, input_data={}).job.id
    queued_deliveries(current_catalog().recipe(feature)[0].queue)
    return job_id


def _running_first_step() -> Any:
    """A `stalled_twice` job whose first step this process has claimed: its StepRun."""
    from app.db import statement_scope
    from app.jobs import repository as repo
    from app.jobs import step_changes as changes

    job_id = _new_job("stalled_twice")
    with statement_scope() as session:
        queued = repo.load_step_run(session, job_id, 0)
        assert queued is not None
        assert changes.start_step(session, queued, queued.fence) is not None
        run = repo.load_step_run(session, job_id, 0)
    assert run is not None
    return run


def _with_the_answer_lost(
    proxy: TcpProxy, record: Callable[[], Any], after: bytes | None = None
) -> Any:
    """`record()` while PostgreSQL's replies are dropped (from the first request holding
    `after`, if given); the connection is cut half a second after the dropping starts,
    once the change has committed, and the proxy listens again at once."""
    proxy.drop_replies(after, cut_after_s=0.5)
    done = record()
    assert proxy.replies_dropped > 0, "no answer was lost: the test missed its moment"
    return done


def _events(job_id: Any, event_type: str) -> int:
    from app.db import session_scope
    from app.models import JobEvent

    with session_scope() as session:
        return session.query(JobEvent).filter_by(job_id=job_id, type=event_type).count()


def test_a_result_whose_commit_lost_its_answer_still_sends_the_next_step(
    worker_engine_via_proxy: TcpProxy,
):
    """The worker tries again, finds the step completed under its own attempt, and
    sends the next step's delivery that the lost answer kept back (before, the next
    step waited for Beat's idle-step sweep)."""
    from app.db import session_scope
    from app.jobs import repository as repo
    from app.jobs.record import record_success
    from app.jobs.runner import Outcome

    run = _running_first_step()
    outcome = _with_the_answer_lost(
        worker_engine_via_proxy,
        lambda: record_success(run, {"done": True}, None, structlog.get_logger("test")),
    )
    assert outcome == Outcome.COMPLETED
    with session_scope() as session:
        steps = repo.get_steps(session, run.job_id)
    assert [s.status for s in steps] == ["COMPLETED", "QUEUED"]
    assert _events(run.job_id, "STEP_COMPLETED") == 1, "the result was recorded once"
    assert queued_deliveries("stalled") == [(str(run.job_id), 1, steps[1].fence)]


@pytest.mark.parametrize(
    ("retryable", "outcome", "event"),
    [(True, "retrying", "STEP_RETRYING"), (False, "failed", "JOB_ERROR")],
)
def test_a_failure_whose_commit_lost_its_answer_is_recorded_once(
    worker_engine_via_proxy: TcpProxy, retryable: bool, outcome: str, event: str
):
    """Likewise for a failure, recorded in a transaction whose COMMIT loses its answer:
    the retry finds what this very attempt wrote and goes on from there: a retryable
    failure's delayed delivery still goes out; a permanent one is the job's failure,
    not a "late failure". Either is recorded once."""
    from app.jobs.record import record_failure
    from app.jobs.slots import live_service
    from app.services import StepError

    run = _running_first_step()
    error = StepError("HTTP 5xx or 4xx", code="http_error", retryable=retryable)
    recorded = _with_the_answer_lost(
        worker_engine_via_proxy,
        lambda: record_failure(
            run, live_service(run.service_spec), error, structlog.get_logger("test")
        ),
        after=b"COMMIT\x00",  # that transaction's COMMIT query (not "COMMITTED")
    )
    assert recorded == outcome
    assert _events(run.job_id, event) == 1, "the failure was recorded once"
    retry = [(str(run.job_id), 0, run.fence + 1)] if retryable else []
    assert queued_deliveries("stalled") == retry


def test_a_continuation_whose_commit_lost_its_answer_puts_the_next_step_back(
    worker_engine_via_proxy: TcpProxy,
):
    """A worker completes a step and starts the next in one commit, to run it itself;
    that statement's answer is lost, so it gives the next step's slot back and records the
    result the usual way. It finds the next step RUNNING under the fence its own
    continuation gave it, with no worker, and puts it back on its queue, still its
    first attempt (before, it waited for Beat's silent-heartbeat sweep, as attempt 2)."""
    from app.db import session_scope
    from app.jobs import repository as repo
    from app.jobs.runner import Outcome, run_step
    from app.leases import get_semaphore

    job_id = _new_job("solo_twice")  # two python steps on a queue nothing consumes
    with session_scope() as session:
        first_fence = repo.get_steps(session, job_id)[0].fence
    outcome = _with_the_answer_lost(
        worker_engine_via_proxy,
        lambda: run_step(job_id, 0, first_fence, frozenset({"solo"})),
        after=b"started_next",  # the continuation's statement (it commits on its own)
    )
    assert outcome == Outcome.COMPLETED
    with session_scope() as session:
        steps = repo.get_steps(session, job_id)
    assert [(s.status, s.attempt) for s in steps] == [("COMPLETED", 1), ("QUEUED", 1)]
    assert _events(job_id, "STEP_COMPLETED") == 1
    assert queued_deliveries("solo") == [(str(job_id), 1, steps[1].fence)]
    assert get_semaphore().usage("solo").in_use == 0, "the abandoned step's slot is free"


def test_a_stalled_database_does_not_cost_a_running_step_its_lease(
    worker_engine_via_proxy: TcpProxy, private_postgres: str
):
    """The database stops answering while a step's call runs (its replies are lost):
    the heartbeat's row write hangs, but the lease renewals go on, so the lease outlives
    many times its lease_ttl_s and Beat has nothing to reap. Before, one thread did
    both, and the lease expired behind the hung write."""
    from app.db import session_scope
    from app.jobs import repository as repo
    from app.jobs.runner import Outcome, run_step
    from app.leases import LeaseId, LeaseState, get_semaphore

    proxy = worker_engine_via_proxy
    job_id = _new_job("solo_pause_job")  # lease_ttl_s 2: renewed every 0.67 s
    with session_scope() as session:
        fence = repo.get_steps(session, job_id)[0].fence
    outcome: list[Outcome] = []
    step = threading.Thread(target=lambda: outcome.append(run_step(job_id, 0, fence)))
    # The step pauses 6 s; its job's input says so.
    dsn = make_url(private_postgres).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE job SET input_data = %s WHERE id = %s", ('{"seconds": 6}', job_id))
        step.start()

        def running() -> bool:
            row = conn.execute(
                "SELECT status FROM job_step WHERE job_id = %s", (job_id,)
            ).fetchone()
            return row is not None and row[0] == "RUNNING"

        wait_until(running, 10, 0.05, "the step to run")
    lease = LeaseId(str(job_id), 0, fence, "solo")
    proxy.drop_replies()
    try:
        for _ in range(22):  # 4.4 s: more than twice lease_ttl_s
            time.sleep(0.2)
            assert get_semaphore().state("solo_pause", lease) is LeaseState.HELD, "lease lapsed"
    finally:
        proxy.cut()  # the hung heartbeat write fails; the step records through a new one
        proxy.restore()
    step.join(30)
    assert outcome == [Outcome.COMPLETED]


@pytest.mark.parametrize("names_its_service", [True, False])
def test_a_claim_whose_commit_lost_its_answer_runs_its_step_once(
    worker_engine_via_proxy: TcpProxy, names_its_service: bool
):
    """A delivery claims its step (one autocommitted statement) and the answer is lost:
    the claim landed, but the worker cannot know it from the error. It asks again, finds
    the step RUNNING under its own claim, and goes on to the call, still attempt 1.
    Before, it took itself for a duplicate and dropped out; the step held its slot with
    no one running it until the lease expired, and then ran again as attempt 2."""
    from app.db import session_scope
    from app.jobs import repository as repo
    from app.jobs.runner import NamedSlot, Outcome, run_step
    from app.leases import get_semaphore

    job_id = _new_job("solo_job")  # one python step on a queue nothing consumes
    with session_scope() as session:
        fence = repo.get_steps(session, job_id)[0].fence
    named = NamedSlot("solo", "solo") if names_its_service else None
    with capture_logs() as logs:
        outcome = _with_the_answer_lost(
            worker_engine_via_proxy,
            lambda: run_step(job_id, 0, fence, frozenset(), named),
            after=b"started_at=coalesce",  # the claim's statement (it commits on its own)
        )
    assert outcome == Outcome.COMPLETED
    found = "claim recorded by an earlier try whose commit's answer was lost"
    assert found in [line["event"] for line in logs], "the claim had not landed"
    with session_scope() as session:
        steps = repo.get_steps(session, job_id)
    assert [(s.status, s.attempt) for s in steps] == [("COMPLETED", 1)]
    assert _events(job_id, "STEP_STARTED") == 1
    assert _events(job_id, "STEP_COMPLETED") == 1
    assert get_semaphore().usage("solo").in_use == 0, "the step's slot is free"
