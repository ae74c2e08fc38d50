"""Traces: one trace per job, from `POST /jobs` through every step attempt to the
`traceparent` each service receives; a resume continues it; and with no OTLP endpoint
set, no process of the gateway loads anything of tracing.

The traced API and worker export to an OTLP/HTTP receiver inside the test
(tests/e2e/otlp_receiver.py). The jobs run on queues only this module's workers consume.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.harness import Simulators, Workers, serving_api, wait_for_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
# Its workers import the probe step (tests/e2e/trace_probe.py) from the repository.
PROBE_PATH = {"PYTHONPATH": str(ROOT)}
CREATE = "POST /api/v1/jobs"
RESUME = "POST /api/v1/jobs/{job_id}/resume"


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    received = OtlpReceiver()
    yield received
    received.stop()


@pytest.fixture(scope="module")
def traced_env(env: dict[str, str], receiver: OtlpReceiver) -> dict[str, str]:
    # Batches go out every 50 ms rather than every 5 s.
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "50"}
    return {**env, **otel, **PROBE_PATH}


@pytest.fixture(scope="module")
def traced_api(traced_env: dict[str, str], log_dir: Path, migrated: str) -> Iterator[httpx.Client]:
    with serving_api("api-traced", traced_env, log_dir) as client:
        yield client


@pytest.fixture(scope="module")
def traced_worker(workers: Workers, traced_env: dict[str, str]) -> Iterator[None]:
    workers.start("traced", name="traced", env=traced_env)
    yield
    workers.stop("traced")


def _traceparent(trace_id: str, span_id: str) -> str:
    return f"00-{trace_id}-{span_id}-01"


def _parse(traceparent: str | None) -> tuple[str, str]:
    assert traceparent is not None, "the service received no traceparent"
    version, trace_id, span_id, _flags = traceparent.split("-")
    assert version == "00", traceparent
    return trace_id, span_id


def _attempts(spans: list[ReceivedSpan], job_id: str) -> list[ReceivedSpan]:
    """The step attempt spans of the job, in order of step and attempt."""
    mine = [s for s in spans if "cao.attempt" in s.attributes]
    mine = [s for s in mine if s.attributes["cao.job_id"] == job_id]
    return sorted(mine, key=lambda s: (s.attributes["cao.step_index"], s.attributes["cao.attempt"]))


def _one(spans: list[ReceivedSpan], **match: Any) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, key) == value for key, value in match.items())]
    assert len(found) == 1, (match, spans)
    return found[0]


def _check_attempt(span: ReceivedSpan, job_id: str, step: tuple[int, str, int]) -> None:
    step_index, step_name, attempt = step
    assert span.service == "cao-worker"
    assert span.attributes == {
        "cao.job_id": job_id,
        "cao.step_index": step_index,
        "cao.step_name": step_name,
        "cao.attempt": attempt,
        "cao.service": step_name,
    } | ({"error.type": span.attributes["error.type"]} if span.failed else {})


def _check_calls(
    sim: Simulators, service: str, job_id: str, spans: list[ReceivedSpan], attempts: list[Any]
) -> None:
    """Each call of `service` carried the trace of its attempt's span: the traceparent
    names the client span of that call, a child of the attempt's span."""
    calls = sorted(sim.requests(service, job_id), key=lambda r: r["received_at"])
    assert len(calls) == len(attempts), calls
    for call, attempt in zip(calls, attempts, strict=True):
        trace_id, span_id = _parse(call["traceparent"])
        assert trace_id == attempt.trace_id
        client = _one(spans, span_id=span_id)
        assert client.is_client, client
        assert client.parent_span_id == attempt.span_id, client


@pytest.mark.usefixtures("traced_worker")
def test_one_job_is_one_trace(
    sim: Simulators, traced_api: httpx.Client, receiver: OtlpReceiver
) -> None:
    sim.behave("traced_call", script=[{"status": 503}])  # its first attempt is retried
    created = traced_api.post("/api/v1/jobs", json={"feature_name": "traced_job", "input_data": {}})
    assert created.status_code == 201, created.text
    job_id = created.json()["job_id"]
    job = wait_for_job(traced_api, job_id, timeout=30)
    assert job["status"] == "COMPLETED", job

    expected = [(0, "traced_call", 1), (0, "traced_call", 2), (1, "traced_next", 1)]
    expected.append((2, "trace_probe", 1))
    spans = receiver.wait_for(
        lambda spans: (
            len(_attempts(spans, job_id)) == len(expected)
            and any(span.name == CREATE for span in spans)
        )
    )
    attempts = _attempts(spans, job_id)
    trace_id = attempts[0].trace_id
    create = _one(spans, trace_id=trace_id, name=CREATE)
    # The API's span is the root; each attempt hangs below it, the retried step's two
    # included, and the steps the worker went on to in-process without the broker.
    assert (create.service, create.is_server, create.parent_span_id) == ("cao-api", True, "")
    for span, step in zip(attempts, expected, strict=True):
        _check_attempt(span, job_id, step)
        assert (span.trace_id, span.parent_span_id) == (trace_id, create.span_id)
    assert [span.failed for span in attempts] == [True, False, False, False]
    assert attempts[0].attributes["error.type"] == "http_503"

    _check_calls(sim, "traced_call", job_id, spans, attempts[:2])
    _check_calls(sim, "traced_next", job_id, spans, attempts[2:3])
    # A python step runs with its attempt's span as the current span (and the probe
    # sees tracing set up: it would tell where it is not, as below).
    probe = job["outputs"]["trace_probe"]
    assert (probe["trace_id"], probe["span_id"]) == (trace_id, attempts[3].span_id)
    assert probe["tracer_provider"] == "TracerProvider"
    assert "opentelemetry.sdk.trace" in probe["tracing_modules"]


@pytest.mark.usefixtures("traced_worker")
def test_resume_continues_the_trace(
    sim: Simulators, traced_api: httpx.Client, receiver: OtlpReceiver
) -> None:
    sim.behave("traced_call", script=[{"status": 400}])  # fails the job at step 0
    # The client's own trace: the job's trace is the client's.
    client_trace, client_span = secrets.token_hex(16), secrets.token_hex(8)
    created = traced_api.post(
        "/api/v1/jobs",
        json={"feature_name": "traced_job", "input_data": {}},
        headers={"traceparent": _traceparent(client_trace, client_span)},
    )
    job_id = created.json()["job_id"]
    assert wait_for_job(traced_api, job_id, timeout=30)["status"] == "FAILED"
    resumed = traced_api.post(f"/api/v1/jobs/{job_id}/resume")
    assert resumed.status_code == 200, resumed.text
    assert wait_for_job(traced_api, job_id, timeout=30)["status"] == "COMPLETED"

    spans = receiver.wait_for(
        lambda spans: (
            len(_attempts(spans, job_id)) == 4 and any(span.name == RESUME for span in spans)
        )
    )
    create = _one(spans, trace_id=client_trace, name=CREATE)
    assert create.parent_span_id == client_span
    resume = _one(spans, trace_id=client_trace, name="resume job")
    assert (resume.service, resume.parent_span_id) == ("cao-api", create.span_id)
    assert resume.attributes == {"cao.job_id": job_id, "cao.step_index": 0}
    # It links to the operator's request, a trace of its own.
    request = _one(spans, span_id=resume.links[0][1])
    assert (request.is_server, request.name) == (True, RESUME)

    attempts = _attempts(spans, job_id)
    failed = next(span for span in attempts if span.failed)
    after = [span for span in attempts if span is not failed]
    assert failed.parent_span_id == create.span_id
    assert failed.attributes["error.type"] == "http_400"
    assert [(s.trace_id, s.parent_span_id) for s in after] == [(client_trace, resume.span_id)] * 3
    steps = [(0, "traced_call", 1), (1, "traced_next", 1), (2, "trace_probe", 1)]
    for span, step in zip(after, steps, strict=True):
        _check_attempt(span, job_id, step)
    _check_calls(sim, "traced_call", job_id, spans, [failed, after[0]])


_API_IN_ITS_OWN_PROCESS = """
import json
from fastapi.testclient import TestClient
from app.main import create_app
from tests.e2e.trace_probe import tracing_in_process

with TestClient(create_app()) as client:
    created = client.post("/api/v1/jobs", json={"feature_name": "untraced_job", "input_data": {}})
    assert created.status_code == 201, created.text
print(json.dumps({"job_id": created.json()["job_id"], **tracing_in_process()}))
"""
UNTRACED = {"tracing_modules": [], "tracer_provider": "ProxyTracerProvider"}


def test_untraced_processes_load_nothing_of_tracing(
    sim: Simulators, workers: Workers, api: httpx.Client, env: dict[str, str]
) -> None:
    """With no OTLP endpoint, the API (the app in a process of its own, its lifespan run
    and a job created) and a worker that ran an http and a python step have loaded
    nothing of tracing (tests/e2e/trace_probe.py says what), and no call carries a
    traceparent."""
    assert not any(name.startswith("OTEL_") for name in env)
    workers.start("untraced", concurrency=1, name="untraced", env=PROBE_PATH)
    try:
        ran = subprocess.run(
            [sys.executable, "-c", _API_IN_ITS_OWN_PROCESS],
            env={**env, **PROBE_PATH},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        api_process = json.loads(ran.stdout.strip().splitlines()[-1])
        job_id = api_process.pop("job_id")
        assert api_process == UNTRACED
        job = wait_for_job(api, job_id, timeout=30)
    finally:
        workers.stop("untraced")
    assert job["status"] == "COMPLETED", job
    probe = job["outputs"]["untraced_probe"]
    assert probe == {**UNTRACED, "trace_id": "0" * 32, "span_id": "0" * 16}
    (call,) = sim.requests("untraced_call", job_id)
    assert call["traceparent"] is None
